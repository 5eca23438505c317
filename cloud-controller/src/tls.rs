//! TLS material: the controller's own small CA (`mqtt-ca.pem`, named for
//! the first thing it signed) and the server certificates it signs for the
//! broker and QUIC (`mqtt-broker.*`) and for HTTPS (`http-server.*`), made at
//! first start in the data directory, and the rustls server configurations
//! made from them (HTTPS and the broker gate). Nodes pin the CA by its
//! fingerprint in the join string and trust nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// Files of the broker's TLS material.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS material in {dir}: {message}")]
    Material { dir: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Ensure a CA and a broker certificate for `names` (DNS names or IPs) exist
/// under `dir`; a certificate missing any of `names` is made anew.
pub fn ensure_broker_tls(dir: &Path, names: &[String]) -> Result<BrokerTls, TlsError> {
    ensure_server_tls(dir, "mqtt-broker", "EdgeDesk MQTT broker", names)
}

/// The same for the controller's HTTPS listener (`http-server.*`).
pub fn ensure_http_tls(dir: &Path, names: &[String]) -> Result<BrokerTls, TlsError> {
    ensure_server_tls(dir, "http-server", "EdgeDesk controller", names)
}

/// The CA's file in `dir`.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join("mqtt-ca.pem")
}

fn ensure_server_tls(
    dir: &Path,
    stem: &str,
    common_name: &str,
    names: &[String],
) -> Result<BrokerTls, TlsError> {
    let err = |message: String| TlsError::Material {
        dir: dir.display().to_string(),
        message,
    };
    let (ca_cert, ca_key) = (ca_path(dir), dir.join("mqtt-ca.key"));
    let (cert, key, sans) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}.names")),
    );
    let wanted = names.join("\n");
    let have_ca = ca_cert.exists() && ca_key.exists();
    let fresh = have_ca
        && cert.exists()
        && key.exists()
        && std::fs::read_to_string(&sans).ok().as_deref() == Some(wanted.as_str());
    if !fresh {
        let ca_key_pair = if have_ca {
            KeyPair::from_pem(&std::fs::read_to_string(&ca_key).map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?
        } else {
            KeyPair::generate().map_err(|e| err(e.to_string()))?
        };
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err(e.to_string()))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "EdgeDesk MQTT CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem_existing = have_ca
            .then(|| std::fs::read_to_string(&ca_cert).ok())
            .flatten();
        let issuer =
            CertifiedIssuer::self_signed(ca_params, ca_key_pair).map_err(|e| err(e.to_string()))?;
        if ca_pem_existing.is_none() {
            edgedesk_support::secret::write_private(&ca_key, issuer.key().serialize_pem())
                .map_err(|e| err(e.to_string()))?;
            std::fs::write(&ca_cert, issuer.pem()).map_err(|e| err(e.to_string()))?;
        }
        let broker_key = KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| err(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let broker_cert = params
            .signed_by(&broker_key, &issuer)
            .map_err(|e| err(e.to_string()))?;
        edgedesk_support::secret::write_private(&key, broker_key.serialize_pem())
            .map_err(|e| err(e.to_string()))?;
        std::fs::write(&cert, broker_cert.pem()).map_err(|e| err(e.to_string()))?;
        std::fs::write(&sans, &wanted).map_err(|e| err(e.to_string()))?;
    }
    let ca_pem = std::fs::read_to_string(&ca_cert).map_err(|e| err(e.to_string()))?;
    Ok(BrokerTls {
        ca_pem,
        cert_path: cert,
        key_path: key,
    })
}

/// A rustls server configuration from a PEM chain (server certificate first)
/// and its PEM private key.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Config("the certificate chain is empty".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // The console's WebSocket needs HTTP/1.1 upgrades.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Read a chain and key from files, naming the file that is wrong.
pub fn server_config_from_files(
    chain: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| TlsError::Material {
            dir: p.display().to_string(),
            message: e.to_string(),
        })
    };
    server_config(&read(chain)?, &read(key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_made_once_and_renewed_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_broker_tls(dir.path(), &["127.0.0.1".into()]).unwrap();
        let b = ensure_broker_tls(dir.path(), &["127.0.0.1".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        let cert1 = std::fs::read_to_string(&a.cert_path).unwrap();
        let c =
            ensure_broker_tls(dir.path(), &["127.0.0.1".into(), "mqtt.example".into()]).unwrap();
        assert_eq!(
            a.ca_pem, c.ca_pem,
            "the pinned CA survives a new broker certificate"
        );
        assert_ne!(cert1, std::fs::read_to_string(&c.cert_path).unwrap());
        assert!(edgedesk_support::tls::pinned_client(&a.ca_pem).is_ok());
    }
}
