//! The optimised copy of a model, and how it is made without a memory spike.
//!
//! A model loads fastest and smallest from an optimised copy kept beside it: the graph
//! ONNX Runtime made of it (`<model>.all-<fingerprint>.onnx`) with its weights in a file of
//! their own (`<model>.all-<fingerprint>.<id>.data`), which the session memory-maps and uses
//! in place (one copy, paged from disk). Making that copy is the memory-hungry moment. In
//! one session from the `.onnx`, ONNX Runtime holds every original weight while each
//! optimisation pass writes a new copy of every weight it changes (batch-norm folding, then
//! the blocked NCHWc layout): 611-685 MiB with the full-size model, against 284 MiB for a
//! later start. On a 1 GB Raspberry Pi running Klipper, that gets the daemon OOM-killed
//! right after an install or a model update.
//!
//! Two things keep it down:
//! - **Stages** ([`make`]): each stage is a session that reads weights from a file and writes
//!   its result with the weights to a file, so that a pass never has the old weights in
//!   memory beside the new ones: (0) no optimisation, only moving the weights out of the
//!   `.onnx`; (1) the basic passes; (2) all passes, the final copy. glibc is also told to
//!   give big blocks back to the system when freed (`M_MMAP_THRESHOLD`), which it
//!   otherwise keeps for reuse. Peak 362 MiB with the full-size model, against 651 MiB
//!   for one session.
//! - **A helper process**: the daemon never makes the copy itself. The `printvigil` binary
//!   registers itself ([`use_helper`]) and the copy is made by a short-lived run of the
//!   same binary (`printvigil model prepare`, hidden), which raises its own OOM score to
//!   the maximum (if memory runs out, the kernel kills the helper, not the daemon or
//!   Klipper), is stopped by its parent when its RSS passes [`HELPER_MAX_RSS_MIB`] or it
//!   runs longer than [`HELPER_TIMEOUT`], and reports its peak RSS (`VmHWM`), which the
//!   parent logs. The daemon's own peak is that of a later start.
//!
//! If the helper fails or is stopped, the daemon loads the plain `.onnx` instead, says so,
//! and tries again at its next start. Code that runs without the binary (the library's
//! tests) makes the copy in its own process.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ort::session::builder::GraphOptimizationLevel;

use super::model::{self, SessionSettings};
use super::runtime;

/// The helper is stopped when its resident memory passes this. It needs 362 MiB with the
/// full-size model (x86_64); a helper stopped leaves the daemon to load the plain model
/// itself, which takes about 610 MiB, so a lower cap would only move the spike into the
/// daemon: this one stops only a helper gone wrong.
pub const HELPER_MAX_RSS_MIB: u64 = 600;
/// The helper is stopped when it takes longer than this (a Pi 3 takes about a minute).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(600);

static HELPER: OnceLock<PathBuf> = OnceLock::new();

/// Makes the optimised copies in a helper process: `exe model prepare ...`.
pub fn use_helper(exe: PathBuf) {
    let _ = HELPER.set(exe);
}

/// The optimised copy of `model` (its graph; the weights are in a `.data` file it names),
/// kept beside it. Its name carries a
/// fingerprint of this machine's CPU features and ONNX Runtime library, because the
/// optimised graph is specific to both: a state directory copied to another host (a farm
/// image) gets a fresh copy there instead of a wrong one.
pub fn cache_path(model: &Path, settings: &SessionSettings) -> PathBuf {
    use sha2::Digest;
    let level = if settings.memory.full_optimization { "all" } else { "ext" };
    let mut h = sha2::Sha256::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let features = cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features")).unwrap_or("");
    h.update(features.as_bytes());
    h.update(std::env::consts::ARCH.as_bytes());
    if let Some(lib) = runtime::loaded().and_then(|p| std::fs::metadata(p).ok()) {
        h.update(lib.len().to_le_bytes());
    }
    let fingerprint = &hex::encode(h.finalize())[..12];
    let mut name = model.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{level}-{fingerprint}.onnx"));
    model.with_file_name(name)
}

/// True when `cache` exists and is not older than `model`.
pub fn is_fresh(model: &Path, cache: &Path) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((mtime(cache), mtime(model)), (Some(c), Some(m)) if c >= m)
}

/// What making the copy cost, when a helper made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HelperReport {
    pub pid: u32,
    pub peak_rss_mib: f64,
    pub took: Duration,
}

/// Makes sure the optimised copy of `model` exists and is fresh: through the helper when
/// one is registered, else in this process. Returns its path, and the helper's report
/// when one ran.
pub fn ensure(model: &Path, settings: &SessionSettings) -> Result<(PathBuf, Option<HelperReport>), String> {
    let cache = cache_path(model, settings);
    if is_fresh(model, &cache) {
        return Ok((cache, None));
    }
    match HELPER.get() {
        Some(exe) => {
            let report = run_helper(exe, model, settings)?;
            if !is_fresh(model, &cache) {
                return Err(format!("the helper finished but {} is missing", cache.display()));
            }
            Ok((cache, Some(report)))
        }
        None => {
            let env = runtime::environment().ok_or("the ONNX Runtime environment is not available")?;
            make(env, model, settings)?;
            Ok((cache, None))
        }
    }
}

/// Files deleted when dropped: a failed or finished preparation's scratch.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One stage: a session of `from` at `level` that saves its optimised graph to `to`, the
/// weights to `data` (a name in the same folder).
fn stage(
    env: &ort::environment::Environment,
    settings: &SessionSettings,
    from: &Path,
    to: &Path,
    data: &str,
    level: GraphOptimizationLevel,
) -> ort::Result<()> {
    let session = model::builder(env, settings)?
        .with_optimization_level(level)?
        .with_optimized_model_path(to)?
        .with_config_entry("session.save_model_format", "ONNX")?
        .with_config_entry("session.optimized_model_external_initializers_file_name", data)?
        .commit_from_file(from)?;
    drop(session);
    Ok(())
}

/// Makes the optimised copy in this process (the helper's work), in three stages (see the
/// module's documentation), then renames it into place and removes the copies it replaces.
pub fn make(env: &ort::environment::Environment, path: &Path, settings: &SessionSettings) -> Result<PathBuf, String> {
    let cache = cache_path(path, settings);
    // Names of its own, so that two processes preparing the same copy never share a file.
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = cache.with_extension("").file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = format!("{base}.{}-{seq}", std::process::id());
    let file = |suffix: &str| cache.with_file_name(format!("{id}{suffix}"));
    let name = |suffix: &str| format!("{id}{suffix}");
    let mut scratch = Scratch(
        [".s0.onnx", ".s0.data", ".s1.onnx", ".s1.data", ".tmp", ".data"].iter().map(|s| file(s)).collect(),
    );
    let last = if settings.memory.full_optimization { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Level2 };
    let steps = [
        (path.to_path_buf(), file(".s0.onnx"), name(".s0.data"), GraphOptimizationLevel::Disable),
        (file(".s0.onnx"), file(".s1.onnx"), name(".s1.data"), GraphOptimizationLevel::Level1),
        (file(".s1.onnx"), file(".tmp"), name(".data"), last),
    ];
    for (i, (from, to, data, level)) in steps.iter().enumerate() {
        stage(env, settings, from, to, data, *level)
            .map_err(|e| format!("could not prepare {} (stage {i}): {e}", cache.display()))?;
        if i > 0 {
            // The previous stage's files are read; only this stage's are needed now.
            let _ = std::fs::remove_file(from);
            let _ = std::fs::remove_file(from.with_extension("data"));
        }
    }
    std::fs::rename(file(".tmp"), &cache).map_err(|e| format!("could not write {}: {e}", cache.display()))?;
    scratch.0.retain(|p| *p != file(".data"));
    remove_replaced(&cache, &base, &name(".data"));
    Ok(cache)
}

/// Removes the weights of the copies `cache` replaces (`<base>.<pid>-<seq>.data` files but
/// `keep`) and the ORT-format copy earlier versions made (`<base>.ort`). A process using
/// an old copy keeps its mapping of the removed file.
fn remove_replaced(cache: &Path, base: &str, keep: &str) {
    let Some(dir) = cache.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }) else { return };
    let _ = std::fs::remove_file(dir.join(format!("{base}.ort")));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let old = n
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(".data"))
            .is_some_and(|id| id.split_once('-').is_some_and(|(a, b)| [a, b].iter().all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))));
        if old && n != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The helper's side (`printvigil model prepare`): volunteers for the OOM killer, loads
/// ONNX Runtime from `onnxruntime`, makes the copy and returns the line its parent reads.
pub fn helper_main(model: &Path, onnxruntime: Option<&Path>, settings: &SessionSettings) -> Result<String, String> {
    // Any process may raise its own score; if memory runs out, this one goes first.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    // Freed weights go back to the system at once instead of being kept for reuse.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter of glibc's allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    runtime::init(onnxruntime).map_err(|e| e.to_string())?;
    let env = runtime::environment().ok_or("the ONNX Runtime environment is not available")?;
    let cache = make(env, model, settings)?;
    let peak = status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
    Ok(format!("prepared {} pid={} peak_rss_kib={peak}", cache.display(), std::process::id()))
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn run_helper(exe: &Path, model: &Path, settings: &SessionSettings) -> Result<HelperReport, String> {
    let mut cmd = Command::new(exe);
    cmd.args(["model", "prepare", "--model"]).arg(model);
    if let Some(lib) = runtime::loaded() {
        cmd.arg("--onnxruntime").arg(lib);
    }
    if !settings.memory.full_optimization {
        cmd.args(["--tune", "no-full-opt"]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let limits = Limits { max_rss_kib: HELPER_MAX_RSS_MIB * 1024, timeout: HELPER_TIMEOUT };
    let started = Instant::now();
    let out = watch(cmd, limits).map_err(|e| format!("the helper that prepares the optimised model {e}"))?;
    let line = out.stdout.lines().rev().find(|l| l.starts_with("prepared ")).unwrap_or("");
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<u64>().ok());
    let peak_kib = field("peak_rss_kib=").unwrap_or(0).max(out.peak_rss_kib);
    Ok(HelperReport { pid: out.pid, peak_rss_mib: peak_kib as f64 / 1024.0, took: started.elapsed() })
}

/// Bounds on a watched child process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rss_kib: u64,
    pub timeout: Duration,
}

/// What a watched child left.
#[derive(Debug)]
pub struct Watched {
    pub pid: u32,
    pub stdout: String,
    /// The highest `VmHWM` seen while it ran.
    pub peak_rss_kib: u64,
}

/// Runs `cmd` (stdout and stderr piped), polling its resident memory; kills it when it
/// passes `limits`. Ok only when it exits with status 0; the error says why not, with the
/// last line it wrote on stderr.
pub fn watch(mut cmd: Command, limits: Limits) -> Result<Watched, String> {
    let mut child = cmd.spawn().map_err(|e| format!("could not start: {e}"))?;
    let pid = child.id();
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let started = Instant::now();
    let mut peak = 0;
    let mut killed = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        peak = peak.max(status_kib(pid, "VmHWM:").unwrap_or(0));
        let rss = status_kib(pid, "VmRSS:").unwrap_or(0);
        if killed.is_none() {
            if rss > limits.max_rss_kib {
                killed = Some(format!("used {} MiB, more than the {} MiB allowed", rss / 1024, limits.max_rss_kib / 1024));
            } else if started.elapsed() > limits.timeout {
                killed = Some(format!("took more than {} s", limits.timeout.as_secs()));
            }
            if killed.is_some() {
                let _ = child.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    let said = if last.is_empty() { String::new() } else { format!(" (it said: {last})") };
    match (status, killed) {
        (_, Some(why)) => Err(format!("was stopped: it {why}")),
        (Err(e), None) => Err(format!("could not be waited for: {e}")),
        (Ok(s), None) if s.success() => Ok(Watched { pid, stdout, peak_rss_kib: peak }),
        (Ok(s), None) => {
            use std::os::unix::process::ExitStatusExt;
            match s.signal() {
                Some(9) => Err(format!("was killed (SIGKILL: out of memory?){said}")),
                Some(sig) => Err(format!("was killed by signal {sig}{said}")),
                None => Err(format!("failed ({s}){said}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_over_its_memory_cap_is_stopped_and_named() {
        // perl holds 200 MiB for 20 s; the cap is 100 MiB.
        let mut cmd = Command::new("perl");
        cmd.args(["-e", "my $x = 'a' x (200 << 20); sleep 20;"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        let err = watch(cmd, Limits { max_rss_kib: 100 << 10, timeout: Duration::from_secs(60) }).unwrap_err();
        assert!(err.contains("more than the 100 MiB allowed"), "{err}");
    }

    #[test]
    fn a_failing_child_is_reported_with_its_last_words() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first >&2; echo 'no space left' >&2; exit 3"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        let err = watch(cmd, Limits { max_rss_kib: 1 << 30, timeout: Duration::from_secs(60) }).unwrap_err();
        assert!(err.contains("no space left") && err.contains('3'), "{err}");
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo prepared x pid=1 peak_rss_kib=7"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        let w = watch(ok, Limits { max_rss_kib: 1 << 30, timeout: Duration::from_secs(60) }).unwrap();
        assert!(w.stdout.contains("peak_rss_kib=7"));
    }
}
