//! Node accounts on an external Mosquitto, through its dynamic security
//! plugin (`mqtt.external_provisioning = "dynsec"`): at enrolment the
//! controller creates the node's broker client (username and client id = the
//! node id, the password it hands the node) with a role of its own that
//! allows exactly what the embedded gate allows — publish to its `up` topic,
//! subscribe to and receive its `down` topic — and at revocation deletes
//! both, which also disconnects the node. Nobody edits broker accounts by
//! hand.
//!
//! The plugin is driven over MQTT (commands on [`CONTROL`], answers on
//! [`RESPONSE`]) by the controller's own client, which must be a dynsec
//! admin. [`commands`] and [`outcome`] are pure; [`Dynsec`] pairs each
//! request with its answer by correlation id, without ever holding up the
//! MQTT event loop (it only hands answers over).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use edgedesk_common::envelope::topic;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Where commands go.
pub const CONTROL: &str = "$CONTROL/dynamic-security/v1";
/// Where the plugin answers.
pub const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";

/// How long the controller waits for the plugin's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    #[error("the broker's dynamic security plugin refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error(
        "the broker's dynamic security plugin did not answer within {0:?} (is the plugin loaded, and is the controller's broker user a dynsec admin?)"
    )]
    NoAnswer(Duration),
    #[error("sending to the broker: {0}")]
    Send(String),
}

/// The role that holds one node's topic rights.
pub fn role_of(node: &str) -> String {
    format!("edgedesk-node-{node}")
}

/// What to do on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// (Re)create the node's client with `password` and its role.
    Enrol,
    /// Delete the node's client (disconnecting it) and its role.
    Revoke,
}

/// One plugin command, and the errors that mean "already so".
struct Step {
    command: Value,
    harmless: &'static [&'static str],
}

/// The plugin commands for `change` of `node`, each tagged with a
/// correlation id `<corr>/<n>`, and per command the errors that mean the
/// broker is already in the wanted state (so a retried enrolment or a
/// repeated revocation succeeds).
pub fn commands(
    change: Change,
    node: &str,
    password: &str,
    corr: &str,
) -> (Value, Vec<&'static [&'static str]>) {
    let role = role_of(node);
    let steps = match change {
        Change::Enrol => vec![
            // A leftover client of the same name (an enrolment whose answer
            // was lost) goes first; there is none after a clean revocation.
            Step {
                command: json!({ "command": "deleteClient", "username": node }),
                harmless: &["Client not found"],
            },
            Step {
                command: json!({
                    "command": "createRole",
                    "rolename": role,
                    "textdescription": "EdgeDesk node: its own up and down topics",
                    "acls": [
                        { "acltype": "publishClientSend", "topic": topic::up(node), "allow": true },
                        { "acltype": "subscribeLiteral", "topic": topic::down(node), "allow": true },
                        { "acltype": "publishClientReceive", "topic": topic::down(node), "allow": true },
                        { "acltype": "unsubscribeLiteral", "topic": topic::down(node), "allow": true },
                    ],
                }),
                harmless: &["Role already exists"],
            },
            Step {
                command: json!({
                    "command": "createClient",
                    "username": node,
                    "clientid": node,
                    "password": password,
                    "textdescription": "EdgeDesk node",
                    "roles": [{ "rolename": role, "priority": 0 }],
                }),
                harmless: &[],
            },
        ],
        Change::Revoke => vec![
            Step {
                command: json!({ "command": "deleteClient", "username": node }),
                harmless: &["Client not found"],
            },
            Step {
                command: json!({ "command": "deleteRole", "rolename": role }),
                harmless: &["Role not found"],
            },
        ],
    };
    let mut harmless = Vec::new();
    let list: Vec<Value> = steps
        .into_iter()
        .enumerate()
        .map(|(n, mut s)| {
            s.command["correlationData"] = json!(format!("{corr}/{n}"));
            harmless.push(s.harmless);
            s.command
        })
        .collect();
    (json!({ "commands": list }), harmless)
}

/// The answers in a [`RESPONSE`] payload: `(correlation id, command,
/// error)` for each, `error` empty on success.
pub fn outcome(payload: &[u8]) -> Vec<(String, String, String)> {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return Vec::new();
    };
    let text = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    v.get("responses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            (
                text(r, "correlationData"),
                text(r, "command"),
                text(r, "error"),
            )
        })
        .collect()
}

/// Requests to the plugin, paired with their answers.
pub struct Dynsec {
    client: AsyncClient,
    /// Correlation id of each command awaiting its answer.
    pending: Mutex<HashMap<String, oneshot::Sender<(String, String)>>>,
    /// A sweep of revoked nodes' accounts is running.
    sweeping: std::sync::atomic::AtomicBool,
}

impl Dynsec {
    pub fn new(client: AsyncClient) -> Dynsec {
        Dynsec {
            client,
            pending: Mutex::new(HashMap::new()),
            sweeping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Delete `node`'s account in the background (a revocation, or an
    /// enrolment that did not go through); a failure is logged, and the
    /// sweep at the next connection to the broker tries again.
    pub fn delete_later(self: &std::sync::Arc<Self>, node: &str) {
        let (d, node) = (self.clone(), node.to_owned());
        tokio::spawn(async move {
            match d.apply(Change::Revoke, &node, "").await {
                Ok(()) => tracing::info!(%node, "broker account deleted"),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "deleting the broker account failed; the next connection to the broker tries again")
                }
            }
        });
    }

    /// In the background, delete the accounts of every node revoked in
    /// `store` again (each connection to the broker starts one sweep, at
    /// most one at a time): a revocation whose deletion was lost — the
    /// broker was down and the controller stopped before it came back —
    /// ends here. Already deleted accounts are no error.
    pub fn sweep_later(self: &std::sync::Arc<Self>, store: crate::store::Store) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let d = self.clone();
        tokio::spawn(async move {
            match store.revoked_nodes().await {
                Ok(revoked) if !revoked.is_empty() => {
                    let mut failed = 0;
                    for node in &revoked {
                        if let Err(e) = d.apply(Change::Revoke, node, "").await {
                            tracing::warn!(%node, error = %e, "deleting a revoked node's broker account failed; the next connection tries again");
                            failed += 1;
                        }
                    }
                    tracing::info!(
                        revoked = revoked.len(),
                        failed,
                        "revoked nodes' broker accounts swept"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "listing revoked nodes failed"),
            }
            d.sweeping.store(false, Ordering::Release);
        });
    }

    /// Subscribe to the answers (at every connection).
    pub fn subscribe(&self) -> Result<(), rumqttc::ClientError> {
        self.client.try_subscribe(RESPONSE, QoS::AtLeastOnce)
    }

    /// An answer arrived (called by the MQTT event loop: never waits).
    pub fn answered(&self, payload: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (corr, command, error) in outcome(payload) {
            if let Some(tx) = pending.remove(&corr) {
                let _ = tx.send((command, error));
            }
        }
    }

    /// Apply `change` for `node` on the broker and wait for every answer.
    pub async fn apply(
        &self,
        change: Change,
        node: &str,
        password: &str,
    ) -> Result<(), DynsecError> {
        let corr = uuid::Uuid::new_v4().to_string();
        let (body, harmless) = commands(change, node, password, &corr);
        let mut answers = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for n in 0..harmless.len() {
                let (tx, rx) = oneshot::channel();
                pending.insert(format!("{corr}/{n}"), tx);
                answers.push(rx);
            }
        }
        let forget = || {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|k, _| !k.starts_with(&corr));
        };
        if let Err(e) = self
            .client
            .publish(CONTROL, QoS::AtLeastOnce, false, body.to_string())
            .await
        {
            forget();
            return Err(DynsecError::Send(e.to_string()));
        }
        let all = async {
            let mut out = Vec::new();
            for rx in answers {
                out.push(rx.await.unwrap_or_default());
            }
            out
        };
        let Ok(got) = tokio::time::timeout(ANSWER_TIMEOUT, all).await else {
            forget();
            return Err(DynsecError::NoAnswer(ANSWER_TIMEOUT));
        };
        for ((command, error), ok) in got.into_iter().zip(harmless) {
            if !error.is_empty() && !ok.contains(&error.as_str()) {
                return Err(DynsecError::Refused { command, error });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolment_gives_the_node_its_own_topics_and_nothing_else() {
        let (v, harmless) = commands(Change::Enrol, "b-1", "secret", "c");
        let cmds = v["commands"].as_array().unwrap();
        let names: Vec<&str> = cmds
            .iter()
            .map(|c| c["command"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["deleteClient", "createRole", "createClient"]);
        assert_eq!(harmless.len(), 3);
        let acls: Vec<(&str, &str)> = cmds[1]["acls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["acltype"].as_str().unwrap(), a["topic"].as_str().unwrap()))
            .collect();
        assert_eq!(
            acls,
            [
                ("publishClientSend", "edgedesk/v1/nodes/b-1/up"),
                ("subscribeLiteral", "edgedesk/v1/nodes/b-1/down"),
                ("publishClientReceive", "edgedesk/v1/nodes/b-1/down"),
                ("unsubscribeLiteral", "edgedesk/v1/nodes/b-1/down"),
            ]
        );
        assert_eq!(cmds[2]["username"], "b-1");
        assert_eq!(cmds[2]["clientid"], "b-1", "only the node's own client id");
        assert_eq!(cmds[2]["password"], "secret");
        assert_eq!(cmds[2]["roles"][0]["rolename"], "edgedesk-node-b-1");
        let corr: Vec<&str> = cmds
            .iter()
            .map(|c| c["correlationData"].as_str().unwrap())
            .collect();
        assert_eq!(corr, ["c/0", "c/1", "c/2"]);
        let (v, _) = commands(Change::Revoke, "b-1", "", "d");
        let names: Vec<&str> = v["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["command"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["deleteClient", "deleteRole"]);
    }

    #[test]
    fn answers_are_read_by_correlation_id_and_garbage_is_ignored() {
        let got = outcome(
            br#"{"responses":[{"command":"createClient","correlationData":"c/2","error":"Client already exists"},{"command":"deleteRole","correlationData":"d/1"}]}"#,
        );
        assert_eq!(
            got,
            vec![
                (
                    "c/2".into(),
                    "createClient".into(),
                    "Client already exists".into()
                ),
                ("d/1".into(), "deleteRole".into(), String::new()),
            ]
        );
        assert!(outcome(b"not json").is_empty());
        assert!(outcome(br#"{"responses":"x"}"#).is_empty());
    }
}
