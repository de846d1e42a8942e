//! The `printvigil` binary: parses the command line, runs a subcommand, and turns module
//! errors into messages that say what to do.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use printvigil::config::Config;

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
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{}", toml_of(&config)?);
            Ok(())
        }
    }
}

fn toml_of(config: &Config) -> Result<String, Box<dyn std::error::Error>> {
    Ok(serde_json::to_string_pretty(config)? + "\n")
}
