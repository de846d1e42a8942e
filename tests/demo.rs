//! `printvigil demo`, the quick start's main job, run as a user runs it.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn ort() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".runtime/onnxruntime")
            .join(std::env::consts::ARCH)
            .join("libonnxruntime.so")
    })
}

#[test]
fn the_demo_tells_the_whole_story_and_saves_the_frames() {
    let dir = tempfile::tempdir().unwrap();
    let ort = ort();
    let out = Command::new(env!("CARGO_BIN_EXE_printvigil"))
        .args(["demo", "--no-mqtt", "--cadence", "0.03", "--dir"])
        .arg(dir.path().join("demo"))
        .env("ORT_DYLIB_PATH", ort)
        .env_remove("PRINTVIGIL_CONFIG")
        .env_remove("ORT_DISABLE_TELEMETRY")
        .env("HOME", dir.path())
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // ONNX Runtime 1.31 keeps a telemetry queue (and a device id) under ~/.cache/Microsoft
    // unless told not to: printvigil tells it.
    assert!(!dir.path().join(".cache").exists(), "ONNX Runtime telemetry state was written to HOME");
    for want in ["started on the simulated printer", "(warm-up)", "WARNING", "PAUSE requested", "finished: Cancelled", "Summary"] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(stdout.contains("1 start_print") && stdout.contains("1 finish_print"), "{stdout}");
    assert!(stderr.contains("FAILURE DETECTED"), "the log says it: {stderr}");
    let frames = dir.path().join("demo/state/frames/demo");
    let saved: Vec<_> = std::fs::read_dir(&frames).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(saved.iter().any(|p| p.to_string_lossy().ends_with("-pause.jpg")), "{saved:?}");
    assert!(stdout.contains(&frames.display().to_string()), "the summary says where the frames are");
}

#[test]
fn the_demo_never_empties_a_folder_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("notes.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_printvigil"))
        .args(["demo", "--no-mqtt", "--dir"])
        .arg(dir.path())
        .env_remove("PRINTVIGIL_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not empty") && stderr.contains("--dir"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_publishes_to_a_broker_given_with_mqtt() {
    use support::mosquitto::{Mosquitto, Options};
    let broker = Mosquitto::start(Options::anonymous());
    let sub = support::mqtt_client::Client::connect(&broker, None, &["#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_printvigil"))
        .args(["demo", "--cadence", "0.03", "--mqtt", &broker.url(), "--dir"])
        .arg(dir.path().join("demo"))
        .env("ORT_DYLIB_PATH", ort())
        .env_remove("PRINTVIGIL_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("MQTT      publishing to"), "{stdout}");
    let prefix = sub
        .wait("the demo's availability", Duration::from_secs(5), |g| g.topic.ends_with("-demo/status"))
        .await
        .topic
        .trim_end_matches("/status")
        .to_string();
    let configs: Vec<_> = sub.all().into_iter().filter(|g| g.topic.starts_with("homeassistant/") && !g.payload.is_empty()).collect();
    assert_eq!(configs.len(), 11, "the demo printer's 10 entities and the host's outbox");
    let events: Vec<String> = sub.on(&format!("{prefix}/demo/event")).iter().map(|g| g.json()["event"].as_str().unwrap_or("").to_string()).collect();
    for want in ["print_started", "warning", "pause_requested", "pause_confirmed", "print_finished"] {
        assert!(events.iter().any(|e| e == want), "no {want}: {events:?}");
    }
    let frame = sub.last(&format!("{prefix}/demo/frame")).expect("the decision frame");
    assert_eq!(&frame.payload[..2], &[0xFF, 0xD8]);
    assert_eq!(sub.last(&format!("{prefix}/status")).unwrap().text(), "offline", "the demo says goodbye at its end");
}
