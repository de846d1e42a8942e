//! A simulated Marlin printer on a pseudo-terminal (tests/peers/marlin/sim_marlin.py),
//! started and stopped by the test. Its port appears as a symlink in a temporary directory,
//! the way a /dev/serial/by-id/ name points at a tty.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct MarlinSim {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pub port: PathBuf,
    _dir: tempfile::TempDir,
}

impl MarlinSim {
    /// Starts the simulator; `args` go to it (e.g. `--no-m524`).
    pub fn start(args: &[&str]) -> MarlinSim {
        let dir = tempfile::tempdir().unwrap();
        let port = dir.path().join("usb-Marlin_Sim_0001-if00");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/marlin/sim_marlin.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--link")
            .arg(&port)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the Marlin simulator");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut sim = MarlinSim { child, stdin, lines, port, _dir: dir };
        sim.expect("READY", Duration::from_secs(10));
        sim
    }

    pub fn port_str(&self) -> String {
        self.port.to_str().unwrap().to_string()
    }

    /// Waits for an output line starting with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("the Marlin simulator did not say {prefix} within {limit:?}"),
            }
        }
    }

    /// Sends a control command (see the simulator's doc) and waits until it is done.
    pub fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let word = c.split_whitespace().next().unwrap_or("").to_string();
        self.expect(&format!("DONE {word}"), Duration::from_secs(10));
    }

    /// The simulator's state as JSON.
    pub fn status(&mut self) -> serde_json::Value {
        writeln!(self.stdin, "status").unwrap();
        self.stdin.flush().unwrap();
        let l = self.expect("STATUS ", Duration::from_secs(10));
        serde_json::from_str(&l["STATUS ".len()..]).unwrap()
    }

    /// How many times the simulator received `word` (e.g. "M25").
    pub fn count(&mut self, word: &str) -> u64 {
        self.status()["cmds"][word].as_u64().unwrap_or(0)
    }
}

impl Drop for MarlinSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
