//! Watches the plugins directory and reloads changed plugin files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Weak;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::registry::Registry;

/// Editors and `cp` write a file in several steps: wait for quiet before reloading.
const SETTLE: Duration = Duration::from_millis(150);

pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

impl Watcher {
    pub fn start(dir: &Path, registry: Weak<Registry>) -> Result<Watcher, String> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let mut inner = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if !ev.kind.is_access() {
                    for p in ev.paths {
                        let _ = tx.send(p);
                    }
                }
            }
        })
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        inner
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut changed = HashSet::from([first]);
                    while let Ok(p) = rx.recv_timeout(SETTLE) {
                        changed.insert(p);
                    }
                    let Some(reg) = registry.upgrade() else {
                        return;
                    };
                    for p in changed {
                        // Events may name the file by another spelling of the directory.
                        let p = dir.join(p.file_name().unwrap_or_default());
                        reg.reload(&p);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Watcher { _inner: inner })
    }
}
