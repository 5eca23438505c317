//! The node's link to the cloud controller: enrolment, then store-and-forward
//! over MQTT with sealed, signed envelopes.
//!
//! - [`enroll`]: identity and one-time enrolment; the controller's keys, the
//!   broker and the model service are pinned in `cloud.identity_path`.
//! - [`sync`]: the protocol's state (outbox in flight, ack deadlines, command
//!   stream gaps, resend requests) as an I/O-free state machine.
//! - [`driver`]: the MQTT event loop, sealing and opening envelopes, the
//!   outbox drain and heartbeats.
//! - [`seal`]: signing and sealing what goes up.
//! - [`keys`]: the node's rotating sealing keys (forward secrecy) and the
//!   identity file that keeps them.
//! - [`exec`]: runs commands from the controller exactly once, in stream
//!   order, on a task of its own: the MQTT loop never waits for a visitor.
//!
//! Nothing here is needed to serve visitors: without a link the node keeps
//! answering and events wait in the outbox.

pub mod driver;
pub mod enroll;
pub mod exec;
pub mod keys;
pub mod seal;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::CloudConfig;
use crate::metrics::Metrics;
use crate::models::ModelManager;
use crate::session::Sessions;
use crate::store::Store;
pub use enroll::{IdentityFile, enroll};

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("node identity {path}: {message}")]
    Identity { path: String, message: String },
    #[error("enrolment refused by the controller ({status}): {message}")]
    EnrollRefused { status: u16, message: String },
    /// The controller could not be trusted (no or wrong CA fingerprint); the
    /// token was not sent.
    #[error("enrolment: {0}")]
    EnrollUntrusted(String),
    #[error("the node's database: {0}")]
    Store(String),
    #[error(
        "not enrolled and cloud.enroll_token is empty: issue one with `cloud-controller token create --node <id>`"
    )]
    NoToken,
}

/// What the uplink needs, wired by [`crate::run`].
pub struct Uplink {
    pub cloud: CloudConfig,
    pub store: Store,
    pub sessions: Arc<Sessions>,
    pub models: Arc<ModelManager>,
    pub metrics: Arc<Metrics>,
    /// Woken when turns add outbox events.
    pub outbox: Arc<Notify>,
    /// Set while the broker connection is up.
    pub link_up: watch::Sender<bool>,
    pub shutdown: CancellationToken,
    pub started: Instant,
    /// Where the database lives (free disk space in heartbeats).
    pub data_dir: PathBuf,
}

/// Run the uplink until shutdown; `typing` carries the conversations whose
/// visitor types to an agent. Errors here are logged; the node keeps serving.
pub async fn run(u: Uplink, typing: mpsc::Receiver<String>) {
    if let Err(e) = driver::run(u, typing).await {
        tracing::error!(error = %e, "cloud link stopped; the node keeps serving and events wait in the outbox");
    }
}
