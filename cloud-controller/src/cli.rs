//! The `cloud-controller` command line: run the controller, or operate it
//! over its REST API (tokens, nodes, labels, revocation, commands, events).
//! `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_TOML};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "cloud-controller",
    version,
    about = "EdgeDesk cloud controller: fleet registry, edge sync over MQTT, REST API",
    long_about = "EdgeDesk cloud controller.\n\nWithout a command it runs the controller (embedded MQTT broker, SQLite \
                  store, REST API). The other commands talk to a running controller's REST API."
)]
struct Cli {
    /// Configuration file (TOML). See `cloud-controller config default`.
    #[arg(long, short, global = true, env = "EDGEDESK_CC_CONFIG")]
    config: Option<PathBuf>,
    /// REST API of the controller to operate (client commands).
    #[arg(
        long,
        global = true,
        env = "EDGEDESK_CC_URL",
        default_value = "https://127.0.0.1:8700"
    )]
    url: String,
    /// CA certificate (PEM) to trust for the controller's HTTPS (client
    /// commands). Default: <data_dir>/mqtt-ca.pem, the controller's own CA.
    #[arg(long, global = true, env = "EDGEDESK_CC_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Admin bearer token (client commands). Default: <data_dir>/admin-token.
    #[arg(
        long,
        global = true,
        env = "EDGEDESK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller (the default).
    Serve,
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Print the CustomResourceDefinitions (ModelRollout, EdgeNode) as YAML.
    Crd,
    /// Enrolment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The fleet.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Console agents (human agents, supervisors, admins).
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Model releases: publish (on the controller's host), list, show.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Model rollouts to the fleet.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The learning loop's training runs: labels in, a checked model out.
    #[command(subcommand)]
    Training(TrainingCmd),
    /// Edge sync maintenance (on the controller's host, controller stopped).
    #[command(subcommand)]
    Sync(SyncCmd),
    /// TLS material in the data directory (on the controller's host).
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Print the REST API's admin token from the data directory (on the
    /// controller's host or in its pod, which has no `cat`).
    AdminToken,
    /// Events ingested from node outboxes.
    Events {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Unix milliseconds, inclusive.
        #[arg(long)]
        since: Option<i64>,
        /// Unix milliseconds, exclusive.
        #[arg(long)]
        until: Option<i64>,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
enum SyncCmd {
    /// Raise the controller's envelope sequence numbers. Needed after the
    /// controller's database was restored from a backup: nodes refuse
    /// numbers at or below the highest they saw ("replay" in their logs).
    /// Each start reserves one block of 2^40; raise by at least the number
    /// of starts since the backup (the default covers 16).
    RaiseSeq {
        #[arg(long, default_value_t = 16)]
        blocks: u64,
    },
}

#[derive(Subcommand)]
enum TlsCmd {
    /// Make an operator's CA the controller's CA: it then issues the
    /// broker, QUIC and HTTPS certificates, and nodes pin its fingerprint
    /// (printed). Checks that the key is the certificate's and that it may
    /// sign certificates. Installing the same CA again changes nothing; a
    /// different CA already in the data directory needs --replace (nodes
    /// enrolled under it must enrol again). The chart's init container runs
    /// this with tls.caSecret.
    InstallCa {
        /// The CA certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM, PKCS#8 or SEC1).
        #[arg(long)]
        key: PathBuf,
        /// Replace a different CA already installed.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Validate a bundle folder (manifest, hashes, golden set in ONNX
    /// Runtime), sign it with the model-signing key and store it in the data
    /// directory. Runs where the controller's data directory is; from a
    /// workstation into a pod: `tar -C BUNDLE -cf - . | kubectl exec -i POD
    /// -- cloud-controller model publish -`.
    Publish {
        /// The bundle folder, or `-` for a tar archive of it on standard input.
        bundle: PathBuf,
        /// ONNX Runtime library (default: models.onnxruntime_path, then ORT_DYLIB_PATH).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
    },
    /// Published releases.
    List,
    /// One release: id, name@version or version.
    Show { key: String },
}

#[derive(Subcommand)]
enum TrainingCmd {
    /// Train on the base data plus the labels people gave; the regression
    /// gate then compares the candidate with the fleet's model.
    Start {
        /// Release to compare with (default: the model of the newest
        /// successful rollout, else the newest release).
        #[arg(long)]
        baseline: Option<String>,
    },
    /// One run (state, the gate's figures, the trainer's last lines), or all.
    Status { id: Option<String> },
    /// Roll out the model of a run that passed the gate.
    Approve {
        id: String,
        /// Cumulative wave sizes instead of the configured ones, e.g. 1,50%,100%.
        #[arg(long, value_delimiter = ',')]
        waves: Vec<String>,
        /// Shadow phase length instead of the configured one (e.g. 10m; 0 for none).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        shadow: Option<u64>,
    },
    /// Suggested intents: the unlabelled questions grouped by meaning, and
    /// how the last grouping went.
    Suggestions,
    /// Group the unlabelled questions now (in the background; then
    /// `training suggestions`).
    Group,
    /// Make an intent of a suggestion: its unlabelled questions get the label.
    Accept {
        /// Suggestion id (sg-…).
        id: String,
        /// An intent the model knows, or new:NAME for one it is to learn.
        #[arg(long)]
        intent: String,
        /// A new intent's answer in English (with --zh).
        #[arg(long)]
        en: Option<String>,
        /// A new intent's answer in Chinese (with --en).
        #[arg(long)]
        zh: Option<String>,
    },
    /// Dismiss a suggestion: its questions are not grouped again.
    Dismiss { id: String },
    /// Release the supervisors' answers and quick replies to the fleet
    /// without training: the fleet's model, next patch version, signed;
    /// then `training approve ID` rolls it out.
    ReleaseAnswers,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Start a rollout.
    Create {
        /// Release id, name@version or version.
        #[arg(long)]
        model: String,
        /// Node labels that must match: KEY=VALUE (repeatable).
        #[arg(long = "selector", value_name = "KEY=VALUE")]
        selector: Vec<String>,
        /// Cumulative wave sizes, e.g. 1,10%,50%,100%.
        #[arg(long, value_delimiter = ',')]
        waves: Vec<String>,
        /// Seconds to wait after each wave (health gate applies).
        #[arg(long)]
        bake: Option<u64>,
        /// Failed nodes tolerated: a count or a percentage.
        #[arg(long)]
        failure_threshold: Option<String>,
        /// Largest allowed rise of the low-confidence rate, e.g. 0.05.
        #[arg(long)]
        health_margin: Option<f64>,
        /// Seconds a wave waits for an offline node before skipping it.
        #[arg(long)]
        offline_deadline: Option<u64>,
        /// Run the candidate in shadow on every target first, for this long
        /// (e.g. 30m, 2h, 90s): it answers nobody; the shadow gate then
        /// decides whether the waves start.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        shadow: Option<u64>,
        /// Shadow gate: share of turns the candidate must agree on (default 0.9).
        #[arg(long)]
        shadow_min_agreement: Option<f64>,
        /// Shadow gate: how much slower per turn the candidate may be (default 0.5).
        #[arg(long)]
        shadow_latency_margin: Option<f64>,
        /// Shadow gate: fewest turns compared to judge (default 20).
        #[arg(long)]
        shadow_min_turns: Option<u64>,
    },
    /// One rollout, or all of them without an id.
    Status {
        id: Option<String>,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Abort and roll updated nodes back.
    Abort {
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the documented default configuration.
    Default,
    /// Validate the configuration and print the result.
    Check,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a one-time enrolment token.
    Create {
        /// Only this node id may use it (a stolen token cannot enrol another
        /// id). Required unless --any-node.
        #[arg(long, required_unless_present = "any_node")]
        node: Option<String>,
        /// Issue a token any node id may use (one time).
        #[arg(long, conflicts_with = "node")]
        any_node: bool,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Create an agent. The password is read from EDGEDESK_AGENT_PASSWORD or
    /// the first line of standard input.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        name: String,
        /// agent, supervisor or admin.
        #[arg(long, default_value = "agent", value_parser = ["agent", "supervisor", "admin"])]
        role: String,
        /// Languages the agent speaks, e.g. en,zh.
        #[arg(long, default_value = "en", value_delimiter = ',')]
        languages: Vec<String>,
        /// Most chats at once.
        #[arg(long, default_value_t = 3)]
        capacity: u32,
    },
    /// List agents.
    List,
    /// Disable an agent (ends their sessions).
    Disable { id: String },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List nodes.
    List,
    /// Show one node.
    Show { id: String },
    /// Replace a node's labels: KEY=VALUE...
    Label { id: String, labels: Vec<String> },
    /// A node's state history.
    History { id: String },
    /// Revoke a node.
    Revoke { id: String },
    /// Queue a command for a node.
    Command {
        id: String,
        kind: String,
        /// Arguments as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
    },
    /// A node's commands and their acknowledgements.
    Commands { id: String },
    /// A branch's hours and facts as set through the controller, and
    /// whether the node has them.
    Branch { id: String },
    /// Set a branch's hours, holidays and facts from a TOML or JSON file
    /// (the shape of the node's `[branch]` section: `hours`, `holidays`,
    /// `facts`; see `edge-node config default`).
    SetBranch {
        id: String,
        /// The file; `.json` is read as JSON, anything else as TOML.
        file: PathBuf,
    },
}

fn load_config(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(cli.config.as_deref(), std::env::vars()).map_err(|e| {
        eprintln!("cloud-controller: configuration error: {e}");
        ExitCode::from(64)
    })
}

/// Parse the command line and run it; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Cmd::Config(ConfigCmd::Default)) => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Some(Cmd::Config(ConfigCmd::Check)) => match load_config(&cli) {
            Ok(c) => {
                print!(
                    "{}",
                    toml::to_string_pretty(&c.redacted()).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Cmd::Openapi) => {
            print!("{}", crate::http::api::openapi_document());
            ExitCode::SUCCESS
        }
        Some(Cmd::Crd) => {
            print!("{}", crate::operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        None | Some(Cmd::Serve) => match load_config(&cli) {
            Ok(config) => serve(config),
            Err(code) => code,
        },
        Some(Cmd::Model(ModelCmd::Publish {
            bundle,
            onnxruntime,
        })) => match load_config(&cli) {
            Ok(config) => publish(&config, bundle, onnxruntime.as_deref()),
            Err(code) => code,
        },
        Some(Cmd::Sync(SyncCmd::RaiseSeq { blocks })) => match load_config(&cli) {
            Ok(config) => raise_seq(&config, *blocks),
            Err(code) => code,
        },
        Some(Cmd::AdminToken) => match load_config(&cli) {
            Ok(config) => {
                let path = config.store.data_dir.join("admin-token");
                match std::fs::read_to_string(&path) {
                    Ok(token) => {
                        println!("{}", token.trim());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!(
                            "cloud-controller: admin-token: {}: {e} (the controller makes it at its first start unless http.admin_token is set)",
                            path.display()
                        );
                        ExitCode::from(1)
                    }
                }
            }
            Err(code) => code,
        },
        Some(Cmd::Tls(TlsCmd::InstallCa { cert, key, replace })) => match load_config(&cli) {
            Ok(config) => install_ca(&config, cert, key, *replace),
            Err(code) => code,
        },
        Some(_) => client(&cli),
    }
}

/// `tls install-ca`: an operator's CA into the data directory.
fn install_ca(
    config: &Config,
    cert: &std::path::Path,
    key: &std::path::Path,
    replace: bool,
) -> ExitCode {
    use crate::tls::{CaInstall, install_ca};
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let run = || -> Result<CaInstall, String> {
        install_ca(&config.store.data_dir, &read(cert)?, &read(key)?, replace)
            .map_err(|e| e.to_string())
    };
    match run() {
        Ok(CaInstall::Installed { fingerprint }) => {
            println!(
                "installed the CA ({fingerprint}); certificates are issued from it at the next start"
            );
            ExitCode::SUCCESS
        }
        Ok(CaInstall::Unchanged { fingerprint }) => {
            println!("the CA is already installed ({fingerprint}); nothing changed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cloud-controller: tls install-ca: {e}");
            ExitCode::from(65)
        }
    }
}

/// `sync raise-seq`: move the reserved top of sequence numbers up.
fn raise_seq(config: &Config, blocks: u64) -> ExitCode {
    let db = config.store.data_dir.join("controller.db");
    let run = || -> Result<u64, String> {
        let store = crate::store::Store::open_any(
            &config.store.data_dir,
            &config.store.postgres_url,
            config.store.postgres_pool,
        )
        .map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(store.raise_seq(blocks))
            .map_err(|e| e.to_string())
    };
    match run() {
        Ok(top) => {
            println!("sequence numbers now start above {top} (raised by {blocks} blocks)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", db.display());
            ExitCode::from(1)
        }
    }
}

/// The most a bundle sent as a tar stream may unpack to.
const MAX_BUNDLE_TAR_BYTES: u64 = 1 << 30;

/// A folder removed when this goes out of scope.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `model publish`: validate, sign and store a bundle in the data directory.
fn publish(config: &Config, bundle: &std::path::Path, ort: Option<&std::path::Path>) -> ExitCode {
    use crate::models;
    let data = &config.store.data_dir;
    let run = || -> Result<crate::store::ModelRow, String> {
        // `-`: a tar stream, unpacked into the data directory and removed after.
        let _incoming;
        let bundle = if bundle.as_os_str() == "-" {
            let parent = data.join("incoming");
            std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            let dir = parent.join(format!("bundle-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            _incoming = RemoveOnDrop(dir.clone());
            models::unpack_bundle_tar(std::io::stdin().lock(), &dir, MAX_BUNDLE_TAR_BYTES)
                .map_err(|e| e.to_string())?
        } else {
            bundle.to_owned()
        };
        let bundle = bundle.as_path();
        let store = crate::store::Store::open_any(
            &config.store.data_dir,
            &config.store.postgres_url,
            config.store.postgres_pool,
        )
        .map_err(|e| e.to_string())?;
        let key =
            models::signing_key(&data.join("model-signing.key")).map_err(|e| e.to_string())?;
        let ort = ort.unwrap_or(&config.models.onnxruntime_path).to_owned();
        let now = chrono::Utc::now().timestamp_millis();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(models::publish(
            &store,
            &data.join("models"),
            &key,
            bundle,
            &ort,
            now,
        ))
        .map_err(|e| e.to_string())
    };
    match run() {
        Ok(row) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "id": row.id, "name": row.name, "version": row.version, "bytes": row.bytes,
                }))
                .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cloud-controller: model publish: {e}");
            ExitCode::from(65)
        }
    }
}

/// Log lines, and trace export when `telemetry.otlp_endpoint` is set.
fn init_telemetry(config: &Config) -> Result<edgedesk_support::telemetry::Telemetry, ExitCode> {
    edgedesk_support::telemetry::init(
        &config.log.level,
        config.log.format == "json",
        config.telemetry.otlp(
            "edgedesk-cloud-controller",
            &std::env::var("POD_NAME").unwrap_or_default(),
            &["cloud_controller"],
        ),
    )
    .map_err(|e| {
        eprintln!("cloud-controller: configuration error: {e}");
        ExitCode::from(64)
    })
}

fn serve(config: Config) -> ExitCode {
    let telemetry = match init_telemetry(&config) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloud-controller: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let code = run_serve(&rt, config);
    // The runtime first (its tasks end), then the last spans go out.
    drop(rt);
    telemetry.shutdown();
    code
}

fn run_serve(rt: &tokio::runtime::Runtime, config: Config) -> ExitCode {
    rt.block_on(async {
        let token = CancellationToken::new();
        tokio::spawn(edgedesk_support::signal::cancel_on_signal(token.clone()));
        match crate::run(config, token).await {
            Ok(c) => {
                println!(
                    "controller: {}/  broker: {}:{}",
                    c.base_url, c.broker.0, c.broker.1
                );
                if let Some(fp) = &c.ca_sha256 {
                    println!("controller CA: {fp}");
                }
                match c.wait().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("cloud-controller: {e}");
                        ExitCode::from(e.exit_code() as u8)
                    }
                }
            }
            // A standby told to stop: a clean exit.
            Err(crate::ControllerError::Stopped) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cloud-controller: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        }
    })
}

/// A client for the controller's REST API: over HTTPS it trusts only the
/// controller's CA (`--ca-file`, else `<data_dir>/mqtt-ca.pem`).
fn https_client(cli: &Cli, base: &str) -> Result<reqwest::Client, ExitCode> {
    if !base.starts_with("https://") {
        return Ok(reqwest::Client::new());
    }
    let path = cli.ca_file.clone().unwrap_or_else(|| {
        load_config(cli)
            .map(|c| c.store.data_dir)
            .unwrap_or_else(|_| PathBuf::from("build/controller"))
            .join("mqtt-ca.pem")
    });
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        eprintln!(
            "cloud-controller: cannot read the controller's CA {}: {e}; pass --ca-file (or EDGEDESK_CC_CA_FILE)",
            path.display()
        );
        ExitCode::from(66)
    })?;
    let tls = edgedesk_support::tls::pinned_client(&pem).map_err(|e| {
        eprintln!("cloud-controller: {}: {e}", path.display());
        ExitCode::from(66)
    })?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .map_err(|e| {
            eprintln!("cloud-controller: {e}");
            ExitCode::from(71)
        })
}

/// `KEY=VALUE` arguments as a JSON object (labels, selectors).
/// "90", "90s", "30m", "2h", "1d" as seconds.
fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 30m, 2h)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?}: must be more than 0 and not absurdly long"))
}

/// A branch settings file as the JSON the REST API takes. Checked here for
/// shape (unknown keys are named); the controller checks the values.
fn read_branch_file(path: &std::path::Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let info: edgedesk_common::branch::BranchInfo = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        toml::from_str(&text).map_err(|e| e.to_string())?
    };
    serde_json::to_value(info).map_err(|e| e.to_string())
}

fn key_values(pairs: &[String]) -> Result<serde_json::Map<String, serde_json::Value>, ExitCode> {
    let mut map = serde_json::Map::new();
    for kv in pairs {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("cloud-controller: {kv:?} is not KEY=VALUE");
            return Err(ExitCode::from(64));
        };
        map.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
    }
    Ok(map)
}

fn client(cli: &Cli) -> ExitCode {
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => {
            let data_dir = load_config(cli)
                .map(|c| c.store.data_dir)
                .unwrap_or_else(|_| PathBuf::from("build/controller"));
            match std::fs::read_to_string(data_dir.join("admin-token")) {
                Ok(t) => t.trim().to_owned(),
                Err(_) => {
                    eprintln!(
                        "cloud-controller: no admin token: pass --token, set EDGEDESK_ADMIN_TOKEN, or run where <data_dir>/admin-token is readable"
                    );
                    return ExitCode::from(64);
                }
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloud-controller: {e}");
            return ExitCode::from(71);
        }
    };
    let base = cli.url.trim_end_matches('/').to_owned();
    let http = match https_client(cli, &base) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (method, path, body): (reqwest::Method, String, Option<serde_json::Value>) = match cli
        .command
        .as_ref()
    {
        Some(Cmd::Token(TokenCmd::Create { node, ttl, .. })) => (
            reqwest::Method::POST,
            "/api/v1/tokens".into(),
            Some(serde_json::json!({ "node_id": node, "ttl_secs": ttl })),
        ),
        Some(Cmd::Nodes(NodesCmd::List)) => (reqwest::Method::GET, "/api/v1/nodes".into(), None),
        Some(Cmd::Nodes(NodesCmd::Show { id })) => {
            (reqwest::Method::GET, format!("/api/v1/nodes/{id}"), None)
        }
        Some(Cmd::Nodes(NodesCmd::History { id })) => (
            reqwest::Method::GET,
            format!("/api/v1/nodes/{id}/history"),
            None,
        ),
        Some(Cmd::Nodes(NodesCmd::Revoke { id })) => (
            reqwest::Method::POST,
            format!("/api/v1/nodes/{id}/revoke"),
            None,
        ),
        Some(Cmd::Nodes(NodesCmd::Commands { id })) => (
            reqwest::Method::GET,
            format!("/api/v1/nodes/{id}/commands"),
            None,
        ),
        Some(Cmd::Nodes(NodesCmd::Branch { id })) => (
            reqwest::Method::GET,
            format!("/api/v1/nodes/{id}/branch"),
            None,
        ),
        Some(Cmd::Nodes(NodesCmd::SetBranch { id, file })) => {
            let body = match read_branch_file(file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("cloud-controller: {}: {e}", file.display());
                    return ExitCode::from(65);
                }
            };
            (
                reqwest::Method::PUT,
                format!("/api/v1/nodes/{id}/branch"),
                Some(body),
            )
        }
        Some(Cmd::Nodes(NodesCmd::Label { id, labels })) => {
            let map = match key_values(labels) {
                Ok(m) => m,
                Err(code) => return code,
            };
            (
                reqwest::Method::PUT,
                format!("/api/v1/nodes/{id}/labels"),
                Some(serde_json::json!({ "labels": map })),
            )
        }
        Some(Cmd::Nodes(NodesCmd::Command { id, kind, args })) => {
            let args: serde_json::Value = match serde_json::from_str(args) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("cloud-controller: --args is not JSON: {e}");
                    return ExitCode::from(64);
                }
            };
            (
                reqwest::Method::POST,
                format!("/api/v1/nodes/{id}/commands"),
                Some(serde_json::json!({ "kind": kind, "args": args })),
            )
        }
        Some(Cmd::Agents(AgentsCmd::List)) => (reqwest::Method::GET, "/api/v1/agents".into(), None),
        Some(Cmd::Agents(AgentsCmd::Disable { id })) => (
            reqwest::Method::POST,
            format!("/api/v1/agents/{id}/disable"),
            None,
        ),
        Some(Cmd::Agents(AgentsCmd::Create {
            username,
            name,
            role,
            languages,
            capacity,
        })) => {
            let password = match std::env::var("EDGEDESK_AGENT_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    let mut line = String::new();
                    if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
                        eprintln!(
                            "cloud-controller: give the password in EDGEDESK_AGENT_PASSWORD or on standard input"
                        );
                        return ExitCode::from(64);
                    }
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            (
                reqwest::Method::POST,
                "/api/v1/agents".into(),
                Some(serde_json::json!({
                    "username": username, "display_name": name, "role": role,
                    "password": password, "languages": languages, "capacity": capacity,
                })),
            )
        }
        Some(Cmd::Model(ModelCmd::List)) => (reqwest::Method::GET, "/api/v1/models".into(), None),
        Some(Cmd::Model(ModelCmd::Show { key })) => {
            (reqwest::Method::GET, format!("/api/v1/models/{key}"), None)
        }
        Some(Cmd::Rollout(RolloutCmd::Create {
            model,
            selector,
            waves,
            bake,
            failure_threshold,
            health_margin,
            offline_deadline,
            shadow,
            shadow_min_agreement,
            shadow_latency_margin,
            shadow_min_turns,
        })) => {
            let sel = match key_values(selector) {
                Ok(m) => m,
                Err(code) => return code,
            };
            (
                reqwest::Method::POST,
                "/api/v1/rollouts".into(),
                Some(serde_json::json!({
                    "model": model, "selector": sel, "waves": waves, "bake_secs": bake,
                    "failure_threshold": failure_threshold, "health_margin": health_margin,
                    "offline_deadline_secs": offline_deadline, "shadow_secs": shadow,
                    "shadow_min_agreement": shadow_min_agreement,
                    "shadow_latency_margin": shadow_latency_margin,
                    "shadow_min_turns": shadow_min_turns,
                })),
            )
        }
        Some(Cmd::Training(TrainingCmd::Start { baseline })) => (
            reqwest::Method::POST,
            "/api/v1/trainings".into(),
            Some(serde_json::json!({ "baseline": baseline })),
        ),
        Some(Cmd::Training(TrainingCmd::Status { id })) => match id {
            Some(id) => (
                reqwest::Method::GET,
                format!("/api/v1/trainings/{id}"),
                None,
            ),
            None => (reqwest::Method::GET, "/api/v1/trainings".into(), None),
        },
        Some(Cmd::Training(TrainingCmd::Approve { id, waves, shadow })) => {
            let mut body = serde_json::Map::new();
            if !waves.is_empty() {
                body.insert("waves".into(), serde_json::json!(waves));
            }
            if let Some(s) = shadow {
                body.insert("shadow_secs".into(), serde_json::json!(s));
            }
            (
                reqwest::Method::POST,
                format!("/api/v1/trainings/{id}/approve"),
                Some(serde_json::Value::Object(body)),
            )
        }
        Some(Cmd::Training(TrainingCmd::Suggestions)) => {
            (reqwest::Method::GET, "/api/v1/suggestions".into(), None)
        }
        Some(Cmd::Training(TrainingCmd::Group)) => (
            reqwest::Method::POST,
            "/api/v1/suggestions/refresh".into(),
            None,
        ),
        Some(Cmd::Training(TrainingCmd::Accept { id, intent, en, zh })) => (
            reqwest::Method::POST,
            format!("/api/v1/suggestions/{id}/accept"),
            Some(serde_json::json!({ "intent": intent, "en": en, "zh": zh })),
        ),
        Some(Cmd::Training(TrainingCmd::ReleaseAnswers)) => {
            (reqwest::Method::POST, "/api/v1/kb/releases".into(), None)
        }
        Some(Cmd::Training(TrainingCmd::Dismiss { id })) => (
            reqwest::Method::POST,
            format!("/api/v1/suggestions/{id}/dismiss"),
            None,
        ),
        Some(Cmd::Rollout(RolloutCmd::Status { id })) => match id {
            Some(id) => (reqwest::Method::GET, format!("/api/v1/rollouts/{id}"), None),
            None => (reqwest::Method::GET, "/api/v1/rollouts".into(), None),
        },
        Some(Cmd::Rollout(
            RolloutCmd::Pause { id } | RolloutCmd::Resume { id } | RolloutCmd::Abort { id },
        )) => {
            let op = match cli.command.as_ref() {
                Some(Cmd::Rollout(RolloutCmd::Pause { .. })) => "pause",
                Some(Cmd::Rollout(RolloutCmd::Resume { .. })) => "resume",
                _ => "abort",
            };
            (
                reqwest::Method::POST,
                format!("/api/v1/rollouts/{id}/{op}"),
                None,
            )
        }
        Some(Cmd::Events {
            node,
            kind,
            since,
            until,
            limit,
        }) => {
            let mut q = Vec::new();
            if let Some(v) = node {
                q.push(format!("node={v}"));
            }
            if let Some(v) = kind {
                q.push(format!("kind={v}"));
            }
            if let Some(v) = since {
                q.push(format!("since={v}"));
            }
            if let Some(v) = until {
                q.push(format!("until={v}"));
            }
            if let Some(v) = limit {
                q.push(format!("limit={v}"));
            }
            (
                reqwest::Method::GET,
                format!("/api/v1/events?{}", q.join("&")),
                None,
            )
        }
        _ => unreachable!("server commands are handled in main"),
    };
    rt.block_on(async move {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let text_for_join = text.clone();
                let pretty = serde_json::from_str::<serde_json::Value>(&text)
                    .map(|v| serde_json::to_string_pretty(&v).unwrap_or(text.clone()))
                    .unwrap_or(text);
                if status.is_success() {
                    println!("{pretty}");
                    if let Some(join) = serde_json::from_str::<serde_json::Value>(&text_for_join)
                        .ok()
                        .and_then(|v| v["join"].as_str().map(str::to_owned))
                    {
                        eprintln!(
                            "join string for the node (cloud.join, or EDGEDESK_CLOUD__JOIN):\n  {join}"
                        );
                    }
                    ExitCode::SUCCESS
                } else {
                    eprintln!("cloud-controller: {status}: {pretty}");
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("cloud-controller: cannot reach {base}: {e}");
                ExitCode::from(69)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration_secs;

    #[test]
    fn durations_read_as_people_write_them() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("2h", 7200),
            ("1d", 86_400),
        ] {
            assert_eq!(parse_duration_secs(text), Ok(secs), "{text}");
        }
        for bad in ["", "m", "10x", "-5m", "0", "1.5h"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
    }
}
