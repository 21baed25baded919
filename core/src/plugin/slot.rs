//! A plugin file and its current compiled version, swapped atomically on a hot reload.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::lua::LuaRuntime;
use super::runtime::{Code, Limits, Runtime};
use super::wasm::WasmRuntime;

/// One compiled version of a plugin file.
pub struct Loaded {
    pub code: Arc<dyn Code>,
    /// Hook bits the plugin implements.
    pub hooks: u32,
    /// ABI version (WASM) or 1 (Lua).
    pub abi: u32,
    /// Changes with every successful (re)load of any slot.
    pub generation: u64,
    /// Where it came from, for messages: the file name, or `NAME (built in)` for a stock
    /// plugin.
    pub file: String,
}

impl Loaded {
    pub fn kind(&self) -> &'static str {
        self.code.kind()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Where a plugin's code comes from.
pub enum Source<'a> {
    File(&'a Path),
    /// An embedded stock plugin (WASM).
    Stock(&'a str, &'static [u8]),
}

/// The plugin languages, chosen by file extension.
pub struct Runtimes {
    runtimes: Vec<Box<dyn Runtime>>,
}

impl Runtimes {
    pub fn new() -> Result<Runtimes, String> {
        Ok(Runtimes {
            runtimes: vec![Box::new(WasmRuntime::new()?), Box::new(LuaRuntime)],
        })
    }

    /// The process's runtimes, made once: every reload's registry compiles with the same
    /// engines (an engine is driven by the plugin clock for as long as the process lives).
    pub fn shared() -> Result<Arc<Runtimes>, String> {
        static SHARED: std::sync::OnceLock<Result<Arc<Runtimes>, String>> =
            std::sync::OnceLock::new();
        SHARED.get_or_init(|| Runtimes::new().map(Arc::new)).clone()
    }

    fn by_kind(&self, kind: &str) -> Option<&dyn Runtime> {
        self.runtimes
            .iter()
            .find(|r| r.kind() == kind)
            .map(|r| r.as_ref())
    }

    /// The file extensions plugins may have (`wasm`, `lua`).
    pub fn extensions(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.runtimes.iter().map(|r| r.kind())
    }

    /// Compiles a plugin and reads which hooks it implements.
    pub fn load(
        &self,
        source: Source<'_>,
        settings: &str,
        limits: Limits,
    ) -> Result<Loaded, String> {
        let (runtime, bytes, name) = match source {
            Source::Stock(name, bytes) => (
                self.by_kind("wasm").expect("wasm runtime"),
                bytes.to_vec(),
                format!("{name} (built in)"),
            ),
            Source::File(path) => {
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                let runtime = self.by_kind(ext).ok_or_else(|| {
                    format!(
                        "a plugin file must end in {}",
                        self.extensions()
                            .map(|e| format!(".{e}"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )
                })?;
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (runtime, bytes, name)
            }
        };
        let c = runtime.compile(&bytes, &name, settings, limits)?;
        Ok(Loaded {
            code: c.code,
            hooks: c.hooks,
            abi: c.abi,
            generation: GENERATION.fetch_add(1, Relaxed),
            file: name,
        })
    }
}

/// One plugin file, hot-swappable.
pub struct Slot {
    pub name: String,
    pub path: PathBuf,
    current: ArcSwap<Loaded>,
    /// The current version's generation and hooks, readable without touching the `ArcSwap`.
    generation: AtomicU64,
    hooks: AtomicU32,
    /// Hooks the configuration uses from this plugin: a new version must implement them.
    pub required: u32,
    /// Settings of every service that uses this slot: a new version must accept each.
    pub settings: Vec<Arc<str>>,
}

impl Slot {
    pub fn new(name: &str, path: PathBuf, loaded: Loaded) -> Slot {
        Slot {
            name: name.to_string(),
            path,
            generation: AtomicU64::new(loaded.generation),
            hooks: AtomicU32::new(loaded.hooks),
            current: ArcSwap::from_pointee(loaded),
            required: 0,
            settings: Vec::new(),
        }
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Hook bits of the current version.
    #[inline]
    pub fn hooks(&self) -> u32 {
        self.hooks.load(Relaxed)
    }

    /// Installs a new version: instances of the old one finish their calls and are replaced.
    pub fn install(&self, loaded: Loaded) {
        let (g, h) = (loaded.generation, loaded.hooks);
        self.current.store(Arc::new(loaded));
        self.hooks.store(h, Relaxed);
        self.generation.store(g, Relaxed);
    }
}
