//! The Raspberry Pi builds, run under qemu-user on this machine:
//! - the aarch64 build scores the bundled frames as the x86_64 build does (same detections,
//!   |Δconfidence| <= 1e-5), with the aarch64 ONNX Runtime from the wheel;
//! - the binaries (and that ONNX Runtime) need no newer glibc than Raspberry Pi OS Bookworm
//!   has (2.36), read from their symbol versions;
//! - the armv7 build (32-bit Pi OS, no ONNX Runtime exists for it) runs everything but
//!   inference and says so: in `check`, and at the start of `run`, which still follows a
//!   print.
//!
//! ONNX Runtime reads /proc/cpuinfo to pick its kernels; this machine's would describe an
//! x86 CPU, so the aarch64 run sees a Raspberry Pi 4's, bind-mounted in a private mount
//! namespace (`unshare -m`, needs root).
//!
//! `scripts/test-cross.sh` builds what these need and sets `PVTEST_AARCH64_BIN`,
//! `PVTEST_AARCH64_ORT`, `PVTEST_ARMV7_BIN` (and `PVTEST_HOST_BIN`, the x86_64 release
//! build; else this test's own build is the reference). Without them each test says why it
//! is skipped and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Raspberry Pi OS Bookworm's glibc.
const BOOKWORM_GLIBC: (u32, u32) = (2, 36);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn env_file(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file())
}

fn need(vars: &[&str], test: &str) -> Option<Vec<PathBuf>> {
    let found: Vec<Option<PathBuf>> = vars.iter().map(|v| env_file(v)).collect();
    if found.iter().all(Option::is_some) {
        return Some(found.into_iter().flatten().collect());
    }
    let missing: Vec<&str> = vars.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(v, _)| *v).collect();
    println!("SKIPPED {test}: {} not set to a file; scripts/test-cross.sh builds them and runs this test", missing.join(", "));
    None
}

fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found (Debian qemu-user; scripts/setup-system.sh --package)"))
}

fn frames() -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(repo("models/frames"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    f.sort();
    assert!(f.len() >= 8, "the bundled frames are missing");
    f
}

/// `predict --json` lines, parsed.
fn predict_lines(out: std::process::Output, what: &str) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what} failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}"))).collect()
}

/// A copy of the demo model in its own folder (the optimised copy is written beside it,
/// per CPU and runtime build).
fn demo_model(dir: &Path) -> PathBuf {
    let m = dir.join("demo.onnx");
    std::fs::copy(repo("models/demo.onnx"), &m).unwrap();
    m
}

#[test]
fn aarch64_scores_the_bundled_frames_as_x86_64_does() {
    let Some(v) = need(&["PVTEST_AARCH64_BIN", "PVTEST_AARCH64_ORT"], "aarch64 parity") else { return };
    let (arm_bin, arm_ort) = (&v[0], &v[1]);
    let host_bin = env_file("PVTEST_HOST_BIN").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_printvigil")));
    let host_ort = std::env::var_os("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (x86_64 ONNX Runtime): run through scripts/test-cross.sh");
    let frames = frames();
    let dir = tempfile::tempdir().unwrap();

    let host_dir = dir.path().join("x86_64");
    std::fs::create_dir(&host_dir).unwrap();
    let t = Instant::now();
    let host = predict_lines(
        Command::new(&host_bin)
            .args(["predict", "--json", "--threads", "1", "--model"])
            .arg(demo_model(&host_dir))
            .args(&frames)
            .env("ORT_DYLIB_PATH", &host_ort)
            .env_remove("PRINTVIGIL_CONFIG")
            .output()
            .unwrap(),
        "x86_64 predict",
    );
    println!("FIGURE x86_64 predict over {} frames: {:.1} s", frames.len(), t.elapsed().as_secs_f64());

    let arm_dir = dir.path().join("aarch64");
    std::fs::create_dir(&arm_dir).unwrap();
    let qemu = tool("qemu-aarch64");
    let script = r#"set -e
mount --bind "$1" /proc/cpuinfo
shift
exec "$@""#;
    let t = Instant::now();
    let arm = predict_lines(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
            .arg(repo("tests/peers/cross/cpuinfo-pi4.txt"))
            .arg(&qemu)
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(arm_bin)
            .args(["predict", "--json", "--threads", "1", "--model"])
            .arg(demo_model(&arm_dir))
            .args(&frames)
            .env("ORT_DYLIB_PATH", arm_ort)
            .env_remove("PRINTVIGIL_CONFIG")
            .output()
            .unwrap(),
        "aarch64 predict under qemu-aarch64",
    );
    println!("FIGURE aarch64 predict under qemu over {} frames: {:.1} s", frames.len(), t.elapsed().as_secs_f64());

    assert_eq!(host.len(), frames.len());
    assert_eq!(arm.len(), frames.len());
    let (mut max_conf, mut max_box, mut detections) = (0.0f64, 0.0f64, 0);
    for (h, a) in host.iter().zip(&arm) {
        let frame = h["frame"].as_str().unwrap();
        assert_eq!((&h["width"], &h["height"]), (&a["width"], &a["height"]), "{frame}");
        let (hd, ad) = (h["detections"].as_array().unwrap(), a["detections"].as_array().unwrap());
        assert_eq!(hd.len(), ad.len(), "{frame}: {} detections on x86_64, {} on aarch64\n{h}\n{a}", hd.len(), ad.len());
        for (x, y) in hd.iter().zip(ad) {
            let dc = (x[1].as_f64().unwrap() - y[1].as_f64().unwrap()).abs();
            max_conf = max_conf.max(dc);
            for i in 0..4 {
                max_box = max_box.max((x[2][i].as_f64().unwrap() - y[2][i].as_f64().unwrap()).abs());
            }
            assert!(dc <= 1e-5, "{frame}: confidence {} on x86_64, {} on aarch64", x[1], y[1]);
        }
        detections += hd.len();
        assert_eq!(h["warn"], a["warn"], "{frame}");
        assert_eq!(h["pause"], a["pause"], "{frame}");
    }
    assert!(detections > 0, "the bundled failing frames must give detections");
    println!("FIGURE aarch64 vs x86_64: {} frames, {detections} detections, max |Δconf| = {max_conf:.3e}, max |Δbox| = {max_box:.3e} px", frames.len());
    assert!(max_box < 0.01, "boxes moved by {max_box} px");
}

/// The newest `GLIBC_x.y` version an ELF file asks for.
fn newest_glibc(path: &Path) -> (u32, u32) {
    let out = Command::new("readelf").args(["-V", "--wide"]).arg(path).output().unwrap();
    assert!(out.status.success(), "readelf {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("Name: GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let mut it = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or_else(|| panic!("{} asks for no GLIBC_ version", path.display()))
}

#[test]
fn the_pi_binaries_need_no_newer_glibc_than_bookworm() {
    let Some(v) = need(&["PVTEST_AARCH64_BIN", "PVTEST_AARCH64_ORT", "PVTEST_ARMV7_BIN"], "glibc versions") else { return };
    for path in &v {
        let (major, minor) = newest_glibc(path);
        println!("FIGURE {}: needs glibc {major}.{minor}", path.display());
        assert!((major, minor) <= BOOKWORM_GLIBC, "{} needs glibc {major}.{minor}, Bookworm has 2.36", path.display());
    }
}

/// Runs the armv7 binary under qemu-arm.
fn armv7(bin: &Path) -> Command {
    let mut c = Command::new(tool("qemu-arm"));
    c.args(["-L", "/usr/arm-linux-gnueabihf"]).arg(bin).env_remove("PRINTVIGIL_CONFIG").env_remove("ORT_DYLIB_PATH");
    c
}

#[test]
fn armv7_runs_everything_but_inference_and_says_so() {
    let Some(v) = need(&["PVTEST_ARMV7_BIN"], "armv7 limit") else { return };
    let bin = &v[0];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[watch]\ncadence_secs = 1.0\nallow_fast_cadence = true\n[[printers]]\nname = \"sim\"\nkind = \"simulated\"\nstart_after_secs = 0.5\nprint_secs = 60\ncamera = {{ kind = \"files\", url = \"{}\" }}\n",
            dir.path().join("state").display(),
            repo("models/frames").display()
        ),
    )
    .unwrap();

    let out = armv7(bin).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("printvigil {}", env!("CARGO_PKG_VERSION")));

    // check: every line but the detector's passes; the detector's says why.
    let out = armv7(bin).arg("--config").arg(&config).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(text.contains("FAIL  detector: none: this is a 32-bit ARM (armv7) build"), "{text}");
    assert!(text.contains("ok    printer sim"), "{text}");
    assert!(text.contains("ok    camera of sim"), "{text}");
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "only the detector may fail: {fails:?}");

    // predict: a clear error, no crash.
    let out = armv7(bin).args(["predict", "--model"]).arg(repo("models/demo.onnx")).arg(repo("models/frames/00-healthy.jpg")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("32-bit ARM (armv7)"), "{err}");

    // run: says so at the start, then follows the print.
    let log = dir.path().join("run.log");
    let mut child = armv7(bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("PRINTVIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("print started") {
            break text;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run did not follow the simulated print:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    println!("{text}");
    assert!(text.contains("32-bit ARM (armv7) build"), "run must say it has no inference:\n{text}");
    assert!(status.success(), "run ended with {status}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}
