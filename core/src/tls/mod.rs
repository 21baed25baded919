//! TLS: certificates (PEM or PKCS#12) and their selection by SNI, the server side of client
//! connections, and the client side towards backends that want TLS.
//!
//! The crypto provider is *ring*: measured against aws-lc-rs (`--features aws-lc-rs`, the
//! TLS rows of `benches/run`), see README's benchmark section. Pingora's connectors to
//! backends use ring in either build.

pub mod certs;
pub mod client;
pub mod server;
pub mod session;
pub mod watch;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS configuration of the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(crypto::default_provider()))
        .clone()
}

#[cfg(not(feature = "aws-lc-rs"))]
use rustls::crypto::ring as crypto;

#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as crypto;

/// Session ticket keys (rotated every 6 hours) from the provider in use.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    crypto::Ticketer::new()
}
