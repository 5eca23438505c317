//! A standby's forwarding (docs/REPLICAS.md): every request a standby
//! receives, but for its own `/healthz`, `/readyz` and `/metrics`, goes to
//! the active controller and its answer comes back, so a client (an agent's
//! browser, the CLI, a node enrolling) may reach any replica. REST calls and
//! console pages are forwarded request by request, bodies streamed both
//! ways; a console WebSocket is upgraded at the active controller and the
//! two connections are then piped byte for byte, so console pushes reach an
//! agent whichever replica the agent's connection landed on. The active
//! controller does the work; a standby adds one hop.
//!
//! Where the active controller is: the address it keeps in the store
//! ([`ActiveAddress`]), used only while the leader lock names the same
//! replica. Its certificate is checked under the CA the controller's chain
//! ends in, for the public URL's host (the name clients check), whatever
//! address is dialled. The standby tells the active controller the client's
//! address ([`CLIENT`], for login limits) together with a token only
//! replicas derive ([`FORWARDED`]); a request bearing that header is never
//! forwarded again, so two standbys cannot pass a request between them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::election::{ActiveAddress, Standby};

/// Bears the replicas' token ([`token`]): a standby forwarded this request.
pub const FORWARDED: &str = "x-edgedesk-forwarded";
/// The client's address as the forwarding standby judged it.
pub const CLIENT: &str = "x-edgedesk-client";

/// How long one read of the active controller's address is used.
const REREAD: Duration = Duration::from_secs(2);
/// How long a standby waits to connect to the active controller.
const CONNECT: Duration = Duration::from_secs(3);

/// The token replicas show each other, derived from the admin token every
/// replica reads; empty when there is none.
pub fn token(admin_token: &str) -> String {
    if admin_token.is_empty() {
        return String::new();
    }
    crate::store::sha256_hex(&format!("edgedesk replica forwarding\n{admin_token}"))
}

/// On the active controller: the client's address a standby forwarded,
/// when the request bears the replicas' token.
pub fn forwarded_client(headers: &HeaderMap, admin_token: &str) -> Option<IpAddr> {
    let want = token(admin_token);
    let given = headers.get(FORWARDED)?.to_str().ok()?;
    // Compared as digests: the time taken says nothing about the token.
    if want.is_empty() || crate::store::sha256_hex(given) != crate::store::sha256_hex(&want) {
        return None;
    }
    headers.get(CLIENT)?.to_str().ok()?.trim().parse().ok()
}

/// What a standby forwards with.
pub struct Forward {
    store: Store,
    waiting: tokio::sync::watch::Receiver<Standby>,
    token: String,
    /// The CA certificate the active controller's chain ends in; `None`:
    /// plain HTTP (`http.insecure_http`).
    ca_pem: Option<String>,
    trusted_proxies: Vec<IpAddr>,
    metrics: Arc<Metrics>,
    /// Piped WebSockets end with the standby.
    stop: CancellationToken,
    target: Mutex<Option<Target>>,
}

#[derive(Clone)]
struct Target {
    addr: ActiveAddress,
    client: reqwest::Client,
    read: Instant,
}

impl Forward {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        waiting: tokio::sync::watch::Receiver<Standby>,
        admin_token: &str,
        ca_pem: Option<String>,
        trusted_proxies: Vec<IpAddr>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Forward {
        Forward {
            store,
            waiting,
            token: token(admin_token),
            ca_pem,
            trusted_proxies,
            metrics,
            stop,
            target: Mutex::new(None),
        }
    }

    /// The active controller to forward to, or why there is none.
    async fn target(&self) -> Result<Target, String> {
        let leader = match &*self.waiting.borrow() {
            Standby::LedBy(who) => who.clone(),
            Standby::NoDatabase(e) => return Err(format!("store unavailable: {e}")),
        };
        let known = self
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(t) = &known {
            if t.read.elapsed() < REREAD && t.addr.replica == leader {
                return Ok(t.clone());
            }
        }
        let addr = self
            .store
            .active_address()
            .await
            .map_err(|e| format!("store unavailable: {e}"))?
            .filter(|a| a.replica == leader)
            .ok_or_else(|| {
                format!("the active controller {leader} has not said where it serves yet")
            })?;
        let client = match known {
            Some(t) if t.addr == addr => t.client,
            _ => self.client_for(&addr)?,
        };
        let t = Target {
            addr,
            client,
            read: Instant::now(),
        };
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(t)
    }

    fn client_for(&self, addr: &ActiveAddress) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT)
            .redirect(reqwest::redirect::Policy::none())
            .http1_only();
        if let Some(ca) = &self.ca_pem {
            let tls = edgedesk_support::tls::pinned_client_as(ca, &addr.tls_name)
                .map_err(|e| format!("TLS to the active controller: {e}"))?;
            b = b.use_preconfigured_tls((*tls).clone());
        }
        b.build()
            .map_err(|e| format!("HTTP client for the active controller: {e}"))
    }

    /// Read the address again at the next request (the last one failed).
    fn forget(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// 503 saying why nothing was forwarded.
fn unavailable(f: &Forward, why: &str) -> Response {
    f.metrics.forward("unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        format!("standby: {why}\n"),
    )
        .into_response()
}

/// Headers of one hop (RFC 9110 §7.6.1), not passed on.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// A WebSocket handshake (`Upgrade: websocket`).
fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The standby's fallback: forward `req` to the active controller.
pub async fn handle(
    State(f): State<Arc<Forward>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    if req.headers().contains_key(FORWARDED) {
        return unavailable(
            &f,
            "a request another replica forwarded reached a standby (the active controller changed); try again",
        );
    }
    let target = match f.target().await {
        Ok(t) => t,
        Err(why) => return unavailable(&f, &why),
    };
    let (mut parts, body) = req.into_parts();
    let websocket = is_websocket(&parts.headers);
    let forwarded_for = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = crate::accounts::client_address(peer.ip(), forwarded_for, &f.trusted_proxies);
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name.as_str() != CLIENT {
            headers.append(name.clone(), value.clone());
        }
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if let Ok(v) = HeaderValue::from_str(&f.token) {
        headers.insert(FORWARDED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(CLIENT, v);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", target.addr.url.trim_end_matches('/'));
    let mut request = target
        .client
        .request(parts.method.clone(), &url)
        .headers(headers);
    if !websocket {
        request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => {
            f.forget();
            tracing::debug!(error = %e, url, "forwarding to the active controller failed");
            return unavailable(
                &f,
                &format!(
                    "the active controller {} does not answer at {}; try again",
                    target.addr.replica, target.addr.url
                ),
            );
        }
    };
    let status = answer.status();
    let mut out = Response::builder().status(status);
    if websocket && status == StatusCode::SWITCHING_PROTOCOLS {
        for (name, value) in answer.headers() {
            out = out.header(name, value);
        }
        let Some(from_client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return (StatusCode::BAD_REQUEST, "not an upgradable connection\n").into_response();
        };
        let to_active = match answer.upgrade().await {
            Ok(u) => u,
            Err(e) => {
                f.forget();
                return unavailable(
                    &f,
                    &format!("the active controller's WebSocket failed: {e}"),
                );
            }
        };
        f.metrics.forward("websocket");
        let stop = f.stop.clone();
        tokio::spawn(async move {
            let Ok(client) = from_client.await else {
                return;
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut active = to_active;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut active) => {}
                _ = stop.cancelled() => {}
            }
        });
        return out.body(Body::empty()).unwrap_or_else(|_| {
            (
                StatusCode::BAD_GATEWAY,
                "a bad answer from the active controller\n",
            )
                .into_response()
        });
    }
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    f.metrics.forward("http");
    out.body(Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|_| {
            (
                StatusCode::BAD_GATEWAY,
                "a bad answer from the active controller\n",
            )
                .into_response()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_replicas_token_makes_a_client_address_believed() {
        let mut h = HeaderMap::new();
        h.insert(CLIENT, HeaderValue::from_static("198.51.100.7"));
        assert_eq!(forwarded_client(&h, "admin"), None, "no token");
        h.insert(FORWARDED, HeaderValue::from_static("guess"));
        assert_eq!(forwarded_client(&h, "admin"), None, "a wrong token");
        h.insert(FORWARDED, HeaderValue::from_str(&token("admin")).unwrap());
        assert_eq!(
            forwarded_client(&h, "admin"),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(forwarded_client(&h, "other"), None, "another admin token");
        h.insert(FORWARDED, HeaderValue::from_str(&token("")).unwrap());
        assert_eq!(forwarded_client(&h, ""), None, "no admin token at all");
        h.insert(FORWARDED, HeaderValue::from_str(&token("admin")).unwrap());
        h.insert(CLIENT, HeaderValue::from_static("not an address"));
        assert_eq!(forwarded_client(&h, "admin"), None);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        assert!(hop_by_hop(&header::CONNECTION));
        assert!(hop_by_hop(&header::HeaderName::from_static("keep-alive")));
        assert!(!hop_by_hop(&header::COOKIE));
        assert!(!hop_by_hop(&header::HOST));
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket(&h));
    }
}
