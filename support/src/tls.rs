//! TLS clients that trust one pinned CA and nothing else (the broker, the
//! QUIC model service; later the controller's HTTPS): no system roots.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pinned CA certificate is not valid PEM: {0}")]
    Pem(String),
    #[error("no pinned CA certificate was given")]
    Empty,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A rustls client configuration (ring provider, TLS 1.2+) trusting only
/// the CA certificates in `ca_pem`.
pub fn pinned_client(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, PinError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|e| PinError::Pem(e.to_string()))?;
        roots.add(der).map_err(|e| PinError::Pem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(PinError::Empty);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PinError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_garbage() {
        assert!(matches!(pinned_client(""), Err(PinError::Empty)));
        assert!(matches!(pinned_client("not pem"), Err(PinError::Empty)));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(pinned_client(broken).is_err());
    }
}
