//! Plugboard: a programmable L4/L7 load-balancing proxy on pingora.
//!
//! Every decision goes through one of three hook traits in [`hooks`]: which backend
//! ([`hooks::SelectServer`]), what makes a client sticky ([`hooks::PersistenceKey`]) and
//! whether a backend is up ([`hooks::HealthCheck`]). See ARCHITECTURE.md for the path of a
//! request through the modules.

pub mod balancer;
pub mod config;
pub mod health;
pub mod hooks;
pub mod http_listener;
pub mod http_proxy;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod parking;
pub mod persistence;
pub mod plugin;
pub mod pool;
pub mod relay;
pub mod scheduler;
pub mod server;
pub mod socket;
pub mod tcp_proxy;
