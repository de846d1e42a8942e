//! Real OctoPrint 1.11.8 with its virtual printer, for tests: a fresh base directory (a
//! user with a known API key, no first-run wizard, the plugins that reach for the network
//! disabled), `octoprint serve` on a free 127.0.0.1 port in its own process group, killed
//! (the whole group) on drop, also when the test panics.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PYTHON: &str = "PVTEST_OCTOPRINT_PYTHON";
pub const API_KEY: &str = "PVTESTKEY0123456789ABCDEF";
/// argon2 hash of the password "pw" (as `octoprint user add` writes it).
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=65536,t=3,p=4$c+59D6FU6p3TGsNYq3UuRQ$8Ak3aQ8KhF5YybBITF+0pX0apVkj6zEFH/uEtsIMBx0";

fn python() -> PathBuf {
    let p = std::env::var_os(PYTHON).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".runtime/venv-octoprint/bin/python")
    });
    assert!(
        p.is_file(),
        "OctoPrint is not installed ({}): run the tests with scripts/test.sh, which makes the venv from tests/peers/requirements-octoprint.txt and sets {PYTHON}",
        p.display()
    );
    p
}

/// One OctoPrint server; see the module documentation.
pub struct OctoPrint {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

impl OctoPrint {
    /// Starts OctoPrint and waits until its API answers (~3 s).
    pub async fn start() -> OctoPrint {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            "server:\n  firstRun: false\n  onlineCheck:\n    enabled: false\n  pluginBlacklist:\n    enabled: false\n\
             plugins:\n  _disabled: [announcements, tracking, softwareupdate, pluginmanager, errortracking, discovery, health_check, firmware_check, backup]\n\
             \x20 virtual_printer:\n    enabled: true\n    simulated_errors: []\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("users.yaml"),
            format!(
                "_version: 2\nadmin:\n  active: true\n  apikey: {API_KEY}\n  groups:\n  - admins\n  password: {PASSWORD_HASH}\n  permissions: []\n  roles:\n  - user\n"
            ),
        )
        .unwrap();
        let mut op = OctoPrint {
            dir,
            port: super::klipper::free_port(),
            child: None,
            http: reqwest::Client::new(),
        };
        op.serve().await;
        op
    }

    async fn serve(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("serve.log")).unwrap();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "octoprint", "serve", "--iknowwhatimdoing", "--host", "127.0.0.1"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--basedir")
            .arg(d)
            .arg("--config")
            .arg(d.join("config.yaml"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("cannot start OctoPrint"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = self.try_api("GET", "api/version", None).await {
                return;
            }
            assert!(Instant::now() < deadline, "OctoPrint did not answer within 60 s:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills OctoPrint (SIGKILL to its process group).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// Kills and starts OctoPrint again on the same port and base directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.serve().await;
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn try_api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), reqwest::Error> {
        let url = format!("{}/{path}", self.url());
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.header("X-Api-Key", API_KEY).timeout(Duration::from_secs(10)).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// An API call with the admin's key: (status, JSON answer or Null).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_api(method, path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Connects the virtual printer and waits until it is operational.
    pub async fn connect_printer(&self) {
        let (s, v) = self
            .api("POST", "api/connection", Some(json!({"command": "connect", "port": "VIRTUAL", "autoconnect": false})))
            .await;
        assert_eq!(s, 204, "connect: {v}");
        self.wait_state("connect", |s| s == "Operational").await;
    }

    pub async fn disconnect_printer(&self) {
        let (s, v) = self.api("POST", "api/connection", Some(json!({"command": "disconnect"}))).await;
        assert_eq!(s, 204, "disconnect: {v}");
    }

    /// OctoPrint's state text (`/api/job` `state`).
    pub async fn state(&self) -> String {
        let (_, v) = self.api("GET", "api/job", None).await;
        v.get("state").and_then(Value::as_str).unwrap_or("").to_string()
    }

    pub async fn wait_state(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.state().await;
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: OctoPrint stayed `{s}`:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Uploads `name` with `gcode` and starts printing it; returns the time the request
    /// was sent (OctoPrint starts the print before it answers).
    pub async fn print(&self, name: &str, gcode: &str) -> std::time::SystemTime {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(gcode.as_bytes().to_vec()).file_name(name.to_string()))
            .text("select", "true")
            .text("print", "true");
        let at = std::time::SystemTime::now();
        let resp = self
            .http
            .post(format!("{}/api/files/local", self.url()))
            .header("X-Api-Key", API_KEY)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "upload: {}", resp.text().await.unwrap_or_default());
        at
    }

    /// Starts printing a file uploaded before.
    pub async fn print_again(&self, name: &str) -> std::time::SystemTime {
        let at = std::time::SystemTime::now();
        let (s, v) = self.api("POST", &format!("api/files/local/{name}"), Some(json!({"command": "select", "print": true}))).await;
        assert_eq!(s, 204, "print {name}: {v}");
        at
    }
}

/// G-code that lasts about `seconds` on the virtual printer (moves finish instantly;
/// dwells do not).
pub fn dwell_gcode(seconds: u32) -> String {
    let mut s = String::from("; printvigil test print\nG28\n");
    for _ in 0..seconds {
        s.push_str("G4 P1000\n");
    }
    s
}

impl Drop for OctoPrint {
    fn drop(&mut self) {
        self.kill();
    }
}
