//! `printvigil setup` (or `setup moonraker`): the first run on a Klipper host. It finds
//! Moonraker on this host (the ports Moonraker processes listen on, and 7125), asks for an
//! API key only when Moonraker wants one, offers the cameras Moonraker knows and scores one
//! frame from the chosen one at once, asks for the server (an address, then a token or
//! `printvigil login`, or none), writes the config file (comments and every other setting
//! kept, [`super::edit`]), runs `check`, and says how to start the service.
//!
//! Every question has a flag ([`Options`]); without a terminal, or with `--yes`, nothing is
//! asked: flags and defaults are taken, so a farm can run it in an image build, where no
//! Moonraker runs yet (then it writes what it was given and says what it could not check).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::SetupError;
use super::edit::ConfigFile;
use super::prompt::Prompter;
use crate::camera::{self, CameraConfig, CameraKind};
use crate::config::Config;
use crate::printer::CameraInfo;

/// Moonraker's usual port.
pub const DEFAULT_PORT: u16 = 7125;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The answers given as flags (`None`: ask, or take the default without a terminal).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file to write.
    pub config: PathBuf,
    /// Moonraker's address (skips the search).
    pub moonraker_url: Option<String>,
    /// Moonraker's API key (only asked for when Moonraker wants one).
    pub api_key: Option<String>,
    /// The printer's name in the config.
    pub name: Option<String>,
    /// `auto` (Moonraker's first camera, looked up at every start), a number from
    /// Moonraker's list, `none`, or a snapshot/stream URL.
    pub camera: Option<String>,
    /// Score one frame from the camera (default yes).
    pub score_frame: Option<bool>,
    /// Download Obico's model when it is missing, to score that frame.
    pub fetch_model: Option<bool>,
    /// The server's address, or `none`.
    pub server: Option<String>,
    /// A user-bound token made on the server.
    pub server_token: Option<String>,
    /// Link an account with `printvigil login` (needs the server's OAuth client id).
    pub server_login: bool,
    pub server_client_id: Option<String>,
    /// The OAuth client's secret, when the server gave the client one.
    pub server_client_secret: Option<String>,
    /// Skip the closing `check`.
    pub no_check: bool,
}

/// What a probe of an address found.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Moonraker answered: its version and Klippy's state.
    Ready { version: String, klippy: String },
    /// Moonraker wants an API key (or refused the one given).
    NeedsKey,
    /// Something answered, but not as Moonraker does.
    NotMoonraker(String),
    Unreachable(String),
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(PROBE_TIMEOUT).build().unwrap_or_default()
}

fn get(client: &reqwest::Client, url: &str, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let mut r = client.get(format!("{}{path}", url.trim_end_matches('/')));
    if let Some(k) = key {
        r = r.header("X-Api-Key", k);
    }
    r
}

/// Asks `url` for `/server/info`.
pub async fn probe(url: &str, key: Option<&str>) -> Probe {
    let client = http();
    let resp = match get(&client, url, "/server/info", key).send().await {
        Ok(r) => r,
        Err(e) => return Probe::Unreachable(crate::camera::chain(&e)),
    };
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Probe::NeedsKey;
    }
    let body: serde_json::Value = match resp.json().await {
        Ok(v) => v,
        Err(_) => return Probe::NotMoonraker(format!("HTTP {status}, not JSON")),
    };
    let result = &body["result"];
    match result.get("klippy_state").and_then(|v| v.as_str()) {
        Some(k) => Probe::Ready {
            version: result["moonraker_version"].as_str().unwrap_or("?").to_string(),
            klippy: k.to_string(),
        },
        None => Probe::NotMoonraker(format!("HTTP {status}, no klippy_state")),
    }
}

/// The ports Moonraker processes of this host listen on (on loopback or every address),
/// 7125 first. Reading other users' processes needs root; without it, 7125 alone.
pub fn candidate_ports() -> Vec<u16> {
    let mut ports = vec![DEFAULT_PORT];
    let inodes = moonraker_socket_inodes();
    if !inodes.is_empty() {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            for (port, inode) in listening(&text) {
                if inodes.contains(&inode) && !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

/// Socket inodes held by processes whose command line names moonraker.
fn moonraker_socket_inodes() -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
        let names_moonraker = cmdline.split(|b| *b == 0).any(|arg| {
            let arg = String::from_utf8_lossy(arg);
            let base = arg.rsplit('/').next().unwrap_or("");
            base == "moonraker" || base == "moonraker.py"
        });
        if !names_moonraker {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                    && let Ok(n) = n.parse()
                {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// (port, inode) of the listening sockets in a `/proc/net/tcp{,6}` table bound to
/// loopback or to every address (those 127.0.0.1 reaches).
fn listening(table: &str) -> Vec<(u16, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr, port) = f[1].split_once(':')?;
            let reachable = matches!(
                addr,
                "00000000" | "0100007F" | "00000000000000000000000000000000" | "00000000000000000000000001000000"
            );
            if !reachable {
                return None;
            }
            Some((u16::from_str_radix(port, 16).ok()?, f[9].parse().ok()?))
        })
        .collect()
}

/// The cameras Moonraker's webcam settings list.
pub async fn webcams(url: &str, key: Option<&str>) -> Result<Vec<CameraInfo>, String> {
    let base = url::Url::parse(url).map_err(|e| e.to_string())?;
    let resp = get(&http(), url, "/server/webcams/list", key).send().await.map_err(|e| crate::camera::chain(&e))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(|e| format!("HTTP {status}: {e}"))?;
    Ok(crate::printer::moonraker::parse_webcams(&v["result"], &base))
}

fn say_err(e: impl std::fmt::Display) -> SetupError {
    SetupError::Step(e.to_string())
}

/// Runs the whole first run.
pub async fn run(opts: &Options, p: &mut Prompter<'_>) -> Result<(), SetupError> {
    let started = Instant::now();
    let path = opts.config.as_path();
    // Read (and refuse a broken file) before asking anything.
    let mut file = ConfigFile::open(path)?;
    let current = Config::from_toml_str(&file.text())
        .map_err(|e| say_err(format!("{} does not load ({e}); fix it first, then run setup again", path.display())))?;
    p.say(format!("printvigil setup: Klipper through Moonraker on this host. The answers go to {}.", path.display()));
    if p.interactive() {
        p.say("Press Enter to take the answer in [brackets].");
    }

    // 1. Moonraker.
    let (url, ready) = choose_moonraker(opts, p).await?;
    // 2. Its API key, only when it wants one.
    let mut key = opts.api_key.clone();
    let mut reachable = ready.is_some();
    if ready == Some(false) || (ready.is_some() && key.is_some()) {
        key = api_key(&url, key, p).await?;
        reachable = true;
    }

    // 3. The printer's name: the entry already pointing at this Moonraker, or the host's name.
    let existing = current.printers.iter().find_map(|pc| match pc {
        crate::printer::PrinterConfig::Moonraker(m) if m.url.expose().trim_end_matches('/') == url.trim_end_matches('/') => {
            Some(pc.name().to_string())
        }
        _ => None,
    });
    let default_name = existing.unwrap_or_else(crate::server::hostname);
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => p.ask("Name for this printer", Some(&default_name), "--name")?,
    };
    if current.printers.iter().any(|pc| pc.name() == name && !matches!(pc, crate::printer::PrinterConfig::Moonraker(_))) {
        return Err(say_err(format!(
            "a printer named {name:?} is already in {}, not a Moonraker one; choose another name (--name)",
            path.display()
        )));
    }

    // 4. The camera, and one frame scored from it.
    let cams = if reachable { webcams(&url, key.as_deref()).await.unwrap_or_else(|e| {
        p.say(format!("Could not read Moonraker's camera list: {e}"));
        Vec::new()
    }) } else { Vec::new() };
    let camera = choose_camera(opts, p, &cams, &url)?;
    let camera_cfg = match &camera {
        CameraChoice::Auto => cams.first().and_then(|c| camera::from_info(c, &url).ok()),
        CameraChoice::Fixed(c) => Some(c.clone()),
        CameraChoice::None => None,
    };
    if let Some(cfg) = &camera_cfg {
        let score = match opts.score_frame {
            Some(s) => s,
            None => p.confirm("Score one frame from this camera now?", true, "--score-frame / --no-score-frame")?,
        };
        if score {
            score_one(cfg, &current, opts, p).await;
        }
    }

    // 5. The server.
    let server = choose_server(opts, p, &current)?;

    // 6. Write.
    {
        let entry = file.printer(&name, "moonraker")?;
        entry["url"] = toml_edit::value(url.trim_end_matches('/'));
        match &key {
            Some(k) => entry["api_key"] = toml_edit::value(k.as_str()),
            None => {
                entry.remove("api_key");
            }
        }
        match &camera {
            CameraChoice::Auto => {
                entry.remove("camera");
            }
            CameraChoice::Fixed(c) => entry["camera"] = camera_item(c),
            CameraChoice::None => {}
        }
    }
    match &server {
        ServerChoice::Keep => {}
        ServerChoice::Remove => {
            file.remove_section("server");
        }
        ServerChoice::Token { url, token } => {
            let s = file.section("server")?;
            s["url"] = toml_edit::value(url.as_str());
            s["token"] = toml_edit::value(token.as_str());
        }
        ServerChoice::Login { url, client_id, client_secret } => {
            let s = file.section("server")?;
            s["url"] = toml_edit::value(url.as_str());
            s["client_id"] = toml_edit::value(client_id.as_str());
            match client_secret {
                Some(c) => s["client_secret"] = toml_edit::value(c.as_str()),
                None => {
                    s.remove("client_secret");
                }
            }
            s.remove("token");
        }
    }
    let written = file.save()?;
    p.say(format!("Wrote printer `{name}`{} to {}.", if matches!(server, ServerChoice::Keep | ServerChoice::Remove) { "" } else { " and the server" }, path.display()));

    if let ServerChoice::Login { .. } = &server {
        login(&written, p).await?;
    }

    // 7. check, with the config as the service will read it.
    if !opts.no_check {
        p.say("Checking the setup (printvigil check) ...");
        let config = Config::load(Some(path)).map_err(say_err)?;
        let mut lines = crate::watch::check::run(&config).await;
        lines.extend(crate::server::check::run(&config).await);
        let failed = lines.iter().filter(|l| !l.ok).count();
        for l in &lines {
            p.say(l.to_string());
        }
        if failed > 0 {
            p.say(format!("{failed} check(s) failed: each FAIL line says how to fix it; `printvigil check` runs them again."));
        }
    }

    // 8. How to start it.
    p.say(format!("Setup took {:.1} s.", started.elapsed().as_secs_f64()));
    p.say(start_advice(path));
    Ok(())
}

/// Finds or asks for Moonraker's address. The flag: `Some(true)` Moonraker answered,
/// `Some(false)` it wants an API key, `None` not reached (written anyway when confirmed).
async fn choose_moonraker(opts: &Options, p: &mut Prompter<'_>) -> Result<(String, Option<bool>), SetupError> {
    let describe = |url: &str, probe: &Probe| match probe {
        Probe::Ready { version, klippy } => format!("Moonraker {version} at {url} (Klipper {klippy})"),
        Probe::NeedsKey => format!("Moonraker at {url} (it asks for an API key)"),
        _ => url.to_string(),
    };
    let found: Vec<(String, Probe)> = if let Some(u) = &opts.moonraker_url {
        let u = normalize(u)?;
        let probe = probe(&u, opts.api_key.as_deref()).await;
        vec![(u, probe)]
    } else {
        p.say("Looking for Moonraker on this host ...");
        let mut found = Vec::new();
        for port in candidate_ports() {
            let u = format!("http://127.0.0.1:{port}");
            let probe = probe(&u, opts.api_key.as_deref()).await;
            if matches!(probe, Probe::Ready { .. } | Probe::NeedsKey) {
                found.push((u, probe));
            }
        }
        found
    };
    let usable: Vec<&(String, Probe)> = found.iter().filter(|(_, pr)| matches!(pr, Probe::Ready { .. } | Probe::NeedsKey)).collect();
    let (url, probe) = match usable.len() {
        0 => {
            let (u, why) = match found.first() {
                Some((u, Probe::Unreachable(e) | Probe::NotMoonraker(e))) => (u.clone(), format!("{u} does not answer as Moonraker: {e}")),
                _ => (format!("http://127.0.0.1:{DEFAULT_PORT}"), "no Moonraker found on this host".to_string()),
            };
            p.say(format!("{why}."));
            let mut url = if opts.moonraker_url.is_some() { u } else { normalize(&p.ask("Moonraker's address", Some(&u), "--moonraker-url")?)? };
            loop {
                let probe = probe(&url, opts.api_key.as_deref()).await;
                if matches!(probe, Probe::Ready { .. } | Probe::NeedsKey) {
                    p.say(format!("Found {}.", describe(&url, &probe)));
                    break (url, probe);
                }
                p.say(format!("{url} does not answer as Moonraker ({}).", match &probe { Probe::Unreachable(e) | Probe::NotMoonraker(e) => e.as_str(), _ => "" }));
                if p.confirm("Write it anyway (Moonraker is not running yet, e.g. in an image build)?", !p.interactive(), "--yes")? {
                    return Ok((url, None));
                }
                url = normalize(&p.ask("Moonraker's address", Some(&url), "--moonraker-url")?)?;
            }
        }
        1 => {
            let (u, pr) = usable[0].clone();
            p.say(format!("Found {}.", describe(&u, &pr)));
            if opts.moonraker_url.is_none() && !p.confirm("Use it?", true, "--moonraker-url")? {
                let u = normalize(&p.ask("Moonraker's address", Some(&u), "--moonraker-url")?)?;
                let pr = probe(&u, opts.api_key.as_deref()).await;
                (u, pr)
            } else {
                (u, pr)
            }
        }
        _ => {
            p.say(format!("Found {} Moonraker instances:", usable.len()));
            let names: Vec<String> = usable.iter().map(|(u, pr)| describe(u, pr)).collect();
            let i = p.choose("Which one watches this printer?", &names, 0, &[], "--moonraker-url")?.unwrap_or(0);
            usable[i].clone()
        }
    };
    let ok = match probe {
        Probe::Ready { .. } => Some(true),
        Probe::NeedsKey => Some(false),
        _ => None,
    };
    Ok((url, ok))
}

fn normalize(u: &str) -> Result<String, SetupError> {
    let u = u.trim();
    let with_scheme = if u.contains("://") { u.to_string() } else { format!("http://{u}") };
    let parsed = url::Url::parse(&with_scheme)
        .map_err(|e| say_err(format!("{u:?} is not an address ({e}); write it like http://127.0.0.1:7125")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(say_err(format!("{u:?}: Moonraker's address starts with http://")));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Asks for the API key until Moonraker takes one (three tries).
async fn api_key(url: &str, given: Option<String>, p: &mut Prompter<'_>) -> Result<Option<String>, SetupError> {
    if let Some(k) = &given {
        return match probe(url, Some(k)).await {
            Probe::Ready { .. } => Ok(given),
            Probe::NeedsKey => Err(say_err(format!("Moonraker at {url} refused the API key given with --api-key"))),
            other => Err(say_err(format!("Moonraker at {url}: {other:?}"))),
        };
    }
    p.say("Moonraker asks for an API key: it does not list this host in [authorization] trusted_clients.");
    p.say("Mainsail shows it under Settings > General > API key (Fluidd: Settings > Authentication), or `curl localhost:7125/access/api_key` from a trusted host.");
    for _ in 0..3 {
        let k = p.ask("Moonraker's API key", None, "--api-key")?;
        if k.is_empty() {
            continue;
        }
        match probe(url, Some(&k)).await {
            Probe::Ready { .. } => {
                p.say("Moonraker accepts the key.");
                return Ok(Some(k));
            }
            Probe::NeedsKey => p.say("Moonraker refused that key; check it and paste it again."),
            other => return Err(say_err(format!("Moonraker at {url} stopped answering: {other:?}"))),
        }
    }
    Err(say_err("no API key that Moonraker accepts; run setup again with --api-key KEY"))
}

#[derive(Debug, Clone)]
enum CameraChoice {
    /// Unset in the config: the link asks Moonraker for its first camera at every start.
    Auto,
    Fixed(CameraConfig),
    /// No change to the entry's camera.
    None,
}

fn camera_from_url(u: &str) -> Result<CameraConfig, SetupError> {
    let kind = if u.contains("action=stream") || u.contains("/stream") { CameraKind::Mjpeg } else { CameraKind::Snapshot };
    let c = CameraConfig::new(kind, u.to_string());
    c.validate().map_err(say_err)?;
    Ok(c)
}

fn choose_camera(opts: &Options, p: &mut Prompter<'_>, cams: &[CameraInfo], url: &str) -> Result<CameraChoice, SetupError> {
    let pick = |i: usize| -> Result<CameraChoice, SetupError> {
        if i == 0 {
            return Ok(CameraChoice::Auto);
        }
        camera::from_info(&cams[i], url).map(CameraChoice::Fixed).map_err(say_err)
    };
    if let Some(c) = &opts.camera {
        return match c.as_str() {
            "auto" => Ok(CameraChoice::Auto),
            "none" => Ok(CameraChoice::None),
            n if n.parse::<usize>().is_ok() => {
                let i = n.parse::<usize>().unwrap_or(0);
                if i == 0 || i > cams.len() {
                    return Err(say_err(format!("--camera {n}: Moonraker lists {} camera(s)", cams.len())));
                }
                pick(i - 1)
            }
            u => camera_from_url(u).map(CameraChoice::Fixed),
        };
    }
    if cams.is_empty() {
        p.say("Moonraker lists no camera (add one in Mainsail/Fluidd, or give its address here).");
        let u = p.ask("Camera snapshot or stream address (blank: none for now)", Some(""), "--camera")?;
        return if u.is_empty() { Ok(CameraChoice::None) } else { camera_from_url(&u).map(CameraChoice::Fixed) };
    }
    p.say("Cameras Moonraker knows:");
    let shown: Vec<String> = cams
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let u = c.snapshot_url.as_deref().or(c.stream_url.as_deref()).unwrap_or("no URL");
            let shown = crate::secret::SecretUrl::new(u).redacted();
            if i == 0 { format!("{}: {shown} (Moonraker's first camera: followed when it changes)", c.name) } else { format!("{}: {shown}", c.name) }
        })
        .collect();
    match p.choose("Which camera watches the print?", &shown, 0, &["none"], "--camera")? {
        Ok(i) => pick(i),
        Err(_) => Ok(CameraChoice::None),
    }
}

/// The camera as an inline table, as config/printvigil.toml writes it.
fn camera_item(c: &CameraConfig) -> toml_edit::Item {
    let mut t = toml_edit::InlineTable::new();
    t.insert("kind", match c.kind {
        CameraKind::Mjpeg => "mjpeg",
        _ => "snapshot",
    }.into());
    t.insert("url", c.url.expose().into());
    if c.rotation != 0 {
        t.insert("rotation", i64::from(c.rotation).into());
    }
    if c.flip_horizontal {
        t.insert("flip_horizontal", true.into());
    }
    if c.flip_vertical {
        t.insert("flip_vertical", true.into());
    }
    toml_edit::value(t)
}

/// Grabs a frame and scores it with the configured detector; says what came out. Never
/// fails the setup: a camera or model problem is reported and setup goes on.
async fn score_one(cfg: &CameraConfig, config: &Config, opts: &Options, p: &mut Prompter<'_>) {
    let frame = match camera::from_config(cfg) {
        Ok(mut cam) => cam.grab().await,
        Err(e) => Err(e),
    };
    let jpeg = match frame {
        Ok(f) => f.jpeg,
        Err(e) => {
            p.say(format!("No frame from the camera: {e}. Setup goes on; `printvigil check` tries it again."));
            return;
        }
    };
    let dims = crate::detector::preprocess::jpeg_dimensions(&jpeg).map(|(w, h)| format!("{w}x{h}")).unwrap_or_else(|_| "?".into());
    p.say(format!("Got a {dims} frame ({} KiB).", jpeg.len() / 1024));
    if !crate::detector::runtime::INFERENCE {
        p.say(format!("Not scored: {}.", crate::detector::runtime::NO_INFERENCE));
        return;
    }
    let model = config.detector.model_path(&config.state_dir);
    if !model.exists() {
        p.say(format!("Obico's model is not downloaded yet ({}).", model.display()));
        let fetch = match opts.fetch_model {
            Some(f) => f,
            None => p.confirm("Download it now (about 200 MB)?", p.interactive(), "--fetch-model").unwrap_or(false),
        };
        if !fetch {
            p.say("Not scored. `printvigil model fetch` downloads it (as the service's user: `sudo -u printvigil printvigil model fetch`).");
            return;
        }
        p.say("Downloading ...");
        let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(20)).build().unwrap_or_default();
        let fetched =
            crate::detector::fetch::fetch(&client, &crate::detector::fetch::MODEL_URLS, crate::detector::fetch::MODEL_SHA256, &model).await;
        give_to_state_owner(&config.state_dir);
        if let Err(e) = fetched {
            p.say(format!("The download failed: {e}. Not scored; `printvigil model fetch` tries again."));
            return;
        }
    }
    p.say("Loading the detector ...");
    let loaded = crate::watch::supervisor::load_detector(config).await;
    give_to_state_owner(&config.state_dir);
    let mut detector = match loaded {
        Ok(d) => d,
        Err(e) => {
            p.say(format!("Not scored: {e}"));
            return;
        }
    };
    let found = tokio::task::spawn_blocking(move || detector.detect(&jpeg)).await;
    match found {
        Ok(Ok(f)) => {
            let pv = crate::detector::smoothing::frame_p(&f.detections, 1.0);
            let best = f.detections.iter().map(|d| d.confidence).fold(0.0_f64, f64::max);
            let verdict = if f.detections.is_empty() { "nothing that looks like a failure" } else { "possible failure in view" };
            p.say(format!("Scored it: {} detection(s), p={pv:.2}{}: {verdict}.", f.detections.len(), if f.detections.is_empty() { String::new() } else { format!(" (highest confidence {best:.2})") }));
        }
        Ok(Err(e)) => p.say(format!("The frame could not be scored: {e}")),
        Err(e) => p.say(format!("The detector failed: {e}")),
    }
}

/// Files setup made in the state directory as root (the model, its optimised copy) are
/// given to the directory's owner, the service's user, who must write beside them.
fn give_to_state_owner(state_dir: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Ok(meta) = std::fs::metadata(state_dir) else { return };
    if meta.uid() == 0 {
        return;
    }
    let mut todo = vec![state_dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if m.uid() == 0 {
                    let _ = std::os::unix::fs::lchown(&path, Some(meta.uid()), Some(meta.gid()));
                }
                if m.is_dir() {
                    todo.push(path);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum ServerChoice {
    /// Leave the `[server]` section as it is (or absent).
    Keep,
    Remove,
    Token { url: String, token: String },
    Login { url: String, client_id: String, client_secret: Option<String> },
}

fn choose_server(opts: &Options, p: &mut Prompter<'_>, current: &Config) -> Result<ServerChoice, SetupError> {
    let existing = current.server.as_ref().map(|s| s.url.clone());
    let url = match &opts.server {
        Some(s) => s.clone(),
        None => {
            p.say("printvigil can mirror prints and frames to an Obico-compatible server (blank: none; nothing then leaves this host).");
            p.ask("Server address", Some(existing.as_deref().unwrap_or("")), "--server")?
        }
    };
    if url.is_empty() || url == "none" {
        return Ok(if existing.is_some() && url == "none" { ServerChoice::Remove } else { ServerChoice::Keep });
    }
    let parsed = url::Url::parse(&url).map_err(|e| say_err(format!("server address {url:?}: {e}; write it like https://obico.example.com")))?;
    let url = parsed.as_str().trim_end_matches('/').to_string();
    if let Some(token) = &opts.server_token {
        return Ok(ServerChoice::Token { url, token: token.clone() });
    }
    let login = if opts.server_login {
        true
    } else {
        let choices = vec![
            "a token made on the server (paste it here)".to_string(),
            "printvigil login: link your account in a browser (needs the server's OAuth client id)".to_string(),
        ];
        match p.choose("How does printvigil sign in?", &choices, 0, &["none"], "--server-token / --server-login")? {
            Ok(i) => i == 1,
            // "none": no sign-in now; a [server] section already there stays as it is.
            Err(_) => return Ok(ServerChoice::Keep),
        }
    };
    if login {
        let client_id = match &opts.server_client_id {
            Some(c) => c.clone(),
            None => p.ask("The server's OAuth client id", None, "--server-client-id")?,
        };
        let client_secret = match &opts.server_client_secret {
            Some(c) => c.clone(),
            None if opts.server_client_id.is_some() => String::new(),
            None => p.ask("The OAuth client's secret (blank: none)", Some(""), "--server-client-secret")?,
        };
        let client_secret = Some(client_secret).filter(|c| !c.is_empty());
        return Ok(ServerChoice::Login { url, client_id, client_secret });
    }
    let token = p.ask("Token", None, "--server-token")?;
    if token.is_empty() {
        return Err(say_err("no token given; run setup again, or set [server] token in the config"));
    }
    Ok(ServerChoice::Token { url, token })
}

async fn login(config: &Config, p: &mut Prompter<'_>) -> Result<(), SetupError> {
    let Some(scfg) = config.server.as_ref() else { return Ok(()) };
    let api = crate::server::client_for(scfg, &config.state_dir).map_err(say_err)?;
    let mode = crate::server::login::Mode::Paste(Box::new(p.line_reader()));
    crate::server::login::login(scfg, api.tokens(), mode, |url| {
        p.say(format!("Open this address in a browser (on any device) and approve printvigil:\n\n  {url}\n"));
        p.say("Your browser then goes to an http://127.0.0.1 address that fails to load (it is this host's).");
        p.say("Copy that whole address from the browser's address bar and paste it here:");
    })
    .await
    .map_err(say_err)?;
    p.say(format!("Linked. The token is kept in {} (owner-only).", crate::server::token_file(&config.state_dir).display()));
    Ok(())
}

/// How to start the service, or printvigil without it.
fn start_advice(config: &Path) -> String {
    let unit_installed = ["/lib/systemd/system/printvigil.service", "/usr/lib/systemd/system/printvigil.service", "/etc/systemd/system/printvigil.service"]
        .iter()
        .any(|u| Path::new(u).exists());
    if unit_installed && config == Path::new(crate::config::SYSTEM_CONFIG) {
        "Next: start the service with `sudo systemctl restart printvigil` (it starts at every boot from now on); \
         watch it with `systemctl status printvigil` and `journalctl -u printvigil -f`."
            .to_string()
    } else {
        format!("Next: run `printvigil --config {} run` (or install the package for the systemd service).", config.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_on_loopback_and_any_address_are_read_from_proc_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1BD5 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n\
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0 100 0 0 10 0\n\
   2: 0A00000A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18 1 0 100 0 0 10 0\n\
   3: 0100007F:1BD5 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000  1000        0 19 1 0 100 0 0 10 0\n";
        assert_eq!(listening(tcp), vec![(7125, 4242), (80, 17)]);
        assert_eq!(candidate_ports()[0], DEFAULT_PORT);
    }

    #[test]
    fn addresses_are_normalised_and_camera_kinds_guessed() {
        assert_eq!(normalize("127.0.0.1:7125/").unwrap(), "http://127.0.0.1:7125");
        assert!(normalize("ftp://x").is_err());
        assert_eq!(camera_from_url("http://h/webcam/?action=stream").unwrap().kind, CameraKind::Mjpeg);
        assert_eq!(camera_from_url("http://h/webcam/?action=snapshot").unwrap().kind, CameraKind::Snapshot);
        let item = camera_item(&camera_from_url("http://h/snap.jpg").unwrap());
        assert_eq!(item.to_string().trim(), r#"{ kind = "snapshot", url = "http://h/snap.jpg" }"#);
    }
}
