//! A snapshot camera for the daemon tests: `GET /snap.jpg` answers the bundled frames of
//! the mode the test chose (healthy or failing, cycling through them), or fails on demand:
//! HTTP 503, refused connections (nothing listens), or a connection accepted and never
//! answered. Every answer closes its connection, so a mode change takes effect at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The bundled healthy frames (`00`..`05`): p = 0 with the demo model.
    Healthy,
    /// The bundled failing frames (`06`..`09`): p ~0.9..3.7 with the demo model.
    Failing,
    /// `503 Service Unavailable`.
    Unavailable,
    /// Nothing listens on the port: connections are refused.
    Refused,
    /// The connection is accepted, the request read, and no answer ever comes.
    Hang,
}

struct Inner {
    mode: Mode,
    /// Frames served, per mode (healthy, failing).
    served: (u64, u64),
    requests: u64,
    next: usize,
}

pub struct SnapCam {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    healthy: Arc<Vec<Vec<u8>>>,
    failing: Arc<Vec<Vec<u8>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Connections held open by `Hang`, closed when the mode changes or on drop.
    hung: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
}

fn frames(kind: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/frames");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(kind))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no {kind} frames in {}", dir.display());
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

impl SnapCam {
    pub async fn start(mode: Mode) -> Arc<SnapCam> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cam = Arc::new(SnapCam {
            addr,
            inner: Arc::new(Mutex::new(Inner { mode, served: (0, 0), requests: 0, next: 0 })),
            healthy: Arc::new(frames("healthy")),
            failing: Arc::new(frames("failing")),
            task: Mutex::new(None),
            hung: Arc::new(Mutex::new(Vec::new())),
        });
        if mode != Mode::Refused {
            cam.serve(listener);
        }
        cam
    }

    pub fn url(&self) -> String {
        format!("http://{}/snap.jpg", self.addr)
    }

    pub fn mode(&self) -> Mode {
        self.inner.lock().unwrap().mode
    }

    /// (healthy, failing) frames served so far.
    pub fn served(&self) -> (u64, u64) {
        self.inner.lock().unwrap().served
    }

    /// Requests read so far (answered or not).
    pub fn requests(&self) -> u64 {
        self.inner.lock().unwrap().requests
    }

    pub async fn set(&self, mode: Mode) {
        let old = std::mem::replace(&mut self.inner.lock().unwrap().mode, mode);
        if old == Mode::Hang && mode != Mode::Hang {
            self.hung.lock().unwrap().clear();
        }
        if mode == Mode::Refused {
            let task = self.task.lock().unwrap().take();
            if let Some(t) = task {
                t.abort();
                let _ = t.await;
            }
        } else if self.task.lock().unwrap().is_none() {
            let mut tries = 0;
            let listener = loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < 200, "rebinding the camera on {}: {e}", self.addr);
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            };
            self.serve(listener);
        }
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let inner = self.inner.clone();
        let healthy = self.healthy.clone();
        let failing = self.failing.clone();
        let hung = self.hung.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { continue };
                let inner = inner.clone();
                let (healthy, failing, hung) = (healthy.clone(), failing.clone(), hung.clone());
                tokio::spawn(async move {
                    // Read the request head (the body of a GET is empty).
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        if buf.len() > 64 * 1024 {
                            return;
                        }
                    }
                    let body = {
                        let mut s = inner.lock().unwrap();
                        s.requests += 1;
                        s.next += 1;
                        let i = s.next;
                        match s.mode {
                            Mode::Healthy => {
                                s.served.0 += 1;
                                Some(healthy[i % healthy.len()].clone())
                            }
                            Mode::Failing => {
                                s.served.1 += 1;
                                Some(failing[i % failing.len()].clone())
                            }
                            Mode::Hang => {
                                drop(s);
                                hung.lock().unwrap().push(sock);
                                return;
                            }
                            Mode::Unavailable | Mode::Refused => None,
                        }
                    };
                    let head = match &body {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                            b.len()
                        ),
                        None => "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nunavailable\n".to_string(),
                    };
                    let _ = sock.write_all(head.as_bytes()).await;
                    if let Some(b) = body {
                        let _ = sock.write_all(&b).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for SnapCam {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
        self.hung.lock().unwrap().clear();
    }
}
