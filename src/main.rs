//! The `printvigil` binary: parses the command line, runs a subcommand, and turns module
//! errors into messages that say what to do.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use printvigil::config::Config;
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

#[derive(Subcommand)]
enum Command {
    /// Print the effective configuration after all layers are applied.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("printvigil: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRINTVIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Command::Check = cli.command {
        let lines = match Config::load(cli.config.as_deref()) {
            Ok(config) => {
                println!("ok    config is valid");
                runtime()?.block_on(server::check::run(&config))
            }
            Err(e) => vec![server::check::Line::fail("config is valid", e.to_string(), "fix the key named above")],
        };
        let mut failed = false;
        for l in &lines {
            println!("{l}");
            failed |= !l.ok;
        }
        return if failed { Err("some checks failed; each FAIL line says how to fix it".into()) } else { Ok(()) };
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{}", toml_of(&config)?);
            Ok(())
        }
        Command::Login { paste } => runtime()?.block_on(login(&config, paste)),
        Command::Logout => runtime()?.block_on(async {
            let (scfg, _) = server_cfg(&config)?;
            let api = server::client_for(scfg, &config.state_dir)?;
            println!("{}", api.tokens().revoke_and_forget().await?);
            Ok(())
        }),
        Command::Check => unreachable!(),
        Command::SimMirror { prints, frames, frame_ms } => runtime()?.block_on(sim_mirror(&config, prints, frames, frame_ms)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error>> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn server_cfg(config: &Config) -> Result<(&server::ServerConfig, ()), Box<dyn std::error::Error>> {
    Ok((config.server.as_ref().ok_or(server::MirrorError::NotConfigured)?, ()))
}

async fn login(config: &Config, paste: bool) -> Result<(), Box<dyn std::error::Error>> {
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
    println!("Linked. The token is kept in {} (owner-only).", server::token_file(&config.state_dir).display());
    Ok(())
}

/// Simulated prints through the mirror: start, frames, finish for each; a restarted run
/// replays the same sequence and the outbox ignores what it already holds. Prints
/// `queued <kind> <job>` when an event is committed and `done` when all are delivered.
async fn sim_mirror(config: &Config, prints: usize, frames: usize, frame_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (scfg, _) = server_cfg(config)?;
    let mirror = server::Mirror::open(scfg, &config.state_dir)?;
    mirror.spawn();
    let jpeg = server::upload::solid_jpeg(320, 240, [100, 100, 100]);
    let score = server::upload::FrameScore { p: 0.2, smoothed: 0.1, ..Default::default() };
    for i in 0..prints {
        let job = format!("job-{i}");
        if mirror.start_print(server::DEFAULT_PRINTER, &job, &format!("{job}.gcode"))? {
            println!("queued start {job}");
        }
        for _ in 0..frames {
            mirror.offer_frame(server::DEFAULT_PRINTER, jpeg.clone(), &score);
            tokio::time::sleep(std::time::Duration::from_millis(frame_ms)).await;
        }
        if mirror.finish_print(server::DEFAULT_PRINTER, &job, server::FinishStatus::Success)? {
            println!("queued finish {job}");
        }
    }
    if !mirror.flush(std::time::Duration::from_secs(120)).await {
        return Err("events still queued after 120 s".into());
    }
    println!("done");
    Ok(())
}

fn toml_of(config: &Config) -> Result<String, Box<dyn std::error::Error>> {
    Ok(serde_json::to_string_pretty(config)? + "\n")
}
