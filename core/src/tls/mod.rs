//! TLS: certificates (PEM or PKCS#12) and their selection by SNI, the server side of client
//! connections, and the client side towards backends that want TLS.
//!
//! The crypto provider is *ring* (the one pingora's rustls connectors use, so the process
//! carries one provider).

pub mod certs;
pub mod client;
pub mod io;
pub mod server;
pub mod watch;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS configuration of the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
