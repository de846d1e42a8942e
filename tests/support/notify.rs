//! A stand-in for systemd's notification socket: a Unix datagram socket whose lines
//! (`READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`) are kept with their arrival time.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::daemon::Daemon;

/// Every notification line received, with its arrival time.
#[derive(Clone)]
pub struct Notifications {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub path: PathBuf,
}

impl Notifications {
    pub fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let out = lines.clone();
        // Ends when the test's Notifications are gone (only this thread holds the socket).
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while Arc::strong_count(&out) > 1 {
                if let Ok(n) = sock.recv(&mut buf) {
                    let now = Instant::now();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut l = out.lock().unwrap();
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        l.push((now, line.to_string()));
                    }
                }
            }
        });
        Notifications { lines, path }
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    pub fn since(&self, t: Instant) -> Vec<(Instant, String)> {
        self.all().into_iter().filter(|(at, _)| *at >= t).collect()
    }

    pub fn pings_between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.all().into_iter().filter(|(at, l)| l == "WATCHDOG=1" && *at >= from && *at <= to).map(|(at, _)| at).collect()
    }

    pub async fn wait(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool, d: &mut Daemon) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((at, _)) = self.all().into_iter().find(|(_, l)| ok(l)) {
                return at;
            }
            d.assert_alive();
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; got {:#?}\n{}",
                self.all().iter().map(|x| &x.1).collect::<Vec<_>>(),
                d.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

