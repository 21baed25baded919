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
    for s in &built.cfg.services {
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        tracing::info!(service = %s.name, mode = s.mode.as_str(), listen = %listen.join(", "),
            backends = s.backends.len(), scheduler = %s.scheduler, "service");
    }
    if let Some(reg) = &built.plugins {
        for (name, kind, hooks) in reg.summary() {
            tracing::info!(plugin = %name, kind, %hooks, "plugin loaded");
        }
    }
    let services = built.cfg.services.len();
    let server = match built.serve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %config.display(), services, "plugboard starting");
    server.run_forever()
}
