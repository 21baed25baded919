//! Tools for plugin authors that run a plugin outside the proxy: `plugboard plugin check`
//! (each hook once on one sample input) and `plugboard plugin test` (a table of inputs and
//! expected decisions, for a plugin's CI).
//!
//! - [`sample`]: the input (request or tcp payload, client, backends).
//! - [`decide`]: one hook call and its answer, printable and comparable.
//! - [`check`], [`cases`] (the CASES.toml format) and [`test`] (running it).

pub mod cases;
pub mod check;
pub mod decide;
pub mod sample;
pub mod test;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::log::PluginLog;
use super::runtime::{Instance, Limits};
use super::slot::{Loaded, Runtimes, Source};
use super::stock;

/// Deadline of a call outside the proxy. Longer than `plugin_deadline` so that a busy machine
/// (a CI runner) never turns a case into a timeout; an endless loop still ends as one.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// Limits of a call outside the proxy: [`DEADLINE`], and the proxy's default memory cap.
pub fn limits() -> Limits {
    Limits {
        deadline: DEADLINE,
        memory: crate::config::DEFAULT_PLUGIN_MEMORY,
    }
}

/// Loads `path`, a file or a stock plugin's name (when no such file exists).
pub fn load(path: &Path, settings: &str) -> Result<Loaded, String> {
    let runtimes = Runtimes::new()?;
    match (path.exists(), path.to_str().and_then(stock::get)) {
        (false, Some(bytes)) => runtimes.load(
            Source::Stock(path.to_str().unwrap_or(""), bytes),
            settings,
            limits(),
        ),
        _ => runtimes.load(Source::File(path), settings, limits()),
    }
}

/// A fresh instance with `settings`; its log lines go to stderr under `path`'s name.
pub fn instance(loaded: &Loaded, path: &Path, settings: &str) -> Result<Box<dyn Instance>, String> {
    let log = Arc::new(PluginLog::new(&path.display().to_string(), "sample", None));
    loaded
        .code
        .instantiate(settings, limits(), log)
        .map_err(|f| format!("cannot start with settings {settings}: {}", f.message))
}

/// The number the plugin gives the first backend: 1 in Lua, 0 in WASM.
pub fn first_backend(loaded: &Loaded) -> usize {
    usize::from(loaded.kind() == "lua")
}
