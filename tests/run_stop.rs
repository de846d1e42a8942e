//! `printvigil run` stops within 10 s of SIGTERM whatever its tasks are doing: here a
//! camera read stuck in the kernel on a blocking thread (a `files` camera whose file is a
//! FIFO no one writes: `open` never returns, as on a hung network mount), and a snapshot
//! camera that accepts the connection and never answers, with a long camera timeout.
//! The simulated printer prints from the start; no peers besides the test's camera.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::snapcam::{Mode, SnapCam};

/// The test's own deadline for the exit, far over the 10 s the daemon must keep.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

fn config(dir: &Path, camera: &str) -> PathBuf {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx");
    let text = format!(
        "state_dir = {:?}\n[detector]\nmodel = {:?}\nintra_threads = 1\n\
         [watch]\ncadence_secs = 0.25\nallow_fast_cadence = true\n\
         [[printers]]\nname = \"sim\"\nkind = \"simulated\"\nstart_after_secs = 0\nprint_secs = 3600\n\
         camera = {camera}\n",
        dir.join("state").display().to_string(),
        model.display().to_string(),
    );
    let path = dir.join("printvigil.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends SIGTERM and returns the time to the exit, which must be a clean one.
async fn stop_time(what: &str, d: &mut Daemon) -> Duration {
    d.assert_alive();
    let t0 = Instant::now();
    let status = d.terminate(EXIT_DEADLINE).await;
    let took = t0.elapsed();
    println!("FIGURE SIGTERM to exit, {what}: {:.2} s", took.as_secs_f64());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), None, "{what}: ended by a signal\n{}", d.tail(30));
    assert!(status.success(), "{what}: {status}\n{}", d.tail(30));
    assert!(d.log_text().contains("stopped"), "{what}: no graceful stop in the log\n{}", d.tail(30));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_run_whatever_a_camera_or_a_blocking_task_is_doing() {
    let dir = tempfile::tempdir().unwrap();

    // A file read that never returns, on a blocking thread.
    let stuck = dir.path().join("stuck");
    std::fs::create_dir(&stuck).unwrap();
    let fifo = stuck.join("camera.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let camera = format!("{{ kind = \"files\", url = {:?}, timeout_secs = 1 }}", fifo.display().to_string());
    let mut d = Daemon::spawn(&config(&stuck, &camera), &stuck.join("daemon.log"), &[]);
    d.wait_line("no frame from", Duration::from_secs(60)).await;
    stop_time("a camera read stuck on a blocking thread", &mut d).await;

    // A camera that takes the connection and never answers, with a long timeout: the
    // watch is inside a grab when the signal comes.
    let hang = dir.path().join("hang");
    std::fs::create_dir(&hang).unwrap();
    let cam = SnapCam::start(Mode::Hang).await;
    let camera = format!("{{ kind = \"snapshot\", url = {:?}, timeout_secs = 600 }}", cam.url());
    let mut d = Daemon::spawn(&config(&hang, &camera), &hang.join("daemon.log"), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cam.requests() == 0 {
        assert!(Instant::now() < deadline, "the camera was never asked for a frame\n{}", d.tail(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_time("a camera that never answers (600 s timeout)", &mut d).await;
}
