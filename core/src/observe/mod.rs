//! Seeing what the proxy does: logs ([`logging`]) and Prometheus metrics ([`metrics`]).

pub mod logging;
pub mod metrics;
