//! `plugboard run`: build, log what runs, serve until a signal.

use std::path::Path;
use std::process::ExitCode;

use crate::config::LogFormat;

pub fn run(config: &Path, format: Option<LogFormat>) -> ExitCode {
    let built = match super::build(config) {
        Ok(b) => b,
        Err(code) => return code,
    };
    crate::observe::logging::init(format.unwrap_or(built.cfg.proxy.log_format));
    for w in &built.cfg.warnings {
        tracing::warn!("{w}");
    }
    crate::server::log_what_runs(&built.cfg, built.plugins.as_deref());
    let services = built.cfg.services.len();
    let grace = built.cfg.proxy.grace_period;
    let server = match built.serve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %config.display(), services, "plugboard starting");
    crate::server::run(server, grace)
}
