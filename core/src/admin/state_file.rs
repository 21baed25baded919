//! Runtime changes saved to `[admin] state_file` and applied again at start: backends added
//! or removed through the API, and each changed backend's state and weight. For a backend
//! the configuration file defines, the entry keeps the file's `enabled` and `weight` of that
//! time: if the file changed them since, or stopped (or started) defining the backend, the
//! file wins and the entry is dropped.
//!
//! The file is JSON, rewritten whole (a temporary file renamed over it) after every change.
//! Without a state file the same record is kept in memory, so that a reload (which starts
//! again from the configuration file) keeps the operator's changes by the same rules.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::balance::balancer::Balancer;
use crate::balance::pool::AdminState;
use crate::config::{BackendConfig, Config};
use crate::server::live::Live;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    /// Service name -> backend name -> what the operator did.
    services: BTreeMap<String, BTreeMap<String, SavedBackend>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedBackend {
    state: String,
    weight: u32,
    /// Added through the API at this address (the file does not define it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added: Option<std::net::SocketAddr>,
    /// Removed through the API (the file defines it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
    /// The file's values when the change was made (for backends the file defines).
    #[serde(default)]
    config_enabled: bool,
    #[serde(default)]
    config_weight: u32,
}

#[derive(Clone)]
pub struct StateFile {
    /// `None`: the changes are kept in memory only, for reloads (no `[admin] state_file`).
    path: Option<PathBuf>,
    saved: Saved,
    /// The configuration file's backends, by service.
    file: HashMap<String, Vec<BackendConfig>>,
}

impl StateFile {
    /// Reads the file; a missing one is empty. A file that cannot be read or parsed is an
    /// error: starting without the operator's changes would silently undo them.
    pub fn open(path: &Path, cfg: &Config) -> Result<StateFile, String> {
        let saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("admin.state_file {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("admin.state_file {}: {e}", path.display())),
        };
        let mut f = StateFile::memory(cfg);
        f.path = Some(path.to_path_buf());
        f.saved = saved;
        Ok(f)
    }

    /// Changes kept in memory only: a reload applies them to the new configuration.
    pub fn memory(cfg: &Config) -> StateFile {
        StateFile {
            path: None,
            saved: Saved::default(),
            file: file_backends(cfg),
        }
    }

    /// The file's definition of backend `name` of `service`.
    fn in_file(&self, service: &str, name: &str) -> Option<&BackendConfig> {
        self.file.get(service)?.iter().find(|c| c.name == name)
    }

    /// Applies the saved changes to the services (before they serve anyone). Entries that
    /// no longer apply are dropped, and logged.
    pub fn apply(&mut self, live: &Live) -> Result<(), String> {
        let lists = self.settle(&live.config());
        self.save();
        for (service, list) in lists {
            live.update(&service, |b| Ok(b.with_backends(list)))?;
        }
        for (service, entries) in &self.saved.services {
            let Some(b) = live.get(service) else {
                continue;
            };
            for (name, e) in entries {
                let Some(i) = b.pool.find_name(name) else {
                    continue;
                };
                if let Some(s) = AdminState::from_name(&e.state) {
                    b.pool.set_admin(i, s);
                }
                b.pool.set_weight(i, e.weight.min(256));
            }
            tracing::info!(%service, entries = entries.len(), "state file: runtime changes applied");
        }
        Ok(())
    }

    /// A reload: `cfg` is the new configuration file. Backends added or removed at run time
    /// are added to or removed from it, unless the file now defines them differently (the
    /// file wins, as at start). Backend state and weight carry over with the backends.
    /// Nothing is written: [`StateFile::save`] once the reload succeeded.
    pub fn rebase(&mut self, cfg: &mut Config) {
        self.file = file_backends(cfg);
        for (service, list) in self.settle(cfg) {
            if let Some(s) = cfg.services.iter_mut().find(|s| s.name == service) {
                s.backends = list;
            }
        }
    }

    /// Drops the entries that no longer apply to `cfg` (logged), and answers the backend
    /// list of every service whose membership the remaining entries change.
    fn settle(&mut self, cfg: &Config) -> Vec<(String, Vec<BackendConfig>)> {
        let mut lists = Vec::new();
        let services: Vec<String> = self.saved.services.keys().cloned().collect();
        for service in services {
            let Some(s) = cfg.services.iter().find(|s| s.name == service) else {
                tracing::info!(%service, "state file: service no longer configured, entries dropped");
                self.saved.services.remove(&service);
                continue;
            };
            let mut entries = self.saved.services.remove(&service).unwrap_or_default();
            let mut list = s.backends.clone();
            let mut changed = false;
            entries.retain(|name, e| {
                let file = self.in_file(&service, name);
                let keep = match (&e.added, file) {
                    (Some(_), Some(_)) => false,
                    (Some(address), None) => {
                        list.push(BackendConfig {
                            hostname: None,
                            name: name.clone(),
                            address: *address,
                            weight: e.weight,
                            enabled: true,
                            max_connections: None,
                        });
                        changed = true;
                        true
                    }
                    (None, Some(c)) => c.enabled == e.config_enabled && c.weight == e.config_weight,
                    (None, None) => false,
                };
                if !keep {
                    tracing::info!(%service, backend = %name, "state file: the configuration changed this backend since, its values apply");
                } else if e.removed {
                    list.retain(|c| &c.name != name);
                    changed = true;
                }
                keep
            });
            if changed {
                lists.push((service.clone(), list));
            }
            if !entries.is_empty() {
                self.saved.services.insert(service, entries);
            }
        }
        lists
    }

    /// Records backend `i` of `b`'s state and weight as they are now, and writes the file.
    pub fn record(&mut self, b: &Balancer, i: usize) {
        let be = b.pool.get(i);
        let service = &b.config().name;
        let file = self.in_file(service, &be.name).cloned();
        let entries = self.saved.services.entry(service.clone()).or_default();
        match (entries.get_mut(&be.name), file) {
            (Some(e), _) if e.added.is_some() => {
                e.state = be.admin().name().to_string();
                e.weight = be.weight();
            }
            (_, Some(c)) => {
                let as_configured = be.admin()
                    == if c.enabled {
                        AdminState::Ready
                    } else {
                        AdminState::Maint
                    }
                    && be.weight() == c.weight;
                if as_configured {
                    entries.remove(&be.name);
                } else {
                    entries.insert(
                        be.name.clone(),
                        SavedBackend {
                            state: be.admin().name().to_string(),
                            weight: be.weight(),
                            added: None,
                            removed: false,
                            config_enabled: c.enabled,
                            config_weight: c.weight,
                        },
                    );
                }
            }
            (_, None) => {}
        }
        self.save();
    }

    /// Records a backend added to `service`.
    pub fn record_added(&mut self, service: &str, c: &BackendConfig) {
        let file = self.in_file(service, &c.name).cloned();
        let entries = self.saved.services.entry(service.to_string()).or_default();
        match file {
            // A backend of the file, removed and added back as it was: nothing to remember.
            Some(f) if f.address == c.address && f.weight == c.weight => {
                entries.remove(&c.name);
            }
            _ => {
                entries.insert(
                    c.name.clone(),
                    SavedBackend {
                        state: AdminState::Ready.name().to_string(),
                        weight: c.weight,
                        added: Some(c.address),
                        removed: false,
                        config_enabled: true,
                        config_weight: 0,
                    },
                );
            }
        }
        self.save();
    }

    /// Records backend `i` of `b` as removed.
    pub fn record_removed(&mut self, b: &Balancer, i: usize) {
        let be = b.pool.get(i);
        let service = &b.config().name;
        let file = self.in_file(service, &be.name).cloned();
        let entries = self.saved.services.entry(service.clone()).or_default();
        match file {
            None => {
                entries.remove(&be.name);
            }
            Some(c) => {
                entries.insert(
                    be.name.clone(),
                    SavedBackend {
                        state: AdminState::Maint.name().to_string(),
                        weight: be.weight(),
                        added: None,
                        removed: true,
                        config_enabled: c.enabled,
                        config_weight: c.weight,
                    },
                );
            }
        }
        self.save();
    }

    /// Writes the file (when there is one).
    pub fn save(&mut self) {
        self.saved.services.retain(|_, b| !b.is_empty());
        let Some(path) = &self.path else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let result = serde_json::to_vec_pretty(&self.saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::error!(file = %path.display(), "state file not written: {e}; runtime changes will not survive a restart");
        }
    }
}

fn file_backends(cfg: &Config) -> HashMap<String, Vec<BackendConfig>> {
    cfg.services
        .iter()
        .map(|s| (s.name.clone(), s.backends.clone()))
        .collect()
}
