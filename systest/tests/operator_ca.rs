//! An operator's own CA, end to end with the real binaries: `cloud-controller
//! tls install-ca` refuses bad material by name and writes nothing, installs
//! a good pair once (again: nothing changes), and the controller started on
//! that data directory serves HTTPS and its broker with certificates a node
//! accepts: the node enrols with a join string pinning the operator's CA and
//! comes online.

use std::path::Path;
use std::process::Command;

use edgedesk_systest::process::CtlProcess;
use edgedesk_systest::*;

fn controller() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller"))
}

/// A CA of the operator's, with a name of its own: (certificate, key) PEM.
fn operator_ca(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `cloud-controller tls install-ca` on `data`: exit code and what it said.
fn install(data: &Path, cert: &Path, key: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(controller())
        .args(["tls", "install-ca", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(extra)
        .env(
            "EDGEDESK_CC_STORE__DATA_DIR",
            format!("{:?}", data.to_string_lossy()),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_ca_is_installed_checked_and_trusted_by_nodes() {
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key) = operator_ca("Example Bank Branch CA");
    let (_, other_key) = operator_ca("Someone Else");
    let (cert_file, key_file) = (write("ca.crt", &cert), write("ca.key", &key));
    let data = tempfile::tempdir().unwrap();

    // Bad input: a clear error, exit 65, nothing written.
    for (case, c, k, expect) in [
        (
            "missing file",
            files.path().join("nope.crt"),
            key_file.clone(),
            "nope.crt",
        ),
        (
            "not PEM",
            write("junk.crt", "hello"),
            key_file.clone(),
            "the CA certificate",
        ),
        (
            "the key of another CA",
            cert_file.clone(),
            write("other.key", &other_key),
            "does not belong",
        ),
    ] {
        let (code, said) = install(data.path(), &c, &k, &[]);
        assert_eq!(code, 65, "{case}: {said}");
        assert!(said.contains(expect), "{case}: {said}");
        assert!(
            !data.path().join("mqtt-ca.pem").exists(),
            "{case}: nothing written"
        );
    }

    // A good pair, once; the same again changes nothing.
    let (code, said) = install(data.path(), &cert_file, &key_file, &[]);
    assert_eq!(code, 0, "{said}");
    let fingerprint = edgedesk_support::tls::ca_sha256(&cert).unwrap();
    assert!(
        said.contains("installed") && said.contains(&fingerprint),
        "{said}"
    );
    let (code, said) = install(data.path(), &cert_file, &key_file, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("nothing changed"), "{said}");

    // The controller serves with certificates issued by that CA, in its
    // name: clients pinning it connect, and a node enrols and comes online.
    let ctl = CtlProcess::start(controller(), data.path(), free_port(), free_port(), &[]).await;
    assert_eq!(ctl.ca_pem, cert, "the controller's CA is the operator's");
    let edir = tempfile::tempdir().unwrap();
    let config = ctl.node_config(&edir, "branch-ca").await;
    assert_eq!(config.cloud.ca_sha256, fingerprint);
    let node = TestNode::start(config).await;
    eventually(
        15,
        "the node online over TLS from the operator's CA",
        || ctl.node_online("branch-ca"),
    )
    .await;
    node.stop().await;

    // A different CA over an installed one needs --replace.
    let (cert2, key2) = operator_ca("Example Bank New CA");
    let (c2, k2) = (write("new.crt", &cert2), write("new.key", &key2));
    drop(ctl);
    let (code, said) = install(data.path(), &c2, &k2, &[]);
    assert_eq!(code, 65, "{said}");
    assert!(said.contains("--replace"), "{said}");
    let (code, said) = install(data.path(), &c2, &k2, &["--replace"]);
    assert_eq!(code, 0, "{said}");
}
