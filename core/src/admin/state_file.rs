//! Runtime changes saved to `[admin] state_file` and applied again at start: each changed
//! backend's state and weight as the operator set them, with the configuration's `enabled`
//! and `weight` at that time, so that a configuration edited since wins for that backend.
//!
//! The file is JSON, rewritten whole (a temporary file renamed over it) after every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::balance::balancer::Balancer;
use crate::balance::pool::AdminState;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Service name -> backend name -> what the operator set.
    services: BTreeMap<String, BTreeMap<String, SavedBackend>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedBackend {
    state: String,
    weight: u32,
    config_enabled: bool,
    config_weight: u32,
}

pub struct StateFile {
    path: PathBuf,
    saved: Saved,
}

impl StateFile {
    /// Reads the file; a missing one is empty. A file that cannot be read or parsed is an
    /// error: starting without the operator's changes would silently undo them.
    pub fn open(path: &Path) -> Result<StateFile, String> {
        let saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("admin.state_file {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("admin.state_file {}: {e}", path.display())),
        };
        Ok(StateFile {
            path: path.to_path_buf(),
            saved,
        })
    }

    /// Applies the saved changes to the services, except for backends that no longer exist
    /// or whose `enabled` or `weight` the configuration changed since (those entries are
    /// dropped, and logged).
    pub fn apply(&mut self, balancers: &[Arc<Balancer>]) {
        let mut dropped = false;
        for (service, backends) in &mut self.saved.services {
            let b = balancers.iter().find(|b| &b.config().name == service);
            backends.retain(|name, saved| {
                let found = b.and_then(|b| {
                    let i = b.pool.find_name(name)?;
                    let c = b.config().backends.iter().find(|c| &c.name == name)?;
                    Some((b, i, c))
                });
                let Some((b, i, c)) = found else {
                    tracing::info!(%service, backend = %name, "state file: backend no longer configured, entry dropped");
                    dropped = true;
                    return false;
                };
                if c.enabled != saved.config_enabled || c.weight != saved.config_weight {
                    tracing::info!(%service, backend = %name, "state file: the configuration changed this backend since, its values apply");
                    dropped = true;
                    return false;
                }
                if let Some(s) = AdminState::from_name(&saved.state) {
                    b.pool.set_admin(i, s);
                }
                b.pool.set_weight(i, saved.weight.min(256));
                tracing::info!(%service, backend = %name, state = %saved.state, weight = saved.weight, "state file: runtime change applied");
                true
            });
        }
        self.saved.services.retain(|_, b| !b.is_empty());
        if dropped {
            self.write();
        }
    }

    /// Records backend `i` of `b` as it is now, and writes the file.
    pub fn record(&mut self, b: &Balancer, i: usize) {
        let be = b.pool.get(i);
        let service = &b.config().name;
        let Some(c) = b.config().backends.iter().find(|c| c.name == be.name) else {
            return;
        };
        let as_configured = (be.admin() == AdminState::Ready) == c.enabled
            && be.admin() != AdminState::Drain
            && be.weight() == c.weight;
        let entries = self.saved.services.entry(service.clone()).or_default();
        if as_configured {
            entries.remove(&be.name);
        } else {
            entries.insert(
                be.name.clone(),
                SavedBackend {
                    state: be.admin().name().to_string(),
                    weight: be.weight(),
                    config_enabled: c.enabled,
                    config_weight: c.weight,
                },
            );
        }
        self.saved.services.retain(|_, b| !b.is_empty());
        self.write();
    }

    fn write(&self) {
        let tmp = self.path.with_extension("tmp");
        let result = serde_json::to_vec_pretty(&self.saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            tracing::error!(file = %self.path.display(), "state file not written: {e}; runtime changes will not survive a restart");
        }
    }
}
