//! The client side of TLS towards backends (`backend_tls`): trust roots, verification, and
//! the server name each backend is addressed by. Used by tcp-mode relays and health checks;
//! http-mode requests go through pingora's connector with the same settings
//! (`proxy/http/phases.rs`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{BackendConfig, BackendTls};

/// The CA certificates in a PEM file.
pub fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    roots_from_pem(&bytes, path)
}

/// The CA certificates in PEM `bytes`, read from `path` (for the messages).
pub fn roots_from_pem(bytes: &[u8], path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bytes) {
        let c = c.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// The system's trust roots.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    if let Ok(certs) = rustls_native_certs::load_native_certs() {
        for c in certs {
            let _ = roots.add(c);
        }
    }
    roots
}

/// The client configuration for a service's `backend_tls`.
pub fn client_config(b: &BackendTls) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if b.verify {
        let roots = match &b.ca {
            Some(p) => roots_from_file(p)?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The name a backend is addressed by: `sni` if set, else the host name it was configured
/// with, else its IP address (verified against the certificate's IP addresses; no SNI is
/// sent for an IP).
pub fn server_name(b: &BackendTls, backend: &BackendConfig) -> ServerName<'static> {
    let name = b
        .sni
        .clone()
        .or_else(|| backend.hostname.clone())
        .and_then(|n| ServerName::try_from(n).ok());
    name.unwrap_or_else(|| ServerName::IpAddress(backend.address.ip().into()))
}

/// `verify = false`: any certificate is accepted (signatures are still checked, so the
/// handshake is sound; who the peer is, is not).
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The CA certificates of a PEM file in the form pingora's rustls connector takes per peer.
pub fn pingora_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| {
            c.map(|c| {
                pingora::utils::tls::WrappedX509::new(c.as_ref().to_vec(), |raw| {
                    pingora::utils::tls::parse_x509(raw)
                })
            })
            .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}
