//! `plugboard plugin check`: load one plugin file (or a stock plugin by name), print the input
//! it is tried on, and run each of its hooks once on it, printing what it decided.

use std::fmt::Write;
use std::path::Path;

use super::decide::{self, show_fault, Numbering};
use super::sample::Sample;
use crate::plugin::runtime::{hook_names, HOOK_HEALTH, HOOK_KEY, HOOK_RESPONSE, HOOK_SELECT};

/// Loads `path` and runs each hook on `sample`; the response step runs as if the first
/// backend served, the health check checks the first backend. Returns a human report, or why
/// the plugin cannot load.
pub fn exercise(path: &Path, settings: &str, sample: &Sample) -> Result<String, String> {
    let loaded = super::load(path, settings)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} plugin, ABI version {}",
        path.display(),
        loaded.kind(),
        loaded.abi
    );
    let _ = writeln!(out, "hooks: {}", hook_names(loaded.hooks));
    let mut inst = super::instance(&loaded, path, settings)?;
    let first = super::first_backend(&loaded);
    out.push_str(&sample.describe(first));
    let pool = sample.pool();
    let n = Numbering { first, pool: &pool };
    let mut line = |hook: &str, r: Result<String, _>| {
        let _ = writeln!(out, "{hook}: {}", r.unwrap_or_else(|f| show_fault(&f)));
    };
    if loaded.hooks & HOOK_SELECT != 0 {
        let r = decide::select(inst.as_mut(), sample, &pool);
        line("select-server", r.map(|s| n.select(&s)));
    }
    if loaded.hooks & HOOK_KEY != 0 {
        let r = decide::key(inst.as_mut(), sample, &pool);
        line("persistence-key", r.map(|k| n.key(&k)));
    }
    if loaded.hooks & HOOK_RESPONSE != 0 {
        let r = decide::response(inst.as_mut(), sample, &pool, 0);
        line(
            "response step",
            r.map(|h| format!("added [{}]", h.join(", "))),
        );
    }
    if loaded.hooks & HOOK_HEALTH != 0 {
        let r = decide::health(inst.as_mut(), &pool, 0);
        line(
            "health-check",
            r.map(|h| format!("{h} (checked {})", n.name(0))),
        );
    }
    Ok(out)
}
