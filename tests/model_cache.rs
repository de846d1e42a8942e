//! The optimised model copy is made by a helper process, never by the loading process
//! itself, and a helper that fails leaves the process running on the plain model; and
//! `printvigil bench --compare`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn ort_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        repo(".runtime/onnxruntime").join(std::env::consts::ARCH).join("libonnxruntime.so")
    })
}

fn printvigil(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_printvigil"));
    c.env("PRINTVIGIL_STATE_DIR", dir)
        .env_remove("PRINTVIGIL_CONFIG")
        .env("ORT_DYLIB_PATH", ort_path())
        .env("PRINTVIGIL_LOG", "info")
        .current_dir(dir);
    c
}

const FRAME: &str = "models/frames/01-healthy.jpg";

/// `printvigil predict` of one frame with `model`; its pid and output.
fn predict(dir: &Path, model: &str) -> (u32, Output) {
    let child = printvigil(dir)
        .args(["predict", "--model", model])
        .arg(repo(FRAME))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

fn caches(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".onnx.all-"))
        .collect()
}

/// Only the copy (`.onnx`) and its weights (`.data`, when it has weights over 1 kB) are
/// left: no stage or temporary file.
fn no_scratch(files: &[PathBuf]) {
    for f in files {
        let n = f.file_name().unwrap().to_string_lossy();
        assert!(!n.contains(".s0.") && !n.contains(".s1.") && !n.ends_with(".tmp"), "scratch left: {files:?}");
        assert!(n.ends_with(".onnx") || n.ends_with(".data"), "{files:?}");
    }
}

/// The pid the log names as the helper's, if any.
fn helper_pid(log: &str) -> Option<u32> {
    let rest = log.split("in a helper process (pid ").nth(1)?;
    rest.split(')').next()?.parse().ok()
}

#[test]
fn the_first_start_makes_the_optimised_copy_in_a_helper_and_later_starts_reuse_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("models/tiny.onnx"), dir.path().join("tiny.onnx")).unwrap();
    assert!(caches(dir.path()).is_empty());

    let (pid, out) = predict(dir.path(), "tiny.onnx");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("01-healthy.jpg: "), "the frame is scored");
    let helper = helper_pid(&log).unwrap_or_else(|| panic!("the copy is made by a helper:\n{log}"));
    assert_ne!(helper, pid, "the helper is another process");
    assert!(log.contains("its peak RSS"), "the helper's peak is reported:\n{log}");
    assert!(!log.contains("directly instead"), "the optimised copy is used:\n{log}");
    let mut made = caches(dir.path());
    made.sort();
    no_scratch(&made);
    assert_eq!(made.iter().filter(|p| p.extension().unwrap() == "onnx").count(), 1, "the copy beside the model: {made:?}");
    println!("{}", log.lines().find(|l| l.contains("helper process")).unwrap());

    let (_, out) = predict(dir.path(), "tiny.onnx");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(helper_pid(&log).is_none() && !log.contains("directly instead"), "a later start reuses the copy:\n{log}");
    let mut again = caches(dir.path());
    again.sort();
    assert_eq!(again, made);
}

#[test]
fn a_failing_helper_leaves_the_process_on_the_plain_model_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    std::fs::copy(repo("models/tiny.onnx"), &model).unwrap();
    let (_, out) = predict(dir.path(), "tiny.onnx");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = String::from_utf8_lossy(&out.stdout).into_owned();
    // The copy's name taken by a directory: the helper cannot put its copy there (even as
    // root), and the model is made newer than it so that a new copy is due.
    let cache = caches(dir.path()).into_iter().find(|p| p.extension().unwrap() == "onnx").unwrap();
    std::fs::remove_file(&cache).unwrap();
    std::fs::create_dir(&cache).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options().write(true).open(&model).unwrap().set_modified(later).unwrap();

    let (_, out) = predict(dir.path(), "tiny.onnx");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("the helper that prepares the optimised model failed"), "{log}");
    assert!(log.contains("could not write") && log.contains("directly instead"), "says why and what it does:\n{log}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "the plain model scores the frame the same");
    assert!(cache.is_dir(), "{cache:?}");
    no_scratch(&caches(dir.path()));
}

#[test]
fn bench_compare_prints_both_medians_and_their_ratio() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("models/tiny.onnx"), dir.path().join("tiny.onnx")).unwrap();
    let out = printvigil(dir.path())
        .args(["bench", "--model", "tiny.onnx", "--threads", "1", "--runs", "2", "--compare"])
        .arg(repo(FRAME))
        .arg(repo("models/frames/07-failing.jpg"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    let number = |prefix: &str, field: usize| -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line:\n{text}"));
        line[prefix.len()..].split_whitespace().nth(field).unwrap().parse().unwrap()
    };
    assert!(text.contains("compare: session.run, frames alternating between the two sessions (4 each)"), "{text}");
    let ours = number("printvigil  ", 0);
    let plain = number("plain ONNX Runtime (defaults) ", 0);
    let ratio = number("printvigil / plain (ratio of medians):", 0);
    assert!(ours > 0.0 && plain > 0.0, "{text}");
    assert!((ratio - ours / plain).abs() < 0.01 * ratio + 1e-3, "ratio {ratio} of {ours} / {plain}");
    assert!(number("per-frame printvigil / plain (median):", 0) > 0.0);
}
