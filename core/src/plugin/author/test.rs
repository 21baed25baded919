//! `plugboard plugin test FILE CASES.toml`: runs every case of a CASES file through one
//! instance of the plugin, in order (so a case sees the state earlier cases left, as a worker
//! thread's instance would), and reports each mismatch with what was expected and what came.

use std::fmt::Write;
use std::path::Path;

use super::cases::{self, Case, HealthWant, Want};
use super::decide::{self, show_fault, HealthAnswer, Numbering};
use crate::plugin::runtime::{Fault, Instance, HOOK_HEALTH, HOOK_KEY, HOOK_SELECT};
use crate::plugin::slot::Loaded;

/// What a run found.
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
    /// One line per case, with the differences under a failed one.
    pub report: String,
}

/// Loads the plugin and the cases (with the settings they give) and runs them. `Err`: the
/// cases file is wrong (every error at its position) or the plugin cannot load.
pub fn run(plugin: &Path, cases_file: &Path) -> Result<Outcome, String> {
    let first = usize::from(plugin.extension().is_some_and(|e| e == "lua"));
    let table = cases::load(cases_file, first).map_err(|e| e.to_string())?;
    let loaded =
        super::load(plugin, &table.settings).map_err(|e| format!("{}: {e}", plugin.display()))?;
    let mut inst = super::instance(&loaded, plugin, &table.settings)?;
    let mut out = Outcome {
        passed: 0,
        failed: 0,
        report: String::new(),
    };
    for case in &table.cases {
        let (diffs, faulted) = one(&loaded, inst.as_mut(), case, first);
        if faulted {
            // As in the proxy, an instance that faulted is replaced by a fresh one.
            inst = super::instance(&loaded, plugin, &table.settings)?;
        }
        if diffs.is_empty() {
            out.passed += 1;
            let _ = writeln!(out.report, "ok    {}", case.name);
            continue;
        }
        out.failed += 1;
        let _ = writeln!(out.report, "FAIL  {} ({})", case.name, case.at);
        for d in diffs {
            let _ = writeln!(out.report, "{d}");
        }
        for l in case.sample.describe(first).lines() {
            let _ = writeln!(out.report, "      {l}");
        }
    }
    let _ = writeln!(
        out.report,
        "{} cases: {} passed, {} failed",
        table.cases.len(),
        out.passed,
        out.failed
    );
    Ok(out)
}

/// The differences of one case, and whether a call faulted.
fn one(loaded: &Loaded, inst: &mut dyn Instance, case: &Case, first: usize) -> (Vec<String>, bool) {
    let pool = case.sample.pool();
    let n = Numbering { first, pool: &pool };
    let mut v = Verdict {
        hooks: loaded.hooks,
        diffs: Vec::new(),
        faulted: false,
    };
    let sample = &case.sample;
    if let Some(want) = &case.select {
        v.compare(
            "select-server",
            HOOK_SELECT,
            want,
            || decide::select(inst, sample, &pool),
            |g, w| g == w,
            (|g| n.select(g), |w| n.select(w)),
        );
    }
    if let Some(want) = &case.key {
        v.compare(
            "persistence-key",
            HOOK_KEY,
            want,
            || decide::key(inst, sample, &pool),
            |g, w| g == w,
            (|g| n.key(g), |w| n.key(w)),
        );
    }
    if let Some(want) = &case.health {
        v.compare(
            "health-check",
            HOOK_HEALTH,
            want,
            || decide::health(inst, &pool, case.check),
            fits,
            (
                |g: &HealthAnswer| g.to_string(),
                |w| format!("{} of {}", wanted(w), n.name(case.check)),
            ),
        );
    }
    (v.diffs, v.faulted)
}

/// The differences found so far in one case.
struct Verdict {
    hooks: u32,
    diffs: Vec<String>,
    faulted: bool,
}

impl Verdict {
    /// Runs one hook if the plugin has it and notes a difference from `want`. `show` prints
    /// an answer and an expectation.
    fn compare<G, W>(
        &mut self,
        hook: &str,
        bit: u32,
        want: &Want<W>,
        run: impl FnOnce() -> Result<G, Fault>,
        same: impl Fn(&G, &W) -> bool,
        show: (impl Fn(&G) -> String, impl Fn(&W) -> String),
    ) {
        let expected = match want {
            Want::Answer(w) => show.1(w),
            Want::Fault => "a fault".into(),
        };
        let got = match self.hooks & bit {
            0 => "nothing: the plugin does not implement this hook".to_string(),
            _ => {
                let got = run();
                self.faulted |= got.is_err();
                match (&got, want) {
                    (Ok(g), Want::Answer(w)) if same(g, w) => return,
                    (Err(_), Want::Fault) => return,
                    (Ok(g), _) => show.0(g),
                    (Err(f), _) => show_fault(f),
                }
            }
        };
        self.diffs.push(format!(
            "      {hook}: expected {expected}\n      {:width$}  got      {got}",
            "",
            width = hook.len()
        ));
    }
}

/// Whether a health answer has every property the case names.
fn fits(got: &HealthAnswer, w: &HealthWant) -> bool {
    w.up.is_none_or(|u| u == got.up)
        && w.load.is_none_or(|l| Some(l) == got.load)
        && w.weight_percent.is_none_or(|p| p == got.weight_percent)
        && w.maxconn.is_none_or(|m| m == got.maxconn)
        && w.admin.is_none_or(|a| a == got.admin)
        && w.agent_up.is_none_or(|a| a == got.agent_up)
}

/// The properties a case names, as a health answer prints them.
fn wanted(w: &HealthWant) -> String {
    let mut parts = Vec::new();
    if let Some(u) = w.up {
        parts.push(if u { "up" } else { "down" }.to_string());
    }
    if let Some(l) = w.load {
        parts.push(format!("load {l}"));
    }
    if let Some(p) = w.weight_percent {
        parts.push(format!("weight {p}%"));
    }
    if let Some(m) = w.maxconn {
        parts.push(format!("maxconn {m}"));
    }
    if let Some(a) = w.admin {
        parts.push(a.name().to_string());
    }
    if let Some(a) = w.agent_up {
        parts.push(if a { "agent up" } else { "agent down" }.to_string());
    }
    parts.join(", ")
}
