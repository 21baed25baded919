//! WASM plugins on wasmtime, with the core-module ABI documented in `sdk/ABI.md`.
//!
//! A call is a plain core-wasm function call (tens of nanoseconds): the host does not encode
//! the request into guest memory; the guest reads what it needs through imported host
//! functions ([`abi`]). During a call the store's data points at the current request, pool and
//! response (raw pointers set just before the call and cleared right after, so host functions
//! never see a dangling one).
//!
//! Limits: every call is bounded by an epoch deadline (a thread advances the engine's epoch
//! every millisecond, so the deadline is precise to about 1 ms; a call past it traps), and an
//! instance's linear memory by a resource limiter (`memory.grow` past the cap fails). There is
//! no WASI, so a plugin has no file or network access except the health-check host functions,
//! which exist only during health-check calls and reach only the checked backend's host.

mod abi;
mod instance;
mod shared;

use std::sync::Arc;

use wasmtime::{Config as WasmConfig, Engine, Linker, Module, Store};

pub use instance::State;

use super::log::PluginLog;
use super::runtime::{
    Code, Compiled, Fault, FaultKind, Instance, Limits, Runtime, HOOK_HEALTH, HOOK_KEY,
    HOOK_RESPONSE, HOOK_SELECT,
};
use super::shared::SharedData;

/// The ABI version this host implements; a module must export `plugboard_abi_version`
/// returning it.
pub const ABI_VERSION: i32 = 1;

/// Engine and linker shared by every WASM plugin.
pub struct WasmRuntime {
    engine: Engine,
    linker: Arc<Linker<State>>,
}

impl WasmRuntime {
    /// The engine, with its epoch driven by the plugin clock ([`crate::plugin::clock`]) so
    /// that deadlines pass.
    pub fn new() -> Result<WasmRuntime, String> {
        let mut cfg = WasmConfig::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg).map_err(|e| e.to_string())?;
        let mut linker = Linker::new(&engine);
        abi::define_imports(&mut linker).map_err(|e| e.to_string())?;
        super::clock::drive(&engine);
        Ok(WasmRuntime {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compiles a binary module (or WAT text, convenient for tests and tiny plugins).
    fn module(&self, bytes: &[u8]) -> Result<Module, String> {
        let text = bytes.trim_ascii_start();
        if !(bytes.starts_with(b"\0asm") || text.starts_with(b"(") || text.starts_with(b";;")) {
            return Err("not a WASM module: it does not start with the \\0asm header".into());
        }
        Module::new(&self.engine, bytes).map_err(|e| format!("not a valid WASM module: {e:#}"))
    }
}

impl Runtime for WasmRuntime {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn compile(
        &self,
        bytes: &[u8],
        _name: &str,
        _settings: &str,
        limits: Limits,
    ) -> Result<Compiled, String> {
        let module = self.module(bytes)?;
        let code = WasmCode {
            module,
            engine: self.engine.clone(),
            linker: self.linker.clone(),
        };
        let (hooks, abi) = code.inspect(limits)?;
        Ok(Compiled {
            code: Arc::new(code),
            hooks,
            abi,
        })
    }
}

/// A compiled module.
pub struct WasmCode {
    module: Module,
    engine: Engine,
    linker: Arc<Linker<State>>,
}

impl WasmCode {
    /// Reads the ABI version and hook set by instantiating the module once. This happens at
    /// load, not on a request: it gets at least the 1 s that `plugboard_init` gets, not the
    /// request-path deadline, which a loaded machine can exceed while instantiating.
    fn inspect(&self, limits: Limits) -> Result<(u32, u32), String> {
        let log = Arc::new(PluginLog::new("inspect", "", None));
        let limits = Limits {
            deadline: limits.deadline.max(std::time::Duration::from_secs(1)),
            ..limits
        };
        let (mut store, instance) = self
            .raw_instance(limits, log, Arc::default())
            .map_err(|f| f.message)?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "plugboard_abi_version")
            .map_err(|_| {
                "does not export plugboard_abi_version: not a Plugboard plugin".to_string()
            })?
            .call(&mut store, ())
            .map_err(|e| format!("plugboard_abi_version failed: {e}"))?;
        if version != ABI_VERSION {
            return Err(format!(
                "plugin ABI version {version}, this Plugboard implements version {ABI_VERSION}"
            ));
        }
        let hooks = instance
            .get_typed_func::<(), i32>(&mut store, "plugboard_hooks")
            .map_err(|_| "does not export plugboard_hooks".to_string())?
            .call(&mut store, ())
            .map_err(|e| format!("plugboard_hooks failed: {e}"))? as u32;
        let exports = [
            (HOOK_SELECT, "plugboard_select_server"),
            (HOOK_KEY, "plugboard_persistence_key"),
            (HOOK_HEALTH, "plugboard_health_check"),
            (HOOK_RESPONSE, "plugboard_on_response"),
        ];
        for (bit, name) in exports {
            if hooks & bit != 0 && instance.get_func(&mut store, name).is_none() {
                return Err(format!("announces hook {bit} but does not export {name}"));
            }
        }
        Ok((
            hooks & (HOOK_SELECT | HOOK_KEY | HOOK_HEALTH | HOOK_RESPONSE),
            version as u32,
        ))
    }

    fn raw_instance(
        &self,
        limits: Limits,
        log: Arc<PluginLog>,
        shared: Arc<SharedData>,
    ) -> Result<(Store<State>, wasmtime::Instance), Fault> {
        let mut store = Store::new(&self.engine, State::new(limits, log, shared));
        store.limiter(|s| s.limiter());
        store.set_epoch_deadline(instance::deadline_ticks(limits.deadline));
        store.epoch_deadline_trap();
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| instance::classify(&store, e, "instantiate"))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| {
            Fault::new(FaultKind::Init, "does not export its memory as \"memory\"")
        })?;
        store.data_mut().set_memory(memory);
        Ok((store, instance))
    }
}

impl Code for WasmCode {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn instantiate_with(
        &self,
        settings: &str,
        limits: Limits,
        log: Arc<PluginLog>,
        shared: Arc<SharedData>,
    ) -> Result<Box<dyn Instance>, Fault> {
        let (store, instance) = self.raw_instance(limits, log, shared)?;
        Ok(Box::new(instance::WasmInstance::init(
            store, instance, settings, limits,
        )?))
    }
}
