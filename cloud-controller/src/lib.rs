//! EdgeDesk cloud controller: fleet registry, enrolment, store-and-forward
//! ingestion of edge outboxes, a command queue down to nodes, the agents'
//! desk and model rollouts.
//!
//! Data flow: nodes publish sealed envelopes to `edgedesk/v1/nodes/{id}/up`
//! on the broker (embedded rumqttd by default, [`broker`]); [`link`] opens,
//! checks and applies them in batches against the [`store`], acknowledges,
//! and feeds the live-chat desk ([`handoff`]) through a channel. Everything
//! that goes down to nodes goes through [`downlink`] (queued, then sealed by
//! the link's publisher). [`rollouts`] drives model rollouts, [`quic`]
//! serves model files, [`training`] runs the learning loop's training
//! jobs, [`http`] serves the REST API and the console.
//! [`run`] wires the parts together; `main.rs` only calls [`cli::main`].

pub mod accounts;
pub mod branches;
pub mod broker;
pub mod cli;
pub mod config;
pub mod downlink;
pub mod fleet;
pub mod handoff;
pub mod http;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod models;
pub mod operator;
pub mod quic;
pub mod rollout;
pub mod rollouts;
pub mod routing;
pub mod store;
pub mod tls;
pub mod training;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Credentials;
use crate::config::{BrokerMode, Config};
use crate::downlink::Downlink;
use crate::fleet::Fleet;
use crate::handoff::Handoff;
use crate::metrics::Metrics;
use crate::rollouts::Rollouts;
use crate::store::{Store, StoreError, sha256_hex};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("controller identity {path}: {source}")]
    Identity {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("Kubernetes client (kubernetes.enabled): {0}")]
    Kubernetes(String),
    /// Stopped while a standby (another replica was active).
    #[error("stopped while standing by")]
    Stopped,
    /// The leader lock's database connection failed: this replica stopped
    /// so that it never acts beside the next active one.
    #[error("leadership lost (the leader lock's database connection failed); stopped")]
    LeadershipLost,
}

impl ControllerError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ControllerError::Config(_) => 64,
            _ => 74,
        }
    }
}

/// A running controller, with handles on its parts (for tests and tools).
pub struct Controller {
    pub http_addr: SocketAddr,
    /// `https://<http_addr>` (or `http://` with `http.insecure_http`).
    pub base_url: String,
    /// The certificate nodes and clients pin (PEM), and its `sha256:` fingerprint;
    /// `None` over plain HTTP.
    pub ca_pem: Option<String>,
    pub ca_sha256: Option<String>,
    /// Where nodes reach the broker.
    pub broker: (String, u16),
    /// Where the embedded rumqttd itself listens (loopback, behind the gate);
    /// `None` with an external broker. Tests use it to play a compromised broker.
    pub broker_internal: Option<SocketAddr>,
    pub store: Store,
    pub downlink: Downlink,
    pub handoff: Handoff,
    pub rollouts: Rollouts,
    /// The learning loop's training runs and suggested intents.
    pub trainings: training::Trainings,
    pub metrics: Arc<Metrics>,
    /// False while another replica holds the leader Lease (Kubernetes mode).
    pub leader: Arc<AtomicBool>,
    pub admin_token: String,
    task: JoinHandle<Result<(), ControllerError>>,
}

impl Controller {
    pub async fn wait(self) -> Result<(), ControllerError> {
        self.task
            .await
            .map_err(|e| ControllerError::Serve(std::io::Error::other(e.to_string())))?
    }
}

fn read_or_create_secret(
    path: &std::path::Path,
    configured: &str,
) -> Result<String, ControllerError> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let err = |source| ControllerError::Identity {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => {
            let token = edgedesk_support::secret::random_hex(24);
            edgedesk_support::secret::write_private(path, token.as_bytes()).map_err(err)?;
            Ok(token)
        }
    }
}

/// Start the controller: store, identity, broker (embedded mode), MQTT link,
/// the desk, the rollout driver, the model service and HTTP. Cancelling
/// `shutdown` stops it.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
) -> Result<Controller, ControllerError> {
    let data = config.store.data_dir.clone();
    let store = Store::open_any(
        &config.store.data_dir,
        &config.store.postgres_url,
        config.store.postgres_pool,
    )?;
    // Several replicas on one database: one is active, the others wait.
    let me = replica_name();
    let leadership = if store.dialect() == store::Dialect::Postgres {
        match standby(&config, &data, &store, &shutdown, &me).await? {
            Some(l) => Some(l),
            None => return Err(ControllerError::Stopped),
        }
    } else {
        None
    };
    let signing_path = data.join("model-signing.key");
    let model_key =
        models::signing_key(&signing_path).map_err(|source| ControllerError::Identity {
            path: signing_path.display().to_string(),
            source,
        })?;
    let key_path = data.join("controller.key");
    let identity =
        identity::load_or_create(&key_path).map_err(|source| ControllerError::Identity {
            path: key_path.display().to_string(),
            source,
        })?;
    let seal_path = data.join("controller.seal");
    let sealing = identity::load_keyring(&seal_path, &key_path, &identity, downlink::now_ms())
        .map_err(|source| ControllerError::Identity {
            path: seal_path.display().to_string(),
            source,
        })?;
    let sealing = Arc::new(identity::Sealing::new(sealing, seal_path));
    let admin_token = read_or_create_secret(&data.join("admin-token"), &config.http.admin_token)?;

    let creds = Credentials::default();
    for (node, hash) in store.broker_credentials().await? {
        creds.set(&node, &hash);
    }
    // One CA and server certificate for the embedded broker and the QUIC
    // model service, naming every address nodes may use.
    let quic_listen: SocketAddr =
        config
            .models
            .quic_listen
            .parse()
            .map_err(|e: std::net::AddrParseError| ControllerError::Bind {
                addr: config.models.quic_listen.clone(),
                source: std::io::Error::other(e),
            })?;
    let mut tls_names = vec!["localhost".to_owned(), quic_listen.ip().to_string()];
    if let Ok(l) = config.mqtt.listen.parse::<SocketAddr>() {
        tls_names.push(l.ip().to_string());
    }
    for extra in [&config.mqtt.advertise_host, &config.models.advertise_host] {
        if !extra.is_empty() {
            tls_names.push(extra.clone());
        }
    }
    tls_names.extend(config.mqtt.tls_names.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    tls_names.retain(|n| seen.insert(n.clone()));
    let tls_material = tls::ensure_broker_tls(&data, &tls_names)?;
    let metrics = Arc::new(Metrics::new());
    // The controller's own broker login (fresh every start in embedded mode),
    // where its client connects, and where nodes connect (with the CA they pin).
    let (ctl_user, ctl_pass, client_addr, client_ca, broker_addr, broker_ca) =
        match config.mqtt.mode {
            BrokerMode::Embedded => {
                let soft = edgedesk_support::limits::raise_open_files();
                if let Some(w) = broker::descriptor_warning(soft, config.mqtt.max_connections) {
                    tracing::warn!("{w}");
                }
                let pass = edgedesk_support::secret::random_hex(24);
                creds.set(broker::gate::CONTROLLER_USER, &sha256_hex(&pass));
                let listen: SocketAddr =
                    config
                        .mqtt
                        .listen
                        .parse()
                        .map_err(|e: std::net::AddrParseError| ControllerError::Bind {
                            addr: config.mqtt.listen.clone(),
                            source: std::io::Error::other(e),
                        })?;
                let tls = config.mqtt.tls.then(|| tls_material.clone());
                let started = broker::start(
                    &config.mqtt,
                    listen,
                    creds.clone(),
                    tls.as_ref(),
                    metrics.clone(),
                    shutdown.clone(),
                )
                .await?;
                // The controller's own client goes straight to rumqttd on loopback.
                (
                    broker::gate::CONTROLLER_USER.to_owned(),
                    pass,
                    started.internal,
                    None,
                    started.gate,
                    tls.map(|t| t.ca_pem),
                )
            }
            BrokerMode::External => {
                let (addr, ca) = external_broker(&config).await?;
                (
                    config.mqtt.external_username.clone(),
                    config.mqtt.external_password.clone(),
                    addr,
                    ca.clone(),
                    addr,
                    ca,
                )
            }
        };
    let broker = config.advertised_broker(broker_addr);
    let broker_internal = (client_addr != broker_addr).then_some(client_addr);
    let client_tls = client_ca
        .as_deref()
        .map(edgedesk_support::tls::pinned_client)
        .transpose()
        .map_err(|e| tls::TlsError::Config(e.to_string()))?;
    let opts = link::transport::mqtt_options(
        &client_addr.ip().to_string(),
        client_addr.port(),
        &ctl_user,
        &ctl_pass,
        config.mqtt.max_payload_bytes,
        client_tls,
        (!config.mqtt.shared_group.is_empty())
            .then(replica_name)
            .as_deref(),
    );
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
    eventloop.set_network_options(link::transport::network_options());

    // The parts, wired explicitly: who may talk to whom is visible here.
    let fleet = Arc::new(Mutex::new(Fleet::new(
        config.fleet.heartbeat_timeout_secs as i64 * 1000,
    )));
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(downlink::OUTGOING_QUEUE);
    let downlink = Downlink::new(store.clone(), fleet.clone(), out_tx, metrics.clone());
    let (desk_tx, desk_rx) = tokio::sync::mpsc::channel(handoff::QUEUE);
    let handoff = Handoff::new(desk_tx);
    let desk_task = tokio::spawn(
        handoff::driver::Driver::new(
            handoff::Desk::new(config.console.reconnect_grace_secs as i64 * 1000)
                .with_max_waiting_per_node(config.console.max_waiting_per_node),
            store.clone(),
            downlink.clone(),
            metrics.clone(),
        )
        .run(desk_rx, shutdown.clone()),
    );
    // Node accounts on an external Mosquitto, through the controller's client.
    let dynsec = (config.mqtt.external_provisioning == config::Provisioning::Dynsec)
        .then(|| Arc::new(broker::dynsec::Dynsec::new(client.clone())));
    let leader = Arc::new(AtomicBool::new(!config.kubernetes.enabled));
    let rollouts = Rollouts {
        store: store.clone(),
        downlink: downlink.clone(),
        leader: leader.clone(),
        tick_ms: config.models.tick_ms,
    };
    let link = link::Link {
        config: config.clone(),
        store: store.clone(),
        keys: link::Keys::new(store.clone(), sealing.clone(), creds.clone())
            .shared(!config.mqtt.shared_group.is_empty()),
        identity,
        presence: link::Presence::new(
            fleet,
            store.clone(),
            metrics.clone(),
            handoff.clone(),
            config.fleet.history_limit,
        ),
        downlink: downlink.clone(),
        handoff: handoff.clone(),
        metrics: metrics.clone(),
        creds: creds.clone(),
        dynsec: dynsec.clone(),
        relay: None,
    };
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(link::transport::INBOUND_QUEUE);
    let poll_task = tokio::spawn(link::transport::poll(
        link.clone(),
        client.clone(),
        eventloop,
        in_tx,
        shutdown.clone(),
    ));
    let seq = store
        .reserve_seq(chrono::Utc::now().timestamp_micros().max(1) as u64)
        .await?;
    let publish_task = tokio::spawn(link::transport::publish(link.clone(), client, seq, out_rx));
    let dispatch_task = tokio::spawn(link::dispatch::run(link.clone(), in_rx));
    // Replicas sharing node traffic: what the standbys relay.
    let relay_task = (!config.mqtt.shared_group.is_empty()).then(|| {
        let frames = link::relay::listen(
            &config.store.postgres_url,
            &replica_name(),
            shutdown.clone(),
        );
        tokio::spawn(link::relay::apply(link.clone(), frames))
    });
    let ticker_task = tokio::spawn(link::dispatch::ticker(link.clone(), shutdown.clone()));

    let quic = quic::endpoint(quic_listen, &tls_material.cert_path, &tls_material.key_path)?;
    let quic_addr = quic.local_addr().map_err(ControllerError::Serve)?;
    let models_endpoint = edgedesk_common::sync::ModelEndpoint {
        signing_key: edgedesk_common::release::encode_key(&model_key.verifying_key()),
        quic_host: [&config.models.advertise_host, &config.mqtt.advertise_host]
            .into_iter()
            .find(|h| !h.is_empty())
            .cloned()
            .unwrap_or_else(|| quic_addr.ip().to_string()),
        quic_port: if config.models.advertise_port != 0 {
            config.models.advertise_port
        } else {
            quic_addr.port()
        },
        ca_pem: tls_material.ca_pem.clone(),
    };
    tracing::info!(%quic_addr, "model service (QUIC) listening");
    let quic_task = tokio::spawn(quic::serve(
        quic,
        quic::Service {
            store: store.clone(),
            metrics: metrics.clone(),
            max_skew_ms: config.sync.max_clock_skew_secs as i64 * 1000,
        },
        data.join("models"),
        config.models.max_transfers,
        shutdown.clone(),
    ));
    let rollout_task = tokio::spawn(rollouts.clone().run(shutdown.clone()));
    let kube_client = if config.kubernetes.enabled {
        Some(
            kube::Client::try_default()
                .await
                .map_err(|e| ControllerError::Kubernetes(e.to_string()))?,
        )
    } else {
        None
    };
    let mut trainings = training::Trainings::new(
        store.clone(),
        rollouts.clone(),
        config.training.clone(),
        data.join("models"),
        data.join("trainings"),
        model_key.clone(),
        config.models.onnxruntime_path.clone(),
        shutdown.clone(),
    );
    if let Some(client) = &kube_client
        && !config.kubernetes.training_job.image.is_empty()
    {
        trainings = trainings.with_runner(std::sync::Arc::new(operator::job::JobRunner {
            client: client.clone(),
            namespace: operator::namespace(client, &config.kubernetes),
            config: config.kubernetes.training_job.clone(),
            data_dir: data.clone(),
        }));
    }
    trainings.recover().await?;
    let grouping_task = (config.training.suggest_every_secs > 0).then(|| {
        tokio::spawn(
            trainings
                .clone()
                .group_periodically(std::time::Duration::from_secs(
                    config.training.suggest_every_secs,
                )),
        )
    });
    let retention_task = tokio::spawn(prune_samples(
        store.clone(),
        i64::from(config.learning.sample_retention_days) * 86_400_000,
        shutdown.clone(),
    ));
    let operator_task = kube_client.map(|client| {
        tokio::spawn(operator::run(
            client,
            config.kubernetes.clone(),
            rollouts.clone(),
            trainings.clone(),
            shutdown.clone(),
        ))
    });

    let listener = bind_http(&config).await?;
    let http_addr = listener.local_addr().map_err(ControllerError::Serve)?;
    let https = !config.http.insecure_http;
    let scheme = if https { "https" } else { "http" };
    let base_url = format!("{scheme}://{http_addr}");
    let public_url = if config.http.public_url.is_empty() {
        base_url.clone()
    } else {
        config.http.public_url.trim_end_matches('/').to_owned()
    };
    // What nodes pin at enrolment: the last certificate of the chain served.
    let (http_tls, ca_pem) = http_tls(&config, &data, http_addr, &public_url)?;
    let ca_sha256 = ca_pem
        .as_deref()
        .map(edgedesk_support::tls::ca_sha256)
        .transpose()
        .map_err(|e| tls::TlsError::Config(e.to_string()))?;
    // Standbys forward requests here (http::forward).
    if leadership.is_some() {
        let active = store::election::ActiveAddress {
            replica: me.clone(),
            url: replica_url(&config, http_addr),
            tls_name: url_host(&public_url).unwrap_or("localhost").to_owned(),
        };
        tracing::info!(url = %active.url, "standbys forward requests to this controller");
        store.publish_active(&active).await?;
    }
    let mut c = config.console.clone();
    // Cookies over HTTPS are always Secure.
    c.secure_cookies |= https;
    let c = &c;
    let state = Arc::new(http::Http {
        store: store.clone(),
        downlink: downlink.clone(),
        handoff: handoff.clone(),
        rollouts: rollouts.clone(),
        trainings: trainings.clone(),
        review_fraction: config.learning.review_fraction,
        metrics: metrics.clone(),
        creds,
        dynsec,
        identity: link.identity.clone(),
        sealing: sealing.clone(),
        admin_token: admin_token.clone(),
        metrics_token: config.http.metrics_token.clone(),
        broker: broker.clone(),
        broker_ca,
        models: models_endpoint,
        console: c.clone(),
        public_url: public_url.clone(),
        ca_sha256: ca_sha256.clone(),
        accounts_changed: tokio::sync::broadcast::channel(64).0,
        limiter: accounts::LoginLimiter::new(
            c.login_max_failures,
            c.login_max_failures_per_address,
            c.login_window_secs as i64 * 1000,
        ),
        trusted_proxies: config.trusted_proxies(),
    });
    let app = http::router(state);
    tracing::info!(%http_addr, broker = %format!("{}:{}", broker.0, broker.1), "cloud controller listening");
    let lost = leadership.as_ref().map(store::election::Leadership::lost);
    if let Some(lost) = lost.clone() {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => shutdown.cancel(),
                _ = shutdown.cancelled() => {}
            }
        });
    }
    let task = tokio::spawn(async move {
        let served = serve_http(listener, http_tls, app, shutdown.clone()).await;
        let _ = poll_task.await;
        // The dispatcher finishes its last batch once the poller is gone.
        let _ = dispatch_task.await;
        if let Some(t) = relay_task {
            let _ = t.await;
        }
        let _ = ticker_task.await;
        let _ = quic_task.await;
        let _ = rollout_task.await;
        let _ = retention_task.await;
        if let Some(t) = grouping_task {
            let _ = t.await;
        }
        if let Some(t) = operator_task {
            let _ = t.await;
        }
        let _ = desk_task.await;
        // Nothing more goes down once everything above has stopped.
        publish_task.abort();
        // Only now may a standby take over.
        if let Some(l) = leadership {
            let _ = tokio::task::spawn_blocking(move || l.release()).await;
        }
        tracing::info!("cloud controller stopped");
        if lost.is_some_and(|l| l.is_cancelled()) {
            return Err(ControllerError::LeadershipLost);
        }
        served.map_err(ControllerError::Serve)
    });
    Ok(Controller {
        http_addr,
        base_url,
        ca_pem,
        ca_sha256: ca_sha256.clone(),
        broker,
        broker_internal,
        store,
        downlink,
        handoff,
        rollouts,
        trainings,
        metrics,
        leader,
        admin_token,
        task,
    })
}

/// The HTTPS server configuration and the CA certificate clients pin (both
/// `None` with `http.insecure_http`): the operator's certificate files, or
/// one the controller's CA issues for the names it is reached at.
fn http_tls(
    config: &Config,
    data: &std::path::Path,
    http_addr: SocketAddr,
    public_url: &str,
) -> Result<(Option<Arc<rustls::ServerConfig>>, Option<String>), ControllerError> {
    Ok(if config.http.insecure_http {
        tracing::warn!(
            "http.insecure_http = true: REST, console and enrolment are served over plain HTTP; \
             only behind a proxy that terminates TLS"
        );
        (None, None)
    } else if !config.http.tls_cert.as_os_str().is_empty() {
        let chain = std::fs::read_to_string(&config.http.tls_cert).map_err(|e| {
            tls::TlsError::Material {
                dir: config.http.tls_cert.display().to_string(),
                message: e.to_string(),
            }
        })?;
        let tls = tls::server_config_from_files(&config.http.tls_cert, &config.http.tls_key)?;
        let last = last_pem_block(&chain);
        (Some(tls), Some(last))
    } else {
        let mut names = vec!["localhost".to_owned(), http_addr.ip().to_string()];
        if let Some(host) = url_host(public_url) {
            names.push(host.to_owned());
        }
        names.extend(config.http.tls_names.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let m = tls::ensure_http_tls(data, &names)?;
        let cert = std::fs::read_to_string(&m.cert_path).map_err(|e| tls::TlsError::Material {
            dir: m.cert_path.display().to_string(),
            message: e.to_string(),
        })?;
        let key = std::fs::read_to_string(&m.key_path).map_err(|e| tls::TlsError::Material {
            dir: m.key_path.display().to_string(),
            message: e.to_string(),
        })?;
        let chain = format!("{}\n{}", cert.trim_end(), m.ca_pem);
        (Some(tls::server_config(&chain, &key)?), Some(m.ca_pem))
    })
}

/// Serve `app` on `listener` (over TLS with `tls`) until `shutdown`.
async fn serve_http(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(tls) => {
            let tls = http::listen::TlsListener::new(listener, tls, shutdown.clone())?;
            // (`tap_io` gives the listener axum's connect-info for its address.)
            axum::serve(axum::serve::ListenerExt::tap_io(tls, |_| {}), make)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        None => {
            // Console frames are small and latency-bound: no Nagle delay.
            let plain = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(plain, make)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
}

/// The external broker's address and, with `mqtt.external_tls`, the CA
/// certificate to trust (PEM).
async fn external_broker(config: &Config) -> Result<(SocketAddr, Option<String>), ControllerError> {
    let addr: SocketAddr = tokio::net::lookup_host((
        config.mqtt.external_host.as_str(),
        config.mqtt.external_port,
    ))
    .await
    .ok()
    .and_then(|mut a| a.next())
    .ok_or_else(|| ControllerError::Bind {
        addr: format!(
            "{}:{}",
            config.mqtt.external_host, config.mqtt.external_port
        ),
        source: std::io::Error::other("cannot resolve the external broker"),
    })?;
    let ca = if config.mqtt.external_tls {
        let path = &config.mqtt.external_ca_file;
        Some(
            std::fs::read_to_string(path).map_err(|e| tls::TlsError::Material {
                dir: path.display().to_string(),
                message: e.to_string(),
            })?,
        )
    } else {
        None
    };
    Ok((addr, ca))
}

/// The HTTP listener of `config`.
async fn bind_http(config: &Config) -> Result<tokio::net::TcpListener, ControllerError> {
    tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: config.http.listen.clone(),
            source,
        })
}

/// This replica's name among several (the pod's name under Kubernetes).
fn replica_name() -> String {
    let host = host_named_by(&["POD_NAME", "HOSTNAME"]).unwrap_or_else(|| "controller".into());
    format!("{host}-{}", std::process::id())
}

/// The first of the environment variables `vars` that is set and not
/// empty, else the kernel's host name.
fn host_named_by(vars: &[&str]) -> Option<String> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok().filter(|h| !h.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
}

/// A standby's HTTPS server configuration and the CA certificate the
/// chain ends in (what it checks the active controller under).
type StandbyTls = (Arc<rustls::ServerConfig>, String);

/// Where other replicas reach this one's HTTP listener (`http.replica_url`,
/// else the bound address; when that is every address, `POD_IP` or else
/// the host name).
fn replica_url(config: &Config, bound: SocketAddr) -> String {
    if !config.http.replica_url.is_empty() {
        return config.http.replica_url.trim_end_matches('/').to_owned();
    }
    let scheme = if config.http.insecure_http {
        "http"
    } else {
        "https"
    };
    if !bound.ip().is_unspecified() {
        return format!("{scheme}://{bound}");
    }
    let host = host_named_by(&["POD_IP"]).unwrap_or_else(|| "localhost".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// The standby page's HTTPS configuration from what is on disk: the
/// operator's certificate, or the controller's once the active replica has
/// made it (`None` until then). `Some(None)`: plain HTTP.
fn standby_tls(config: &Config, data: &std::path::Path) -> Option<Option<StandbyTls>> {
    if config.http.insecure_http {
        return Some(None);
    }
    let made = if !config.http.tls_cert.as_os_str().is_empty() {
        tls::server_config_from_files(&config.http.tls_cert, &config.http.tls_key)
            .map_err(|e| e.to_string())
            .and_then(|tls| {
                let chain =
                    std::fs::read_to_string(&config.http.tls_cert).map_err(|e| e.to_string())?;
                Ok((tls, last_pem_block(&chain)))
            })
    } else {
        let read = |name: &str| std::fs::read_to_string(data.join(name)).map_err(|e| e.to_string());
        read("http-server.pem").and_then(|cert| {
            let ca = read("mqtt-ca.pem")?;
            let chain = format!("{}\n{}", cert.trim_end(), ca);
            let tls =
                tls::server_config(&chain, &read("http-server.key")?).map_err(|e| e.to_string())?;
            Ok((tls, ca))
        })
    };
    match made {
        Ok(tls) => Some(Some(tls)),
        Err(e) => {
            tracing::debug!(error = %e, "no TLS material for the standby page yet");
            None
        }
    }
}

/// On PostgreSQL: take the leader lock ([`store::election`]); while another
/// replica holds it, stand by, serving only `/healthz` and a 503 that names
/// the active replica. `None` if `shutdown` came first.
async fn standby(
    config: &Config,
    data: &std::path::Path,
    store: &store::Store,
    shutdown: &CancellationToken,
    me: &str,
) -> Result<Option<store::election::Leadership>, ControllerError> {
    let (waiting, mut seen) =
        tokio::sync::watch::channel(store::election::Standby::LedBy(String::new()));
    let election = store::election::acquire(
        &config.store.postgres_url,
        me,
        std::time::Duration::from_millis(config.store.leader_poll_ms),
        waiting,
        shutdown,
    );
    tokio::pin!(election);
    // The lock at the first try (a single controller): no standby page at
    // all, so nothing ever mistakes one for this controller.
    tokio::select! {
        got = &mut election => return Ok(got),
        _ = seen.changed() => {}
    }
    // The standby page's TLS, read but never written: replicas starting
    // together on an empty data folder must not each make their own CA.
    let tls = loop {
        if let Some(tls) = standby_tls(config, data) {
            break tls;
        }
        tokio::select! {
            got = &mut election => return Ok(got),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    };
    let listener = bind_http(config).await?;
    let stop = shutdown.child_token();
    let metrics = Arc::new(Metrics::new());
    // With a shared subscription, a standby takes its share of node traffic.
    let share = if config.mqtt.shared_group.is_empty() {
        None
    } else {
        Some(
            follow(
                config,
                data,
                store.clone(),
                metrics.clone(),
                stop.child_token(),
            )
            .await?,
        )
    };
    // The admin token as the active controller's: configured, or the one
    // it keeps in the data folder.
    let admin_token = if config.http.admin_token.is_empty() {
        std::fs::read_to_string(data.join("admin-token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    } else {
        config.http.admin_token.clone()
    };
    let metrics_token = if config.http.metrics_token.is_empty() {
        admin_token.clone()
    } else {
        config.http.metrics_token.clone()
    };
    let (tls, ca_pem) = tls.unzip();
    let forward = http::forward::Forward::new(
        store.clone(),
        seen.clone(),
        &admin_token,
        ca_pem,
        config.trusted_proxies(),
        metrics.clone(),
        stop.clone(),
    );
    let server = tokio::spawn(serve_http(
        listener,
        tls,
        http::standby_router(seen, (metrics, metrics_token), Arc::new(forward)),
        stop.clone(),
    ));
    tracing::info!(replica = %me, "another controller is active: standing by");
    let got = election.await;
    stop.cancel();
    let _ = server.await;
    if let Some(task) = share {
        let _ = task.await;
    }
    Ok(got)
}

/// A standby's share of node traffic (`mqtt.shared_group`, see
/// [`link::relay`]): its own MQTT client in the shared subscription, the
/// same dispatcher as the active controller's, and relays for what only the
/// active one does. Reads the active controller's keys and never writes
/// the data folder; re-reads the sealing keyring and the enrolled nodes
/// while it runs. Stops, its last batch applied, when `stop` is cancelled.
async fn follow(
    config: &Config,
    data: &std::path::Path,
    store: store::Store,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ControllerError> {
    let key_path = data.join("controller.key");
    let identity = identity::load(&key_path).map_err(|source| ControllerError::Identity {
        path: key_path.display().to_string(),
        source,
    })?;
    let seal_path = data.join("controller.seal");
    let sealing =
        identity::Sealing::read(seal_path.clone()).map_err(|source| ControllerError::Identity {
            path: seal_path.display().to_string(),
            source,
        })?;
    let creds = Credentials::default();
    for (node, hash) in store.broker_credentials().await? {
        creds.set(&node, &hash);
    }
    let (addr, ca) = external_broker(config).await?;
    let client_tls = ca
        .as_deref()
        .map(edgedesk_support::tls::pinned_client)
        .transpose()
        .map_err(|e| tls::TlsError::Config(e.to_string()))?;
    let opts = link::transport::mqtt_options(
        &addr.ip().to_string(),
        addr.port(),
        &config.mqtt.external_username,
        &config.mqtt.external_password,
        config.mqtt.max_payload_bytes,
        client_tls,
        Some(&replica_name()),
    );
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
    eventloop.set_network_options(link::transport::network_options());
    // Presence is the active controller's: this fleet is never consulted.
    let fleet = Arc::new(Mutex::new(Fleet::new(
        config.fleet.heartbeat_timeout_secs as i64 * 1000,
    )));
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(downlink::OUTGOING_QUEUE);
    let (desk_tx, desk_rx) = tokio::sync::mpsc::channel(handoff::QUEUE);
    let (relay_tx, relay_rx) = tokio::sync::mpsc::channel(link::relay::QUEUE);
    let relay = link::relay::Relay::new(relay_tx, metrics.clone());
    let handoff = Handoff::new(desk_tx);
    let link = link::Link {
        config: config.clone(),
        store: store.clone(),
        keys: link::Keys::new(store.clone(), Arc::new(sealing), creds.clone()).shared(true),
        identity,
        presence: link::Presence::new(
            fleet.clone(),
            store.clone(),
            metrics.clone(),
            handoff.clone(),
            config.fleet.history_limit,
        ),
        downlink: Downlink::new(store.clone(), fleet, out_tx, metrics.clone()),
        handoff,
        metrics: metrics.clone(),
        creds,
        dynsec: None,
        relay: Some(relay.clone()),
    };
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(link::transport::INBOUND_QUEUE);
    let poll = tokio::spawn(link::transport::poll(
        link.clone(),
        client,
        eventloop,
        in_tx,
        stop.clone(),
    ));
    let dispatch = tokio::spawn(link::dispatch::run(link.clone(), in_rx));
    let upkeep = tokio::spawn(standby_upkeep(link.clone(), stop));
    let forwarders = [
        tokio::spawn(link::relay::forward_outgoing(relay.clone(), out_rx)),
        tokio::spawn(link::relay::forward_desk(relay, desk_rx)),
    ];
    drop(link);
    let notify = tokio::spawn(link::relay::notify(store, metrics, relay_rx));
    tracing::info!("standing by and taking a share of node traffic (mqtt.shared_group)");
    Ok(tokio::spawn(async move {
        let _ = poll.await;
        // The dispatcher applies its last batch once the poller is gone;
        // then the link's queues close, and the relays drain.
        let _ = dispatch.await;
        let _ = upkeep.await;
        for f in forwarders {
            let _ = f.await;
        }
        let _ = notify.await;
    }))
}

/// A standby's housekeeping while it takes node traffic: the sealing
/// keyring the active controller rotates, read again every second; the
/// enrolled nodes, read again every two seconds, and at once (at most every
/// 250 ms) when a node it does not know speaks (a node enrolled since is
/// refused until then and resends; a revoked one is forgotten).
async fn standby_upkeep(link: link::Link, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut n = 0u64;
    let mut last_read = tokio::time::Instant::now();
    loop {
        let unknown = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => false,
            _ = link.keys.unknown_node() => true,
        };
        if unknown {
            // Refused meanwhile; the node resends.
            tokio::time::sleep_until(last_read + std::time::Duration::from_millis(250)).await;
        } else {
            match link.keys.sealing().reload() {
                Ok(gone) => link.keys.erased(&gone),
                Err(e) => tracing::warn!(error = %e, "reading the sealing keyring again failed"),
            }
            n += 1;
            if n % 2 != 0 {
                continue;
            }
        }
        last_read = tokio::time::Instant::now();
        match link.store.broker_credentials().await {
            Ok(now) => {
                let enrolled: std::collections::HashSet<&str> =
                    now.iter().map(|(node, _)| node.as_str()).collect();
                for gone in link.creds.users() {
                    if !enrolled.contains(gone.as_str()) {
                        link.creds.remove(&gone);
                        link.keys.forget(&gone);
                    }
                }
                for (node, hash) in &now {
                    link.creds.set(node, hash);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the enrolled nodes again failed"),
        }
    }
}

/// The host of `https://host:port/…` (brackets of an IPv6 literal removed).
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

/// The last PEM block of a chain (the certificate nodes pin).
fn last_pem_block(chain: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    chain
        .rfind(BEGIN)
        .map(|i| chain[i..].trim_end().to_owned() + "\n")
        .unwrap_or_default()
}

/// Delete learning samples older than `keep_ms`, at start and hourly, until
/// `shutdown`.
async fn prune_samples(store: store::Store, keep_ms: i64, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => match store.prune_samples(downlink::now_ms() - keep_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "learning samples past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting old learning samples failed"),
            },
        }
    }
}
