//! The daemon killed with SIGKILL between queueing and sending (and mid-send), then
//! restarted, while the server answers some requests with 500: nothing lost, nothing
//! duplicated, nothing out of order. Runs the real binary (`printvigil sim-mirror`).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::fake_obico::{self, Settings, audit};
use tokio::io::{AsyncBufReadExt, BufReader};

const PRINTS: usize = 12;

fn command(config: &std::path::Path, log: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_printvigil"));
    // The config layer reads every PRINTVIGIL_* variable: keep the test's own out.
    for (k, _) in std::env::vars() {
        if k.starts_with("PRINTVIGIL_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .args([
            "sim-mirror",
            "--prints",
            &PRINTS.to_string(),
            "--frames",
            "2",
            "--frame-ms",
            "15",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_queueing_and_sending_then_restart() {
    let started = Instant::now();
    let fake = fake_obico::start(Settings::default()).await;
    fake.set_faults(|f| f.fail_every = 5);
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::default();
    let config = dir.path().join("printvigil.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[server]\nurl = {:?}\nclient_id = {:?}\nclient_secret = {:?}\nprinter_name = \"sim\"\n\
             upload = \"always\"\nupload_min_interval_secs = 0.0\nrequest_timeout_secs = 0.5\nbackoff_initial_ms = 10\nbackoff_cap_secs = 0.1\n",
            dir.path().join("state").display().to_string(),
            fake.url(),
            s.client_id,
            s.client_secret.expose()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");

    let mut kills = 0;
    let mut finished_early = false;
    for round in 0..8u64 {
        let mut child = command(&config, &log).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let want = (round % 3) + 1;
        let mut queued = 0;
        let mut done = false;
        while let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the child speaks")
        {
            if l == "done" {
                done = true;
                break;
            }
            if l.starts_with("queued ") {
                queued += 1;
                if queued >= want {
                    break;
                }
            }
        }
        if done {
            finished_early = true;
            let _ = child.wait().await;
            break;
        }
        // Even rounds: killed right after an event was committed (before or while it is
        // sent). Odd rounds: a few ms later, to land inside a send.
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(3 * round)).await;
        }
        if round == 4 {
            fake.set_down(true).await.unwrap();
        }
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        assert!(!status.success());
        kills += 1;
        if round == 4 {
            fake.set_down(false).await.unwrap();
        }
    }

    // The last run goes to the end.
    let mut child = command(&config, &log).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut done = finished_early;
    while let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("the child finishes")
    {
        done |= l == "done";
    }
    let status = child.wait().await.unwrap();
    assert!(
        status.success() && done,
        "final run: {status:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let calls = fake.calls();
    let printers: Vec<_> = fake
        .printers()
        .into_iter()
        .filter(|p| p.name == "sim")
        .collect();
    assert_eq!(
        printers.len(),
        1,
        "one printer registered across {kills} kills"
    );
    let jobs: Vec<String> = (0..PRINTS).map(|i| format!("job-{i}")).collect();
    let (lost, dup, order) = audit(&calls, printers[0].id, &jobs);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let reconciled = text.matches("had already arrived").count();
    let retried = text.matches("retrying").count();
    // Events committed but not yet confirmed when the process was killed, as each restart
    // found them.
    let pending_at_restart: usize = text
        .lines()
        .filter_map(|l| {
            l.split(" print event(s) from before the restart")
                .next()
                .filter(|_| l.contains("from before the restart"))
        })
        .filter_map(|head| {
            head.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
        })
        .sum();
    println!(
        "SIGKILL SUITE: kills={kills} prints={PRINTS} events={} lost={lost} duplicated={dup} order_violations={order} \
         pending_at_restarts={pending_at_restart} reconciled_after_interrupted_send={reconciled} retry_logs={retried} faults_served={} frames_accepted={} wall={:.1}s",
        PRINTS * 2,
        fake.faults_served(),
        calls.iter().filter(|c| c.kind == "predict").count(),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 6, "the daemon was killed mid-stream");
    assert_eq!((lost, dup, order), (0, 0, 0), "{calls:#?}");
}
