//! The controller's REST API (JSON), documented with OpenAPI.
//!
//! Routes and their OpenAPI description come from the same annotations
//! (utoipa-axum), and `docs/openapi.json` is generated from them
//! (`cloud-controller openapi`); a test fails when the two drift apart.
//! Operator routes need `Authorization: Bearer <admin token>`; `/enroll`
//! is authenticated by the one-time enrolment token in its body.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgedesk_common::envelope::valid_node_id;
use edgedesk_common::sync::{EnrollRequest, EnrollResponse, MqttEndpoint, enroll_proof_message};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use edgedesk_common::sync::{CommandBody, Heartbeat};
use edgedesk_support::secret::random_hex as random_token;

use super::Http;
use crate::downlink::now_ms;
use crate::store::{
    self, AgentRow, EnrollError, EventQuery, ModelRow, NewAgent, StoreError, sha256_hex,
};

/// Errors at the HTTP edge: a status and a safe message; internals are logged.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    Internal(String),
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".to_owned(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(ErrorBody { error: msg })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

fn authorize(state: &Http, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests so the comparison time does not depend on the secret.
    if !given.is_empty() && sha256_hex(given) == sha256_hex(&state.admin_token) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

type S = State<Arc<Http>>;

/// Node ids may not start with this: the controller's own broker login uses it.
pub const RESERVED_PREFIX: &str = "edgedesk-";

#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// Restrict the token to this node id.
    pub node_id: Option<String>,
    /// Lifetime in seconds (default 86400).
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: i64,
    /// `sha256:` of the certificate the node must find in the controller's
    /// chain before it sends the token (absent over plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sha256: Option<String>,
    /// Everything a node needs, in one string for `cloud.join`:
    /// `<public_url>#token=<token>&ca=sha256:<hex>`.
    pub join: String,
}

/// The join string of a token: the controller's URL, the token and the pinned
/// fingerprint (kubeadm's `--discovery-token-ca-cert-hash`, in one line).
pub fn join_string(public_url: &str, token: &str, ca_sha256: Option<&str>) -> String {
    edgedesk_common::sync::Join {
        url: public_url.to_owned(),
        token: token.to_owned(),
        ca_sha256: ca_sha256.map(str::to_owned),
    }
    .to_string()
}

/// Issue a one-time enrolment token.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn create_token(
    State(s): S,
    headers: HeaderMap,
    Json(req): Json<TokenRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    authorize(&s, &headers)?;
    if let Some(n) = &req.node_id {
        if !valid_node_id(n) {
            return Err(ApiError::BadRequest(format!(
                "invalid node id {n:?}: use 1-64 of a-z 0-9 - _ ."
            )));
        }
    }
    let token = random_token(24);
    let now = now_ms();
    let ttl = req.ttl_secs.unwrap_or(86_400).clamp(60, 30 * 86_400) as i64 * 1000;
    s.store
        .create_token(token.clone(), req.node_id.clone(), now, ttl)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            join: join_string(&s.public_url, &token, s.ca_sha256.as_deref()),
            token,
            expires_at: now + ttl,
            ca_sha256: s.ca_sha256.clone(),
        }),
    ))
}

/// Enrol a node with a one-time token; returns the controller's keys and broker credentials.
#[utoipa::path(post, path = "/api/v1/enroll", request_body(content = Object, description = "common::sync::EnrollRequest"),
    responses((status = 200, body = Object, description = "common::sync::EnrollResponse"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "the node's account on the external broker could not be made; the token stays valid")))]
async fn enroll(
    State(s): S,
    Json(req): Json<EnrollRequest>,
) -> Result<Json<EnrollResponse>, Response> {
    let fail =
        |status: StatusCode, msg: String| (status, Json(ErrorBody { error: msg })).into_response();
    let refused = |e: EnrollError| match e {
        EnrollError::AlreadyEnrolled(_) => fail(StatusCode::CONFLICT, e.to_string()),
        e => {
            s.metrics.refuse("enroll_token");
            fail(StatusCode::FORBIDDEN, e.to_string())
        }
    };
    if !valid_node_id(&req.node_id) || req.node_id.starts_with(RESERVED_PREFIX) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid node id {:?}: 1-64 of a-z 0-9 - _ ., not starting with {RESERVED_PREFIX}",
                req.node_id
            ),
        ));
    }
    let peer = req
        .keys
        .parse()
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    if !peer.verify(&enroll_proof_message(&req.node_id, &req.token), &req.proof) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "proof of key possession does not verify".into(),
        ));
    }
    let password = random_token(24);
    let hash = sha256_hex(&password);
    let now = now_ms();
    if let Some(d) = &s.dynsec {
        // The broker account first, so the node can connect the moment it
        // has its answer; only for a token that would enrol this node (an
        // unauthenticated caller touches nothing on the broker).
        let may = s
            .store
            .may_enroll(req.token.clone(), req.node_id.clone(), now)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        may.map_err(refused)?;
        if let Err(e) = d
            .apply(
                crate::broker::dynsec::Change::Enrol,
                &req.node_id,
                &password,
            )
            .await
        {
            tracing::error!(node = %req.node_id, error = %e, "creating the node's broker account failed");
            // Whatever part of it was made (or is still queued for a broker
            // that is down) goes again: the node is not enrolled.
            d.delete_later(&req.node_id);
            return Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the node's broker account could not be created ({e}); the token is still valid, try again"
                ),
            ));
        }
    }
    let outcome = s
        .store
        .enroll(
            req.token.clone(),
            req.node_id.clone(),
            req.keys.clone(),
            hash.clone(),
            now,
        )
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    if let (Err(e), Some(d)) = (&outcome, &s.dynsec) {
        // Another enrolment won the race for this token since the check:
        // the account made for this one goes again. Had another won the same
        // node id, the account now holds this request's password: that node
        // must enrol again, and the log says so.
        if matches!(e, EnrollError::AlreadyEnrolled(_)) {
            tracing::error!(node = %req.node_id, "two enrolments of this node raced; its broker account holds the loser's password: revoke and enrol the node again");
        } else {
            d.delete_later(&req.node_id);
        }
    }
    outcome.map_err(refused)?;
    s.creds.set(&req.node_id, &hash);
    tracing::info!(node = %req.node_id, "node enrolled");
    Ok(Json(EnrollResponse {
        node_id: req.node_id.clone(),
        controller: s.identity.announce(&s.sealing.current()),
        mqtt: MqttEndpoint {
            host: s.broker.0.clone(),
            port: s.broker.1,
            tls: s.broker_ca.is_some(),
            ca_pem: s.broker_ca.clone(),
            username: req.node_id.clone(),
            password,
        },
        models: Some(s.models.clone()),
    }))
}

/// A node as the API shows it.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub online: bool,
    pub revoked: bool,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    /// The last heartbeat (software and model version, uptime, sessions, outbox, disk).
    #[schema(value_type = Object)]
    pub heartbeat: Option<Heartbeat>,
}

impl From<store::NodeRow> for NodeView {
    fn from(n: store::NodeRow) -> Self {
        NodeView {
            id: n.id,
            online: n.online,
            revoked: n.revoked_at.is_some(),
            labels: n.labels,
            enrolled_at: n.enrolled_at,
            last_seen: n.last_seen,
            heartbeat: n.heartbeat,
        }
    }
}

/// List enrolled nodes.
#[utoipa::path(get, path = "/api/v1/nodes", responses((status = 200, body = Vec<NodeView>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_nodes(State(s): S, headers: HeaderMap) -> Result<Json<Vec<NodeView>>, ApiError> {
    authorize(&s, &headers)?;
    let nodes = s.store.nodes().await?;
    Ok(Json(nodes.into_iter().map(NodeView::from).collect()))
}

async fn find_node(s: &Http, id: String) -> Result<store::NodeRow, ApiError> {
    s.store
        .node(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node {id:?}")))
}

/// Show one node.
#[utoipa::path(get, path = "/api/v1/nodes/{id}", params(("id" = String, Path, description = "node id")),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_node(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(find_node(&s, id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
pub struct LabelsRequest {
    /// Replaces all labels, e.g. {"region": "emea", "branch": "paris-1", "kind": "bank"}.
    pub labels: BTreeMap<String, String>,
}

/// Set a node's labels (free-form key/values).
#[utoipa::path(put, path = "/api/v1/nodes/{id}/labels", params(("id" = String, Path, description = "node id")), request_body = LabelsRequest,
    responses((status = 200, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn put_labels(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<LabelsRequest>,
) -> Result<Json<NodeView>, ApiError> {
    authorize(&s, &headers)?;
    if req.labels.len() > 64
        || req
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256)
    {
        return Err(ApiError::BadRequest(
            "at most 64 labels; keys 1-64 bytes, values up to 256".into(),
        ));
    }
    let now = now_ms();
    if !s.store.set_labels(&id, req.labels, now).await? {
        return Err(ApiError::NotFound(format!("no node {id:?}")));
    }
    Ok(Json(find_node(&s, id).await?.into()))
}

/// A branch's hours and facts as the controller keeps them, and whether the
/// node has taken the latest change.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct BranchView {
    pub node_id: String,
    /// `hours` (mon…sun → "09:00-17:00" or "closed"), `holidays` ([{date,
    /// hours, name: {en, zh}}]) and `facts` (address, directions, services,
    /// atms, queue, documents → {en, zh}).
    #[schema(value_type = Object)]
    pub branch: edgedesk_common::branch::BranchInfo,
    pub updated_at: i64,
    /// "api" or "kubernetes".
    pub updated_by: String,
    /// "pending" until the node acknowledges, then "applied" or "refused".
    pub delivery: String,
    /// The node's word on it (why it refused, for example).
    pub detail: Option<String>,
}

impl From<crate::store::BranchRow> for BranchView {
    fn from(r: crate::store::BranchRow) -> Self {
        let delivery = r.delivery();
        BranchView {
            node_id: r.node_id,
            branch: r.info,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
            delivery: delivery.to_owned(),
            detail: r.detail,
        }
    }
}

impl From<crate::branches::SetBranchError> for ApiError {
    fn from(e: crate::branches::SetBranchError) -> Self {
        use crate::branches::SetBranchError as E;
        match e {
            E::UnknownNode(_) => ApiError::NotFound(e.to_string()),
            E::Revoked(_) => ApiError::Conflict(e.to_string()),
            E::Invalid(_) => ApiError::BadRequest(e.to_string()),
            E::Store(e) => e.into(),
        }
    }
}

/// A branch's hours and facts as last set through the controller.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/branch", params(("id" = String, Path, description = "node id")),
    responses((status = 200, body = BranchView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_branch(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BranchView>, ApiError> {
    authorize(&s, &headers)?;
    find_node(&s, id.clone()).await?;
    match s.store.branch(&id).await? {
        Some(row) => Ok(Json(row.into())),
        None => Err(ApiError::NotFound(format!(
            "node {id:?} has no branch settings from the controller (it answers from its own configuration)"
        ))),
    }
}

/// Set a branch's opening hours, holidays and facts (address, directions,
/// services, ATMs, queue tickets, documents), in English and Chinese. The
/// node answers from them as soon as it has the change; an offline node gets
/// it when it is back. Checked as the node would check it: a mistake is
/// refused with the field named, and nothing is stored.
#[utoipa::path(put, path = "/api/v1/nodes/{id}/branch", params(("id" = String, Path, description = "node id")),
    request_body(content = Object, description = "{\"hours\": {\"mon\": \"09:00-17:00\", \"sun\": \"closed\"}, \"holidays\": [{\"date\": \"2026-12-25\", \"name\": {\"en\": \"Christmas Day\"}}], \"facts\": {\"address\": {\"en\": \"...\", \"zh\": \"...\"}}}"),
    responses((status = 200, body = BranchView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
async fn put_branch(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<
        Json<edgedesk_common::branch::BranchInfo>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Json<BranchView>, ApiError> {
    authorize(&s, &headers)?;
    let Json(info) =
        body.map_err(|e| ApiError::BadRequest(format!("branch settings: {}", e.body_text())))?;
    let row = crate::branches::set(&s.store, &s.downlink, &id, info, "api").await?;
    Ok(Json(row.into()))
}

#[derive(Deserialize, IntoParams)]
pub struct LimitQuery {
    /// Most rows to return (default 100).
    pub limit: Option<usize>,
}

/// A node's recent state changes (enrolled, online, offline, labels, revoked), newest first.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/history", params(("id" = String, Path, description = "node id"), LimitQuery),
    responses((status = 200, body = Vec<HistoryView>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn node_history(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<HistoryView>>, ApiError> {
    authorize(&s, &headers)?;
    find_node(&s, id.clone()).await?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let rows = s.store.history(&id, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| HistoryView {
                at: r.at,
                kind: r.kind,
                detail: r.detail,
            })
            .collect(),
    ))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

/// Revoke a node: its broker login and every envelope it sends are refused from now on.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/revoke", params(("id" = String, Path, description = "node id")),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn revoke(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    authorize(&s, &headers)?;
    find_node(&s, id.clone()).await?;
    let now = now_ms();
    s.store.revoke(&id, now).await?;
    s.downlink.forget(&id).await;
    tracing::warn!(node = %id, "node revoked");
    Ok(Json(find_node(&s, id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
pub struct CommandRequest {
    /// Command kind, e.g. "ping".
    pub kind: String,
    #[schema(value_type = Object)]
    #[serde(default)]
    pub args: serde_json::Value,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct CommandView {
    pub id: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    pub issued_at: i64,
    pub sent_at: Option<i64>,
    pub acked_at: Option<i64>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

/// Queue a command for a node; it is kept until the node acknowledges it.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/commands", params(("id" = String, Path, description = "node id")), request_body = CommandRequest,
    responses((status = 202, body = CommandView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn post_command(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<CommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    authorize(&s, &headers)?;
    let node = find_node(&s, id.clone()).await?;
    if node.revoked_at.is_some() {
        return Err(ApiError::Conflict(format!("node {id:?} is revoked")));
    }
    let body = CommandBody::from_parts(&req.kind, req.args).map_err(|e| {
        ApiError::BadRequest(format!(
            "{e}; known kinds: {}",
            CommandBody::KINDS.join(", ")
        ))
    })?;
    if let CommandBody::SetBranch(_) = body {
        return Err(ApiError::BadRequest(format!(
            "set a branch's hours and facts with PUT /api/v1/nodes/{id}/branch (kept and checked there)"
        )));
    }
    let cmd = s.downlink.queue(&id, body, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CommandView {
            id: cmd.id,
            kind: cmd.body.kind().to_owned(),
            args: cmd.body.args(),
            issued_at: cmd.issued_at,
            sent_at: None,
            acked_at: None,
            ok: None,
            detail: None,
        }),
    ))
}

/// A node's commands, newest first, with their acknowledgement state.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/commands", params(("id" = String, Path, description = "node id"), LimitQuery),
    responses((status = 200, body = Vec<CommandView>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn list_commands(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    authorize(&s, &headers)?;
    find_node(&s, id.clone()).await?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let rows = s.store.commands(&id, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| CommandView {
                id: r.command.id,
                kind: r.command.body.kind().to_owned(),
                args: r.command.body.args(),
                issued_at: r.command.issued_at,
                sent_at: r.sent_at,
                acked_at: r.acked_at,
                ok: r.ok,
                detail: r.detail,
            })
            .collect(),
    ))
}

#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events of this node.
    pub node: Option<String>,
    /// conversation_summary, escalation, offline_message or flow_completed.
    pub kind: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// Most rows (default 1000, at most 100000).
    pub limit: Option<usize>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct EventView {
    pub id: String,
    pub node_id: String,
    pub kind: String,
    pub at: i64,
    pub received_at: i64,
    /// The event as the node sent it (common::event::Event).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// The learning loop's samples: visitor turns the branches sent up (masked)
/// because the model was unsure, judged them out of scope, or the chat
/// escalated or was rated low; newest first.
#[utoipa::path(get, path = "/api/v1/samples", params(crate::store::samples::SampleQuery),
    responses((status = 200, body = Vec<crate::store::samples::SampleRow>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_samples(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<crate::store::samples::SampleQuery>,
) -> Result<Json<Vec<crate::store::samples::SampleRow>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.store.samples(q).await?))
}

/// Events ingested from node outboxes, by node, kind and time.
#[utoipa::path(get, path = "/api/v1/events", params(EventsQuery),
    responses((status = 200, body = Vec<EventView>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_events(
    State(s): S,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    authorize(&s, &headers)?;
    let query = EventQuery {
        node: q.node,
        kind: q.kind,
        since: q.since,
        until: q.until,
        limit: q.limit,
    };
    let rows = s.store.events(query).await?;
    Ok(Json(
        rows.into_iter()
            .map(|e| EventView {
                id: e.id,
                node_id: e.node_id,
                kind: e.kind,
                at: e.at,
                received_at: e.received_at,
                event: serde_json::to_value(&e.event).unwrap_or_default(),
            })
            .collect(),
    ))
}

/// Create an agent account for the console (the first admin is made this way).
#[utoipa::path(post, path = "/api/v1/agents", request_body(content = Object, description = "username, display_name, role (agent|supervisor|admin), password (10+ chars), languages, capacity"),
    responses((status = 201, body = Object, description = "the agent"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn create_agent(
    State(s): S,
    headers: HeaderMap,
    Json(req): Json<NewAgent>,
) -> Result<(StatusCode, Json<AgentRow>), ApiError> {
    authorize(&s, &headers)?;
    let now = now_ms();
    let row = crate::accounts::create_account(&s.store, req, now)
        .await?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List console agents.
#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_agents(State(s): S, headers: HeaderMap) -> Result<Json<Vec<AgentRow>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.store.agents().await?))
}

/// Disable a console agent and end their sessions.
#[utoipa::path(post, path = "/api/v1/agents/{id}/disable", params(("id" = String, Path, description = "agent id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn disable_agent(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers)?;
    match s.store.agent_disable(&id).await? {
        Ok(()) => {
            let _ = s.accounts_changed.send(id);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => Err(ApiError::NotFound(e.to_string())),
    }
}

/// Change a console agent's role; their open consoles reconnect with it.
#[utoipa::path(post, path = "/api/v1/agents/{id}/role", params(("id" = String, Path, description = "agent id")),
    request_body(content = Object, description = "{\"role\": \"agent\" | \"supervisor\" | \"admin\"}"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn set_agent_role(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<serde_json::Value>,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers)?;
    let role = req["role"]
        .as_str()
        .and_then(crate::store::Role::parse)
        .ok_or_else(|| {
            ApiError::BadRequest("role must be \"agent\", \"supervisor\" or \"admin\"".into())
        })?;
    match s.store.agent_set_role(&id, role).await? {
        Ok(()) => {
            let _ = s.accounts_changed.send(id);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => Err(ApiError::NotFound(e.to_string())),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "EdgeDesk cloud controller", description = "Fleet registry, enrolment, ingested events and node commands."),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API router and its OpenAPI document, built from the same annotations.
fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_token))
        .routes(routes!(enroll))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node))
        .routes(routes!(put_labels))
        .routes(routes!(get_branch, put_branch))
        .routes(routes!(node_history))
        .routes(routes!(revoke))
        .routes(routes!(post_command, list_commands))
        .routes(routes!(list_events))
        .routes(routes!(list_samples))
        .routes(routes!(create_agent, list_agents))
        .routes(routes!(disable_agent))
        .routes(routes!(set_agent_role))
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(create_rollout, list_rollouts))
        .routes(routes!(get_rollout))
        .routes(routes!(operate_rollout))
        .routes(routes!(start_training, list_trainings))
        .routes(routes!(get_training))
        .routes(routes!(approve_training))
        .routes(routes!(release_answers))
        .routes(routes!(list_suggestions))
        .routes(routes!(group_questions))
        .routes(routes!(accept_suggestion))
        .routes(routes!(dismiss_suggestion))
}

/// Published model releases, newest first.
#[utoipa::path(get, path = "/api/v1/models", responses((status = 200, body = Vec<ModelRow>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_models(State(s): S, headers: HeaderMap) -> Result<Json<Vec<ModelRow>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.store.models().await?))
}

/// One release by id, `name@version` or version.
#[utoipa::path(get, path = "/api/v1/models/{key}", params(("key" = String, Path, description = "release id, name@version or version")),
    responses((status = 200, body = ModelRow), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_model(
    State(s): S,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<ModelRow>, ApiError> {
    authorize(&s, &headers)?;
    s.store
        .model(&key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no model release {key:?}")))
}

fn rollout_error(e: crate::rollouts::RolloutError) -> ApiError {
    use crate::rollouts::RolloutError as E;
    match e {
        E::Invalid(m) => ApiError::BadRequest(m),
        e @ (E::NotFound(_) | E::NoModel(_)) => ApiError::NotFound(e.to_string()),
        e @ E::Finished(..) => ApiError::Conflict(e.to_string()),
        E::Store(e) => e.into(),
    }
}

/// Start a rollout of a published release to the nodes a label selector picks.
#[utoipa::path(post, path = "/api/v1/rollouts", request_body = crate::rollouts::CreateRollout,
    responses((status = 201, body = crate::rollouts::RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn create_rollout(
    State(s): S,
    headers: HeaderMap,
    Json(req): Json<crate::rollouts::CreateRollout>,
) -> Result<(StatusCode, Json<crate::rollouts::RolloutView>), ApiError> {
    authorize(&s, &headers)?;
    let v = s.rollouts.create(req).await.map_err(rollout_error)?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Rollouts, newest first.
#[utoipa::path(get, path = "/api/v1/rollouts", responses((status = 200, body = Vec<crate::rollouts::RolloutView>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_rollouts(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::rollouts::RolloutView>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.rollouts.list().await?))
}

/// One rollout with every node's state.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", params(("id" = String, Path, description = "rollout id")),
    responses((status = 200, body = crate::rollouts::RolloutView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_rollout(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::rollouts::RolloutView>, ApiError> {
    authorize(&s, &headers)?;
    s.rollouts
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id:?}")))
}

/// Pause, resume or abort (rolls updated nodes back) a rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/{op}", params(("id" = String, Path, description = "rollout id"), ("op" = String, Path, description = "pause, resume or abort")),
    responses((status = 200, body = crate::rollouts::RolloutView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
async fn operate_rollout(
    State(s): S,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
) -> Result<Json<crate::rollouts::RolloutView>, ApiError> {
    authorize(&s, &headers)?;
    s.rollouts
        .operate(&id, &op)
        .await
        .map(Json)
        .map_err(rollout_error)
}

pub fn router(state: Arc<Http>) -> axum::Router {
    routes().with_state(state).split_for_parts().0
}

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_document() -> String {
    let (_, mut doc) = routes().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut s = doc.to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

fn training_error(e: crate::training::TrainingError) -> ApiError {
    use crate::training::TrainingError as E;
    match e {
        e @ (E::Busy(_) | E::NotAwaiting(..) | E::Conflict(_)) => ApiError::Conflict(e.to_string()),
        e @ E::NotFound(_) => ApiError::NotFound(e.to_string()),
        E::Invalid(m) => ApiError::BadRequest(m),
        E::Rollout(e) => rollout_error(e),
        E::Store(e) => e.into(),
    }
}

/// Start a training run: the base data plus the labels people gave, the
/// regression gate against the fleet's model, then publish (docs/LEARNING.md).
/// The run goes on in the background; poll `GET /api/v1/trainings/{id}`.
#[utoipa::path(post, path = "/api/v1/trainings", request_body = crate::training::StartTraining,
    responses((status = 202, body = crate::store::trainings::TrainingRow), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a run is already running")), security(("bearer" = [])))]
async fn start_training(
    State(s): S,
    headers: HeaderMap,
    body: Option<Json<crate::training::StartTraining>>,
) -> Result<(StatusCode, Json<crate::store::trainings::TrainingRow>), ApiError> {
    authorize(&s, &headers)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let t = s
        .trainings
        .start(req, "api")
        .await
        .map_err(training_error)?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

/// Training runs, newest first.
#[utoipa::path(get, path = "/api/v1/trainings", responses((status = 200, body = Vec<crate::store::trainings::TrainingRow>), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_trainings(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::store::trainings::TrainingRow>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.store.trainings(100).await?))
}

/// One training run: state, the gate's figures and verdict, the trainer's last lines.
#[utoipa::path(get, path = "/api/v1/trainings/{id}", params(("id" = String, Path, description = "training run id")),
    responses((status = 200, body = crate::store::trainings::TrainingRow), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_training(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::store::trainings::TrainingRow>, ApiError> {
    authorize(&s, &headers)?;
    s.store
        .training(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no training run {id:?}")))
}

/// Approve a run that passed the gate: its model's rollout starts. The body
/// may override the configured rollout settings (`waves`, `shadow_secs`, …).
#[utoipa::path(post, path = "/api/v1/trainings/{id}/approve", params(("id" = String, Path, description = "training run id")),
    request_body(content = Object, description = "optional rollout settings, as POST /api/v1/rollouts takes them (without `model`)"),
    responses((status = 200, body = crate::store::trainings::TrainingRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the run is not awaiting approval")), security(("bearer" = [])))]
async fn approve_training(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Result<Json<crate::store::trainings::TrainingRow>, ApiError> {
    authorize(&s, &headers)?;
    let settings = body.map(|Json(b)| b).unwrap_or(serde_json::Value::Null);
    let t = s
        .trainings
        .approve(&id, settings, "api")
        .await
        .map_err(training_error)?;
    Ok(Json(t))
}

/// Suggested intents: the unlabelled questions grouped by meaning, open
/// ones first (largest first), and how the last grouping went.
#[utoipa::path(get, path = "/api/v1/suggestions", responses((status = 200, body = crate::training::suggest::Suggestions), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_suggestions(
    State(s): S,
    headers: HeaderMap,
) -> Result<Json<crate::training::suggest::Suggestions>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(
        s.trainings.suggestions().await.map_err(training_error)?,
    ))
}

/// Group the unlabelled questions again now (in the background; poll
/// `GET /api/v1/suggestions`). Replaces the open suggestions.
#[utoipa::path(post, path = "/api/v1/suggestions/refresh",
    responses((status = 202, body = crate::training::suggest::GroupingStatus),
        (status = 409, body = ErrorBody, description = "a grouping is running")), security(("bearer" = [])))]
async fn group_questions(
    State(s): S,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<crate::training::suggest::GroupingStatus>), ApiError> {
    authorize(&s, &headers)?;
    let st = s
        .trainings
        .group_questions("api")
        .await
        .map_err(training_error)?;
    Ok((StatusCode::ACCEPTED, Json(st)))
}

/// Make an intent of a suggestion: its unlabelled questions are labelled
/// with it; a `new:NAME` intent without answers needs `en` and `zh`.
#[utoipa::path(post, path = "/api/v1/suggestions/{id}/accept", params(("id" = String, Path, description = "suggestion id")),
    request_body = crate::training::suggest::AcceptSuggestion,
    responses((status = 200, body = crate::training::suggest::Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "decided already")), security(("bearer" = [])))]
async fn accept_suggestion(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<crate::training::suggest::AcceptSuggestion>,
) -> Result<Json<crate::training::suggest::Accepted>, ApiError> {
    authorize(&s, &headers)?;
    let a = s
        .trainings
        .accept_suggestion(&id, req, "api")
        .await
        .map_err(training_error)?;
    Ok(Json(a))
}

/// Dismiss a suggestion: its questions are not grouped again.
#[utoipa::path(post, path = "/api/v1/suggestions/{id}/dismiss", params(("id" = String, Path, description = "suggestion id")),
    responses((status = 200, body = crate::training::suggest::SuggestionView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "decided already")), security(("bearer" = [])))]
async fn dismiss_suggestion(
    State(s): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::training::suggest::SuggestionView>, ApiError> {
    authorize(&s, &headers)?;
    let v = s
        .trainings
        .dismiss_suggestion(&id, "api")
        .await
        .map_err(training_error)?;
    Ok(Json(v))
}

/// A knowledge-base release: the fleet's model with the answers and quick
/// replies supervisors wrote, signed and published as the next patch
/// version, without training. The run (kind `knowledge_base`, the diff in
/// `report.answers`) awaits approval like a trained model:
/// `POST /api/v1/trainings/{id}/approve` rolls it out.
#[utoipa::path(post, path = "/api/v1/kb/releases",
    responses((status = 201, body = crate::store::trainings::TrainingRow),
        (status = 400, body = ErrorBody, description = "nothing changed, or nothing published to release from"),
        (status = 409, body = ErrorBody, description = "a training run or release is being made")), security(("bearer" = [])))]
async fn release_answers(
    State(s): S,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<crate::store::trainings::TrainingRow>), ApiError> {
    authorize(&s, &headers)?;
    let t = s
        .trainings
        .release_answers("api")
        .await
        .map_err(training_error)?;
    Ok((StatusCode::CREATED, Json(t)))
}
