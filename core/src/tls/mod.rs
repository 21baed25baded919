//! TLS: certificates (PEM or PKCS#12) and their selection by SNI, the server side of client
//! connections, and the client side towards backends that want TLS.
//!
//! The crypto provider is AWS-LC (aws-lc-rs), chosen by measurement against ring
//! (`--features ring-provider`, the TLS rows of `benches/run`): RSA handshakes cost a third
//! less, ECDSA ones the same, and bulk AES-GCM is faster (README, Benchmarks). It is installed
//! as the process default, so pingora's connectors to backends use it too.

pub mod certs;
pub mod client;
pub mod server;
pub mod session;
pub mod watch;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS configuration of the process uses; the first call installs
/// it as the process default (before pingora would install ring).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let p = crypto::default_provider();
        let _ = CryptoProvider::install_default(p.clone());
        Arc::new(p)
    })
    .clone()
}

#[cfg(feature = "ring-provider")]
use rustls::crypto::ring as crypto;

#[cfg(not(feature = "ring-provider"))]
use rustls::crypto::aws_lc_rs as crypto;

/// Session ticket keys (rotated every 6 hours) from the provider in use.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    crypto::Ticketer::new()
}
