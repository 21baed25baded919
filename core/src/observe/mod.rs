//! Seeing what the proxy does: logs ([`logging`]), the access log ([`access_log`]) and
//! Prometheus metrics ([`metrics`]).

pub mod access_log;
pub mod events;
pub mod logging;
pub mod metrics;
