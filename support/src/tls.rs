//! TLS clients that trust one pinned CA and nothing else (the broker, the
//! QUIC model service, the controller's HTTPS): no system roots. Before a
//! node has the CA itself it knows only its SHA-256 fingerprint (from the
//! join string, like kubeadm's `--discovery-token-ca-cert-hash`):
//! [`fingerprint_client`] accepts a server only if the chain it presents
//! holds a CA with that fingerprint and the server certificate verifies
//! against it.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("CA fingerprint {0:?} is not of the form sha256:<64 hex digits>")]
    Fingerprint(String),
    #[error("pinned CA certificate is not valid PEM: {0}")]
    Pem(String),
    #[error("no pinned CA certificate was given")]
    Empty,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The CA certificates in `ca_pem` (at least one).
fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PinError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|e| PinError::Pem(e.to_string()))?;
        roots.add(der).map_err(|e| PinError::Pem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(PinError::Empty);
    }
    Ok(roots)
}

/// A rustls client configuration (ring provider, TLS 1.2+) trusting only
/// the CA certificates in `ca_pem`.
pub fn pinned_client(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, PinError> {
    let roots = roots(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PinError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// As [`pinned_client`], but the server must hold a certificate for `name`
/// whatever address was dialled: a replica dialling another at its pod
/// address checks the certificate clients see under the public name.
pub fn pinned_client_as(ca_pem: &str, name: &str) -> Result<Arc<rustls::ClientConfig>, PinError> {
    let roots = roots(ca_pem)?;
    let name = ServerName::try_from(name.to_owned())
        .map_err(|e| PinError::Config(format!("{name:?} is not a server name: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PinError::Config(e.to_string()))?;
    verified_by(provider, Arc::new(NamedVerifier { inner, name }))
}

/// A client configuration whose server certificates `verifier` judges.
fn verified_by(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, PinError> {
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PinError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// Verifies under its roots for one fixed name (see [`pinned_client_as`]).
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The fingerprint nodes pin: `sha256:` and the hex SHA-256 of the DER of
/// the first certificate in `ca_pem`.
pub fn ca_sha256(ca_pem: &str) -> Result<String, PinError> {
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .ok_or(PinError::Empty)?
        .map_err(|e| PinError::Pem(e.to_string()))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(der.as_ref()))
    ))
}

fn parse_fingerprint(fp: &str) -> Result<[u8; 32], PinError> {
    fp.strip_prefix("sha256:")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| PinError::Fingerprint(fp.chars().take(80).collect()))
}

/// A rustls client configuration that trusts a server only if its chain
/// carries a CA certificate whose SHA-256 is `fingerprint` (`sha256:<hex>`)
/// and the server's certificate is valid under that CA for the name dialled.
pub fn fingerprint_client(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, PinError> {
    let sha256 = parse_fingerprint(fingerprint)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(FingerprintVerifier {
        sha256,
        provider: provider.clone(),
    });
    verified_by(provider, verifier)
}

#[derive(Debug)]
struct FingerprintVerifier {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.sha256)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the pinned fingerprint (sha256:…) of the join string"
                        .into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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

    #[test]
    fn fingerprints_must_be_well_formed() {
        for bad in [
            "",
            "sha256:",
            "sha256:zz",
            "md5:00",
            &format!("sha256:{}", "0".repeat(62)),
        ] {
            assert!(matches!(
                fingerprint_client(bad),
                Err(PinError::Fingerprint(_))
            ));
        }
        assert!(fingerprint_client(&format!("sha256:{}", "ab".repeat(32))).is_ok());
    }
}
