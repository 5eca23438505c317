//! Edge node configuration: a serde [`Config`] with documented defaults.
//!
//! The documented default file is `edge-node/default-config.toml` (printed by
//! `edge-node config default`); [`Config::default`] is parsed from it, so the
//! two cannot disagree. Layering: defaults < file < environment < flags.

use std::path::{Path, PathBuf};

pub use edgedesk_support::config::ConfigError;
use edgedesk_support::config::{self as layered, LayerError};
use serde::{Deserialize, Serialize};

/// The documented default configuration file, embedded.
pub const DEFAULT_TOML: &str = include_str!("../default-config.toml");
/// Environment variables starting with this prefix override keys.
pub const ENV_PREFIX: &str = "EDGEDESK_";
/// The cloud controller's prefix: its variables are not the node's, though
/// they start with [`ENV_PREFIX`] (both binaries share the container image,
/// which sets some of them).
const CONTROLLER_ENV_PREFIX: &str = "EDGEDESK_CC_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub nlu: NluConfig,
    pub dialog: DialogConfig,
    /// The branch's hours, holidays and facts (`[branch]`).
    #[serde(default)]
    pub branch: edgedesk_common::branch::BranchInfo,
    pub models: ModelsConfig,
    pub store: StoreConfig,
    pub retention: RetentionConfig,
    pub cloud: CloudConfig,
    pub learning: LearningConfig,
    pub log: LogConfig,
    pub telemetry: edgedesk_support::telemetry::TelemetryConfig,
}

/// The learning loop's samples (turns worth a person's label).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningConfig {
    /// Send samples up (with `cloud.enabled`); `false` opts the branch out.
    pub enabled: bool,
    /// Most samples a day (UTC) from this node.
    pub samples_per_day: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    pub enabled: bool,
    pub join: String,
    pub controller_url: String,
    pub ca_sha256: String,
    pub insecure_enrollment: bool,
    pub node_id: String,
    pub enroll_token: String,
    pub identity_path: PathBuf,
    pub heartbeat_secs: u64,
    pub batch_max: usize,
    pub ack_timeout_secs: u64,
    pub outbox_budget_bytes: u64,
    pub mask_personal_data: bool,
    /// A new sealing key this often (0: never; forward secrecy then ends).
    pub seal_key_rotate_secs: u64,
    /// How long the previous sealing key still opens once the controller
    /// uses the new one.
    pub seal_key_overlap_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub max_turns_in_flight: usize,
    pub max_frame_bytes: usize,
    pub rate_limit_per_sec: f64,
    pub rate_limit_burst: u32,
    pub rate_limit_close_after: u32,
    pub history_limit: usize,
    pub shutdown_grace_secs: u64,
    pub kiosk_idle_reset_secs: u32,
    pub metrics_token: String,
    pub hello_deadline_secs: u32,
    pub request_deadline_secs: u32,
    pub max_connections_per_address: usize,
    pub max_open_connections: usize,
    pub hellos_per_minute_per_address: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NluConfig {
    pub onnxruntime_path: PathBuf,
    pub bundle: PathBuf,
    pub sessions: usize,
    pub queue_capacity: usize,
    /// Longest a turn may expect to wait for an inference thread (ms; 0:
    /// only `queue_capacity` bounds the queue).
    pub max_wait_ms: u64,
    pub batch_max: usize,
    pub confidence_threshold: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogConfig {
    pub knowledge_base: PathBuf,
    pub max_reprompts: u8,
    pub opening_hour: u32,
    pub closing_hour: u32,
    /// Days the branch opens: mon tue wed thu fri sat sun.
    pub open_days: Vec<String>,
    pub queue_offer_secs: u32,
    pub abandon_grace_secs: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub dir: PathBuf,
    pub keep: usize,
}

impl Config {
    /// The week `dialog.opening_hour`, `closing_hour` and `open_days` describe.
    pub fn dialog_week(&self) -> edgedesk_dialog::Branch {
        let days: Vec<chrono::Weekday> = self
            .dialog
            .open_days
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect();
        edgedesk_dialog::Branch::uniform(self.dialog.opening_hour, self.dialog.closing_hour, &days)
    }

    /// The branch as configured: `[branch]` over the dialog settings' week.
    pub fn branch(&self) -> Result<edgedesk_dialog::Branch, edgedesk_dialog::BranchError> {
        edgedesk_dialog::Branch::parse(&self.branch, &self.dialog_week())
    }

    /// The model folder: `models.dir`, else `models` beside the database.
    pub fn models_dir(&self) -> PathBuf {
        if !self.models.dir.as_os_str().is_empty() {
            return self.models.dir.clone();
        }
        self.store
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .join("models")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub batch_max: usize,
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub transcript_max_age_days: u32,
    pub idle_conversation_minutes: u32,
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        // The embedded file is checked by a unit test; failing here is a build bug.
        Config::load(None, Vec::new()).expect("embedded default-config.toml is valid")
    }
}

impl Config {
    /// Load: defaults, then `file` (if any), then overrides from `env`
    /// (pass `std::env::vars()` in production, a fixed list in tests).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env = env
            .into_iter()
            .filter(|(name, _)| !name.starts_with(CONTROLLER_ENV_PREFIX));
        let mut config: Config = layered::load_file(DEFAULT_TOML, file, ENV_PREFIX, env)?;
        config.apply_join()?;
        config.validate()?;
        Ok(config)
    }

    /// A join string sets the controller URL, the token and the pinned
    /// fingerprint in one go.
    fn apply_join(&mut self) -> Result<(), LayerError> {
        if self.cloud.join.is_empty() {
            return Ok(());
        }
        let join: edgedesk_common::sync::Join =
            self.cloud
                .join
                .parse()
                .map_err(|e: edgedesk_common::sync::JoinError| LayerError::Invalid {
                    key: "cloud.join".into(),
                    message: e.to_string(),
                })?;
        self.cloud.controller_url = join.url;
        self.cloud.enroll_token = join.token;
        self.cloud.ca_sha256 = join.ca_sha256.unwrap_or_default();
        Ok(())
    }

    fn validate(&self) -> Result<(), LayerError> {
        let bad = |key: &str, message: &str| {
            Err(LayerError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "server.listen",
                "expected host:port with an IP address, e.g. 127.0.0.1:8080",
            );
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        if self.server.max_turns_in_flight == 0 {
            return bad("server.max_turns_in_flight", "must be at least 1");
        }
        if !(64..=1 << 20).contains(&self.server.max_frame_bytes) {
            return bad("server.max_frame_bytes", "must be between 64 and 1048576");
        }
        if self.server.rate_limit_per_sec.is_nan()
            || self.server.rate_limit_per_sec <= 0.0
            || self.server.rate_limit_burst == 0
        {
            return bad(
                "server.rate_limit_per_sec",
                "rate and burst must be positive",
            );
        }
        for origin in &self.server.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return bad(
                    "server.allowed_origins",
                    "each origin must start with http:// or https://",
                );
            }
        }
        if self.server.kiosk_idle_reset_secs != 0 && self.server.kiosk_idle_reset_secs < 15 {
            return bad(
                "server.kiosk_idle_reset_secs",
                "must be 0 (never) or at least 15 seconds",
            );
        }
        if self.dialog.abandon_grace_secs < 10 {
            return bad(
                "dialog.abandon_grace_secs",
                "must be at least 10 seconds (a page reload must not lose the place in the queue)",
            );
        }
        if self.nlu.sessions == 0 || self.nlu.sessions > 64 {
            return bad("nlu.sessions", "must be between 1 and 64");
        }
        if self.nlu.queue_capacity == 0 || self.nlu.queue_capacity > 1_000_000 {
            return bad("nlu.queue_capacity", "must be between 1 and 1000000");
        }
        if self.nlu.max_wait_ms > 60_000 {
            return bad(
                "nlu.max_wait_ms",
                "must be at most 60000 (a minute; 0 turns the bound off)",
            );
        }
        if self.nlu.batch_max == 0 || self.nlu.batch_max > 1024 {
            return bad("nlu.batch_max", "must be between 1 and 1024");
        }
        if !(0.0..1.0).contains(&self.nlu.confidence_threshold) {
            return bad(
                "nlu.confidence_threshold",
                "must be in 0..1 (0 = use the bundle's)",
            );
        }
        if self.dialog.opening_hour >= self.dialog.closing_hour || self.dialog.closing_hour > 24 {
            return bad(
                "dialog.closing_hour",
                "opening_hour must be before closing_hour, both within 0..24",
            );
        }
        if self.dialog.open_days.is_empty()
            || self
                .dialog
                .open_days
                .iter()
                .any(|d| d.parse::<chrono::Weekday>().is_err())
        {
            return bad(
                "dialog.open_days",
                "a list of at least one of mon tue wed thu fri sat sun",
            );
        }
        if let Err(e) = self.branch() {
            return bad("branch", &e.to_string());
        }
        if self.store.batch_max == 0 || self.store.queue_capacity == 0 {
            return bad(
                "store.batch_max",
                "batch_max and queue_capacity must be at least 1",
            );
        }
        if self.cloud.enabled && !edgedesk_common::envelope::valid_node_id(&self.cloud.node_id) {
            return bad(
                "cloud.node_id",
                "required when cloud.enabled: 1-64 of a-z 0-9 - _ .",
            );
        }
        if self.server.hellos_per_minute_per_address == 0 {
            return bad("server.hellos_per_minute_per_address", "at least 1");
        }
        if self.server.request_deadline_secs == 0 {
            return bad("server.request_deadline_secs", "at least 1");
        }
        if self.server.max_connections_per_address == 0 {
            return bad("server.max_connections_per_address", "at least 1");
        }
        if self.server.hello_deadline_secs == 0 {
            return bad("server.hello_deadline_secs", "at least 1");
        }
        if self.cloud.enabled
            && self.cloud.controller_url.starts_with("http://")
            && !self.cloud.insecure_enrollment
        {
            return bad(
                "cloud.controller_url",
                "is plain http://: enrolment would send the token and trust the answer without TLS; \
                 use the https:// join string from `cloud-controller token create` (cloud.join), \
                 or set cloud.insecure_enrollment = true for a lab",
            );
        }
        if !self.cloud.ca_sha256.is_empty()
            && edgedesk_support::tls::fingerprint_client(&self.cloud.ca_sha256).is_err()
        {
            return bad("cloud.ca_sha256", "expected sha256:<64 hex digits>");
        }
        if self.cloud.heartbeat_secs == 0
            || self.cloud.ack_timeout_secs == 0
            || self.cloud.batch_max == 0
        {
            return bad(
                "cloud.heartbeat_secs",
                "heartbeat_secs, ack_timeout_secs and batch_max must be at least 1",
            );
        }
        if self.cloud.seal_key_overlap_secs == 0 {
            return bad(
                "cloud.seal_key_overlap_secs",
                "at least 1 (messages in flight must still open after a rotation)",
            );
        }
        if self.retention.interval_secs == 0 {
            return bad("retention.interval_secs", "must be at least 1");
        }
        if self.retention.transcript_max_age_days == 0 {
            return bad("retention.transcript_max_age_days", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default_is_complete_and_valid() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.max_frame_bytes, 4096);
        assert_eq!(c.store.synchronous, Synchronous::Full);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[server]\nlisten = \"127.0.0.1:9000\"\nmax_connections = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&p),
            env(&[
                ("EDGEDESK_SERVER__MAX_CONNECTIONS", "9"),
                ("EDGEDESK_LOG__FORMAT", "json"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.server.max_connections, 9);
        assert_eq!(c.log.format, LogFormat::Json);
        let c = Config::load(
            None,
            env(&[(
                "EDGEDESK_SERVER__ALLOWED_ORIGINS",
                "[\"https://a.example\"]",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.server.allowed_origins,
            vec!["https://a.example".to_string()]
        );
    }

    #[test]
    fn the_controllers_variables_are_not_the_nodes() {
        let c = Config::load(
            None,
            env(&[
                ("EDGEDESK_CC_STORE__DATA_DIR", "/var/lib/edgedesk"),
                ("EDGEDESK_CC_HTTP__LISTEN", "0.0.0.0:8700"),
            ]),
        )
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load(None, env(&[("EDGEDESK_SERVER__NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("server.nope"), "{e}");
        let e =
            Config::load(None, env(&[("EDGEDESK_SERVER__MAX_CONNECTIONS", "many")])).unwrap_err();
        assert!(e.to_string().contains("server.max_connections"), "{e}");
        let e =
            Config::load(None, env(&[("EDGEDESK_STORE__SYNCHRONOUS", "sometimes")])).unwrap_err();
        assert!(e.to_string().contains("store.synchronous"), "{e}");
        let e = Config::load(None, env(&[("EDGEDESK_SERVER__LISTEN", "localhost")])).unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
        let e = Config::load(None, env(&[("EDGEDESK_NLU__MAX_WAIT_MS", "3600000")])).unwrap_err();
        assert!(e.to_string().contains("nlu.max_wait_ms"), "{e}");
        let e = Config::load(None, env(&[("EDGEDESK_NLU__MAX_WAIT_MS", "-1")])).unwrap_err();
        assert!(e.to_string().contains("nlu.max_wait_ms"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[dialog]\nmax_reprompt = 3\n").unwrap();
        let e = Config::load(Some(&p), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("dialog.max_reprompt"), "{e}");
        for days in ["[]", "[\"mon\", \"funday\"]"] {
            std::fs::write(&p, format!("[dialog]\nopen_days = {days}\n")).unwrap();
            let e = Config::load(Some(&p), Vec::new()).unwrap_err();
            assert!(e.to_string().contains("dialog.open_days"), "{days}: {e}");
        }
        std::fs::write(&p, "[dialog]\nopen_days = [\"Mon\", \"saturday\"]\n").unwrap();
        assert!(
            Config::load(Some(&p), Vec::new()).is_ok(),
            "names as chrono reads them"
        );
        // The branch section: each mistake named, a good one accepted.
        for (toml, want) in [
            ("[branch.hours]\nmon = \"9-5\"\n", "branch.hours.mon"),
            (
                "[branch.facts.adress]\nen = \"x\"\n",
                "unknown fact \"adress\"",
            ),
            (
                "[[branch.holidays]]\ndate = \"xmas\"\n",
                "\"xmas\" is not a date",
            ),
            ("[branch]\nhour = 1\n", "branch.hour"),
        ] {
            std::fs::write(&p, toml).unwrap();
            let e = Config::load(Some(&p), Vec::new()).unwrap_err();
            assert!(e.to_string().contains(want), "{toml}: {e}");
        }
        std::fs::write(
            &p,
            "[branch.hours]\nsat = \"10:00-13:00\"\n[branch.facts.atms]\nzh = \"大堂有ATM\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&p), Vec::new()).unwrap();
        assert_eq!(c.branch().unwrap().open_days(), vec![chrono::Weekday::Sat]);
        assert_eq!(
            c.branch()
                .unwrap()
                .fact("atms", edgedesk_common::chat::Lang::En),
            Some("大堂有ATM")
        );
        std::fs::write(&p, "[dialog\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p), Vec::new()),
            Err(ConfigError::Layer(LayerError::Syntax { .. }))
        ));
        assert!(matches!(
            Config::load(Some(&dir.path().join("missing.toml")), Vec::new()),
            Err(ConfigError::Read { .. })
        ));
    }
}
