//! The `printvigil` binary: parses the command line, runs a subcommand, and turns module
//! errors into messages that say what to do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use printvigil::config::Config;
use printvigil::detector::model::{Model, SessionSettings};
use printvigil::detector::smoothing::SmoothingState;
use printvigil::detector::{Detector, annotate, fetch, preprocess};
use printvigil::server;

#[derive(Parser)]
#[command(name = "printvigil", version, about = "Keeps watch over 3D prints")]
struct Cli {
    /// Config file (layered over /etc/printvigil/config.toml and the built-in defaults).
    #[arg(long, global = true, env = "PRINTVIGIL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the setup flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Watch the configured printers until stopped (the service's command).
    Run,
    /// The whole loop on built-in defaults: a simulated printer, the bundled frames as its
    /// camera, the demo model, a stand-in server. Takes seconds.
    Demo {
        /// Folder for the demo's state and saved frames: new, empty or a previous demo's
        /// (emptied first); any other folder is refused.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds between frames (a real print: 10).
        #[arg(long, default_value_t = 0.25)]
        cadence: f64,
        /// Publish to this MQTT broker too (mqtt://host:1883, mqtts://...), with Home
        /// Assistant discovery, under `<topic prefix>-demo`. Default: the config's [mqtt],
        /// else a broker answering on 127.0.0.1:1883.
        #[arg(long, value_name = "URL", conflicts_with = "no_mqtt")]
        mqtt: Option<String>,
        /// Publish to no broker.
        #[arg(long)]
        no_mqtt: bool,
    },
    /// Run JPEG frames, in order, through the detector and the smoother of one printer.
    Predict(PredictArgs),
    /// Measure the detection pipeline: per-stage times and memory.
    Bench(BenchArgs),
    /// Manage the detector model.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Print the effective configuration after all layers are applied (secrets redacted).
    Config,
    /// Link a user account on the server (authorization code + PKCE, loopback redirect).
    Login {
        /// No browser on this host: open the printed address elsewhere, then paste back the
        /// address the browser was sent to.
        #[arg(long)]
        paste: bool,
    },
    /// Revoke the kept server token and delete it.
    Logout,
    /// Check the setup line by line, with a fix for each failure.
    Check,
    /// Notifications ([[notify]] entries).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Set printvigil up. Bare `setup` is the first run on a Klipper host (as `setup
    /// moonraker`): finds Moonraker and its cameras, scores a frame, asks for the server,
    /// writes the config file (`--config`, default /etc/printvigil/config.toml), runs check.
    Setup(SetupArgs),
    /// Drive simulated prints through the server mirror (used by the fault tests).
    #[command(hide = true)]
    SimMirror {
        #[arg(long, default_value_t = 5)]
        prints: usize,
        #[arg(long, default_value_t = 3)]
        frames: usize,
        #[arg(long, default_value_t = 20)]
        frame_ms: u64,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model file (default: `detector.model`, else the production model in the state directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inference threads (default: `detector.intra_threads`).
    #[arg(long)]
    threads: Option<usize>,
    /// Session tuning for experiments, comma separated: no-arena, prepack, no-full-opt, spin.
    #[arg(long, value_delimiter = ',', hide = true)]
    tune: Vec<String>,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JPEG frames, scored in the order given, as one print.
    #[arg(required = true)]
    frames: Vec<PathBuf>,
    /// One JSON object per frame instead of text: `frame`, `width`, `height`, `detections`,
    /// `p`, `state`, `warn`, `pause`, `normalized_p`, `annotated`. A detection is
    /// `["failure", confidence, [xc, yc, w, h]]` in frame pixels, as the Obico server's,
    /// except `h`: printvigil's is `height * (y2 - y1)`, the server's `width * (y2 - y1)`
    /// (an upstream bug), so the server's `h` is this `h * width / height`. Confidences,
    /// `p` and the verdicts are the same.
    #[arg(long)]
    json: bool,
    /// Write each frame with its detections drawn (confidence > 0.2) into this folder.
    #[arg(long)]
    annotate: Option<PathBuf>,
    /// Detective sensitivity (default: `detector.sensitivity`).
    #[arg(long)]
    sensitivity: Option<f64>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JPEG frames (default: 8 synthetic 1280x720 frames).
    frames: Vec<PathBuf>,
    /// Passes over the frames.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also run the passes pipelined (decode and resize of the next frame beside the model).
    #[arg(long)]
    pipelined: bool,
    /// Also time `session.run` against a plain ONNX Runtime session of the same `.onnx`
    /// (the library's defaults, the same thread count), frames alternating between the two.
    #[arg(long)]
    compare: bool,
    /// A print farm instead: this many simulated printers with file cameras, watched at once
    /// through the inference scheduler (intervals, fairness, frame age, memory).
    #[arg(long)]
    printers: Option<usize>,
    /// With --printers: seconds between frames of each printer.
    #[arg(long, default_value_t = 10.0)]
    cadence: f64,
    /// With --printers: seconds the printers print.
    #[arg(long, default_value_t = 120.0)]
    duration: f64,
    /// With --printers: inference sessions (default: `detector.sessions`, else as the cores allow).
    #[arg(long)]
    sessions: Option<usize>,
    /// With --printers: one line per printer too.
    #[arg(long)]
    per_printer: bool,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct SetupArgs {
    #[command(subcommand)]
    command: Option<SetupCommand>,
    #[command(flatten)]
    moonraker: MoonrakerSetupArgs,
}

/// Every question of the Moonraker first run as a flag: given, it is not asked. Without a
/// terminal (or with --yes) nothing is asked: the flags and the defaults are taken.
#[derive(Args, Clone, Default)]
struct MoonrakerSetupArgs {
    /// Moonraker's address (default: searched on this host: 7125 and the ports Moonraker
    /// processes listen on).
    #[arg(long)]
    moonraker_url: Option<String>,
    /// Moonraker's API key (asked only when Moonraker wants one).
    #[arg(long)]
    api_key: Option<String>,
    /// The printer's name in the config (default: the entry for this Moonraker, else the host name).
    #[arg(long)]
    name: Option<String>,
    /// `auto` (Moonraker's first camera, followed when it changes; the default), a number
    /// from Moonraker's camera list, `none` (leave the entry's camera as it is), or a
    /// snapshot/stream URL.
    #[arg(long)]
    camera: Option<String>,
    /// Score one frame from the camera (asked; without a terminal, the default).
    #[arg(long, overrides_with = "no_score_frame")]
    score_frame: bool,
    /// Do not score a frame.
    #[arg(long)]
    no_score_frame: bool,
    /// Download Obico's model (about 200 MB) when it is missing, to score that frame.
    #[arg(long)]
    fetch_model: bool,
    /// The Obico-compatible server's address; `none`: no server (removes a [server] section).
    #[arg(long)]
    server: Option<String>,
    /// A user-bound token made on the server.
    #[arg(long)]
    server_token: Option<String>,
    /// Link a user account with `printvigil login` (paste mode) instead of a token.
    #[arg(long)]
    server_login: bool,
    /// The server's OAuth client id, for --server-login.
    #[arg(long)]
    server_client_id: Option<String>,
    /// The OAuth client's secret, for --server-login (when the server gave the client one).
    #[arg(long)]
    server_client_secret: Option<String>,
    /// Ask nothing: take the flags and the defaults (as without a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Do not run `check` at the end.
    #[arg(long)]
    no_check: bool,
}

#[derive(Subcommand)]
enum SetupCommand {
    /// The first run on a Klipper host (what bare `printvigil setup` does).
    Moonraker(MoonrakerSetupArgs),
    /// Merge a fleet image's first-boot settings (/boot/firmware/printvigil.toml) into the
    /// config file once and delete the file (a file that does not load is moved to
    /// /etc/printvigil/firstboot-refused.toml instead). The service runs this as root at
    /// every start; without the file it does nothing.
    Firstboot {
        /// The first-boot file.
        #[arg(long, default_value = printvigil::setup::firstboot::BOOT_FILE)]
        from: PathBuf,
    },
    /// Exit 0 when the config names a printer, 1 (with what to do) when it names none: the
    /// service's start condition. A config that does not load exits 0 (the service then
    /// reports what is wrong with it).
    Configured,
    /// Ask OctoPrint for an API key (its Application Keys workflow: you click Allow in
    /// OctoPrint) and write it as `api_key` of the printer's entry (added when missing) in
    /// the config file (`--config`, default /etc/printvigil/config.toml).
    Octoprint {
        /// The printer's name in the config file.
        #[arg(long, default_value = "octoprint")]
        name: String,
        /// OctoPrint's address.
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        url: String,
        /// Seconds to wait for the decision in OctoPrint.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Connect once to a Bambu Lab printer, show its certificate's SHA-256 fingerprint,
    /// and once you confirm it, log in with the access code and write host, serial,
    /// access code and fingerprint (and its camera, A1/P1) into the printer's entry
    /// (added when missing) in the config file.
    Bambu {
        /// The printer's address (IP or host name).
        host: String,
        /// The printer's name in the config file.
        #[arg(long, default_value = "bambu")]
        name: String,
        /// The serial number (default: the name in the printer's certificate).
        #[arg(long)]
        serial: Option<String>,
        /// The LAN access code (Settings > Network / WLAN on the printer's screen); asked
        /// for when missing.
        #[arg(long, env = "PRINTVIGIL_BAMBU_ACCESS_CODE", hide_env_values = true)]
        access_code: Option<String>,
        /// MQTT port (a printer behind a forwarder).
        #[arg(long, default_value_t = printvigil::printer::bambu::DEFAULT_PORT)]
        port: u16,
        /// Camera port (a printer behind a forwarder).
        #[arg(long, default_value_t = printvigil::printer::bambu::DEFAULT_CAMERA_PORT)]
        camera_port: u16,
        /// Trust the certificate shown without asking (for scripts: compare the
        /// fingerprint yourself).
        #[arg(long)]
        yes: bool,
        /// Seconds each network step may take.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum NotifyCommand {
    /// Send every [[notify]] entry a test message (with a frame) and show each answer.
    Test,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download Obico's production model (resumable; size and sha256 verified).
    Fetch {
        /// Where to put it (default: the configured model path).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// Download from this URL instead of Obico's (repeat for mirrors).
        #[arg(long)]
        url: Vec<String>,
        /// Expected sha256 (default: Obico's published model's).
        #[arg(long, default_value = fetch::MODEL_SHA256)]
        sha256: String,
    },
    /// Make the optimised copy of a model and exit (the helper a loading process runs, so
    /// that its own memory does not spike; see the detector's cache module).
    #[command(hide = true)]
    Prepare {
        #[arg(long)]
        model: PathBuf,
        /// The ONNX Runtime library the loading process uses.
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        #[arg(long, value_delimiter = ',')]
        tune: Vec<String>,
    },
}

/// `println!` that returns the error instead of panicking: a reader that went away
/// (`printvigil config | head -1`) ends the command quietly (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

fn main() -> ExitCode {
    // ONNX Runtime 1.31's Linux build keeps a telemetry queue and a device id under
    // ~/.cache/Microsoft and sends events to Microsoft when it can; ort's "telemetry off"
    // does not stop that, this variable does. printvigil sends nothing anywhere but to the
    // printer and the configured server. (Set it to 0 to let ONNX Runtime decide.)
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        // SAFETY: the first thing main does: no other thread exists yet.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    }
    let cli = Cli::parse();
    printvigil::logging::init();
    // Optimised model copies are made by this binary run as a helper (`model prepare`).
    if let Ok(exe) = std::env::current_exe() {
        printvigil::detector::cache::use_helper(exe);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output stopped reading (`| head`, `| true`): nothing to report.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("printvigil: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn run(cli: Cli) -> Result<(), AnyError> {
    if let Command::Model(ModelCommand::Prepare { model, onnxruntime, tune }) = &cli.command {
        // The helper needs no config: its parent passes everything.
        let settings = SessionSettings { threads: 1, memory: tuning(tune) };
        println!("{}", printvigil::detector::cache::helper_main(model, onnxruntime.as_deref(), &settings)?);
        return Ok(());
    }
    if let Command::Check = cli.command {
        let lines = match Config::load(cli.config.as_deref()) {
            Ok(config) => {
                out!("ok    config is valid");
                runtime()?.block_on(async {
                    let mut lines = printvigil::watch::check::run(&config).await;
                    lines.extend(server::check::run(&config).await);
                    lines.extend(printvigil::sink::check::run(&config).await);
                    lines
                })
            }
            Err(e) => vec![server::check::Line::fail("config is valid", e.to_string(), "fix the key named above")],
        };
        let mut failed = false;
        for l in &lines {
            out!("{l}");
            failed |= !l.ok;
        }
        return if failed { Err("some checks failed; each FAIL line says how to fix it".into()) } else { Ok(()) };
    }
    let config_path = || cli.config.clone().unwrap_or_else(|| PathBuf::from(printvigil::config::SYSTEM_CONFIG));
    if let Command::Setup(SetupArgs { command: Some(SetupCommand::Firstboot { from }), .. }) = &cli.command {
        let path = config_path();
        let outcome = printvigil::setup::firstboot::apply(from, &path)?;
        match printvigil::setup::firstboot::report(&outcome, from, &path) {
            Some((line, true)) => return Err(line.into()),
            Some((line, false)) => out!("{line}"),
            None => {}
        }
        return Ok(());
    }
    if let Command::Setup(SetupArgs { command: Some(SetupCommand::Configured), .. }) = &cli.command {
        match Config::load(cli.config.as_deref()) {
            Ok(config) => match printvigil::setup::firstboot::configured(&config, &config_path()) {
                Ok(line) => out!("{line}"),
                Err(line) => {
                    eprintln!("printvigil: {line}");
                    std::process::exit(1);
                }
            },
            Err(e) => eprintln!("printvigil: the config does not load ({e}); the service starts and reports it"),
        }
        return Ok(());
    }
    // Before loading: the entry may still lack the key this writes.
    if let Command::Setup(SetupArgs { command: Some(SetupCommand::Octoprint { name, url, wait }), .. }) = &cli.command {
        let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(printvigil::config::SYSTEM_CONFIG));
        let wait = std::time::Duration::from_secs(*wait);
        return Ok(runtime()?.block_on(printvigil::setup::octoprint::run(&path, name, url, wait, &mut std::io::stdout()))?);
    }
    if let Command::Setup(SetupArgs { command: Some(SetupCommand::Bambu { host, name, serial, access_code, port, camera_port, yes, timeout }), .. }) = &cli.command {
        let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(printvigil::config::SYSTEM_CONFIG));
        let options = printvigil::setup::bambu::Options {
            name: name.clone(),
            host: host.clone(),
            port: *port,
            camera_port: *camera_port,
            serial: serial.clone(),
            access_code: access_code.clone(),
            yes: *yes,
            timeout: std::time::Duration::from_secs((*timeout).max(1)),
        };
        let mut input = std::io::stdin().lock();
        return Ok(runtime()?.block_on(printvigil::setup::bambu::run(&path, &options, &mut input, &mut std::io::stdout()))?);
    }
    if let Command::Setup(SetupArgs { command, moonraker }) = &cli.command {
        let args = match command {
            Some(SetupCommand::Moonraker(a)) => a,
            _ => moonraker,
        };
        return setup_moonraker(config_path(), args);
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            // Camera URLs redact themselves (SecretUrl); this also covers the printer and
            // server URLs, and any URL setting added later.
            let mut shown = serde_json::to_value(&config)?;
            redact_urls(&mut shown);
            out!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Run => {
            let rt = runtime()?;
            let result = rt.block_on(printvigil::watch::supervisor::run(&config));
            // Blocking work still running (a frame being decoded, a read stuck in the
            // kernel) must not hold the exit: dropping the runtime would wait for it.
            rt.shutdown_timeout(printvigil::watch::supervisor::EXIT_WAIT);
            Ok(result?)
        }
        Command::Demo { dir, cadence, mqtt, no_mqtt } => {
            if !(cadence.is_finite() && (0.01..=10.0).contains(&cadence)) {
                return Err("--cadence must be between 0.01 and 10 seconds".into());
            }
            let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("printvigil-demo"));
            let mqtt = match (mqtt, no_mqtt) {
                (_, true) => None,
                (Some(url), _) => {
                    let cfg = printvigil::sink::mqtt::MqttConfig::new(&url);
                    cfg.validate().map_err(|e| format!("--mqtt: {e}"))?;
                    Some(cfg)
                }
                (None, _) => config.mqtt.clone().or_else(printvigil::demo::local_broker),
            };
            let summary = runtime()?.block_on(printvigil::demo::run(printvigil::demo::DemoOptions {
                dir,
                cadence: std::time::Duration::from_secs_f64(cadence),
                onnxruntime: config.detector.onnxruntime.clone(),
                mqtt,
            }))?;
            std::io::Write::write_all(&mut std::io::stdout(), summary.render().as_bytes())?;
            if !summary.complete() {
                return Err("the demo did not show the whole story (see the summary)".into());
            }
            Ok(())
        }
        Command::Predict(args) => predict(&config, args),
        Command::Bench(args) => bench(&config, args),
        Command::Model(ModelCommand::Fetch { dest, url, sha256 }) => {
            let dest = dest.unwrap_or_else(|| config.detector.model_path(&config.state_dir));
            let urls: Vec<&str> =
                if url.is_empty() { fetch::MODEL_URLS.to_vec() } else { url.iter().map(String::as_str).collect() };
            let client = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(20)).build()?;
            match runtime()?.block_on(fetch::fetch(&client, &urls, &sha256, &dest))? {
                fetch::Fetched::AlreadyPresent => out!("{} is already present and verified", dest.display()),
                fetch::Fetched::Downloaded { bytes, resumed_from } => out!(
                    "installed {} ({bytes} bytes{}), sha256 verified",
                    dest.display(),
                    if resumed_from > 0 { format!(", resumed at {resumed_from}") } else { String::new() }
                ),
            }
            Ok(())
        }
        Command::Login { paste } => runtime()?.block_on(login(&config, paste)),
        Command::Logout => runtime()?.block_on(async {
            let (scfg, _) = server_cfg(&config)?;
            let api = server::client_for(scfg, &config.state_dir)?;
            out!("{}", api.tokens().revoke_and_forget().await?);
            Ok(())
        }),
        Command::Notify(NotifyCommand::Test) => {
            if config.notify.is_empty() {
                return Err("no [[notify]] entries in the config (see config/printvigil.toml)".into());
            }
            let lines = runtime()?.block_on(printvigil::sink::check::test_notifications(&config.notify));
            let failed = lines.iter().any(|l| !l.ok);
            for l in lines {
                out!("{l}");
            }
            if failed {
                return Err("a test message could not be sent (see above)".into());
            }
            Ok(())
        }
        Command::Check | Command::Setup(_) | Command::Model(ModelCommand::Prepare { .. }) => unreachable!(),
        Command::SimMirror { prints, frames, frame_ms } => runtime()?.block_on(sim_mirror(&config, prints, frames, frame_ms)),
    }
}

fn setup_moonraker(config: PathBuf, a: &MoonrakerSetupArgs) -> Result<(), AnyError> {
    use std::io::IsTerminal as _;
    let opts = printvigil::setup::moonraker::Options {
        config,
        moonraker_url: a.moonraker_url.clone(),
        api_key: a.api_key.clone(),
        name: a.name.clone(),
        camera: a.camera.clone(),
        score_frame: if a.no_score_frame { Some(false) } else if a.score_frame { Some(true) } else { None },
        fetch_model: a.fetch_model.then_some(true),
        server: a.server.clone(),
        server_token: a.server_token.clone(),
        server_login: a.server_login,
        server_client_id: a.server_client_id.clone(),
        server_client_secret: a.server_client_secret.clone(),
        no_check: a.no_check,
    };
    let interactive = !a.yes && std::io::stdin().is_terminal();
    let mut stdout = std::io::stdout();
    let mut prompter = printvigil::setup::prompt::Prompter::new(
        Box::new(std::io::BufReader::new(std::io::stdin())),
        &mut stdout,
        interactive,
    );
    Ok(runtime()?.block_on(printvigil::setup::moonraker::run(&opts, &mut prompter))?)
}

/// Replaces the password of every URL string in `v` by `***`.
fn redact_urls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => *s = printvigil::secret::SecretUrl::new(s.as_str()).redacted(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_urls),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_urls),
        _ => {}
    }
}

fn load_detector(config: &Config, args: &ModelArgs) -> Result<Detector, AnyError> {
    let path = args.model.clone().unwrap_or_else(|| config.detector.model_path(&config.state_dir));
    let threads = args.threads.unwrap_or_else(|| config.detector.threads());
    let model =
        Model::load(&path, config.detector.onnxruntime.as_deref(), SessionSettings { threads, memory: tuning(&args.tune) })?;
    Ok(Detector::new(model))
}

fn tuning(tune: &[String]) -> printvigil::detector::model::MemoryTuning {
    printvigil::detector::model::MemoryTuning {
        arena: !tune.iter().any(|t| t == "no-arena"),
        prepack: tune.iter().any(|t| t == "prepack"),
        full_optimization: !tune.iter().any(|t| t == "no-full-opt"),
        spin: tune.iter().any(|t| t == "spin"),
    }
}

fn read_frame(path: &Path) -> Result<Vec<u8>, AnyError> {
    std::fs::read(path).map_err(|e| format!("cannot read frame {}: {e}", path.display()).into())
}

fn predict(config: &Config, args: PredictArgs) -> Result<(), AnyError> {
    let sensitivity = args.sensitivity.unwrap_or(config.detector.sensitivity);
    let range = printvigil::config::SENSITIVITY;
    if !(sensitivity.is_finite() && range.contains(&sensitivity)) {
        return Err(format!("--sensitivity must be between {} and {}", range.start(), range.end()).into());
    }
    let mut detector = load_detector(config, &args.model)?;
    let mut state = SmoothingState::default();
    if let Some(dir) = &args.annotate {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut failed = 0;
    for path in &args.frames {
        let result = read_frame(path).and_then(|bytes| {
            let found = detector.detect(&bytes)?;
            Ok((bytes, found))
        });
        let (bytes, found) = match result {
            Ok(r) => r,
            Err(e) => {
                // A bad frame is reported and skipped; the print's state goes on.
                eprintln!("{}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let p = printvigil::detector::smoothing::frame_p(&found.detections, 1.0);
        let verdict = state.observe(p, sensitivity);
        let mut annotated = None;
        if let Some(dir) = &args.annotate {
            let mut img = preprocess::decode_jpeg(&bytes)?;
            annotate::draw(&mut img, &found.detections);
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let out = dir.join(format!("{name}.annotated.jpg"));
            std::fs::write(&out, annotate::encode_jpeg(&img, 85)?)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            annotated = Some(out);
        }
        if args.json {
            let detections: Vec<_> =
                found.detections.iter().map(|d| serde_json::json!(["failure", d.confidence, d.bbox])).collect();
            let line = serde_json::json!({
                "frame": path, "width": found.width, "height": found.height,
                "detections": detections, "p": p, "state": state,
                "warn": verdict.warn, "pause": verdict.pause, "normalized_p": verdict.normalized_p,
                "annotated": annotated,
            });
            out!("{line}");
        } else {
            out!(
                "{}: {} detections, p={:.4} | frame {} ewm={:.4} short={:.4} long={:.4} | {} normalized_p={:.3}",
                path.display(),
                found.detections.len(),
                p,
                state.current_frame_num,
                state.ewm_mean,
                state.rolling_mean_short,
                state.rolling_mean_long,
                if verdict.pause { "PAUSE" } else if verdict.warn { "WARN" } else { "ok" },
                verdict.normalized_p
            );
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} frames could not be scored", args.frames.len()).into());
    }
    Ok(())
}

fn bench(config: &Config, args: BenchArgs) -> Result<(), AnyError> {
    if let Some(printers) = args.printers {
        return farm_bench(config, args, printers);
    }
    let before = printvigil::bench::Memory::now();
    let t = std::time::Instant::now();
    let mut detector = load_detector(config, &args.model)?;
    let load = t.elapsed();
    let loaded = printvigil::bench::Memory::now();
    let frames = if args.frames.is_empty() {
        printvigil::bench::synthetic_frames(8, 1280, 720)
    } else {
        args.frames.iter().map(|p| read_frame(p)).collect::<Result<_, _>>()?
    };
    let report = printvigil::bench::run(&mut detector, &frames, args.runs.max(1))?;
    let after = printvigil::bench::Memory::now();
    let pipelined = if args.pipelined {
        Some(printvigil::bench::run_pipelined(&mut detector, &frames, args.runs.max(1))?)
    } else {
        None
    };
    out!("model: {} ({} threads)", detector.model().path().display(), args.model.threads.unwrap_or_else(|| config.detector.threads()));
    out!("model load: {:.0} ms", load.as_secs_f64() * 1000.0);
    print!("{}", report.render());
    out!(
        "memory (MiB): before load RSS {:.0}; after load RSS {:.0}, peak {:.0}; after run RSS {:.0} (steady), peak {:.0}",
        before.rss_mib, loaded.rss_mib, loaded.peak_rss_mib, after.rss_mib, after.peak_rss_mib
    );
    if args.compare {
        let threads = detector.model().threads();
        let mut plain = Detector::new(Model::load_plain(detector.model().path(), config.detector.onnxruntime.as_deref(), threads)?);
        let comparison = printvigil::bench::compare(&mut detector, &mut plain, &frames, args.runs.max(1))?;
        print!("{}", comparison.render());
    }
    if let Some((piped, per_frame)) = pipelined {
        let sequential_run = report.stage(|t| t.infer).0.as_secs_f64();
        out!(
            "pipelined: {:.3} ms wall per frame; / sequential session.run median: {:.4}; session.run median while pipelined {:.3} ms",
            per_frame.as_secs_f64() * 1000.0,
            per_frame.as_secs_f64() / sequential_run,
            piped.stage(|t| t.infer).0.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

fn farm_bench(config: &Config, args: BenchArgs, printers: usize) -> Result<(), AnyError> {
    if !(1..=256).contains(&printers) {
        return Err("--printers must be between 1 and 256".into());
    }
    if !(args.cadence.is_finite() && (0.01..=3600.0).contains(&args.cadence)) {
        return Err("--cadence must be between 0.01 and 3600 seconds".into());
    }
    if !(args.duration.is_finite() && (1.0..=86400.0).contains(&args.duration)) {
        return Err("--duration must be between 1 and 86400 seconds".into());
    }
    let mut plan = config.detector.plan(printers);
    if let Some(t) = args.model.threads {
        plan.threads = t.max(1);
    }
    if let Some(s) = args.sessions {
        plan.sessions = s.max(1);
    }
    let path = args.model.model.clone().unwrap_or_else(|| config.detector.model_path(&config.state_dir));
    let settings = SessionSettings { threads: plan.threads, memory: tuning(&args.model.tune) };
    let detectors = (0..plan.sessions)
        .map(|_| Model::load(&path, config.detector.onnxruntime.as_deref(), settings).map(Detector::new))
        .collect::<Result<Vec<_>, _>>()?;
    let frames = if args.frames.is_empty() {
        printvigil::bench::synthetic_frames(8, 1280, 720)
    } else {
        args.frames.iter().map(|p| read_frame(p)).collect::<Result<_, _>>()?
    };
    let dir = printvigil::bench::farm::default_dir();
    let opts = printvigil::bench::farm::FarmOptions {
        printers,
        cadence: std::time::Duration::from_secs_f64(args.cadence),
        duration: std::time::Duration::from_secs_f64(args.duration),
        frames,
        dir: dir.clone(),
    };
    out!("model: {}", path.display());
    let rt = runtime()?;
    let result = rt.block_on(printvigil::bench::farm::run(opts, detectors, plan.threads));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    printvigil::bench::farm::clean(&dir);
    print!("{}", result?.render(args.per_printer));
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, AnyError> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn server_cfg(config: &Config) -> Result<(&server::ServerConfig, ()), AnyError> {
    Ok((config.server.as_ref().ok_or(server::MirrorError::NotConfigured)?, ()))
}

async fn login(config: &Config, paste: bool) -> Result<(), AnyError> {
    let (scfg, _) = server_cfg(config)?;
    let api = server::client_for(scfg, &config.state_dir)?;
    let mode = if paste {
        server::login::Mode::Paste(Box::new(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            Ok(line)
        }))
    } else {
        server::login::Mode::Loopback { timeout: std::time::Duration::from_secs(600) }
    };
    server::login::login(scfg, api.tokens(), mode, |url| {
        println!("Open this address in a browser and approve printvigil:\n\n  {url}\n");
        if paste {
            println!("Your browser then goes to an http://127.0.0.1 address that fails to load (it is this host's).");
            println!("Copy that whole address from the browser's address bar and paste it here:");
        } else {
            println!("Waiting for the browser to come back to this host (up to 10 minutes)...");
        }
    })
    .await?;
    out!("Linked. The token is kept in {} (owner-only).", server::token_file(&config.state_dir).display());
    Ok(())
}

/// Simulated prints through the mirror: start, frames, finish for each; a restarted run
/// replays the same sequence and the outbox ignores what it already holds. Prints
/// `queued <kind> <job>` when an event is committed and `done` when all are delivered.
async fn sim_mirror(config: &Config, prints: usize, frames: usize, frame_ms: u64) -> Result<(), AnyError> {
    let (scfg, _) = server_cfg(config)?;
    let mirror = server::Mirror::open(scfg, &config.state_dir)?;
    mirror.spawn();
    let jpeg = server::upload::solid_jpeg(320, 240, [100, 100, 100]);
    let score = server::upload::FrameScore { p: 0.2, smoothed: 0.1, ..Default::default() };
    for i in 0..prints {
        let job = format!("job-{i}");
        if mirror.start_print(server::DEFAULT_PRINTER, &job, &format!("{job}.gcode"))? {
            out!("queued start {job}");
        }
        for _ in 0..frames {
            mirror.offer_frame(server::DEFAULT_PRINTER, jpeg.clone(), &score);
            tokio::time::sleep(std::time::Duration::from_millis(frame_ms)).await;
        }
        if mirror.finish_print(server::DEFAULT_PRINTER, &job, server::FinishStatus::Success)? {
            out!("queued finish {job}");
        }
    }
    if !mirror.flush(std::time::Duration::from_secs(120)).await {
        return Err("events still queued after 120 s".into());
    }
    out!("done");
    Ok(())
}
