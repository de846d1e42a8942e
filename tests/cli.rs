//! The `printvigil` binary: predict over the bundled frames, and the messages a user sees
//! for a missing runtime, a bad config or a bad frame.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn printvigil(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_printvigil"));
    // Keep the machine's own config out of the way; run in a scratch state dir.
    c.env("PRINTVIGIL_STATE_DIR", dir).env_remove("PRINTVIGIL_CONFIG").current_dir(dir);
    // A daemon's status page on a free port, never the default one.
    c.env("PRINTVIGIL_HTTP__BIND", "127.0.0.1:0");
    c
}

fn ort_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        repo(".runtime/onnxruntime").join(std::env::consts::ARCH).join("libonnxruntime.so")
    })
}

fn demo_frames() -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo("models/frames")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn predict_json_over_the_demo_frames_and_annotates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("models/demo.onnx"), dir.path().join("demo.onnx")).unwrap();
    let out = printvigil(dir.path())
        .env("ORT_DYLIB_PATH", ort_path())
        .args(["predict", "--model", "demo.onnx", "--json", "--annotate", "annotated"])
        .args(demo_frames())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), demo_frames().len());
    for (i, l) in lines.iter().enumerate() {
        let frame = l["frame"].as_str().unwrap();
        let p = l["p"].as_f64().unwrap();
        assert_eq!(l["state"]["current_frame_num"].as_u64(), Some(i as u64 + 1));
        if frame.contains("healthy") {
            assert_eq!(p, 0.0, "{frame}");
        } else {
            assert!(p > 0.5, "{frame}: {p}");
            let dets = l["detections"].as_array().unwrap();
            assert_eq!(dets[0][0], "failure");
            let sum: f64 = dets.iter().map(|d| d[1].as_f64().unwrap()).sum();
            assert!((sum - p).abs() < 1e-9);
        }
        let annotated = PathBuf::from(l["annotated"].as_str().unwrap());
        let img = printvigil::detector::preprocess::decode_jpeg(&std::fs::read(dir.path().join(annotated)).unwrap()).unwrap();
        assert_eq!((img.width, img.height), (480, 360));
    }
}

#[test]
fn a_missing_runtime_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("models/tiny.onnx"), dir.path().join("tiny.onnx")).unwrap();
    let out = printvigil(dir.path())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args(["predict", "--model", "tiny.onnx"])
        .arg(&demo_frames()[0])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/libonnxruntime.so: no such file"), "{stderr}");
    assert!(stderr.contains("fetch-onnxruntime.sh") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_config_names_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[detector]\nintra_thread = 2\n").unwrap();
    let out = printvigil(dir.path()).arg("--config").arg(&cfg).arg("config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("detector.intra_thread") && stderr.contains("intra_threads"), "{stderr}");
}

#[test]
fn a_bad_frame_is_reported_and_the_others_still_scored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("models/tiny.onnx"), dir.path().join("tiny.onnx")).unwrap();
    std::fs::write(dir.path().join("bad.jpg"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let frames = demo_frames();
    let out = printvigil(dir.path())
        .env("ORT_DYLIB_PATH", ort_path())
        .args(["predict", "--model", "tiny.onnx", "--json"])
        .arg(&frames[0])
        .arg("bad.jpg")
        .arg(&frames[1])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("bad.jpg: the frame is not a JPEG (it looks like a PNG image)"), "{stderr}");
    assert!(stderr.contains("1 of 3 frames could not be scored"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

/// `dev:ino` of a file, as systemd writes it into `JOURNAL_STREAM`.
fn journal_stream_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

#[test]
fn a_journal_stream_naming_another_file_logs_to_stderr_as_plain_text() {
    // A child of a service inherits JOURNAL_STREAM while its stderr goes elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "").unwrap();
    let out = printvigil(dir.path())
        .env("JOURNAL_STREAM", journal_stream_of(&elsewhere))
        .env("PRINTVIGIL_LOG", "debug")
        .arg("config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(config["detector"].is_object());
    assert!(stderr.contains("log destination: stderr"), "{stderr}");
    assert!(!stderr.contains("journald"), "{stderr}");
    // stderr is a pipe, not a terminal: no colour codes.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn a_journal_stream_naming_stderr_uses_journald_or_says_why_not() {
    // stderr is a file and JOURNAL_STREAM names it, as under systemd.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let status = printvigil(dir.path())
        .env("JOURNAL_STREAM", journal_stream_of(&log))
        .env("PRINTVIGIL_LOG", "debug")
        .arg("config")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .status()
        .unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("log destination"), "{stderr}");
    if Path::new("/run/systemd/journal/socket").exists() {
        println!("journald runs here: the log line went to the journal (journalctl -t printvigil)");
        return;
    }
    let warning = "stderr is the journal but journald's socket cannot be used";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(stderr.contains("logging to stderr instead"), "{stderr}");
}

#[test]
fn an_invalid_log_filter_falls_back_to_the_default_and_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let out = printvigil(dir.path()).env("PRINTVIGIL_LOG", "printvigil=loud").arg("config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("PRINTVIGIL_LOG=\"printvigil=loud\" is not a valid log filter"), "{stderr}");
    assert!(stderr.contains("using \"info,ort=warn\""), "{stderr}");
}

#[test]
fn check_reports_the_detector_printers_and_cameras_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("check.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = {:?}\n[[printers]]\nname = \"sim\"\nkind = \"simulated\"\ncamera = {{ kind = \"files\", url = {:?} }}\n\
             [[printers]]\nname = \"voron\"\nkind = \"moonraker\"\nurl = \"http://127.0.0.1:{closed}\"\n",
            repo("models/demo.onnx"),
            repo("models/frames"),
        ),
    )
    .unwrap();
    let out = printvigil(dir.path()).env("ORT_DYLIB_PATH", ort_path()).arg("--config").arg(&config).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a printer is unreachable: check fails\n{stdout}");
    for want in [
        "ok    state directory",
        "ok    detector",
        "ok    detector capacity: 2 printer(s) x",
        "of the detector at a 10 s cadence",
        "ok    printer sim: Idle",
        "ok    camera of sim",
        "a 480x360 frame",
        "FAIL  printer voron: not reachable",
        "fix: check the printer's `url`",
        "server mirror: not configured",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("camera of voron"), "no camera check for a printer that cannot be reached:\n{stdout}");
}

#[test]
fn run_watches_several_printers_each_in_its_own_loop() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("two.toml");
    let printer = |name: &str, frames: &str| {
        format!(
            "[[printers]]\nname = \"{name}\"\nkind = \"simulated\"\nfile = \"{name}.gcode\"\nstart_after_secs = 0.2\nprint_secs = 2\n\
             camera = {{ kind = \"files\", url = {:?} }}\n",
            repo("models/frames").join(frames)
        )
    };
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = {:?}\nintra_threads = 1\n[watch]\ncadence_secs = 0.1\nallow_fast_cadence = true\n{}{}",
            repo("models/demo.onnx"),
            printer("voron", "01-healthy.jpg"),
            printer("ender", "02-healthy.jpg"),
        ),
    )
    .unwrap();
    let child = printvigil(dir.path())
        .env("ORT_DYLIB_PATH", ort_path())
        .env("PRINTVIGIL_LOG", "info")
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(5));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SIGTERM is a clean stop:\n{log}");
    for name in ["voron", "ender"] {
        let mine: Vec<&str> = log.lines().filter(|l| l.contains(&format!("printer=\"{name}\""))).collect();
        assert!(mine.iter().any(|l| l.contains(&format!("print started: {name}.gcode"))), "{name}:\n{log}");
        assert!(mine.iter().any(|l| l.contains("print finished")), "{name}:\n{log}");
    }
    assert!(log.contains("watching 2 printer(s)") && log.contains("stopped"), "{log}");
    let state = dir.path().join("watch-state.sqlite3");
    assert!(state.exists(), "state kept in the state directory");
}

#[test]
fn a_directory_given_as_config_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = printvigil(dir.path()).arg("--config").arg(dir.path()).arg("config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a directory is not a config file\n{stderr}");
    assert!(stderr.contains(&format!("{} is a directory", dir.path().display())), "{stderr}");
}

#[test]
fn an_unreadable_config_names_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("secret.toml");
    std::fs::write(&cfg, "[detector]\nintra_threads = 2\n").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o000)).unwrap();
    // root reads any file: run as nobody then (setpriv, util-linux).
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(env!("CARGO_BIN_EXE_printvigil"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_printvigil"))
    };
    let out = cmd
        .env("PRINTVIGIL_STATE_DIR", dir.path())
        .env_remove("PRINTVIGIL_CONFIG")
        .current_dir(dir.path())
        .arg("--config")
        .arg(&cfg)
        .arg("config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read config file {}", cfg.display())) && stderr.contains("ermission denied"),
        "{stderr}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_config_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // `printvigil config | true`, without the race: the reading end is closed before the start.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = printvigil(dir.path()).arg("config").stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);
}

#[test]
fn check_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("check.toml");
    std::fs::write(
        &config,
        format!(
            "[[printers]]\nname = \"sim\"\nkind = \"simulated\"\ncamera = {{ kind = \"files\", url = {:?} }}\n",
            repo("models/frames")
        ),
    )
    .unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let out = printvigil(dir.path())
        .env("PRINTVIGIL_STATE_DIR", &state)
        .env("ORT_DYLIB_PATH", ort_path())
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("ok    state directory: {} does not exist yet", state.display())),
        "a missing state directory is a line:\n{stdout}"
    );
    assert!(!state.exists(), "check created {}:\n{stdout}", state.display());
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "{stdout}");
}

#[test]
fn a_camera_password_is_never_printed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://bob:hunter2@127.0.0.1:{closed}/webcam/?action=snapshot");
    let config = dir.path().join("cam.toml");
    let body = |extra: &str| {
        format!(
            "[detector]\nmodel = {:?}\nintra_threads = 1\n[watch]\ncadence_secs = 0.2\nallow_fast_cadence = true\n\
             [[printers]]\nname = \"voron\"\nkind = \"simulated\"\nstart_after_secs = 0\nprint_secs = 60\n\
             camera = {{ kind = \"snapshot\", url = \"{url}\"{extra} }}\n",
            repo("models/demo.onnx")
        )
    };
    std::fs::write(&config, body("")).unwrap();

    let out = printvigil(dir.path()).arg("--config").arg(&config).arg("config").output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!shown.contains("hunter2") && shown.contains(&format!("bob:***@127.0.0.1:{closed}")), "{shown}");

    // A bad camera setting: the error shows the URL, without its password.
    std::fs::write(&config, body(", rotation = 45")).unwrap();
    let out = printvigil(dir.path()).arg("--config").arg(&config).arg("config").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rotation") && !err.contains("hunter2"), "{err}");

    // The camera cannot be reached: the WARN line (default log level) names it, redacted.
    std::fs::write(&config, body("")).unwrap();
    let mut child = printvigil(dir.path())
        .env("ORT_DYLIB_PATH", ort_path())
        .env_remove("PRINTVIGIL_LOG")
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
        let warn = line.contains("WARN") && line.contains("no frame");
        log.push(line);
        if warn {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    log.extend(rx.iter());
    let log = log.join("\n");
    let warn = log.lines().find(|l| l.contains("WARN") && l.contains("no frame")).unwrap_or_else(|| panic!("no WARN line:\n{log}"));
    assert!(warn.contains(&format!("bob:***@127.0.0.1:{closed}")), "{warn}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[test]
fn config_shows_no_password_of_any_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("urls.toml");
    std::fs::write(
        &config,
        "[server]\nurl = \"https://mirror:s3rverpass@obico.example/\"\ntoken = \"tok\"\n\
         [[printers]]\nname = \"voron\"\nkind = \"moonraker\"\nurl = \"http://klipper:pr1nterpass@192.168.1.20:7125\"\n",
    )
    .unwrap();
    let out = printvigil(dir.path()).arg("--config").arg(&config).arg("config").output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!shown.contains("s3rverpass") && !shown.contains("pr1nterpass"), "{shown}");
    assert!(shown.contains("https://mirror:***@obico.example/") && shown.contains("http://klipper:***@192.168.1.20:7125"), "{shown}");
}

/// `bench --printers 2`, short and with the demo model: the farm runs through the real
/// watches and scheduler and prints its figures (the bench itself is run by hand).
#[test]
fn bench_printers_runs_a_small_farm_and_prints_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = printvigil(dir.path())
        .env("ORT_DYLIB_PATH", ort_path())
        .env("TMPDIR", dir.path())
        .args(["bench", "--model"])
        .arg(repo("models/demo.onnx"))
        .args(["--printers", "2", "--cadence", "0.1", "--duration", "3", "--per-printer"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("BENCH farm ")).unwrap_or_else(|| panic!("{stdout}"));
    let figure = |k: &str| -> f64 {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k} in {line}"))
    };
    assert_eq!(figure("printers"), 2.0);
    assert!(figure("frames_per_s") > 0.0, "{line}");
    assert!((0.5..=1.0).contains(&figure("jain")), "{line}");
    assert!(figure("rss_peak_mib") > 0.0, "{line}");
    assert!(stdout.contains("printer-00") && stdout.contains("(warned)"), "{stdout}");
    assert!(figure("warn_next_p50_s") > 0.0, "the warned printer warned and was scored again: {line}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with("printvigil-farm-bench")), "the bench cleans up: {left:?}");
}
