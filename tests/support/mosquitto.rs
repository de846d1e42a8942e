//! A real MQTT broker for tests: Debian's `mosquitto` (installed by
//! `scripts/setup-system.sh --test`), started by the test on a free, unusual 127.0.0.1
//! port with the options a case needs:
//!
//! - anonymous access, or a password file with users (hashed by `mosquitto_passwd`);
//! - TLS with a CA and a server certificate made here for the case (`rcgen`), the server
//!   certificate's common name and alternative names chosen by the test;
//! - mutual TLS: clients must show a certificate of the same CA (one is made for them);
//!   its common name becomes the MQTT user name.
//!
//! The broker runs in its own process group with a parent-death signal, is killed (the
//! whole group) on drop, also when the test panics, and can be stopped and started again
//! on the same port and with the same certificates (a broker restart mid-test). Its log
//! is kept in the broker's directory for failure messages ([`Mosquitto::log`]).
//!
//! Self-contained: it needs only `mosquitto`, `mosquitto_passwd`, `rcgen`, `tempfile`
//! and `libc`.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker gets to open its port.
const START_LIMIT: Duration = Duration::from_secs(10);

/// What the broker offers.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Users and their passwords; empty: anonymous access (no password file).
    pub users: Vec<(String, String)>,
    /// TLS on the listener (no plain listener then).
    pub tls: Option<TlsOptions>,
    /// Raw lines added to mosquitto.conf (e.g. `max_packet_size 1000`).
    pub extra_config: Vec<String>,
}

/// The TLS listener's certificates.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The server certificate's subject common name.
    pub server_cn: String,
    /// The server certificate's DNS names / IP addresses (rcgen parses IP addresses).
    pub server_sans: Vec<String>,
    /// Clients must present a certificate of the CA (mutual TLS); its CN is the user name.
    pub require_client_cert: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            server_cn: "localhost".into(),
            server_sans: vec!["localhost".into(), "127.0.0.1".into()],
            require_client_cert: false,
        }
    }
}

impl Options {
    /// Anonymous access, plain MQTT.
    pub fn anonymous() -> Options {
        Options::default()
    }

    /// One user with a password, plain MQTT.
    pub fn user(name: &str, password: &str) -> Options {
        Options { users: vec![(name.into(), password.into())], ..Options::default() }
    }

    /// Adds a user.
    pub fn with_user(mut self, name: &str, password: &str) -> Options {
        self.users.push((name.into(), password.into()));
        self
    }

    /// TLS on the listener.
    pub fn with_tls(mut self, tls: TlsOptions) -> Options {
        self.tls = Some(tls);
        self
    }

    /// A raw line for mosquitto.conf (e.g. `max_packet_size 1000`).
    pub fn with_config_line(mut self, line: &str) -> Options {
        self.extra_config.push(line.into());
        self
    }
}

/// Certificates made for one broker (PEM and DER), and where the broker reads them.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub server_pem: String,
    /// The server certificate as sent in the handshake (its SHA-256 is the pin).
    pub server_der: Vec<u8>,
    pub server_key_pem: String,
    /// A client certificate of the same CA (CN `client`), for mutual TLS.
    pub client_pem: String,
    pub client_der: Vec<u8>,
    pub client_key_pem: String,
    /// The client key as PKCS#8 DER.
    pub client_key_der: Vec<u8>,
    pub ca_file: PathBuf,
    pub server_file: PathBuf,
    pub server_key_file: PathBuf,
}

impl Certs {
    fn make(dir: &Path, tls: &TlsOptions) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "printvigil test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let leaf = |cn: &str, sans: &[String]| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans.to_vec()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert, key)
        };
        let (server, server_key) = leaf(&tls.server_cn, &tls.server_sans);
        let (client, client_key) = leaf("client", &[]);
        let certs = Certs {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            server_pem: server.pem(),
            server_der: server.der().to_vec(),
            server_key_pem: server_key.serialize_pem(),
            client_pem: client.pem(),
            client_der: client.der().to_vec(),
            client_key_pem: client_key.serialize_pem(),
            client_key_der: client_key.serialize_der(),
            ca_file: dir.join("ca.pem"),
            server_file: dir.join("server.pem"),
            server_key_file: dir.join("server.key"),
        };
        std::fs::write(&certs.ca_file, &certs.ca_pem).unwrap();
        std::fs::write(&certs.server_file, &certs.server_pem).unwrap();
        std::fs::write(&certs.server_key_file, &certs.server_key_pem).unwrap();
        certs
    }
}

/// A running (or stopped) broker; see the module documentation.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    pub port: u16,
    pub options: Options,
    /// The TLS certificates, when the listener has TLS.
    pub certs: Option<Certs>,
    child: Option<Child>,
}

/// A free port in an unusual range (other brokers may hold 1883/8883 and their
/// neighbours): random within 20000..60000, checked by binding it.
pub fn free_unusual_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ (std::process::id() as u64) << 20)
        .unwrap_or(7);
    let mut x = seed | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 40000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found in 20000..60000")
}

fn find_program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: the MQTT tests need Debian's mosquitto (scripts/setup-system.sh --test installs it: apt-get install mosquitto)"
    )
}

impl Mosquitto {
    /// Starts a broker with `options` on a free port and waits until it accepts connections.
    pub fn start(options: Options) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let certs = options.tls.as_ref().map(|t| Certs::make(dir.path(), t));
        let mut m = Mosquitto { dir, port: free_unusual_port(), options, certs, child: None };
        m.write_config();
        m.spawn();
        m
    }

    /// The broker's directory (config, password file, certificates, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut conf = vec![
            format!("listener {} 127.0.0.1", self.port),
            "persistence false".to_string(),
            format!("log_dest file {}", d.join("mosquitto.log").display()),
            "log_type error".to_string(),
            "log_type warning".to_string(),
            "log_type notice".to_string(),
            "log_type information".to_string(),
            "connection_messages true".to_string(),
            "log_timestamp_format %H:%M:%S".to_string(),
        ];
        // As root, mosquitto would switch to its own user, which cannot read this directory.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            conf.push("user root".into());
        }
        if self.options.users.is_empty() {
            conf.push("allow_anonymous true".into());
        } else {
            let file = d.join("passwd");
            let plain: String = self.options.users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
            std::fs::write(&file, plain).unwrap();
            let out = Command::new(find_program("mosquitto_passwd"))
                .arg("-U")
                .arg(&file)
                .stdin(Stdio::null())
                .output()
                .expect("cannot run mosquitto_passwd");
            assert!(out.status.success(), "mosquitto_passwd -U failed: {}", String::from_utf8_lossy(&out.stderr));
            conf.push("allow_anonymous false".into());
            conf.push(format!("password_file {}", file.display()));
        }
        if let (Some(tls), Some(c)) = (&self.options.tls, &self.certs) {
            conf.push(format!("cafile {}", c.ca_file.display()));
            conf.push(format!("certfile {}", c.server_file.display()));
            conf.push(format!("keyfile {}", c.server_key_file.display()));
            if tls.require_client_cert {
                conf.push("require_certificate true".into());
                conf.push("use_identity_as_username true".into());
                if self.options.users.is_empty() {
                    conf.retain(|l| l != "allow_anonymous true");
                    conf.push("allow_anonymous false".into());
                }
            }
        }
        conf.extend(self.options.extra_config.iter().cloned());
        std::fs::write(d.join("mosquitto.conf"), conf.join("\n") + "\n").unwrap();
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let out = std::fs::OpenOptions::new().create(true).append(true).open(d.join("stderr.log")).unwrap();
        let mut cmd = Command::new(find_program("mosquitto"));
        cmd.arg("-c")
            .arg(d.join("mosquitto.conf"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("cannot start mosquitto");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited at start ({status}):\n{}", self.log());
            }
            if TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child's process group.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                panic!("mosquitto did not open port {} within {START_LIMIT:?}:\n{}", self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Whether the broker process is running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the broker gracefully (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    }

    /// Kills the broker at once (SIGKILL to its process group) and waits for it.
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL, Duration::ZERO);
    }

    fn signal_and_wait(&mut self, sig: i32, grace: Duration) {
        let Some(mut c) = self.child.take() else { return };
        let group = -(c.id() as i32);
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(group, sig);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = c.wait();
    }

    /// Starts the broker again on the same port, with the same users and certificates
    /// (mosquitto reuses the address, so connections in TIME_WAIT do not block it).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running broker: stop or kill it first");
        self.spawn();
    }

    /// Stops the broker and starts it again on the same port (a broker restart).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// `host:port` of the listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log and its stderr, for failure messages.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("mosquitto.log"))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Mosquitto {
    /// The broker's URL as printvigil's `mqtt.url` takes it (`mqtt://` or `mqtts://`).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Certs {
    /// Writes the client certificate and key (PEM) into `dir`; returns their paths.
    pub fn write_client(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&cert, &self.client_pem).unwrap();
        std::fs::write(&key, &self.client_key_pem).unwrap();
        (cert, key)
    }
}
