//! Enrolment and the node's identity: a signing key and a sealing keyring
//! made on first start, a one-time token exchanged for the controller's keys
//! and the broker and model-service endpoints, all pinned in
//! `cloud.identity_path` (0600). The sealing keys rotate (see
//! [`super::keys`]); the file is rewritten, old contents overwritten, when
//! one goes.

use std::path::Path;
use std::time::Duration;

use edgedesk_common::envelope::{Identity, PublicKeys};
use edgedesk_common::sealing::Keyring;
use edgedesk_common::sync::{
    EnrollRequest, EnrollResponse, ModelEndpoint, MqttEndpoint, enroll_proof_message,
};
use serde::{Deserialize, Serialize};

use super::UplinkError;
use crate::config::CloudConfig;

/// What the node keeps about itself and the controller it pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityFile {
    pub node_id: String,
    /// 64 secret bytes, hex: the signing key, then the first sealing key
    /// (zeroed once that lives in `sealing`).
    pub secret: String,
    /// The node's receiving keys, current last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing: Option<Keyring>,
    #[serde(default)]
    pub controller: Option<PublicKeys>,
    #[serde(default)]
    pub mqtt: Option<MqttEndpoint>,
    /// Model-signing key and QUIC endpoint, pinned at enrolment.
    #[serde(default)]
    pub models: Option<ModelEndpoint>,
}

impl IdentityFile {
    /// Load the identity, or create a fresh key pair for `node_id`.
    pub fn load_or_create(path: &Path, node_id: &str) -> Result<IdentityFile, UplinkError> {
        let err = |message: String| UplinkError::Identity {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut f: IdentityFile =
                    serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
                if f.node_id != node_id {
                    return Err(err(format!(
                        "belongs to node {:?}, but cloud.node_id is {node_id:?}; use another identity_path",
                        f.node_id
                    )));
                }
                if f.sealing.is_none() {
                    // A file from before key rotation: its sealing key
                    // becomes the keyring's first and leaves `secret`.
                    f.move_sealing_key()?;
                    f.save(path)?;
                }
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 64];
                getrandom::fill(&mut secret).map_err(|e| err(e.to_string()))?;
                let mut f = IdentityFile {
                    node_id: node_id.into(),
                    secret: hex::encode(secret),
                    sealing: None,
                    controller: None,
                    mqtt: None,
                    models: None,
                };
                f.move_sealing_key()?;
                f.save(path)?;
                Ok(f)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    fn move_sealing_key(&mut self) -> Result<(), UplinkError> {
        let identity = self.identity()?;
        let now = chrono::Utc::now().timestamp_millis();
        self.sealing = Some(Keyring::new(identity.sealing_seed(), now));
        self.secret = hex::encode(identity.without_sealing());
        Ok(())
    }

    /// The keyring (always there once loaded).
    pub fn keyring(&self) -> Result<&Keyring, UplinkError> {
        self.sealing.as_ref().ok_or_else(|| UplinkError::Identity {
            path: self.node_id.clone(),
            message: "no sealing keys".into(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), UplinkError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        edgedesk_support::secret::write_private(path, text.as_bytes()).map_err(|e| {
            UplinkError::Identity {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        })
    }

    pub fn identity(&self) -> Result<Identity, UplinkError> {
        let bytes = hex::decode(&self.secret)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok());
        bytes
            .map(|b| Identity::from_secret(&b))
            .ok_or_else(|| UplinkError::Identity {
                path: self.node_id.clone(),
                message: "secret is not 64 hex bytes".into(),
            })
    }
}

/// Enrol with the controller (once); returns the pinned controller keys and broker endpoint.
pub async fn enroll(cfg: &CloudConfig, file: &mut IdentityFile) -> Result<(), UplinkError> {
    if file.controller.is_some() && file.mqtt.is_some() {
        return Ok(());
    }
    if cfg.enroll_token.is_empty() {
        return Err(UplinkError::NoToken);
    }
    let identity = file.identity()?;
    let req = EnrollRequest {
        token: cfg.enroll_token.clone(),
        node_id: cfg.node_id.clone(),
        keys: identity.announce(&file.keyring()?.current()),
        proof: identity.sign(&enroll_proof_message(&cfg.node_id, &cfg.enroll_token)),
        sw_version: env!("CARGO_PKG_VERSION").into(),
    };
    let url = format!("{}/api/v1/enroll", cfg.controller_url.trim_end_matches('/'));
    let client = enrolment_client(cfg)?;
    let mut delay = Duration::from_millis(250);
    let resp = loop {
        match client.post(&url).json(&req).send().await {
            Ok(r) => break r,
            Err(e) if untrusted(&e) => {
                // Retrying cannot help: the server is not the one the join
                // string names. Nothing was sent.
                return Err(UplinkError::EnrollUntrusted(format!(
                    "{url} did not present a certificate chain holding the CA {} \
                     (the join string's ca=); the token was not sent: {}",
                    cfg.ca_sha256,
                    error_chain(&e)
                )));
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), %url, "controller unreachable for enrolment; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let message = resp.text().await.unwrap_or_default();
        return Err(UplinkError::EnrollRefused { status, message });
    }
    let body: EnrollResponse = resp.json().await.map_err(|e| UplinkError::EnrollRefused {
        status,
        message: e.to_string(),
    })?;
    file.controller = Some(body.controller);
    file.mqtt = Some(body.mqtt);
    file.models = body.models;
    tracing::info!(node = %cfg.node_id, "enrolled with the controller");
    Ok(())
}

/// The HTTP client for enrolment: over HTTPS it trusts only a chain holding
/// the CA with `cloud.ca_sha256`; plain HTTP only with
/// `cloud.insecure_enrollment` (the configuration refuses it otherwise).
fn enrolment_client(cfg: &CloudConfig) -> Result<reqwest::Client, UplinkError> {
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    let builder = if cfg.controller_url.starts_with("https://") {
        if cfg.ca_sha256.is_empty() {
            return Err(UplinkError::EnrollUntrusted(
                "cloud.ca_sha256 is empty: use the join string `cloud-controller token create` prints (cloud.join)"
                    .into(),
            ));
        }
        let tls = edgedesk_support::tls::fingerprint_client(&cfg.ca_sha256)
            .map_err(|e| UplinkError::EnrollUntrusted(e.to_string()))?;
        builder.use_preconfigured_tls((*tls).clone())
    } else {
        tracing::warn!(url = %cfg.controller_url, "enrolling over plain HTTP (cloud.insecure_enrollment): the token travels in clear");
        builder
    };
    builder
        .build()
        .map_err(|e| UplinkError::EnrollUntrusted(e.to_string()))
}

/// Whether a request failed on the server's certificate (not on the network).
fn untrusted(e: &reqwest::Error) -> bool {
    let text = error_chain(e);
    text.contains("invalid peer certificate") || text.contains("pinned fingerprint")
}

/// An error with its sources, so the TLS reason is not hidden behind
/// "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
