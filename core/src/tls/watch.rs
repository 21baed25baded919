//! Re-reads certificates when their files change: the directories of every certificate file
//! are watched, and after 150 ms of quiet (editors, `cp` and ACME clients write in several
//! steps) the certificates that use a changed file are loaded again. A replacement that does
//! not load (a key not matching yet, a truncated file) keeps the previous certificate and is
//! logged; the next change tries again.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::server::CertStore;

/// Quiet time before reloading.
const SETTLE: Duration = Duration::from_millis(150);

/// Watches the files of `stores`; reloading stops when the returned watcher is dropped.
pub fn watch(stores: Vec<Arc<CertStore>>) -> Result<notify::RecommendedWatcher, String> {
    let (tx, rx) = mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|e| format!("cannot watch certificate files: {e}"))?;
    let files: Vec<(PathBuf, Arc<CertStore>)> = stores
        .iter()
        .flat_map(|s| s.files().into_iter().map(move |f| (f, s.clone())))
        .collect();
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|(f, _)| f.parent().map(|d| d.to_path_buf()))
        .collect();
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
    }
    std::thread::Builder::new()
        .name("cert-watch".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut changed = HashSet::from([first]);
                while let Ok(p) = rx.recv_timeout(SETTLE) {
                    changed.insert(p);
                }
                for (file, store) in &files {
                    let hit = changed.iter().any(|c| {
                        c == file
                            || (c.file_name() == file.file_name() && c.parent() == file.parent())
                    });
                    if hit {
                        store.reload(Some(file));
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(watcher)
}
