//! Plugboard: a programmable L4/L7 load-balancing proxy on pingora.
//!
//! Every decision goes through one of three hook traits in [`balance::hooks`]: which backend
//! ([`balance::hooks::SelectServer`]), what makes a client sticky
//! ([`balance::hooks::PersistenceKey`]) and whether a backend is up
//! ([`balance::hooks::HealthCheck`]). The tree follows a connection: [`io`] accepts it,
//! [`proxy`] moves its bytes, [`balance`] chooses its backend, [`health`] watches backends,
//! [`plugin`] runs WASM and Lua hooks, [`observe`] logs and counts, [`config`] and [`cli`] are
//! how an administrator drives it, [`proxy_protocol`] carries client addresses through other
//! balancers, and [`server`] assembles the pieces. See ARCHITECTURE.md.

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod health;
pub mod io;
pub mod observe;
pub mod plugin;
pub mod proxy;
pub mod proxy_protocol;
pub mod server;
pub mod share;
pub mod tls;
