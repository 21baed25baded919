//! The `plugboard` command: `run`, `check`, `ctl`, `plugin check|test|new`.

mod check;
mod ctl;
mod new;
mod plugin;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::server::Built;

#[derive(Parser)]
#[command(
    name = "plugboard",
    version,
    about = "Programmable L4/L7 load-balancing proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Log format; overrides `[proxy] log_format`.
        #[arg(long, value_enum)]
        log_format: Option<Format>,
    },
    /// Validate a configuration file without starting.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Talk to a running proxy's admin API: status, drain, maint, ready, weight.
    Ctl(ctl::CtlArgs),
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// Reads, validates and builds a configuration, as `run` would: `check` thereby catches what
/// only building reveals (a plugin this build cannot load). Errors are printed.
fn build(path: &Path) -> Result<Built, ExitCode> {
    let cfg = Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    Built::new(cfg).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match build(&config) {
            Ok(built) => {
                check::summary(&built.cfg);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Plugin { command } => plugin::run(command),
        Command::Ctl(args) => ctl::run(args),
        Command::Run { config, log_format } => {
            let format = log_format.map(|f| match f {
                Format::Json => crate::config::LogFormat::Json,
                Format::Human => crate::config::LogFormat::Human,
            });
            run::run(&config, format)
        }
    }
}
