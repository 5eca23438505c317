//! The embedded MQTT broker (rumqttd) on its own OS thread.
//!
//! rumqttd has no usable defaults (an all-zero router drops every client),
//! no shutdown API and no topic ACLs: every limit is set here explicitly, its
//! console is off (or loopback-only), and clients authenticate with a
//! per-node username/password checked against [`Credentials`]. Topic-level
//! confidentiality does not rely on the broker: bodies are sealed end to end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::config::MqttConfig;
use crate::store::sha256_hex;

/// Username → sha256(password) of everyone allowed on the broker.
#[derive(Clone, Default)]
pub struct Credentials {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl Credentials {
    pub fn set(&self, user: &str, password_hash: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), password_hash.to_owned());
    }

    pub fn remove(&self, user: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }

    /// A client may connect as `user` with a client id equal to `user` or
    /// starting with `user~` (tools beside a node; `~` is not allowed in node
    /// ids, so nobody can take another node's client id and kick it off).
    pub fn check(&self, client_id: &str, user: &str, password: &str) -> bool {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let id_ok = client_id == user
            || client_id
                .strip_prefix(user)
                .is_some_and(|r| r.starts_with('~'));
        id_ok && map.get(user).is_some_and(|h| *h == sha256_hex(password))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker configuration: {0}")]
    Config(String),
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// Start rumqttd listening on `listen`. Returns when the thread is running;
/// the broker lives until the process exits.
pub fn start(
    cfg: &MqttConfig,
    listen: SocketAddr,
    creds: Credentials,
    tls: Option<&crate::tls::BrokerTls>,
) -> Result<(), BrokerError> {
    // Built through serde because some rumqttd settings have private fields.
    let mut value = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": cfg.max_connections,
            "max_outgoing_packet_count": 200,
            // The router's in-memory log per topic filter: segment size × count
            // bounds its memory. Consumers further behind lose messages, which
            // nodes resend (delivery is end to end).
            "max_segment_size": (cfg.broker_log_bytes / 4).max(1 << 20),
            "max_segment_count": 4,
        },
        "v4": {
            "edgedesk": {
                "name": "edgedesk",
                "listen": listen.to_string(),
                "next_connection_delay_ms": 1,
                "connections": {
                    "connection_timeout_ms": 10_000,
                    "max_payload_size": cfg.max_payload_bytes,
                    "max_inflight_count": cfg.max_inflight,
                    "dynamic_filters": true,
                },
            },
        },
    });
    if let Some(t) = tls {
        value["v4"]["edgedesk"]["tls"] = serde_json::json!({
            "certpath": t.cert_path.to_string_lossy(),
            "keypath": t.key_path.to_string_lossy(),
            "capath": null,
        });
    }
    if cfg.console {
        value["console"] = serde_json::json!({ "listen": cfg.console_listen });
    }
    let mut config: rumqttd::Config =
        serde_json::from_value(value).map_err(|e| BrokerError::Config(e.to_string()))?;
    let server = config
        .v4
        .as_mut()
        .and_then(|v4| v4.get_mut("edgedesk"))
        .ok_or_else(|| BrokerError::Config("v4 listener missing".into()))?;
    server.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = creds.check(&client_id, &user, &pass);
        if !ok {
            tracing::warn!(%client_id, %user, "broker refused a client (bad credentials or revoked)");
        }
        std::future::ready(ok)
    });
    std::thread::Builder::new()
        .name("edgedesk-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    tracing::info!(%listen, "embedded MQTT broker started");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_bind_client_id_to_user() {
        let c = Credentials::default();
        c.set("branch-1", &sha256_hex("pw"));
        assert!(c.check("branch-1", "branch-1", "pw"));
        assert!(c.check("branch-1~tool", "branch-1", "pw"));
        assert!(
            !c.check("branch-2", "branch-1", "pw"),
            "client id of another node"
        );
        assert!(!c.check("branch-1x", "branch-1", "pw"));
        assert!(!c.check("branch-1", "branch-1", "wrong"));
        c.remove("branch-1");
        assert!(!c.check("branch-1", "branch-1", "pw"), "revoked");
    }
}
