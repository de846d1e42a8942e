//! The real `printvigil` binary as a child process for the daemon tests: its stderr goes
//! to a log file the test reads (ANSI colours stripped), and it is killed (SIGKILL) when
//! dropped, also when the test panics or the test binary dies.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The log filter of the daemon tests: info, plus the watch loop's per-frame debug lines
/// (`frame N: ...`), which the tests count.
pub const LOG_FILTER: &str = "info,ort=warn,printvigil::watch::watcher=debug";

pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub spawned: Instant,
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Frame numbers of the watch loop's `frame N: ...` debug lines, in order.
pub fn frame_numbers(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let i = l.find(" frame ")?;
            let rest = &l[i + 7..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() || !rest[digits.len()..].starts_with(": ") {
                return None;
            }
            digits.parse().ok()
        })
        .collect()
}

impl Daemon {
    /// `printvigil --config CONFIG run`, stderr appended to `log`; `env` is added to the
    /// test's environment less its `PRINTVIGIL_*` and `NOTIFY_SOCKET`/`WATCHDOG_*` variables.
    pub fn spawn(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_args(config, log, env, &["run"])
    }

    pub fn spawn_args(config: &Path, log: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_printvigil"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PRINTVIGIL_") || k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") {
                cmd.env_remove(k);
            }
        }
        // PVTEST_DAEMON_LOG adds directives (e.g. `printvigil::printer=debug`) for a closer look.
        let filter = match std::env::var("PVTEST_DAEMON_LOG") {
            Ok(extra) if !extra.is_empty() => format!("{LOG_FILTER},{extra}"),
            _ => LOG_FILTER.to_string(),
        };
        cmd.env("PRINTVIGIL_LOG", filter);
        // The status page on a port of its own (the log names it), never the default one.
        cmd.env("PRINTVIGIL_HTTP__BIND", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        cmd.arg("--config").arg(config).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let spawned = Instant::now();
        let child = cmd.spawn().expect("cannot start printvigil");
        Daemon { child, log: log.to_path_buf(), spawned }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, colours stripped.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!("--- printvigil log ({}) ---\n{}", self.log.display(), lines[from..].join("\n"))
    }

    /// Panics (with the log's tail) if the daemon has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("printvigil exited early: {status}\n{}", self.tail(60));
        }
    }

    /// Waits until `ok` holds for the log; returns the log then.
    pub async fn wait_log(&mut self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if ok(&text) {
                return text;
            }
            self.assert_alive();
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}\n{}", self.tail(60));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a log line containing `needle`; returns that line.
    pub async fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let text = self.wait_log(&format!("a log line with {needle:?}"), limit, |t| t.contains(needle)).await;
        text.lines().find(|l| l.contains(needle)).unwrap().to_string()
    }

    /// Waits until the watch loop has scored frame `n` (or a later one) of the current run.
    pub async fn wait_frame(&mut self, n: u64, limit: Duration) -> u64 {
        let text = self
            .wait_log(&format!("scored frame {n}"), limit, |t| frame_numbers(t).last().is_some_and(|&f| f >= n))
            .await;
        *frame_numbers(&text).last().unwrap()
    }

    /// The newest frame number in the log.
    pub fn last_frame(&self) -> Option<u64> {
        frame_numbers(&self.log_text()).last().copied()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL and panic after that).
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(limit).await
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("printvigil did not exit within {limit:?}\n{}", self.tail(40));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time (user + system) of a process, in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after `state`.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A `/proc/<pid>/status` value in KiB (e.g. `VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second.
pub fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Writes `dir/printvigil.toml` for an end-to-end daemon test and returns its path: state
/// in `dir/state`, the demo model on one thread, a fast cadence (0.25 s) plus the
/// `[watch]` lines in `watch`, the fake server `server` (if any) uploading every frame
/// with short timeouts and back-offs, and `printer`, the `[[printers]]` table of the
/// printer under test (named `sim`).
pub fn write_config(dir: &Path, server: Option<&super::fake_obico::FakeObico>, watch: &str, printer: &str) -> PathBuf {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx");
    let mut text = format!(
        "state_dir = {:?}\n\
         [detector]\nmodel = {:?}\nintra_threads = 1\n\
         [watch]\ncadence_secs = 0.25\nallow_fast_cadence = true\n{watch}\n",
        dir.join("state").display().to_string(),
        model.display().to_string(),
    );
    if let Some(fake) = server {
        let set = super::fake_obico::Settings::default();
        text.push_str(&format!(
            "[server]\nurl = {:?}\nclient_id = {:?}\nclient_secret = {:?}\nprinter_name = \"sim\"\n\
             upload = \"always\"\nupload_min_interval_secs = 0.0\nrequest_timeout_secs = 2.0\n\
             backoff_initial_ms = 100\nbackoff_cap_secs = 1.0\n",
            fake.url(),
            set.client_id,
            set.client_secret.expose()
        ));
    }
    text.push_str(printer);
    let config = dir.join("printvigil.toml");
    std::fs::write(&config, text).unwrap();
    config
}
