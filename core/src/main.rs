//! The `plugboard` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: fewer CPU cycles per request and less memory per idle connection than glibc's
/// allocator under pingora's many small per-request allocations (measured by benches/run).
/// Built with `no_thp`: otherwise mimalloc asks for transparent huge pages and its first arena
/// alone makes 64 MiB resident (93 -> 28 MiB at start, no throughput change measured).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use plugboard::config::{Config, LogFormat};

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
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a .wasm or .lua plugin (or a stock plugin by name: rdp-cookie, mcx-affinity,
    /// agent-load), print its hooks and ABI version, and run each hook once on a sample
    /// request.
    Check {
        file: PathBuf,
        /// Settings handed to the plugin, as JSON (what `[service.plugin.<name>]` becomes).
        #[arg(long, default_value = "{}")]
        settings: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let cfg = Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    // Build the services once, as `run` would, so that `check` catches what only building
    // reveals (such as a plugin this build cannot load).
    let metrics = plugboard::metrics::Metrics::new();
    let plugins = plugboard::server::load_plugins(&cfg, &metrics).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    plugboard::server::build_balancers(&cfg, &metrics, plugins.as_deref()).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })?;
    Ok(cfg)
}

/// The one-screen summary `check` prints (written at once, so a closed pipe is no panic).
fn summary(cfg: &Config) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: OK, {} service(s), {} worker thread(s)",
        cfg.path.display(),
        cfg.services.len(),
        cfg.proxy.threads
    );
    for s in &cfg.services {
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            out,
            "  {} [{}] listen {} scheduler {}",
            s.name,
            s.mode.as_str(),
            listen.join(", "),
            s.scheduler
        );
        if let Some(p) = &s.persistence {
            let _ = writeln!(
                out,
                "    persistence {} timeout {}",
                p.key,
                humantime::format_duration(p.timeout)
            );
        }
        if let Some(h) = &s.health_check {
            let _ = writeln!(
                out,
                "    health {:?} every {} timeout {} rise {} fall {}",
                h.kind,
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                h.rise,
                h.fall
            );
        }
        for b in &s.backends {
            let _ = writeln!(
                out,
                "    backend {} weight {}{}",
                b.address,
                b.weight,
                if b.enabled { "" } else { " (disabled)" }
            );
        }
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(cfg) => {
                summary(&cfg);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Plugin {
            command: PluginCommand::Check { file, settings },
        } => {
            let limits = plugboard::plugin::Limits {
                deadline: plugboard::config::DEFAULT_PLUGIN_DEADLINE,
                memory: plugboard::config::DEFAULT_PLUGIN_MEMORY,
            };
            match plugboard::plugin::exercise(&file, &settings, limits) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Run { config, log_format } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let format = match log_format {
                Some(Format::Json) => LogFormat::Json,
                Some(Format::Human) => LogFormat::Human,
                None => cfg.proxy.log_format,
            };
            plugboard::logging::init(format);
            let server = match plugboard::server::build(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            tracing::info!(config = %config.display(), services = cfg.services.len(), "plugboard starting");
            server.run_forever()
        }
    }
}
