//! Controller configuration: a serde [`Config`] with documented defaults
//! (`cloud-controller/default-config.toml`, printed by `config default`).

use std::path::{Path, PathBuf};

pub use edgedesk_support::config::ConfigError;
use edgedesk_support::config::{self as layered, LayerError};
use serde::{Deserialize, Serialize};

pub const DEFAULT_TOML: &str = include_str!("../default-config.toml");
pub const ENV_PREFIX: &str = "EDGEDESK_CC_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub console: ConsoleConfig,
    pub models: ModelsConfig,
    pub kubernetes: KubernetesConfig,
    pub store: StoreConfig,
    pub fleet: FleetConfig,
    pub sync: SyncConfig,
    pub learning: LearningConfig,
    pub training: TrainingConfig,
    pub log: LogConfig,
    pub telemetry: edgedesk_support::telemetry::TelemetryConfig,
}

/// The learning loop's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningConfig {
    /// Samples older than this are deleted (hourly).
    pub sample_retention_days: u32,
    /// Share of agents' labels shown to supervisors for review.
    pub review_fraction: f64,
}

/// The learning loop's training runs (see `crate::training`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// The trainer: program and first arguments; the run appends
    /// `--data --extra --out --version --name`.
    pub command: Vec<String>,
    /// The base training data (the repository's `data/` layout).
    pub data_dir: PathBuf,
    /// The sentence encoder's folder (`scripts/provision.sh` unpacks it into
    /// `build/models/e5`): passed as `--encoder` when the fleet's model has
    /// one, so the candidate is the same kind of model.
    pub encoder_dir: PathBuf,
    pub timeout_secs: u64,
    /// Address-space limit of the trainer in MiB (0: none).
    pub memory_mb: u64,
    /// Share of labelled samples kept out of training to evaluate on.
    pub held_out_fraction: f64,
    /// Largest fall allowed per language and in out-of-scope recall.
    pub tolerance: f64,
    /// Largest fall allowed per intent.
    pub intent_tolerance: f64,
    /// Fewest rows for a figure to be judged.
    pub min_rows: usize,
    /// Roll a passing model out without waiting for approval.
    pub auto_promote: bool,
    /// The rollout a passing model gets (any field can be overridden when approving).
    pub shadow_secs: u64,
    pub waves: Vec<String>,
    pub bake_secs: u64,
    /// Group the unlabelled questions into suggested intents this often
    /// (seconds; 0: only when someone asks).
    pub suggest_every_secs: u64,
    /// Cosine distance at which the clustering cuts groups.
    pub suggest_distance: f64,
    /// Fewest questions in a suggestion.
    pub suggest_min_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    pub admin_token: String,
    pub public_url: String,
    pub insecure_http: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_names: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub metrics_token: String,
    /// Where other replicas reach this one's HTTP listener when it is the
    /// active controller (standbys forward requests there). Empty: derived
    /// from the listen address (`POD_IP`, else the host name, when it
    /// listens on every address).
    pub replica_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    Embedded,
    External,
}

/// Who manages node accounts on an external broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provisioning {
    /// The operator (the broker lets nodes in by other means).
    None,
    /// The controller, through Mosquitto's dynamic security plugin.
    Dynsec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub mode: BrokerMode,
    pub external_provisioning: Provisioning,
    /// Active/active ingestion (docs/REPLICAS.md): the MQTT shared
    /// subscription group every replica joins; empty: off.
    pub shared_group: String,
    pub listen: String,
    pub advertise_host: String,
    pub advertise_port: u16,
    pub external_host: String,
    pub external_port: u16,
    pub external_username: String,
    pub external_password: String,
    pub tls: bool,
    pub tls_names: Vec<String>,
    pub external_tls: bool,
    pub external_ca_file: PathBuf,
    pub max_connections: usize,
    pub max_payload_bytes: usize,
    pub max_inflight: usize,
    pub max_messages_per_sec: u64,
    pub broker_log_bytes: usize,
    pub console: bool,
    pub console_listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub idle_timeout_minutes: u64,
    pub session_max_hours: u64,
    pub reconnect_grace_secs: u64,
    pub max_waiting_per_node: usize,
    pub secure_cookies: bool,
    pub login_max_failures: usize,
    pub login_max_failures_per_address: usize,
    pub login_window_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub enabled: bool,
    pub namespace: String,
    pub lease_name: String,
    pub lease_seconds: u64,
    pub identity: String,
    pub mirror_secs: u64,
    pub training_job: TrainingJobConfig,
}

/// Training runs (and groupings) as Kubernetes Jobs instead of child
/// processes (`operator::job`): used when `image` is set and the operator
/// is enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingJobConfig {
    /// The trainer image (Python with the pinned toolchain, the training
    /// script, the base data and the encoder); empty: child processes.
    pub image: String,
    /// The trainer inside the image (empty: `training.command`).
    pub command: Vec<String>,
    /// The controller's data volume (a PersistentVolumeClaim), mounted in
    /// the Job at `store.data_dir`, where the run's files are.
    pub data_claim: String,
    /// Labels of the controller's pod: the Job's pod is scheduled on the
    /// same node (the claim may be ReadWriteOnce).
    pub pod_labels: std::collections::BTreeMap<String, String>,
    /// Requests and limits of the Job's container.
    pub cpu: String,
    pub memory: String,
    /// Service account of the Job's pod (empty: the namespace's default).
    pub service_account: String,
    /// How often the Job's state is read, in milliseconds.
    pub poll_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub quic_listen: String,
    pub advertise_host: String,
    pub advertise_port: u16,
    pub max_transfers: usize,
    pub tick_ms: u64,
    pub onnxruntime_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// PostgreSQL instead of SQLite: a connection URL
    /// (`postgres://user:pass@host/db` or `host=… user=… dbname=…`);
    /// empty: SQLite in `data_dir`. Keys and secrets stay in `data_dir`.
    #[serde(default)]
    pub postgres_url: String,
    /// Connections to PostgreSQL (each on its own thread).
    #[serde(default = "default_postgres_pool")]
    pub postgres_pool: usize,
    /// On PostgreSQL, how often a standby replica tries the leader lock.
    #[serde(default = "default_leader_poll_ms")]
    pub leader_poll_ms: u64,
}

fn default_leader_poll_ms() -> u64 {
    1000
}

fn default_postgres_pool() -> usize {
    4
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    pub heartbeat_timeout_secs: u64,
    pub history_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub command_retry_secs: u64,
    pub max_clock_skew_secs: u64,
    /// A new sealing key this often (0: never; forward secrecy then ends).
    pub seal_key_rotate_secs: u64,
    /// How long the previous sealing key still opens after a rotation.
    pub seal_key_overlap_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: String,
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::load(None, Vec::new()).expect("embedded default-config.toml is valid")
    }
}

impl Config {
    /// The configuration with its secrets masked, for printing
    /// (`config check`): the metrics token, the database password.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if !c.http.metrics_token.is_empty() {
            c.http.metrics_token = "*****".into();
        }
        c.store.postgres_url = redact_password(&c.store.postgres_url);
        c
    }

    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config: Config = layered::load_file(DEFAULT_TOML, file, ENV_PREFIX, env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), LayerError> {
        let bad = |key: &str, message: &str| {
            Err(LayerError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        for (key, value) in [
            ("http.listen", &self.http.listen),
            ("mqtt.listen", &self.mqtt.listen),
            ("models.quic_listen", &self.models.quic_listen),
        ] {
            if value.parse::<std::net::SocketAddr>().is_err() {
                return bad(
                    key,
                    "expected host:port with an IP address, e.g. 127.0.0.1:8700",
                );
            }
        }
        if !(50..=60_000).contains(&self.store.leader_poll_ms) {
            return bad("store.leader_poll_ms", "expected 50 to 60000 ms");
        }
        if self.store.postgres_pool == 0 || self.store.postgres_pool > 256 {
            return bad("store.postgres_pool", "expected 1 to 256 connections");
        }
        if !self.store.postgres_url.is_empty() {
            if let Err(e) = self.store.postgres_url.parse::<postgres::Config>() {
                return bad(
                    "store.postgres_url",
                    &format!(
                        "not a PostgreSQL connection string ({}): expected postgres://user:password@host/database or host=… user=… dbname=…",
                        crate::store::sql::error_chain(&e)
                    ),
                );
            }
        }
        if self.mqtt.console {
            match self.mqtt.console_listen.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                _ => {
                    return bad(
                        "mqtt.console_listen",
                        "the broker console may only listen on loopback",
                    );
                }
            }
        }
        if self.mqtt.external_provisioning == Provisioning::Dynsec
            && self.mqtt.mode != BrokerMode::External
        {
            return bad(
                "mqtt.external_provisioning",
                "\"dynsec\" provisions accounts on an external broker: set mqtt.mode = \"external\" too",
            );
        }
        if !self.mqtt.shared_group.is_empty() {
            let g = &self.mqtt.shared_group;
            if g.len() > 64
                || !g
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(
                    "mqtt.shared_group",
                    "expected 1 to 64 of a-z A-Z 0-9 - _ (a name in an MQTT topic filter)",
                );
            }
            if self.mqtt.mode != BrokerMode::External || self.store.postgres_url.is_empty() {
                return bad(
                    "mqtt.shared_group",
                    "replicas share node traffic through an external broker and one PostgreSQL database: set mqtt.mode = \"external\" and store.postgres_url too",
                );
            }
        }
        if self.http.tls_cert.as_os_str().is_empty() != self.http.tls_key.as_os_str().is_empty() {
            return bad(
                "http.tls_cert",
                "give both http.tls_cert and http.tls_key, or neither (the controller's CA then issues the certificate)",
            );
        }
        if !self.http.replica_url.is_empty() {
            let scheme = if self.http.insecure_http {
                "http://"
            } else {
                "https://"
            };
            if !self.http.replica_url.starts_with(scheme)
                || crate::url_host(&self.http.replica_url).is_none()
            {
                return bad(
                    "http.replica_url",
                    &format!(
                        "expected {scheme}host:port (the scheme this controller serves, http.insecure_http = {})",
                        self.http.insecure_http
                    ),
                );
            }
        }
        if !self.http.public_url.is_empty()
            && !self.http.public_url.starts_with("https://")
            && !self.http.public_url.starts_with("http://")
        {
            return bad("http.public_url", "expected https://host:port");
        }
        if self
            .http
            .trusted_proxies
            .iter()
            .any(|p| p.parse::<std::net::IpAddr>().is_err())
        {
            return bad(
                "http.trusted_proxies",
                "expected IP addresses, e.g. [\"10.0.0.5\"]",
            );
        }
        if self.console.login_max_failures == 0 || self.console.login_max_failures_per_address == 0
        {
            return bad("console.login_max_failures", "at least 1");
        }
        if self.console.session_max_hours == 0 || self.console.idle_timeout_minutes == 0 {
            return bad(
                "console.session_max_hours",
                "session_max_hours and idle_timeout_minutes must be at least 1",
            );
        }
        if self.kubernetes.lease_seconds < 3 {
            return bad("kubernetes.lease_seconds", "at least 3");
        }
        if self.models.max_transfers == 0 {
            return bad("models.max_transfers", "at least 1");
        }
        if self.models.tick_ms == 0 {
            return bad("models.tick_ms", "at least 1");
        }
        if self.log.format != "text" && self.log.format != "json" {
            return bad("log.format", "expected \"text\" or \"json\"");
        }
        if self.fleet.heartbeat_timeout_secs == 0 {
            return bad("fleet.heartbeat_timeout_secs", "must be at least 1");
        }
        if self.sync.seal_key_overlap_secs == 0 {
            return bad(
                "sync.seal_key_overlap_secs",
                "at least 1 (messages in flight must still open after a rotation)",
            );
        }
        if self.mqtt.max_payload_bytes < 1024 {
            return bad("mqtt.max_payload_bytes", "must be at least 1024");
        }
        if !(0.0..=1.0).contains(&self.learning.review_fraction) {
            return bad(
                "learning.review_fraction",
                "expected a fraction between 0 and 1",
            );
        }
        let t = &self.training;
        if !(0.0..1.0).contains(&t.held_out_fraction) {
            return bad(
                "training.held_out_fraction",
                "expected 0 or more and below 1",
            );
        }
        for (key, v) in [
            ("training.tolerance", t.tolerance),
            ("training.intent_tolerance", t.intent_tolerance),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, "expected a fraction between 0 and 1");
            }
        }
        if t.timeout_secs == 0 {
            return bad("training.timeout_secs", "must be at least 1");
        }
        if !(t.suggest_distance > 0.0 && t.suggest_distance <= 2.0) {
            return bad(
                "training.suggest_distance",
                "expected a cosine distance above 0 and at most 2",
            );
        }
        if t.suggest_min_size < 2 {
            return bad("training.suggest_min_size", "must be at least 2");
        }
        if self.mqtt.max_messages_per_sec == 0 {
            return bad("mqtt.max_messages_per_sec", "must be at least 1");
        }
        Ok(())
    }

    /// `http.trusted_proxies`, parsed (validated at load).
    pub fn trusted_proxies(&self) -> Vec<std::net::IpAddr> {
        self.http
            .trusted_proxies
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Host and port nodes should connect to.
    pub fn advertised_broker(&self, bound: std::net::SocketAddr) -> (String, u16) {
        let (host, port) = match self.mqtt.mode {
            BrokerMode::Embedded => (bound.ip().to_string(), bound.port()),
            BrokerMode::External => (self.mqtt.external_host.clone(), self.mqtt.external_port),
        };
        let host = if self.mqtt.advertise_host.is_empty() {
            host
        } else {
            self.mqtt.advertise_host.clone()
        };
        let port = if self.mqtt.advertise_port == 0 {
            port
        } else {
            self.mqtt.advertise_port
        };
        (host, port)
    }
}

/// `url` with the password replaced by `*****`, in either form
/// (`postgres://user:password@host/db` or `password=… host=…`).
pub fn redact_password(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let Some(at) = rest.rfind('@') else {
            return url.to_owned();
        };
        let userinfo = &rest[..at];
        return match userinfo.split_once(':') {
            Some((user, _)) => format!("{}{user}:*****{}", &url[..scheme_end + 3], &rest[at..]),
            None => url.to_owned(),
        };
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=*****"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_settings_are_checked_and_their_password_never_printed() {
        for (key, value, says) in [
            ("EDGEDESK_CC_STORE__POSTGRES_POOL", "0", "1 to 256"),
            ("EDGEDESK_CC_STORE__LEADER_POLL_MS", "10", "50 to 60000 ms"),
            (
                "EDGEDESK_CC_STORE__POSTGRES_URL",
                "\"postgres://a:b@[::1\"",
                "not a PostgreSQL connection string",
            ),
            (
                "EDGEDESK_CC_STORE__POSTGRES_URL",
                "\"host=db bogus=1\"",
                "not a PostgreSQL connection string",
            ),
        ] {
            let e = Config::load(None, vec![(key.into(), value.into())]).unwrap_err();
            assert!(e.to_string().contains(says), "{key}={value}: {e}");
        }
        let c = Config::load(
            None,
            vec![(
                "EDGEDESK_CC_STORE__POSTGRES_URL".into(),
                "\"postgres://edgedesk:s3cret@db.example:5432/edgedesk\"".into(),
            )],
        )
        .unwrap();
        let shown = toml::to_string_pretty(&c.redacted()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://edgedesk:*****@db.example:5432/edgedesk"));
        assert_eq!(
            redact_password("host=db password=s3cret user=e"),
            "host=db password=***** user=e"
        );
        assert_eq!(redact_password("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn defaults_parse_and_errors_name_keys() {
        let c = Config::default();
        assert_eq!(c.mqtt.mode, BrokerMode::Embedded);
        assert!(!c.mqtt.console);
        let e = Config::load(
            None,
            vec![("EDGEDESK_CC_MQTT__MODE".into(), "cloudy".into())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("mqtt.mode"), "{e}");
        let e = Config::load(
            None,
            vec![
                ("EDGEDESK_CC_MQTT__CONSOLE".into(), "true".into()),
                (
                    "EDGEDESK_CC_MQTT__CONSOLE_LISTEN".into(),
                    "0.0.0.0:3030".into(),
                ),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = Config::load(
            None,
            vec![(
                "EDGEDESK_CC_MQTT__EXTERNAL_PROVISIONING".into(),
                "\"dynsec\"".into(),
            )],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("mqtt.external_provisioning")
                && e.to_string().contains("external"),
            "dynsec with the embedded broker: {e}"
        );
        let e = Config::load(
            None,
            vec![(
                "EDGEDESK_CC_MQTT__EXTERNAL_PROVISIONING".into(),
                "\"files\"".into(),
            )],
        )
        .unwrap_err();
        assert!(e.to_string().contains("external_provisioning"), "{e}");
    }

    #[test]
    fn a_replica_url_has_the_scheme_served_and_a_host() {
        let with = |vars: &[(&str, &str)]| {
            Config::load(
                None,
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        for bad in [
            "\"10.0.0.7:8700\"",
            "\"http://10.0.0.7:8700\"",
            "\"https://\"",
        ] {
            let e = with(&[("EDGEDESK_CC_HTTP__REPLICA_URL", bad)]).unwrap_err();
            assert!(
                e.to_string().contains("http.replica_url") && e.to_string().contains("https://"),
                "{bad}: {e}"
            );
        }
        let e = with(&[
            ("EDGEDESK_CC_HTTP__REPLICA_URL", "\"https://10.0.0.7:8700\""),
            ("EDGEDESK_CC_HTTP__INSECURE_HTTP", "true"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("insecure_http = true"), "{e}");
        let ok = with(&[("EDGEDESK_CC_HTTP__REPLICA_URL", "\"https://10.0.0.7:8700\"")]).unwrap();
        assert_eq!(ok.http.replica_url, "https://10.0.0.7:8700");
    }

    #[test]
    fn a_shared_group_needs_an_external_broker_and_postgres_and_a_plain_name() {
        let with = |vars: &[(&str, &str)]| {
            Config::load(
                None,
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        let e = with(&[("EDGEDESK_CC_MQTT__SHARED_GROUP", "\"edgedesk\"")]).unwrap_err();
        assert!(
            e.to_string().contains("mqtt.shared_group") && e.to_string().contains("\"external\""),
            "embedded broker: {e}"
        );
        let e = with(&[
            ("EDGEDESK_CC_MQTT__SHARED_GROUP", "\"edgedesk\""),
            ("EDGEDESK_CC_MQTT__MODE", "\"external\""),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("postgres_url"), "no database: {e}");
        let e = with(&[
            ("EDGEDESK_CC_MQTT__SHARED_GROUP", "\"a/b\""),
            ("EDGEDESK_CC_MQTT__MODE", "\"external\""),
            (
                "EDGEDESK_CC_STORE__POSTGRES_URL",
                "\"host=db user=x dbname=y\"",
            ),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("a-z A-Z"), "a topic separator: {e}");
        let ok = with(&[
            ("EDGEDESK_CC_MQTT__SHARED_GROUP", "\"edgedesk\""),
            ("EDGEDESK_CC_MQTT__MODE", "\"external\""),
            (
                "EDGEDESK_CC_STORE__POSTGRES_URL",
                "\"host=db user=x dbname=y\"",
            ),
        ])
        .unwrap();
        assert_eq!(ok.mqtt.shared_group, "edgedesk");
    }
}
