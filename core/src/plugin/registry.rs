//! Every plugin a configuration uses: resolved, compiled once, checked against each service's
//! settings, bound to services, and reloaded when its file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::adapters::{PluginKey, PluginSelect};
use super::binding::{Binding, BindingSpec};
use super::health::PluginHealth;
use super::log::PluginLog;
use super::runtime::{hook_names, Limits, HOOK_HEALTH, HOOK_KEY, HOOK_SELECT};
use super::slot::{Runtimes, Slot, Source};
use super::spares::Factory;
use super::{stock, watch};
use crate::balance::balancer::{AgentFeed, HookSource};
use crate::balance::hooks::{HealthCheck, PersistenceKey, SelectServer};
use crate::config::{Config, ConfigError, ConfigErrors, Hook, Mode};
use crate::observe::metrics::PluginMetrics;

/// Default interval of an agent feed (HAProxy's agent-inter).
const DEFAULT_FEED_INTERVAL: Duration = Duration::from_secs(2);
/// Longest one agent poll may take.
const FEED_TIMEOUT: Duration = Duration::from_secs(2);

pub fn hook_bit(h: Hook) -> u32 {
    match h {
        Hook::SelectServer => HOOK_SELECT,
        Hook::PersistenceKey => HOOK_KEY,
        Hook::HealthCheck => HOOK_HEALTH,
    }
}

/// Every plugin slot of a configuration, with the watcher that reloads them.
pub struct Registry {
    runtimes: Arc<Runtimes>,
    slots: HashMap<String, Arc<Slot>>,
    limits: Limits,
    threads: usize,
    metrics: PluginMetrics,
    factory: Arc<Factory>,
    bindings: Mutex<Vec<Arc<Binding>>>,
    watcher: Mutex<Option<watch::Watcher>>,
}

impl Registry {
    /// Resolves and loads every plugin the configuration refers to. Errors are reported at
    /// the line of the reference.
    pub fn load(cfg: &Config, metrics: PluginMetrics) -> Result<Registry, ConfigErrors> {
        let limits = Limits {
            deadline: cfg.proxy.plugin_deadline,
            memory: cfg.proxy.plugin_memory,
        };
        let runtimes = Runtimes::shared().map_err(|e| {
            ConfigErrors(vec![ConfigError::whole_file(
                &cfg.path,
                format!("cannot start the plugin runtimes: {e}"),
            )])
        })?;
        let mut errors = Vec::new();
        let mut slots: HashMap<String, Slot> = HashMap::new();
        let mut failed: Vec<&str> = Vec::new();
        for r in &cfg.plugin_refs {
            let err = |message: String| ConfigError {
                file: cfg.path.clone(),
                line: r.line,
                col: r.col,
                message: format!("plugin:{}: {message}", r.name),
            };
            if failed.contains(&r.name.as_str()) {
                continue;
            }
            let settings = settings_json(cfg, r.service, &r.name);
            if !slots.contains_key(&r.name) {
                match open(cfg, &runtimes, &r.name, &settings, limits) {
                    Ok(slot) => {
                        slots.insert(r.name.clone(), slot);
                    }
                    Err(e) => {
                        errors.push(err(e));
                        failed.push(&r.name);
                        continue;
                    }
                }
            }
            let slot = slots.get_mut(&r.name).expect("inserted above");
            let have = slot.hooks();
            if have & hook_bit(r.hook) == 0 {
                errors.push(err(format!(
                    "{} does not implement the {} hook (it implements: {})",
                    slot.path.display(),
                    r.hook.as_str(),
                    hook_names(have)
                )));
                continue;
            }
            slot.required |= hook_bit(r.hook);
            let settings: Arc<str> = settings.into();
            if !slot.settings.contains(&settings) {
                // Check that this version accepts these settings, as a reload will.
                let log = Arc::new(PluginLog::new(&r.name, &cfg.services[r.service].name, None));
                if let Err(f) = slot.current().code.instantiate(&settings, limits, log) {
                    errors.push(err(format!(
                        "refused the settings of service {:?}: {}",
                        cfg.services[r.service].name, f.message
                    )));
                    continue;
                }
                slot.settings.push(settings);
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Registry {
            runtimes,
            slots: slots.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            limits,
            threads: cfg.proxy.threads,
            metrics,
            factory: Factory::start(),
            bindings: Mutex::new(Vec::new()),
            watcher: Mutex::new(None),
        })
    }

    /// Plugin names and the hooks their current versions implement, for the start-up log.
    pub fn summary(&self) -> Vec<(String, &'static str, String, String)> {
        let mut v: Vec<_> = self
            .slots
            .values()
            .map(|s| {
                let l = s.current();
                let file = match l.file.ends_with("(built in)") {
                    true => l.file.clone(),
                    false => s.path.display().to_string(),
                };
                (s.name.clone(), l.kind(), file, hook_names(l.hooks))
            })
            .collect();
        v.sort();
        v
    }

    /// The binding of plugin `name` for service number `service` of `cfg`.
    fn bind(&self, cfg: &Config, service: usize, name: &str) -> Result<Arc<Binding>, String> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| format!("plugin {name:?} is not loaded"))?
            .clone();
        let s = &cfg.services[service];
        let b = Binding::new(
            BindingSpec {
                slot,
                service: s.name.clone(),
                settings: settings_json(cfg, service, name).into(),
                policy: s.on_plugin_error,
                limits: self.limits,
                threads: self.threads,
            },
            &self.metrics,
            self.factory.clone(),
        );
        if let Ok(mut l) = self.bindings.lock() {
            l.push(b.clone());
        }
        Ok(b)
    }

    /// Makes every binding's first instances now, so that the first requests find them.
    pub fn warm(&self) {
        let bindings = self.bindings.lock().map(|l| l.clone()).unwrap_or_default();
        for b in bindings {
            b.refill();
        }
    }

    /// Starts watching the plugins directory; changed files are reloaded in the background.
    pub fn watch(self: &Arc<Self>, dir: &Path) -> Result<(), String> {
        if self.slots.is_empty() {
            return Ok(());
        }
        let w = watch::Watcher::start(dir, Arc::downgrade(self))?;
        *self.watcher.lock().expect("not poisoned") = Some(w);
        Ok(())
    }

    /// Reloads the slot whose file is `path`, if any. A version that fails to load, lacks a
    /// hook the configuration uses, or refuses a service's settings is not installed.
    pub fn reload(&self, path: &Path) {
        let Some(slot) = self
            .slots
            .values()
            .find(|s| s.path == path || self.alternatives(&s.path).any(|p| p == path))
        else {
            return;
        };
        if !path.exists() {
            tracing::warn!(plugin = %slot.name, path = %path.display(), "plugin file deleted; services keep its last good version");
            return;
        }
        let first = slot.settings.first().map_or("{}", |s| s);
        let result = self
            .runtimes
            .load(Source::File(path), first, self.limits)
            .and_then(|l| {
                if l.hooks & slot.required != slot.required {
                    return Err(format!(
                        "the configuration uses the {} hook(s), the new version implements only: {}",
                        hook_names(slot.required & !l.hooks),
                        hook_names(l.hooks)
                    ));
                }
                for s in &slot.settings {
                    let log = Arc::new(PluginLog::new(&slot.name, "", None));
                    l.code
                        .instantiate(s, self.limits, log)
                        .map_err(|f| format!("refused its settings: {}", f.message))?;
                }
                Ok(l)
            });
        match result {
            Ok(l) => {
                tracing::info!(plugin = %slot.name, path = %path.display(), kind = l.kind(), hooks = %hook_names(l.hooks), "plugin reloaded");
                slot.install(l);
                self.factory.poke();
            }
            Err(e) => {
                tracing::error!(plugin = %slot.name, "{}: {e}; the previous version keeps running", path.display());
            }
        }
    }

    /// The other files that may override a slot's plugin (`x.lua` for `x.wasm`).
    fn alternatives<'a>(&'a self, p: &'a Path) -> impl Iterator<Item = PathBuf> + 'a {
        self.runtimes.extensions().map(|e| p.with_extension(e))
    }

    fn health_threads(cfg: &Config, service: usize) -> usize {
        cfg.services[service].backends.len()
    }
}

impl HookSource for Registry {
    fn select(
        &self,
        cfg: &Config,
        service: usize,
        name: &str,
    ) -> Result<Box<dyn SelectServer>, String> {
        Ok(Box::new(PluginSelect(self.bind(cfg, service, name)?)))
    }

    fn key(
        &self,
        cfg: &Config,
        service: usize,
        name: &str,
    ) -> Result<Box<dyn PersistenceKey>, String> {
        Ok(Box::new(PluginKey {
            binding: self.bind(cfg, service, name)?,
            tcp: cfg.services[service].mode != Mode::Http,
        }))
    }

    fn health(
        &self,
        cfg: &Config,
        service: usize,
        name: &str,
    ) -> Result<Arc<dyn HealthCheck>, String> {
        let b = self.bind(cfg, service, name)?;
        Ok(Arc::new(PluginHealth::new(
            b,
            Self::health_threads(cfg, service),
        )))
    }

    fn agent_feed(&self, cfg: &Config, service: usize, name: &str) -> Option<AgentFeed> {
        let slot = self.slots.get(name)?;
        if slot.hooks() & HOOK_HEALTH == 0 {
            return None;
        }
        let interval = feed_interval(cfg.services[service].plugin_settings.get(name));
        let b = self.bind(cfg, service, name).ok()?;
        let feed = PluginHealth::new(b, Self::health_threads(cfg, service));
        Some((Arc::new(feed), interval, interval.min(FEED_TIMEOUT)))
    }
}

/// Finds and compiles plugin `name`: `<plugins_dir>/<name>.wasm` or `.lua`, else the stock
/// plugin of that name.
fn open(
    cfg: &Config,
    runtimes: &Runtimes,
    name: &str,
    settings: &str,
    limits: Limits,
) -> Result<Slot, String> {
    let dir = cfg.proxy.plugins_dir.as_deref();
    let file = dir.and_then(|d| resolve(d, name, runtimes));
    let stock_names = || stock::names().collect::<Vec<_>>().join(", ");
    let loaded = match (&file, stock::get(name)) {
        (Some(path), _) => runtimes
            .load(Source::File(path), settings, limits)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        (None, Some(bytes)) => runtimes
            .load(Source::Stock(name, bytes), settings, limits)
            .map_err(|e| format!("stock plugin: {e}"))?,
        (None, None) => {
            return Err(match dir {
                Some(d) => format!(
                    "not found: no {name}.wasm or {name}.lua in {}, and no stock plugin of that name (stock: {})",
                    d.display(),
                    stock_names()
                ),
                None => format!(
                    "not a stock plugin (stock: {}), and no [proxy] plugins_dir is set to find it in",
                    stock_names()
                ),
            })
        }
    };
    // A stock plugin's slot watches the path a file overriding it would have.
    let path = file.unwrap_or_else(|| dir.unwrap_or(Path::new(".")).join(format!("{name}.wasm")));
    Ok(Slot::new(name, path, loaded))
}

/// `<dir>/<name>.wasm`, else `<dir>/<name>.lua`.
pub fn resolve(dir: &Path, name: &str, runtimes: &Runtimes) -> Option<PathBuf> {
    runtimes
        .extensions()
        .map(|e| dir.join(format!("{name}.{e}")))
        .find(|p| p.is_file())
}

fn settings_json(cfg: &Config, service: usize, name: &str) -> String {
    cfg.services[service]
        .plugin_settings
        .get(name)
        .cloned()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
        .to_string()
}

/// The `interval` setting of a scheduler plugin (a duration string), or the default.
fn feed_interval(settings: Option<&serde_json::Value>) -> Duration {
    settings
        .and_then(|s| s.get("interval")?.as_str())
        .and_then(|s| humantime::parse_duration(s).ok())
        .filter(|d| !d.is_zero() && *d <= crate::config::MAX_DURATION)
        .unwrap_or(DEFAULT_FEED_INTERVAL)
}
