//! `printvigil setup` as a person runs it: in a terminal (tmux: the test reads the screen
//! with capture-pane and types with send-keys), against real Moonraker + Klipper whose
//! webcam list names a snapshot camera served by the test, and the stand-in Obico server.
//! Setup must find Moonraker by itself, offer the camera, score a frame from it, take the
//! server and a token, write the config file keeping what was there, run check, and say
//! how to start the service. Then the same answers as flags, with no terminal (a farm's
//! image build), give the same file.
//!
//! Needs Debian `tmux` (scripts/setup-system.sh --test) and the peers scripts/test.sh sets up.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::fake_obico::{self, Settings};
use support::klipper::{Options, Peers};
use support::snapcam::{Mode, SnapCam};

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, command: &str) -> Tmux {
        let socket = dir.join("tmux.sock");
        let st = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "80", "-s", "setup", command])
            .status()
            .expect("tmux not found (Debian tmux; scripts/setup-system.sh --test)");
        assert!(st.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// What the screen shows, with the scrollback.
    fn screen(&self) -> String {
        let out = self.tmux().args(["capture-pane", "-p", "-J", "-S", "-2000", "-t", "setup"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text`, then Enter.
    fn type_line(&self, text: &str) {
        if !text.is_empty() {
            assert!(self.tmux().args(["send-keys", "-t", "setup", "-l", text]).status().unwrap().success());
        }
        assert!(self.tmux().args(["send-keys", "-t", "setup", "Enter"]).status().unwrap().success());
    }

    /// Waits until the last non-empty line of the screen ends with `prompt` (a question
    /// waiting for its answer); returns the screen.
    async fn wait_prompt(&self, prompt: &str, limit: Duration) -> String {
        self.wait(&format!("the prompt {prompt:?}"), limit, |s| {
            s.lines().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_end().ends_with(prompt.trim_end()))
        })
        .await
    }

    async fn wait(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the screen:\n{s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The config a user had before setup: a comment, a detector setting, a state dir.
fn existing_config(dir: &Path) -> (PathBuf, String) {
    let model = dir.join("demo.onnx");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo.onnx"), &model).unwrap();
    let text = format!(
        "# Our shop's printvigil settings. Do not lose this comment.\nstate_dir = \"{}\"\n\n[detector]\n# the demo model for this test\nmodel = \"{}\"\nintra_threads = 1\n",
        dir.join("state").display(),
        model.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// A user-bound token, as a user makes one on the server.
async fn user_token(server: &str, settings: &Settings) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{server}/o/token/"))
        .basic_auth(&settings.client_id, Some(settings.client_secret.expose()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_in_a_terminal_finds_moonraker_scores_a_frame_and_writes_the_config() {
    let peers = Peers::start(Options::default()).await;
    let cam = SnapCam::start(Mode::Failing).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/server/webcams/item", peers.url()))
        .json(&serde_json::json!({"name": "bed cam", "service": "mjpegstreamer", "snapshot_url": cam.url(), "stream_url": cam.url().replace("snap.jpg", "stream")}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "adding the webcam: {}", resp.status());
    let settings = Settings::default();
    let server = fake_obico::start(settings.clone()).await;
    let token = user_token(&server.url(), &settings).await;

    let dir = tempfile::tempdir().unwrap();
    let (config, before) = existing_config(dir.path());
    let bin = env!("CARGO_BIN_EXE_printvigil");
    let ort = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH: run through scripts/test.sh");
    // The pane stays after printvigil exits, showing its exit code.
    let command = format!(
        "env ORT_DYLIB_PATH={} PRINTVIGIL_LOG=warn {} --config {} setup; echo EXIT=$?; sleep 600",
        shell_quote(&ort),
        shell_quote(bin),
        shell_quote(&config.to_string_lossy())
    );
    let t0 = Instant::now();
    let tmux = Tmux::start(dir.path(), &command);
    let long = Duration::from_secs(60);

    // Moonraker: found on this host. Other Moonraker instances may run here too: pick ours.
    let screen = tmux
        .wait("Moonraker found", long, |s| s.contains("Use it? [Y/n]:") || s.contains("Which one watches this printer?"))
        .await;
    let ours = format!("http://127.0.0.1:{}", peers.port);
    if screen.contains("Which one watches this printer?") {
        let line = screen
            .lines()
            .find(|l| l.contains(&format!("{ours} ")) || l.trim_end().ends_with(&ours))
            .unwrap_or_else(|| panic!("our Moonraker ({ours}) is not in the list:\n{screen}"));
        let n = line.trim().split(')').next().unwrap();
        tmux.type_line(n);
    } else {
        assert!(screen.contains("Found Moonraker ") && screen.contains(&format!("at {ours} (Klipper ready)")), "{screen}");
        tmux.type_line("");
    }

    tmux.wait_prompt(&format!("Name for this printer [{}]:", printvigil::server::hostname()), long).await;
    tmux.type_line("voron");

    // The peers' moonraker.conf has a camera of its own (nothing serves it); ours was added.
    let screen = tmux.wait_prompt("Which camera watches the print? [1]:", long).await;
    let line = screen
        .lines()
        .find(|l| l.contains(&format!(") bed cam: {}", cam.url())))
        .unwrap_or_else(|| panic!("the camera added to Moonraker is not offered:\n{screen}"));
    tmux.type_line(line.trim().split(')').next().unwrap());
    tmux.wait_prompt("Score one frame from this camera now? [Y/n]:", long).await;
    tmux.type_line("");

    // The failing frames of the snapshot camera, scored by the demo model.
    let screen = tmux.wait_prompt("Server address:", long).await;
    assert!(screen.contains("Got a 640x480 frame") || screen.contains("Got a "), "{screen}");
    assert!(screen.contains("possible failure in view"), "the failing frame must show detections:\n{screen}");
    tmux.type_line(&server.url());
    tmux.wait_prompt("How does printvigil sign in? [1]:", long).await;
    tmux.type_line("");
    tmux.wait_prompt("Token:", long).await;
    tmux.type_line(&token);

    let screen = tmux.wait("setup to end", Duration::from_secs(120), |s| s.contains("EXIT=")).await;
    let elapsed = t0.elapsed();
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains(&format!("Wrote printer `voron` and the server to {}", config.display())), "{screen}");
    for line in ["ok    printer voron", "ok    camera of voron", "ok    detector"] {
        assert!(screen.contains(line), "check must say {line:?}:\n{screen}");
    }
    assert!(!screen.contains("FAIL  server"), "{screen}");
    assert!(screen.contains(&format!("Next: run `printvigil --config {} run`", config.display())), "{screen}");
    let took: f64 = screen
        .lines()
        .find_map(|l| l.strip_prefix("Setup took ")?.strip_suffix(" s.")?.parse().ok())
        .unwrap_or_else(|| panic!("no time in:\n{screen}"));
    println!("FIGURE setup in tmux against Moonraker: {took:.1} s by its own clock, {:.1} s from launch to exit (typing included)", elapsed.as_secs_f64());

    // What was there is kept; what setup wrote loads.
    let text = std::fs::read_to_string(&config).unwrap();
    println!("{text}");
    assert!(text.starts_with(&before), "the user's lines must stay as they were:\n{text}");
    let loaded = printvigil::config::Config::from_toml_str(&text).unwrap();
    assert_eq!(loaded.printers.len(), 1);
    assert_eq!(loaded.printers[0].name(), "voron");
    assert!(text.contains(&format!("url = \"{ours}\"")), "{text}");
    let camera = loaded.printers[0].camera().expect("the chosen camera is written");
    assert_eq!(camera.url.expose(), cam.url());
    let s = loaded.server.as_ref().expect("[server] written");
    assert_eq!(s.url, server.url());
    assert_eq!(s.token.as_ref().map(|t| t.expose()), Some(token.as_str()));

    // The same answers as flags, without a terminal: the same printer and server.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &before).unwrap();
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("--config")
        .arg(&again)
        .args(["setup", "moonraker", "--moonraker-url", &ours, "--name", "voron", "--camera", &cam.url(), "--server", &server.url()])
        .args(["--server-token", &token])
        .env("PRINTVIGIL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!shown.contains("[Y/n]") && !shown.contains("[1]:"), "nothing may be asked without a terminal:\n{shown}");
    println!("FIGURE setup with flags, no terminal: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_asks_for_the_api_key_when_moonraker_wants_one() {
    let peers = Peers::start(Options { api_key_mode: true }).await;
    let key = peers.api_key.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = existing_config(dir.path());
    let bin = env!("CARGO_BIN_EXE_printvigil");
    let ours = format!("http://127.0.0.1:{}", peers.port);
    let command = format!(
        "env PRINTVIGIL_LOG=warn {} --config {} setup --moonraker-url {ours} --server none --no-check; echo EXIT=$?; sleep 600",
        shell_quote(bin),
        shell_quote(&config.to_string_lossy())
    );
    let tmux = Tmux::start(dir.path(), &command);
    let long = Duration::from_secs(60);
    let screen = tmux.wait_prompt("Moonraker's API key:", long).await;
    assert!(screen.contains("Moonraker asks for an API key"), "{screen}");
    // A wrong key first, as people paste the wrong thing.
    tmux.type_line("0123456789abcdef0123456789abcdef");
    // The same question again (not the first one, before the typing shows).
    tmux.wait("the question again, after the refusal", long, |s| {
        s.contains("Moonraker refused that key") && s.trim_end().ends_with("Moonraker's API key:")
    })
    .await;
    tmux.type_line(&key);
    tmux.wait_prompt(&format!("Name for this printer [{}]:", printvigil::server::hostname()), long).await;
    tmux.type_line("k1");
    // The camera list is read with the key (the peers' moonraker.conf names one camera).
    let screen = tmux.wait_prompt("Which camera watches the print? [1]:", long).await;
    assert!(screen.contains("Moonraker accepts the key.") && screen.contains("1) test_cam: "), "{screen}");
    tmux.type_line("none");
    let screen = tmux.wait("setup to end", long, |s| s.contains("EXIT=")).await;
    assert!(screen.contains("EXIT=0"), "{screen}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&before) && text.contains(&format!("api_key = \"{key}\"")), "{text}");
    assert!(!text.contains("camera"), "{text}");
    assert!(!screen.contains(&key[8..]) || screen.matches(&key[8..]).count() == 1, "the key is shown only where it was typed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_links_a_server_account_with_login_in_paste_mode() {
    let peers = Peers::start(Options::default()).await;
    let settings = Settings::default();
    let server = fake_obico::start(settings.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, before) = existing_config(dir.path());
    let bin = env!("CARGO_BIN_EXE_printvigil");
    let ours = format!("http://127.0.0.1:{}", peers.port);
    let command = format!(
        "env PRINTVIGIL_LOG=warn {} --config {} setup --moonraker-url {ours} --name p1 --camera none --no-check; echo EXIT=$?; sleep 600",
        shell_quote(bin),
        shell_quote(&config.to_string_lossy())
    );
    let tmux = Tmux::start(dir.path(), &command);
    let long = Duration::from_secs(60);
    tmux.wait_prompt("Server address:", long).await;
    tmux.type_line(&server.url());
    tmux.wait_prompt("How does printvigil sign in? [1]:", long).await;
    tmux.type_line("2");
    tmux.wait_prompt("The server's OAuth client id:", long).await;
    tmux.type_line(&settings.client_id);
    tmux.wait_prompt("The OAuth client's secret (blank: none):", long).await;
    tmux.type_line(settings.client_secret.expose());
    // The address to open is on the screen; a browser on another device opens it, the
    // server sends it to the loopback address, which the person copies back.
    let screen = tmux.wait_prompt("and paste it here:", long).await;
    let authorize = screen
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{}/o/authorize/", server.url())))
        .unwrap_or_else(|| panic!("no address to open:\n{screen}"))
        .to_string();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = browser.get(&authorize).send().await.unwrap();
    let back = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(back.starts_with("http://127.0.0.1"), "{back}");
    tmux.type_line(&back);
    let screen = tmux.wait("setup to end", long, |s| s.contains("EXIT=")).await;
    assert!(screen.contains("EXIT=0") && screen.contains("Linked."), "{screen}");
    assert_eq!(server.grants("authorization_code"), 1);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&before), "{text}");
    let loaded = printvigil::config::Config::from_toml_str(&text).unwrap();
    let s = loaded.server.expect("[server] written");
    assert_eq!((s.url.as_str(), s.client_id.as_deref()), (server.url().as_str(), Some(settings.client_id.as_str())));
    assert!(printvigil::server::token_file(&dir.path().join("state")).is_file(), "the linked token is kept");
}
