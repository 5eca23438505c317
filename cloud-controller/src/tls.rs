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
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
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
    let have_ca = ca_cert.exists() && ca_key.exists();
    if !have_ca {
        let ca_key_pair = KeyPair::generate().map_err(|e| err(e.to_string()))?;
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
        let issuer =
            CertifiedIssuer::self_signed(ca_params, ca_key_pair).map_err(|e| err(e.to_string()))?;
        edgedesk_support::secret::write_private(&ca_key, issuer.key().serialize_pem())
            .map_err(|e| err(e.to_string()))?;
        edgedesk_support::secret::write_public(&ca_cert, issuer.pem())
            .map_err(|e| err(e.to_string()))?;
    }
    let ca_pem = std::fs::read_to_string(&ca_cert).map_err(|e| err(e.to_string()))?;
    // The certificate is made anew when its names or its CA changed (an
    // operator's CA installed with `tls install-ca`).
    let ca_id = edgedesk_support::tls::ca_sha256(&ca_pem).map_err(|e| err(e.to_string()))?;
    let wanted = format!("{}\nca {ca_id}", names.join("\n"));
    let fresh = cert.exists()
        && key.exists()
        && std::fs::read_to_string(&sans).ok().as_deref() == Some(wanted.as_str());
    if !fresh {
        let ca_key_pair =
            KeyPair::from_pem(&std::fs::read_to_string(&ca_key).map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(format!("{}: {e}", ca_key.display())))?;
        // Issued in the CA certificate's own name, whoever made it.
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key_pair)
            .map_err(|e| err(format!("{}: {e}", ca_cert.display())))?;
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
        edgedesk_support::secret::write_public(&cert, broker_cert.pem())
            .map_err(|e| err(e.to_string()))?;
        edgedesk_support::secret::write_public(&sans, &wanted).map_err(|e| err(e.to_string()))?;
    }
    Ok(BrokerTls {
        ca_pem,
        cert_path: cert,
        key_path: key,
    })
}

/// What [`install_ca`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum CaInstall {
    /// The CA was written (first install, or a replacement).
    Installed { fingerprint: String },
    /// The same CA was already there: nothing changed.
    Unchanged { fingerprint: String },
}

/// Install an operator's CA (PEM certificate and key) as the controller's
/// CA in `dir`, which then issues the broker, QUIC and HTTPS certificates
/// from it. Refuses a key that is not the certificate's, a certificate that
/// is not a CA, and - unless `replace` - a different CA already in `dir`:
/// enrolled nodes pin the CA's fingerprint and would stop connecting.
/// Installing the same CA again changes nothing (the chart's init container
/// runs this at every start).
pub fn install_ca(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    replace: bool,
) -> Result<CaInstall, TlsError> {
    let bad = |message: String| TlsError::Config(message);
    let fingerprint = edgedesk_support::tls::ca_sha256(cert_pem)
        .map_err(|e| bad(format!("the CA certificate: {e}")))?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(format!("the CA certificate: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("the CA key: {e}")))?;
    let key_pair = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("the CA key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(vec![cert_der], key_der, &provider).map_err(|e| {
        bad(format!(
            "the key does not belong to the CA certificate ({e})"
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(cert_pem, key_pair)
        .map_err(|e| bad(format!("the CA certificate: {e}")))?;
    if !issuer.key_usages().is_empty()
        && !issuer.key_usages().contains(&KeyUsagePurpose::KeyCertSign)
    {
        return Err(bad(
            "the certificate may not sign certificates (its key usage lacks keyCertSign)".into(),
        ));
    }
    let (ca_cert, ca_key) = (ca_path(dir), dir.join("mqtt-ca.key"));
    if let Ok(existing) = std::fs::read_to_string(&ca_cert) {
        let existing = edgedesk_support::tls::ca_sha256(&existing).ok();
        if existing.as_deref() == Some(fingerprint.as_str())
            && std::fs::read_to_string(&ca_key).ok().as_deref() == Some(key_pem)
        {
            return Ok(CaInstall::Unchanged { fingerprint });
        }
        if !replace {
            return Err(bad(format!(
                "{} already holds another CA ({}); nodes enrolled with it pin its fingerprint and \
                 would stop connecting. Pass --replace to install this one anyway, then enrol \
                 the nodes again",
                dir.display(),
                existing.unwrap_or_else(|| "unreadable".into())
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
    edgedesk_support::secret::write_private(&ca_key, key_pem)
        .map_err(|e| bad(format!("{}: {e}", ca_key.display())))?;
    edgedesk_support::secret::write_public(&ca_cert, cert_pem)
        .map_err(|e| bad(format!("{}: {e}", ca_cert.display())))?;
    Ok(CaInstall::Installed { fingerprint })
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

    /// An operator's CA with its own name, as a bank's PKI would issue it.
    fn operator_ca(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example Bank");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Verify `cert_path` for `name` as a node does: the CA as the only root.
    fn verifies_under(ca_pem: &str, cert_path: &Path, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_file(cert_path).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn an_installed_operator_ca_issues_certificates_nodes_accept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = operator_ca("Example Bank Branch CA");
        let done = install_ca(dir.path(), &cert, &key, false).unwrap();
        let fingerprint = edgedesk_support::tls::ca_sha256(&cert).unwrap();
        assert_eq!(
            done,
            CaInstall::Installed {
                fingerprint: fingerprint.clone()
            }
        );
        let tls = ensure_broker_tls(dir.path(), &["mqtt.example".into()]).unwrap();
        assert_eq!(tls.ca_pem, cert, "the operator's CA is the one nodes pin");
        verifies_under(&cert, &tls.cert_path, "mqtt.example").unwrap();
        // Again at the next start (the init container): nothing changes.
        assert_eq!(
            install_ca(dir.path(), &cert, &key, false).unwrap(),
            CaInstall::Unchanged { fingerprint }
        );
    }

    #[test]
    fn replacing_the_ca_reissues_certificates_and_needs_replace() {
        let dir = tempfile::tempdir().unwrap();
        let own = ensure_http_tls(dir.path(), &["localhost".into()]).unwrap();
        verifies_under(&own.ca_pem, &own.cert_path, "localhost").unwrap();
        let (cert, key) = operator_ca("Example Bank Root");
        let e = install_ca(dir.path(), &cert, &key, false).unwrap_err();
        assert!(e.to_string().contains("--replace"), "{e}");
        assert_eq!(
            std::fs::read_to_string(ca_path(dir.path())).unwrap(),
            own.ca_pem
        );
        install_ca(dir.path(), &cert, &key, true).unwrap();
        let tls = ensure_http_tls(dir.path(), &["localhost".into()]).unwrap();
        verifies_under(&cert, &tls.cert_path, "localhost").unwrap();
        assert!(verifies_under(&own.ca_pem, &tls.cert_path, "localhost").is_err());
    }

    #[test]
    fn install_ca_refuses_bad_material_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = operator_ca("Example Bank Root");
        let (_, other_key) = operator_ca("Someone Else");
        let cases = [
            (
                "not PEM",
                "hello".to_owned(),
                key.clone(),
                "the CA certificate",
            ),
            (
                "key of another CA",
                cert.clone(),
                other_key,
                "does not belong",
            ),
            (
                "certificate as key",
                cert.clone(),
                cert.clone(),
                "the CA key",
            ),
        ];
        for (case, c, k, expect) in cases {
            let e = install_ca(dir.path(), &c, &k, false).unwrap_err();
            assert!(e.to_string().contains(expect), "{case}: {e}");
            assert!(!ca_path(dir.path()).exists(), "{case}: nothing is written");
        }
    }
}
