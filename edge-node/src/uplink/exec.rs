//! Runs what the controller asks, on a task of its own so the MQTT event
//! loop never waits for a visitor or a model download.
//!
//! Exactly once: a command id seen before is acknowledged with its first
//! result (kept in the store); a `ping`, which changes nothing, is answered
//! at once without the store. In order: commands of one stream run in `seq`
//! order ([`Streams`]). Model updates and rollbacks run on their own tasks
//! (minutes); a resend while one runs is ignored, and its acknowledgement
//! follows when it ends.
//!
//! The executor never waits for a visitor: everything about one conversation
//! (agent lines, joins, typing, queue places) goes to that conversation's
//! *lane*, a task with a bounded queue ([`LANE_QUEUE`]) that delivers in
//! order. A visitor who stops reading slows their own lane only (the socket
//! is dropped after its write deadline and the conversation kept in the
//! store); pings, other conversations and model updates go on. When a lane's
//! queue is full a command is left unacknowledged (the controller resends
//! it) and an ephemeral signal is dropped. A lane idle for [`LANE_IDLE`] ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgedesk_common::sync::{Command, CommandBody, ModelEndpoint, Up};
use rumqttc::AsyncClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::seal::Sealer;
use super::sync::{Admit, Streams};
use crate::metrics::Metrics;
use crate::models::{FetchContext, ModelManager};
use crate::session::{AgentAction, Sessions, now_ms};
use crate::store::{CommandIn, Store};

/// Work from the controller, in arrival order.
pub enum Work {
    Command(Command),
    /// A command this build cannot run: acknowledge `id` with `reason`.
    Refuse {
        id: String,
        reason: String,
    },
    /// The agent is typing in `conversation` (ephemeral).
    Typing(String),
    /// A waiting visitor's place in the agents' queue (shown, not stored).
    Queue {
        conversation: String,
        position: u32,
        agents_online: u32,
    },
}

pub struct Exec {
    pub sessions: Arc<Sessions>,
    pub models: Arc<ModelManager>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub client: AsyncClient,
    pub sealer: Arc<Sealer>,
    /// The model service pinned at enrolment (absent: no rollouts).
    pub endpoint: Option<ModelEndpoint>,
    pub streams: Streams,
    /// Long-running commands in progress (by id).
    pub inflight: Arc<Mutex<HashSet<String>>>,
}

/// Work one conversation's lane may hold before more is refused.
pub const LANE_QUEUE: usize = 64;
/// A lane with nothing to do for this long ends (a new one starts on demand).
pub const LANE_IDLE: Duration = Duration::from_secs(30);
/// Lanes kept before ended ones are swept from the map.
const LANE_SWEEP: usize = 1024;

impl Exec {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Work>, shutdown: CancellationToken) {
        let mut lanes: HashMap<String, mpsc::Sender<Work>> = HashMap::new();
        loop {
            let work = tokio::select! {
                _ = shutdown.cancelled() => break,
                w = rx.recv() => match w { Some(w) => w, None => break },
            };
            let lane = match &work {
                Work::Typing(c)
                | Work::Queue {
                    conversation: c, ..
                } => Some(c.clone()),
                Work::Command(cmd) => cmd.body.conversation().map(str::to_owned),
                Work::Refuse { .. } => None,
            };
            match (lane, work) {
                (Some(conversation), work) => {
                    self.to_lane(&mut lanes, conversation, work, &shutdown)
                }
                (None, Work::Refuse { id, reason }) => {
                    tracing::warn!(%id, %reason, "command refused");
                    self.record_and_ack(&id, "unknown", "null", None, false, reason)
                        .await;
                }
                (None, Work::Command(cmd)) => self.on_command(cmd).await,
                (None, _) => {}
            }
        }
    }

    /// Hand `work` to its conversation's lane, starting one if needed; never waits.
    fn to_lane(
        &self,
        lanes: &mut HashMap<String, mpsc::Sender<Work>>,
        conversation: String,
        work: Work,
        shutdown: &CancellationToken,
    ) {
        if lanes.len() >= LANE_SWEEP {
            lanes.retain(|_, tx| !tx.is_closed());
        }
        let mut work = work;
        for _ in 0..2 {
            let tx = lanes.entry(conversation.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                let lane = Lane {
                    handle: self.handle(),
                    streams: self.streams.clone(),
                };
                tokio::spawn(lane.run(rx, shutdown.clone()));
                tx
            });
            match tx.try_send(work) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Commands are resent by the controller; signals are ephemeral.
                    self.metrics.reject("uplink_lane_full");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(w)) => {
                    // The lane ended (idle); start a new one.
                    lanes.remove(&conversation);
                    work = w;
                }
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        run_command(&self.handle(), &mut self.streams, cmd).await
    }

    /// What a spawned command needs.
    fn handle(&self) -> Handle {
        Handle {
            sessions: self.sessions.clone(),
            models: self.models.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            client: self.client.clone(),
            sealer: self.sealer.clone(),
            endpoint: self.endpoint.clone(),
            inflight: self.inflight.clone(),
        }
    }

    async fn record_and_ack(
        &self,
        id: &str,
        kind: &str,
        args: &str,
        stream: Option<(String, u64)>,
        ok: bool,
        detail: String,
    ) {
        self.handle()
            .record_and_ack(id, kind, args, stream, ok, detail)
            .await;
    }
}

/// One conversation's deliveries, in order, on a task of its own.
struct Lane {
    handle: Handle,
    streams: Streams,
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<Work>, shutdown: CancellationToken) {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = tokio::time::timeout(LANE_IDLE, rx.recv()) => w,
            };
            match next {
                Ok(Some(work)) => self.work(work).await,
                Ok(None) => return,
                Err(_) => {
                    // Idle: refuse new work, finish what slipped in, end.
                    rx.close();
                    while let Some(work) = rx.recv().await {
                        self.work(work).await;
                    }
                    return;
                }
            }
        }
    }

    async fn work(&mut self, work: Work) {
        let sessions = &self.handle.sessions;
        match work {
            Work::Typing(conversation) => {
                let _ = sessions.deliver(&conversation, AgentAction::Typing).await;
            }
            Work::Queue {
                conversation,
                position,
                agents_online,
            } => {
                let action = AgentAction::Queue {
                    position,
                    agents_online,
                };
                let _ = sessions.deliver(&conversation, action).await;
            }
            Work::Command(cmd) => run_command(&self.handle, &mut self.streams, cmd).await,
            Work::Refuse { .. } => {}
        }
    }
}

/// Admit `cmd` in its stream's order and run it once; model changes on a
/// task of their own.
async fn run_command(handle: &Handle, streams: &mut Streams, cmd: Command) {
    // A ping changes nothing, so answering it twice is harmless: it is
    // answered at once, without waiting behind the store (a liveness check
    // of the link, not of the disk).
    if matches!(cmd.body, CommandBody::Ping) {
        handle.ack(cmd.id, true, "pong".into()).await;
        return;
    }
    if matches!(
        cmd.body,
        CommandBody::ModelUpdate(_) | CommandBody::ModelRollback(_) | CommandBody::ModelShadow(_)
    ) {
        if !handle
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cmd.id.clone())
        {
            return;
        }
        let this = handle.clone();
        tokio::spawn(async move {
            let id = cmd.id.clone();
            this.once(cmd).await;
            this.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        return;
    }
    // In order within a stream: after a gap (an earlier command lost in
    // flight), hold this one back, unacknowledged, and ask for the
    // pending commands again; they come in queue order.
    if let Some(s) = &cmd.stream {
        match handle.store.command_result(&cmd.id).await {
            Ok(Some(_)) => {} // a resend: acknowledged again below
            Ok(None) => match handle.store.stream_seq(&s.key).await {
                Ok(last) => match streams.admit(Some(s), last, now_ms()) {
                    Admit::Run => {}
                    Admit::Hold { ask } => {
                        tracing::info!(stream = %s.key, seq = s.seq, last, "command stream gap; holding back");
                        handle.metrics.command_gaps.inc();
                        if ask {
                            let _ = handle
                                .sealer
                                .send(&handle.client, &Up::ResendCommands)
                                .await;
                        }
                        return;
                    }
                    Admit::Superseded => {
                        let body = cmd.body.clone();
                        handle
                            .record_and_ack(
                                &cmd.id,
                                body.kind(),
                                &body.args().to_string(),
                                Some((s.key.clone(), s.seq)),
                                true,
                                "superseded".into(),
                            )
                            .await;
                        return;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "reading a command stream failed; it will be resent");
                    return;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "reading command results failed; it will be resent");
                return;
            }
        }
    }
    handle.once(cmd).await;
}

#[derive(Clone)]
struct Handle {
    sessions: Arc<Sessions>,
    models: Arc<ModelManager>,
    store: Store,
    metrics: Arc<Metrics>,
    client: AsyncClient,
    sealer: Arc<Sealer>,
    endpoint: Option<ModelEndpoint>,
    inflight: Arc<Mutex<HashSet<String>>>,
}

impl Handle {
    /// Run `cmd` unless it ran before; record the result and acknowledge.
    async fn once(&self, cmd: Command) {
        match self.store.command_result(&cmd.id).await {
            Ok(Some((ok, detail))) => self.ack(cmd.id, ok, detail).await,
            Ok(None) => {
                // A child of the controller's span that issued it (an
                // agent's line), when it carries one.
                let span = edgedesk_support::traced_span!(
                    "edge.command",
                    cmd.trace.as_deref(),
                    kind = cmd.body.kind()
                );
                let (ok, detail) = self.execute(&cmd).instrument(span.clone()).await;
                span.in_scope(
                    || tracing::info!(id = %cmd.id, kind = cmd.body.kind(), ok, "command executed"),
                );
                let stream = cmd.stream.as_ref().map(|s| (s.key.clone(), s.seq));
                let args = cmd.body.args().to_string();
                self.record_and_ack(&cmd.id, cmd.body.kind(), &args, stream, ok, detail)
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading command results failed; it will be resent")
            }
        }
    }

    /// Record a command's result once (an earlier record wins) and acknowledge.
    async fn record_and_ack(
        &self,
        id: &str,
        kind: &str,
        args: &str,
        stream: Option<(String, u64)>,
        ok: bool,
        detail: String,
    ) {
        let record = CommandIn {
            id: id.to_owned(),
            kind: kind.to_owned(),
            args: args.to_owned(),
            received_at: now_ms(),
            ok,
            detail: detail.clone(),
            stream,
        };
        let (ok, detail) = match self.store.command_in(record).await {
            Ok(Some(earlier)) => earlier,
            Ok(None) => (ok, detail),
            Err(e) => {
                tracing::error!(error = %e, "recording a command failed; it will be resent");
                return;
            }
        };
        self.ack(id.to_owned(), ok, detail).await;
    }

    async fn ack(&self, id: String, ok: bool, detail: String) {
        let ack = Up::CommandAck { id, ok, detail };
        let _ = self.sealer.send(&self.client, &ack).await;
    }

    /// Where and how to fetch a release: the endpoint pinned at enrolment,
    /// or the refusal to acknowledge when none was.
    fn fetch_context(&self) -> Result<(ModelEndpoint, FetchContext), (bool, String)> {
        let Some(ep) = self.endpoint.clone() else {
            return Err((
                false,
                "refused: no model-signing key was pinned at enrolment".into(),
            ));
        };
        let ctx = FetchContext {
            node: self.sealer.node.clone(),
            identity: self.sealer.identity.clone(),
            endpoint: ep.clone(),
        };
        Ok((ep, ctx))
    }

    /// Run a command; (ok, detail) for the acknowledgement.
    async fn execute(&self, cmd: &Command) -> (bool, String) {
        let (conversation, action) = match &cmd.body {
            CommandBody::Ping => return (true, "pong".into()),
            CommandBody::AgentJoined(a) => (
                &a.conversation,
                AgentAction::Joined {
                    agent: a.agent_name.clone(),
                },
            ),
            CommandBody::AgentMessage(a) => (
                &a.conversation,
                AgentAction::Message {
                    agent: a.agent_name.clone(),
                    text: a.text.clone(),
                },
            ),
            CommandBody::AgentLeft(a) => (&a.conversation, AgentAction::Left),
            CommandBody::AgentClosed(a) => (&a.conversation, AgentAction::Closed),
            CommandBody::ModelUpdate(a) => {
                let (ep, ctx) = match self.fetch_context() {
                    Ok(c) => c,
                    Err(refused) => return refused,
                };
                tracing::info!(rollout = %a.rollout, "model update requested");
                return match self.models.update(&a.release, &ep.signing_key, ctx).await {
                    Ok(report) => {
                        self.metrics.model_change("updated");
                        (true, report)
                    }
                    Err(e) => {
                        tracing::warn!(rollout = %a.rollout, error = %e, "model update failed");
                        self.metrics.model_change(e.reason());
                        (false, format!("{}: {e}", e.reason()))
                    }
                };
            }
            CommandBody::ModelShadow(a) => {
                let (ep, ctx) = match self.fetch_context() {
                    Ok(c) => c,
                    Err(refused) => return refused,
                };
                tracing::info!(rollout = %a.rollout, "shadow run requested");
                return match self
                    .models
                    .shadow(&a.release, &ep.signing_key, ctx, &a.rollout, a.for_secs)
                    .await
                {
                    Ok(report) => (true, report),
                    Err(e) => {
                        tracing::warn!(rollout = %a.rollout, error = %e, "shadow run refused");
                        (false, format!("{}: {e}", e.reason()))
                    }
                };
            }
            CommandBody::ModelShadowEnd(a) => {
                let ended = self.models.shadow.end(&a.rollout);
                tracing::info!(rollout = %a.rollout, ended, "shadow run ended by the controller");
                return (
                    true,
                    if ended {
                        "shadow ended"
                    } else {
                        "no such shadow run"
                    }
                    .into(),
                );
            }
            CommandBody::SetBranch(info) => {
                return match crate::branch::apply(&self.store, self.sessions.engine(), info).await {
                    Ok(()) => (true, "applied".into()),
                    Err(e) => (false, e),
                };
            }
            CommandBody::ModelRollback(a) => {
                return match self.models.rollback(&a.to_version).await {
                    Ok(report) => {
                        self.metrics.model_change("rolled_back");
                        (true, report)
                    }
                    Err(e) => {
                        self.metrics.model_change(e.reason());
                        (false, format!("{}: {e}", e.reason()))
                    }
                };
            }
        };
        match self.sessions.deliver(conversation, action).await {
            Ok(()) => (true, "delivered".into()),
            Err(e) => (false, e),
        }
    }
}
