//! Lua plugins, on Luau through mlua.
//!
//! Each instance is its own Luau state (per service using the plugin, per worker thread), so
//! a plugin that hogs memory cannot starve another. [`sandbox`] builds the state and enforces
//! the limits (read-only libraries, a memory cap, a deadline that `pcall` cannot swallow, C
//! string work bounded); [`api`] is what a script sees.
//!
//! Globals a plugin defines: `select_server(req, backends)`, `persistence_key(req, backends)`,
//! `health_check(backend)`, `on_response(req, served, named, backends)`. Backends are numbered
//! from 1, as everything in Lua. The settings table is `config`; `shared` ([`shared`]) is the
//! data every instance of the plugin in the service shares (globals are per instance).
//!
//! Why Luau rather than Lua 5.4: a Lua 5.4 count hook is an ordinary error that `pcall` can
//! catch, runs no hook inside C functions (a backtracking `string.find` or a `__gc` finalizer
//! runs unbounded), and finalizers run with hooks off. Luau calls its interrupt inside the
//! pattern matcher, has no `__gc` for tables, and has a sandbox mode that makes the libraries
//! read-only.

mod api;
mod instance;
pub mod sandbox;
mod shared;

use std::sync::Arc;

use instance::LuaInstance;

use super::log::PluginLog;
use super::runtime::{Code, Compiled, Fault, Instance, Limits, Runtime};
use super::shared::SharedData;

/// Loads `.lua` files.
pub struct LuaRuntime;

impl Runtime for LuaRuntime {
    fn kind(&self) -> &'static str {
        "lua"
    }

    fn compile(
        &self,
        bytes: &[u8],
        name: &str,
        settings: &str,
        limits: Limits,
    ) -> Result<Compiled, String> {
        let src = std::str::from_utf8(bytes)
            .map_err(|e| format!("not UTF-8 text: {e}"))?
            .to_string();
        let code = LuaCode {
            src: src.into(),
            name: name.into(),
        };
        let log = Arc::new(PluginLog::new(name, "", None));
        let inst = LuaInstance::new(&code.src, &code.name, settings, limits, log, Arc::default())
            .map_err(|f| f.message)?;
        Ok(Compiled {
            hooks: inst.hooks(),
            code: Arc::new(code),
            abi: 1,
        })
    }
}

/// A script's source and file name.
pub struct LuaCode {
    src: Arc<str>,
    name: Arc<str>,
}

impl Code for LuaCode {
    fn kind(&self) -> &'static str {
        "lua"
    }

    fn instantiate_with(
        &self,
        settings: &str,
        limits: Limits,
        log: Arc<PluginLog>,
        shared: Arc<SharedData>,
    ) -> Result<Box<dyn Instance>, Fault> {
        Ok(Box::new(LuaInstance::new(
            &self.src, &self.name, settings, limits, log, shared,
        )?))
    }
}
