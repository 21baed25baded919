//! The seam between the plugin host and a plugin language: one [`Runtime`] per language (WASM
//! on wasmtime, Lua on Luau) compiles files into [`Code`], and `Code` makes [`Instance`]s, which
//! run the hooks. Everything above this module (bindings, adapters, the registry) works with
//! these traits only.
//!
//! Limits every runtime enforces ([`Limits`]): a call runs at most `deadline` of wall-clock
//! time (health-check calls: the check's timeout) and an instance holds at most `memory`
//! bytes; exceeding either ends the call with a [`Fault`], never the process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pingora::http::ResponseHeader;

use super::contract::NetScope;
use super::log::PluginLog;
use super::shared::SharedData;
use crate::balance::hooks::{HealthReport, KeyOutcome, Request};
use crate::balance::pool::Pool;

/// Bits of the hook set a plugin implements (also the WASM ABI's `plugboard_hooks` value).
pub const HOOK_SELECT: u32 = 1;
pub const HOOK_KEY: u32 = 2;
pub const HOOK_HEALTH: u32 = 4;
pub const HOOK_RESPONSE: u32 = 8;

/// Names of the hooks in a bit set, for messages.
pub fn hook_names(bits: u32) -> String {
    let names: Vec<&str> = [
        (HOOK_SELECT, "select-server"),
        (HOOK_KEY, "persistence-key"),
        (HOOK_HEALTH, "health-check"),
        (HOOK_RESPONSE, "response step"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Per-call and per-instance limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one request-path call.
    pub deadline: Duration,
    /// Memory cap of one instance, bytes.
    pub memory: usize,
}

/// Why a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Trap,
    Timeout,
    Memory,
    /// A well-formed call with a nonsensical answer (unknown backend, bad code).
    Invalid,
    /// The plugin could not be instantiated or refused its settings.
    Init,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Invalid => "invalid",
            FaultKind::Init => "init",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

impl Fault {
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Fault {
            kind,
            message: message.into(),
        }
    }
}

/// A select-server call: the request, the pool, and the backends that already failed it.
pub struct SelectCall<'a, 'r> {
    pub req: &'a Request<'r>,
    pub pool: &'a Pool,
    pub avoid: &'a [usize],
}

/// A health-check call on backend `backend` of `pool`.
pub struct HealthCall<'a> {
    pub pool: &'a Pool,
    pub backend: usize,
    /// The address to check (the backend's, or the configured check port).
    pub target: SocketAddr,
    /// Longest the call may run; the network helpers get what is left of it.
    pub budget: Duration,
    pub net: NetScope,
}

/// A language's way of loading plugin files.
pub trait Runtime: Send + Sync {
    /// `wasm` or `lua`.
    fn kind(&self) -> &'static str;
    /// Compiles a file's bytes, runs whatever the language needs once to learn the plugin's
    /// hook set (a Lua script's top level runs with `settings` as its `config`), and returns
    /// the code with its hooks and ABI version. `name` (the file name) appears in the
    /// plugin's error messages.
    fn compile(
        &self,
        bytes: &[u8],
        name: &str,
        settings: &str,
        limits: Limits,
    ) -> Result<Compiled, String>;
}

/// What compiling a file gives.
pub struct Compiled {
    pub code: Arc<dyn Code>,
    /// Hook bits the plugin implements.
    pub hooks: u32,
    /// ABI version (WASM) or 1 (Lua).
    pub abi: u32,
}

/// One compiled version of a plugin file; instantiated once per (service, worker thread).
pub trait Code: Send + Sync {
    fn kind(&self) -> &'static str;
    /// A fresh instance with its settings applied, seeing `shared` as its shared data (the
    /// store of its plugin and service, [`super::shared`]). Can take milliseconds: never
    /// called on the request path.
    fn instantiate_with(
        &self,
        settings: &str,
        limits: Limits,
        log: Arc<PluginLog>,
        shared: Arc<SharedData>,
    ) -> Result<Box<dyn Instance>, Fault>;

    /// A fresh instance with shared data of its own: for checks, which serve no traffic.
    fn instantiate(
        &self,
        settings: &str,
        limits: Limits,
        log: Arc<PluginLog>,
    ) -> Result<Box<dyn Instance>, Fault> {
        self.instantiate_with(settings, limits, log, Arc::default())
    }
}

/// Plugin instances alive in the process: serving in a worker, spare, or waiting for the
/// factory to drop them (`plugboard_plugin_instances`). Per binding: its spares and one per
/// thread that calls it; a number that grows with reloads is a leak.
static ALIVE: AtomicI64 = AtomicI64::new(0);

/// Held by every runtime's instance: counts it in [`alive_instances`] while it exists.
pub struct Alive(());

impl Alive {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Alive {
        ALIVE.fetch_add(1, Relaxed);
        Alive(())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Relaxed);
    }
}

pub fn alive_instances() -> i64 {
    ALIVE.load(Relaxed)
}

/// A live instance. Used by one thread at a time and never re-entered; an instance whose call
/// failed is discarded.
pub trait Instance: Send {
    /// select-server: a backend index, or `None` for no opinion.
    fn select(&mut self, call: &SelectCall<'_, '_>) -> Result<Option<usize>, Fault>;
    /// persistence-key.
    fn key<'r>(&mut self, req: &Request<'r>, pool: &Pool) -> Result<KeyOutcome<'r>, Fault>;
    /// The persistence hook's response step: may add response headers.
    fn on_response(
        &mut self,
        req: &Request<'_>,
        named: Option<usize>,
        served: usize,
        pool: &Pool,
        resp: &mut ResponseHeader,
    ) -> Result<(), Fault>;
    /// health-check; may report load and agent state for the checked backend as it runs.
    fn health(&mut self, call: &HealthCall<'_>) -> Result<HealthReport, Fault>;
}
