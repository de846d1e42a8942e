//! The Marlin link (`kind = "marlin"`) against a simulated Marlin on a pseudo-terminal
//! (tests/peers/marlin/sim_marlin.py, started by each test): SD print start/progress/done,
//! pause/resume/cancel confirmed, `Resend:` and checksum errors, garbage, `//action:` lines,
//! unplug and replug, the busy-port refusal, a restart mid-print, a halted firmware and a
//! firmware that stops answering. Figures: print start -> event, pause -> paused.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use printvigil::printer::marlin::{MarlinConfig, MarlinLink};
use printvigil::printer::{JobOutcome, PrinterEvent, PrinterLink, PrinterState};
use support::EventLog;
use support::marlin::MarlinSim;

fn config(sim: &MarlinSim) -> MarlinConfig {
    let mut c = MarlinConfig::new("mk3", &sim.port_str());
    c.status_interval_secs = 1;
    c.command_timeout_secs = 2;
    c.action_timeout_secs = 10;
    c.boot_timeout_secs = 8;
    c
}

async fn wait_state(link: &dyn PrinterLink, want: PrinterState, limit: Duration) {
    let mut rx = link.status();
    let r = tokio::time::timeout(limit, rx.wait_for(|s| s.state == want)).await.map(|_| ());
    assert!(r.is_ok(), "state {want:?} not reached in {limit:?}; status {:?}", link.status().borrow().clone());
}

fn started(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::PrintStarted { .. })
}
fn finished(e: &PrinterEvent) -> bool {
    matches!(e, PrinterEvent::Finished { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_print_from_the_screen_is_followed_to_the_end() {
    let mut sim = MarlinSim::start(&[]);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;

    sim.cmd("select big cube.gcode 200000 5");
    let t0 = Instant::now();
    sim.cmd("screen_start big cube.gcode");
    let (ev, _) = log.wait("PrintStarted", Duration::from_secs(10), started).await;
    println!("FIGURE marlin print start on the printer -> PrintStarted: {} ms (status interval 1 s)", t0.elapsed().as_millis());
    let PrinterEvent::PrintStarted { job, file } = ev else { unreachable!() };
    assert_eq!(file, "big cube.gcode");
    assert_eq!(job.0, "marlin:big cube.gcode:200000");

    // Progress moves on while printing.
    let mut rx = link.status();
    let r = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.progress.is_some_and(|p| p > 0.2))).await.map(|_| ());
    assert!(r.is_ok(), "progress did not move: {:?}", link.status().borrow().clone());
    let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| !s.temperatures.is_empty())).await.map(|_| ());
    assert!(r.is_ok(), "temperatures are reported (M155 auto-report)");

    let (ev, _) = log.wait("Finished", Duration::from_secs(15), finished).await;
    assert_eq!(ev, PrinterEvent::Finished { job, file: "big cube.gcode".into(), outcome: JobOutcome::Completed });
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(5)).await;
    assert_eq!(log.count(started), 1);
    assert_eq!(log.count(finished), 1);
    // Auto-reports: the firmware reports by itself, the link does not poll M27 each second.
    let m27 = sim.count("M27");
    println!("FIGURE marlin M27 commands sent over the whole print (auto-report on): {m27}");
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_are_confirmed() {
    let mut sim = MarlinSim::start(&["--print-secs", "60"]);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    sim.cmd("screen_start cube.gcode");
    log.wait("PrintStarted", Duration::from_secs(10), started).await;
    wait_state(link.as_ref(), PrinterState::Printing, Duration::from_secs(5)).await;

    let t0 = Instant::now();
    link.pause().await.expect("pause confirmed");
    println!("FIGURE marlin pause decision -> printer reports paused: {} ms", t0.elapsed().as_millis());
    assert_eq!(link.status().borrow().state, PrinterState::Paused);
    let s = sim.status();
    assert_eq!(s["paused"], true, "{s}");
    let pos = s["pos"].as_u64().unwrap();
    assert_eq!(sim.count("M25"), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sim.status()["pos"].as_u64().unwrap(), pos, "paused: the print does not move");
    assert_eq!(link.status().borrow().state, PrinterState::Paused, "paused stays paused between reports");

    link.resume().await.expect("resume confirmed");
    assert_eq!(sim.status()["printing"], true);
    log.wait("Resumed", Duration::from_secs(5), |e| matches!(e, PrinterEvent::Resumed { .. })).await;

    link.cancel().await.expect("cancel confirmed");
    let (ev, _) = log.wait("Finished", Duration::from_secs(5), finished).await;
    assert!(matches!(ev, PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }), "{ev:?}");
    let s = sim.status();
    assert_eq!((s["printing"].as_bool(), s["paused"].as_bool()), (Some(false), Some(false)), "{s}");
    assert_eq!(sim.count("M524"), 1);
    // Actions in the wrong state are refused, not sent.
    assert!(link.pause().await.is_err());
    assert_eq!(sim.count("M25"), 1);
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Paused { .. })), 1);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_without_m524_uses_the_fallback() {
    let mut sim = MarlinSim::start(&["--print-secs", "60", "--no-m524", "--autoreport", "0"]);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    sim.cmd("screen_start cube.gcode");
    log.wait("PrintStarted (polled M27)", Duration::from_secs(10), started).await;
    link.cancel().await.expect("cancel confirmed");
    let (ev, _) = log.wait("Finished", Duration::from_secs(5), finished).await;
    assert!(matches!(ev, PrinterEvent::Finished { outcome: JobOutcome::Cancelled, .. }), "{ev:?}");
    assert_eq!(sim.count("M25"), 1);
    assert_eq!(sim.count("M26"), 1);
    assert_eq!(sim.count("M104"), 1);
    assert_eq!(sim.status()["printing"], false);
    // Polled: no auto-report, so the link asks (M27 about once a second, M105 less often).
    assert!(sim.count("M27") >= 3);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_checksum_errors_and_garbage_are_survived() {
    let mut sim = MarlinSim::start(&["--print-secs", "60", "--autoreport", "0"]);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;

    sim.cmd("corrupt 3");
    sim.cmd("garbage");
    sim.cmd("screen_start cube.gcode");
    log.wait("PrintStarted", Duration::from_secs(15), started).await;
    link.pause().await.expect("pause goes through after resends");
    let s = sim.status();
    assert!(s["checksum_errors"].as_u64().unwrap() >= 3, "{s}");
    assert!(link.counters().resends.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert!(link.counters().garbage.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Offline { .. })), 0, "{:?}", log.all());
    assert_eq!(sim.count("M25"), 1, "the pause was sent once, resent only on request");
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_action_lines_pause_and_resume() {
    let mut sim = MarlinSim::start(&["--print-secs", "60"]);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    sim.cmd("screen_start cube.gcode");
    log.wait("PrintStarted", Duration::from_secs(10), started).await;
    sim.cmd("lcd_pause");
    log.wait("Paused", Duration::from_secs(5), |e| matches!(e, PrinterEvent::Paused { .. })).await;
    wait_state(link.as_ref(), PrinterState::Paused, Duration::from_secs(2)).await;
    sim.cmd("notify Filament runout");
    let mut rx = link.status();
    let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.message.as_deref() == Some("Filament runout"))).await.map(|_| ());
    assert!(r.is_ok(), "{:?}", link.status().borrow().clone());
    sim.cmd("lcd_resume");
    log.wait("Resumed", Duration::from_secs(5), |e| matches!(e, PrinterEvent::Resumed { .. })).await;
    wait_state(link.as_ref(), PrinterState::Printing, Duration::from_secs(2)).await;
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Paused { .. })), 1);
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_replug_continue_the_same_print() {
    let mut sim = MarlinSim::start(&["--print-secs", "30"]);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    sim.cmd("screen_start cube.gcode");
    log.wait("PrintStarted", Duration::from_secs(10), started).await;

    sim.cmd("unplug");
    log.wait("Offline", Duration::from_secs(5), |e| matches!(e, PrinterEvent::Offline { .. })).await;
    wait_state(link.as_ref(), PrinterState::Offline, Duration::from_secs(2)).await;
    // Unplugged for a while: retried with backoff, reported once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let msg = link.status().borrow().message.clone().unwrap_or_default();
    assert!(msg.contains("does not exist") && msg.contains("ports present"), "{msg}");
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Offline { .. })), 1, "{:?}", log.all());

    sim.cmd("replug");
    log.wait("Online", Duration::from_secs(20), |e| *e == PrinterEvent::Online).await;
    wait_state(link.as_ref(), PrinterState::Printing, Duration::from_secs(5)).await;
    log.wait("Finished", Duration::from_secs(40), finished).await;
    assert_eq!(log.count(started), 1, "the same print, not a new one: {:?}", log.all());
    assert_eq!(log.count(finished), 1);
    assert!(matches!(log.all().last(), Some(PrinterEvent::Finished { outcome: JobOutcome::Completed, .. })));
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_refused_and_a_restart_mid_print_attaches() {
    let mut sim = MarlinSim::start(&["--print-secs", "60"]);
    let first = MarlinLink::start_concrete(config(&sim));
    let log1 = EventLog::record(first.as_ref());
    wait_state(first.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    sim.cmd("screen_start cube.gcode");
    let (ev, _) = log1.wait("PrintStarted", Duration::from_secs(10), started).await;
    let PrinterEvent::PrintStarted { job, .. } = ev else { unreachable!() };

    // A second host on the same port is refused, with the way out.
    let second = MarlinLink::start_concrete(config(&sim));
    let log2 = EventLog::record(second.as_ref());
    let (ev, _) = log2.wait("Offline", Duration::from_secs(5), |e| matches!(e, PrinterEvent::Offline { .. })).await;
    let PrinterEvent::Offline { reason } = ev else { unreachable!() };
    assert!(reason.contains("in use") && reason.contains("kind = \"octoprint\"") && reason.contains("kind = \"moonraker\""), "{reason}");
    second.stop().await;
    drop(second);
    assert_eq!(sim.status()["opens"], 1, "the second link never talked to the printer");

    // printvigil restarts mid-print: the new link attaches to the same print.
    first.stop().await;
    drop(first);
    let link = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    let (ev, _) = log.wait("Attached", Duration::from_secs(15), |e| matches!(e, PrinterEvent::Attached { .. })).await;
    assert_eq!(ev, PrinterEvent::Attached { job, file: "cube.gcode".into(), paused: false });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log.count(started), 0, "{:?}", log.all());
    link.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halted_and_silent_firmware_are_reported_once() {
    let mut sim = MarlinSim::start(&["--print-secs", "60"]);
    let link: Arc<MarlinLink> = MarlinLink::start_concrete(config(&sim));
    let log = EventLog::record(link.as_ref());
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    sim.cmd("screen_start cube.gcode");
    log.wait("PrintStarted", Duration::from_secs(10), started).await;

    sim.cmd("kill");
    log.wait("Halted", Duration::from_secs(5), |e| matches!(e, PrinterEvent::Halted { .. })).await;
    let (ev, _) = log.wait("Finished", Duration::from_secs(5), finished).await;
    assert!(matches!(ev, PrinterEvent::Finished { outcome: JobOutcome::Failed(_), .. }), "{ev:?}");
    wait_state(link.as_ref(), PrinterState::Error, Duration::from_secs(2)).await;
    let before = sim.status()["cmds"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.status()["cmds"], before, "a halted printer gets no commands");
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Halted { .. })), 1);

    // The board is reset by hand: greeted again, idle.
    sim.cmd("reset");
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;

    // A firmware that stops answering: offline once, back when it answers again.
    sim.cmd("mute");
    log.wait("Offline", Duration::from_secs(15), |e| matches!(e, PrinterEvent::Offline { .. })).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(log.count(|e| matches!(e, PrinterEvent::Offline { .. })), 1, "{:?}", log.all());
    sim.cmd("unmute");
    log.wait("Online", Duration::from_secs(40), |e| *e == PrinterEvent::Online).await;
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(5)).await;
    link.stop().await;
}

/// CPU time (user + system, clock ticks) of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut total = 0;
    let mut found = false;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        found = true;
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 14th field.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    assert!(found, "no thread named {name}");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cpu_figure() {
    let sim = MarlinSim::start(&[]);
    let mut cfg = config(&sim);
    cfg.status_interval_secs = 2; // the default
    let link = MarlinLink::start_concrete(cfg);
    wait_state(link.as_ref(), PrinterState::Idle, Duration::from_secs(15)).await;
    let t0 = Instant::now();
    let before = thread_ticks("marlin-mk3");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ticks = thread_ticks("marlin-mk3") - before;
    // Clock ticks are 1/100 s on Linux.
    let pct = ticks as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    println!("FIGURE marlin idle CPU of the serial thread (connected, not printing, debug build): {pct:.2} % of a core ({ticks} ticks in 10 s)");
    assert_eq!(link.status().borrow().state, PrinterState::Idle);
    link.stop().await;
}
