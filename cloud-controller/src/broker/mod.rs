//! The embedded MQTT broker (rumqttd) on its own OS thread, behind a gate.
//!
//! rumqttd has no usable defaults (an all-zero router drops every client),
//! no shutdown API, no topic ACLs and no way to drop a client: it listens on
//! loopback only, every limit is set here explicitly, its console is off (or
//! loopback-only). Nodes reach it through the [`gate`], which terminates
//! TLS, checks logins against [`Credentials`], enforces [`acl`] (a node
//! publishes only to its own `up` topic and subscribes only to its own
//! `down` topic), throttles each connection, and closes a node's connections
//! when it is revoked. Bodies are also sealed end to end, so confidentiality
//! never rests on the broker.

pub mod acl;
pub mod dynsec;
pub mod gate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::store::sha256_hex;

/// Open file descriptors the embedded broker holds per connected node: the
/// gate's TLS socket and both ends of its loopback hop to rumqttd.
pub const DESCRIPTORS_PER_NODE: u64 = 3;

/// A warning when the open-file limit `soft` (`None`: unlimited) cannot
/// hold `max_connections` nodes on the embedded broker; `None` when it can.
pub fn descriptor_warning(soft: Option<u64>, max_connections: usize) -> Option<String> {
    let soft = soft?;
    let needed = max_connections as u64 * DESCRIPTORS_PER_NODE + 256;
    (soft < needed).then(|| {
        format!(
            "the open-file limit ({soft}) holds about {} nodes on the embedded broker \
             ({DESCRIPTORS_PER_NODE} descriptors each), fewer than mqtt.max_connections ({max_connections}); \
             raise its hard limit (systemd LimitNOFILE, the container's ulimit) to at least {needed}, \
             or use an external broker",
            soft.saturating_sub(256) / DESCRIPTORS_PER_NODE
        )
    })
}

/// Username → sha256(password) of everyone allowed on the broker.
#[derive(Clone, Default)]
pub struct Credentials {
    inner: Arc<RwLock<HashMap<String, String>>>,
    /// Cancelled when the user is removed: their live connections close.
    sessions: Arc<RwLock<HashMap<String, CancellationToken>>>,
}

impl Credentials {
    /// Cancelled when `user` is removed (revoked).
    pub fn session(&self, user: &str) -> CancellationToken {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_owned())
            .or_default()
            .clone()
    }

    /// Whether `user` may log in at all (enrolled and not revoked).
    pub fn contains(&self, user: &str) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(user)
    }

    pub fn set(&self, user: &str, password_hash: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), password_hash.to_owned());
    }

    /// Forget `user` and close their live connections.
    pub fn remove(&self, user: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        if let Some(t) = self
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user)
        {
            t.cancel();
        }
    }

    /// Everyone allowed on the broker.
    pub fn users(&self) -> Vec<String> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
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

/// Where the embedded broker listens: the gate for nodes, rumqttd for the
/// controller's own client.
pub struct Started {
    pub gate: SocketAddr,
    pub internal: SocketAddr,
}

/// Start rumqttd on a loopback port and the [`gate`] on `listen` (TLS with
/// `tls`). Returns when both accept connections; the broker lives until the
/// process exits, the gate until `shutdown`.
pub async fn start(
    cfg: &MqttConfig,
    listen: SocketAddr,
    creds: Credentials,
    tls: Option<&crate::tls::BrokerTls>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Started, BrokerError> {
    let public = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| BrokerError::Config(format!("cannot listen on {listen}: {e}")))?;
    let gate_addr = public.local_addr().map_err(BrokerError::Thread)?;
    // A loopback port for rumqttd (free now; rumqttd binds it below).
    let internal = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BrokerError::Thread)?;
    let acceptor = match tls {
        Some(t) => {
            let config = crate::tls::server_config_from_files(&t.cert_path, &t.key_path)
                .map_err(|e| BrokerError::Config(e.to_string()))?;
            let mut config = (*config).clone();
            config.alpn_protocols.clear();
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        None => None,
    };
    start_rumqttd(cfg, internal, creds.clone())?;
    // rumqttd cannot report readiness: wait until it accepts, so that the
    // controller subscribes before nodes start publishing.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(internal).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let gate = gate::Gate {
        upstream: internal,
        creds,
        tls: acceptor,
        max_packet: cfg.max_payload_bytes + 1024,
        max_connections: cfg.max_connections,
        rate: cfg.max_messages_per_sec as f64,
        burst: (cfg.max_messages_per_sec * 2).max(1) as f64,
        metrics,
    };
    tokio::spawn(gate::serve(public, gate, shutdown));
    tracing::info!(listen = %gate_addr, "embedded MQTT broker started");
    Ok(Started {
        gate: gate_addr,
        internal,
    })
}

fn start_rumqttd(
    cfg: &MqttConfig,
    listen: SocketAddr,
    creds: Credentials,
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_limit_too_small_for_the_fleet_is_named() {
        let w = descriptor_warning(Some(20_000), 10_000).unwrap();
        assert!(
            w.contains("20000") && w.contains("about 6581 nodes") && w.contains("30256"),
            "{w}"
        );
        assert_eq!(descriptor_warning(Some(20_000), 5_000), None);
        assert_eq!(descriptor_warning(None, 10_000), None, "unlimited");
    }

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
