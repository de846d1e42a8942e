//! The inference scheduler's promises, without a model: the queue's rules as properties
//! over arbitrary arrival patterns (freshest frame, never one twice, fair turns, urgent
//! first), a simulated saturated host (Jain's fairness index, frame age), and the worker
//! pool with real threads (priority after a warning, superseded and withdrawn frames, a
//! graceful stop with frames queued, a panicking scorer).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use printvigil::schedule::queue::Queue;
use printvigil::schedule::{Priority, ScoreFn, Scheduler, Unscored};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Submit { printer: usize, urgent: bool },
    Take,
    Withdraw { printer: usize },
}

fn op(printers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..printers, prop::bool::weighted(0.15)).prop_map(|(printer, urgent)| Op::Submit { printer, urgent }),
        3 => Just(Op::Take),
        1 => (0..printers).prop_map(|printer| Op::Withdraw { printer }),
    ]
}

fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if squares == 0.0 { 1.0 } else { sum * sum / (x.len() as f64 * squares) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any arrival pattern: a frame taken is its printer's latest submission, no frame is
    /// taken twice, a replaced or withdrawn frame is never taken, urgent frames go before
    /// all others, the queue never idles while a frame waits, and while a printer waits no
    /// other printer is served twice ahead of it (urgent frames aside).
    #[test]
    fn the_queue_serves_the_freshest_frame_once_and_in_fair_turns(
        printers in 1usize..12,
        ops in prop::collection::vec(op(12), 1..400),
    ) {
        let now = Instant::now();
        let mut q: Queue<u64> = Queue::new();
        let ids: Vec<_> = (0..printers).map(|_| q.join()).collect();
        // The frame each printer has waiting (its id and urgency), as the model says.
        let mut latest: Vec<Option<(u64, bool)>> = vec![None; printers];
        let mut next_frame = 0u64;
        let mut tickets: HashMap<u64, u64> = HashMap::new();
        let mut taken = HashSet::new();
        let mut dead = HashSet::new();
        // For each printer waiting: how often each other printer was served since it began.
        let mut served_while_waiting: Vec<Vec<u32>> = vec![vec![0; printers]; printers];
        for op in ops {
            match op {
                Op::Submit { printer, urgent } => {
                    let p = printer % printers;
                    next_frame += 1;
                    let (ticket, replaced) = q.submit(ids[p], next_frame, urgent, now).unwrap();
                    tickets.insert(next_frame, ticket);
                    match (replaced, latest[p]) {
                        (Some(old), Some((frame, _))) => {
                            prop_assert_eq!(old.item, frame);
                            dead.insert(frame);
                        }
                        (None, None) => served_while_waiting[p] = vec![0; printers],
                        (r, l) => prop_assert!(false, "replaced {:?}, model {:?}", r.map(|w| w.item), l),
                    }
                    latest[p] = Some((next_frame, urgent));
                }
                Op::Withdraw { printer } => {
                    let p = printer % printers;
                    if let Some((frame, _)) = latest[p] {
                        let w = q.withdraw(ids[p], tickets[&frame]);
                        prop_assert_eq!(w.map(|w| w.item), Some(frame));
                        dead.insert(frame);
                        latest[p] = None;
                    }
                }
                Op::Take => {
                    let any_urgent = latest.iter().flatten().any(|(_, u)| *u);
                    match q.take() {
                        None => prop_assert!(latest.iter().all(Option::is_none), "idle while a frame waits"),
                        Some((slot, w)) => {
                            let p = ids.iter().position(|&i| i == slot).unwrap();
                            prop_assert_eq!(Some((w.item, w.urgent)), latest[p], "not the printer's latest frame");
                            prop_assert!(taken.insert(w.item), "frame {} taken twice", w.item);
                            prop_assert!(!dead.contains(&w.item), "a replaced or withdrawn frame was taken");
                            prop_assert!(w.urgent || !any_urgent, "a normal frame went before an urgent one");
                            latest[p] = None;
                            if !w.urgent {
                                for (other, waiting) in latest.iter().enumerate() {
                                    if waiting.is_some() {
                                        served_while_waiting[other][p] += 1;
                                        prop_assert!(
                                            served_while_waiting[other][p] <= 1,
                                            "printer {} was served twice while printer {} waited", p, other
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(q.len(), latest.iter().flatten().count());
        }
    }

    /// A host that cannot keep up (every printer sends a frame per cadence with jitter, the
    /// detector needs longer than a cadence for all of them): every printer gets the same
    /// share (Jain's index >= 0.99), every frame scored is its printer's freshest (younger
    /// than the printer's gap to its next frame), and a printer asking less than its share
    /// gets all it asks.
    #[test]
    fn under_saturation_turns_are_even_and_frames_fresh(
        printers in 2usize..24,
        saturation in 1.5f64..6.0,
        jitter in prop::collection::vec(0.5f64..1.5, 24 * 80),
        slow_printer in prop::bool::ANY,
    ) {
        let cadence = 1.0;
        let cost = saturation * cadence / printers as f64;
        // Arrival times per printer; with `slow_printer`, printer 0 asks for a frame every
        // 3 rounds of the others (below its share).
        let rounds = 60.0;
        let horizon = rounds * cadence;
        let mut arrivals: Vec<Vec<f64>> = Vec::new();
        for p in 0..printers {
            let mut t = jitter[p] * cadence * 0.5;
            let mut times = Vec::new();
            let gap = if slow_printer && p == 0 { 3.0 * saturation * cadence } else { cadence };
            let mut k = p * 80;
            while t < horizon {
                times.push(t);
                t += gap * jitter[k % jitter.len()];
                k += 1;
            }
            arrivals.push(times);
        }
        // Simulated time: one worker, frames back to back.
        let base = Instant::now();
        let at = |t: f64| base + Duration::from_secs_f64(t);
        let mut q: Queue<(usize, usize)> = Queue::new();
        let ids: Vec<_> = (0..printers).map(|_| q.join()).collect();
        let mut next = vec![0usize; printers];
        let mut served = vec![0u32; printers];
        let mut clock = 0.0;
        let mut submitted_slow = 0;
        while clock < horizon {
            for p in 0..printers {
                while next[p] < arrivals[p].len() && arrivals[p][next[p]] <= clock {
                    q.submit(ids[p], (p, next[p]), false, at(arrivals[p][next[p]])).unwrap();
                    if p == 0 { submitted_slow += 1; }
                    next[p] += 1;
                }
            }
            match q.take() {
                Some((_, w)) => {
                    let (p, k) = w.item;
                    prop_assert_eq!(k + 1, next[p], "printer {} was not served its freshest frame", p);
                    if let Some(&following) = arrivals[p].get(k + 1) {
                        prop_assert!(clock < following, "a frame older than its printer's next one was scored");
                    }
                    served[p] += 1;
                    clock += cost;
                }
                None => {
                    clock = (0..printers).filter_map(|p| arrivals[p].get(next[p]).copied()).fold(f64::INFINITY, f64::min);
                }
            }
        }
        let fair: Vec<f64> = served.iter().enumerate().filter(|(p, _)| !(slow_printer && *p == 0)).map(|(_, &n)| n as f64).collect();
        let j = jain(&fair);
        prop_assert!(j >= 0.99, "Jain's index {} over {:?}", j, served);
        if slow_printer {
            // Everything it asked for, except a frame still waiting at the end.
            prop_assert!(served[0] + 1 >= submitted_slow, "the slow printer got {} of {}", served[0], submitted_slow);
        }
    }
}

/// A scorer that records what it scores and waits for the test's go before each frame.
struct Gate {
    go: Mutex<mpsc::Receiver<()>>,
    scored: Mutex<Vec<u32>>,
}

fn gated(workers: usize) -> (Arc<Scheduler<u32, u32>>, mpsc::Sender<()>, Arc<Gate>) {
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Gate { go: Mutex::new(rx), scored: Mutex::new(Vec::new()) });
    let scorers = (0..workers)
        .map(|_| {
            let g = gate.clone();
            Box::new(move |x: &u32| {
                let _ = g.go.lock().unwrap().recv();
                g.scored.lock().unwrap().push(*x);
                if *x == 666 {
                    panic!("bad frame");
                }
                x * 10
            }) as ScoreFn<u32, u32>
        })
        .collect();
    (Scheduler::new(scorers, Duration::from_secs(10)), tx, gate)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warned_printer_is_scored_next_and_no_frame_is_scored_twice() {
    let (s, go, gate) = gated(1);
    let clients: Vec<_> = (0..8).map(|i| s.client(&format!("p{i}"))).collect();
    // Printer 0's frame is being scored (held at the gate); 1..6 wait.
    let first = clients[0].submit(0, Priority::Normal);
    until("the first frame in the worker", || first.started()).await;
    let mut normal: Vec<_> = (1..7).map(|i| clients[i].submit(i as u32, Priority::Normal)).collect();
    // Printer 3 sends a fresher frame: the older one is superseded, never scored.
    let replaced = std::mem::replace(&mut normal[2], clients[3].submit(30, Priority::Normal));
    // Printer 7 has just warned: its frame goes before the six waiting.
    let urgent = clients[7].submit(7, Priority::Urgent);
    assert_eq!(s.load().queued, 7, "six normal frames and the urgent one");
    assert_eq!(replaced.await.unwrap_err(), Unscored::Superseded);
    for _ in 0..8 {
        go.send(()).unwrap();
    }
    let done = first.await.unwrap();
    assert_eq!(done.output, 0);
    let u = urgent.await.unwrap();
    assert_eq!(u.output, 70);
    for (t, want) in normal.into_iter().zip([10, 20, 300, 40, 50, 60]) {
        assert_eq!(t.await.unwrap().output, want);
    }
    let order = gate.scored.lock().unwrap().clone();
    assert_eq!(order, vec![0, 7, 1, 2, 30, 4, 5, 6], "the in-flight frame, the urgent one, then in turn");
    let unique: HashSet<_> = order.iter().collect();
    assert_eq!(unique.len(), order.len(), "no frame scored twice");
    let stats = s.printers();
    assert_eq!(stats.iter().map(|p| p.scored).sum::<u64>(), 8);
    assert_eq!(stats.iter().find(|p| p.name == "p3").unwrap().superseded, 1);
    assert_eq!(stats.iter().find(|p| p.name == "p7").unwrap().urgent, 1);
    assert!(s.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_answers_every_queued_frame_and_scores_none_of_them() {
    let (s, go, gate) = gated(1);
    let clients: Vec<_> = (0..5).map(|i| s.client(&format!("p{i}"))).collect();
    let first = clients[0].submit(100, Priority::Normal);
    until("the first frame in the worker", || first.started()).await;
    let queued: Vec<_> = (1..5).map(|i| clients[i].submit(100 + i as u32, Priority::Normal)).collect();
    // A dropped ticket withdraws its frame.
    drop(clients[4].submit(999, Priority::Normal));
    assert_eq!(s.load().queued, 3);
    let stopping = {
        let s = s.clone();
        tokio::spawn(async move { s.shutdown(Duration::from_secs(5)).await })
    };
    for t in queued.into_iter().take(3) {
        assert_eq!(t.await.unwrap_err(), Unscored::Stopped, "a queued frame is answered at once");
    }
    assert!(!stopping.is_finished(), "the frame being scored is finished first");
    go.send(()).unwrap();
    assert_eq!(first.await.unwrap().output, 1000, "the frame in flight gets its score");
    assert!(stopping.await.unwrap(), "the worker ended");
    assert_eq!(*gate.scored.lock().unwrap(), vec![100], "nothing scored after the stop");
    assert_eq!(clients[1].submit(1, Priority::Normal).await.unwrap_err(), Unscored::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_score_two_printers_at_once_and_survive_a_panic() {
    let (s, go, gate) = gated(2);
    let (a, b) = (s.client("a"), s.client("b"));
    let ta = a.submit(1, Priority::Normal);
    let tb = b.submit(666, Priority::Normal);
    until("both frames in a worker", || ta.started() && tb.started()).await;
    assert_eq!(s.load().in_flight, 2);
    go.send(()).unwrap();
    go.send(()).unwrap();
    assert_eq!(ta.await.unwrap().output, 10);
    assert!(matches!(tb.await.unwrap_err(), Unscored::Panicked(why) if why.contains("bad frame")));
    let again = b.submit(2, Priority::Normal);
    go.send(()).unwrap();
    let r = again.await.unwrap();
    assert_eq!(r.output, 20, "the session goes on after a panic");
    assert!(r.worker < 2);
    assert_eq!(gate.scored.lock().unwrap().len(), 3);
    drop(a);
    drop(b);
    assert!(s.printers().is_empty(), "clients that are dropped leave");
    assert!(s.shutdown(Duration::from_secs(5)).await);
}

/// Real time, real threads: 6 printers at a 60 ms cadence, 20 ms per frame on one worker
/// (twice what the worker can do). Each printer gets the same share and the load says
/// that every cadence is stretched (frame ages are checked in simulated time above: real
/// time on a shared machine makes no assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_detector_stretches_every_printer_evenly() {
    let cadence = Duration::from_millis(60);
    let scorers: Vec<ScoreFn<u32, u32>> = vec![Box::new(|x: &u32| {
        std::thread::sleep(Duration::from_millis(20));
        *x
    })];
    let s = Scheduler::new(scorers, cadence);
    let mut tasks = Vec::new();
    for p in 0..6u32 {
        let c = s.client(&format!("p{p}"));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(cadence);
            let mut pending = None;
            let mut scored = 0u32;
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end {
                tokio::select! {
                    // As the watch does: a frame being scored is awaited, not replaced.
                    _ = tick.tick() => if !pending.as_ref().is_some_and(|t: &printvigil::schedule::Ticket<u32, u32>| t.started()) {
                        pending = Some(c.submit(p, Priority::Normal));
                    },
                    r = async { pending.as_mut().unwrap().await }, if pending.is_some() => {
                        pending = None;
                        if r.is_ok() {
                            scored += 1;
                        }
                    }
                }
            }
            scored
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let load = s.load();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap() as f64);
    }
    assert!(load.saturated() && load.stretch > 1.3, "{load:?}");
    assert!(load.describe().unwrap().contains("detector behind"), "{load:?}");
    assert!(jain(&counts) >= 0.95, "{counts:?}");
    assert!(s.shutdown(Duration::from_secs(5)).await);
}
