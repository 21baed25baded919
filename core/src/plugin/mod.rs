//! Plugins: WASM modules and Lua scripts that implement the hook traits.
//!
//! - [`runtime`]: the seam to a language ([`runtime::Runtime`], [`runtime::Code`],
//!   [`runtime::Instance`]), implemented by [`wasm`] (wasmtime) and [`lua`] (Luau), and the
//!   limits every runtime enforces.
//! - [`contract`]: what a plugin sees and may do, the same in both languages.
//! - [`slot`]: a plugin file and its current compiled version, swapped atomically on reload.
//! - [`binding`]: a slot used by one service, with its policy, log, circuit breaker
//!   ([`breaker`]) and instances: one per worker thread, made ahead of time by the factory
//!   ([`spares`]), never on the request path.
//! - [`shared`]: the counters and key-value store every instance of a plugin in a service
//!   shares (plugin state is per worker thread; shared data is not).
//! - [`adapters`] and [`health`]: the hook traits implemented by a binding; health checks run
//!   on check threads of their own.
//! - [`registry`]: loads what a configuration refers to, binds it to services (it is the
//!   balancer's [`crate::balance::balancer::HookSource`]) and reloads changed files
//!   ([`watch`]).
//! - [`stock`]: the plugins embedded in the binary; [`net`]: the health helpers' network I/O;
//!   [`log`]: rate-limited plugin logging; [`clock`]: the coarse clock deadlines use.
//! - [`author`]: `plugboard plugin check` and `plugboard plugin test`, a plugin run outside
//!   the proxy.

pub mod adapters;
pub mod author;
pub mod binding;
pub mod breaker;
pub mod clock;
pub mod contract;
pub mod health;
pub mod log;
pub mod lua;
pub mod net;
pub mod registry;
pub mod runtime;
pub mod shared;
pub mod slot;
pub mod spares;
pub mod stock;
pub mod wasm;
mod watch;
