//! The embedded broker's front door. rumqttd listens on loopback only; nodes
//! reach it through this gate, which terminates TLS, checks the login and
//! then every packet a node sends against [`super::acl`], throttles each
//! connection to `mqtt.max_messages_per_sec` (it stops reading, so TCP slows
//! the node down; nothing is dropped), and closes a node's connections the
//! moment it is revoked ([`super::Credentials::remove`]).
//!
//! Each connection runs on its own task: a slow or hostile node holds only
//! that task. The controller's own client connects to rumqttd directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgedesk_support::logging::clip;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Credentials;
use super::acl::{self, AclError, Packet};
use crate::metrics::Metrics;

/// The login (CONNECT) must arrive within this time of the TCP connect,
/// TLS handshake included.
pub const LOGIN_DEADLINE: Duration = Duration::from_secs(10);
/// The controller's own login, never accepted through the gate.
pub const CONTROLLER_USER: &str = "edgedesk-controller";
/// CONNACK "not authorised" (MQTT 3.1.1, return code 5).
const CONNACK_NOT_AUTHORISED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

pub struct Gate {
    pub upstream: SocketAddr,
    pub creds: Credentials,
    pub tls: Option<TlsAcceptor>,
    /// Largest packet accepted from a node (bytes after the fixed header).
    pub max_packet: usize,
    pub max_connections: usize,
    /// Sustained packets per second per connection, and the burst.
    pub rate: f64,
    pub burst: f64,
    pub metrics: Arc<Metrics>,
}

/// Accept connections until `shutdown`.
pub async fn serve(listener: TcpListener, gate: Gate, shutdown: CancellationToken) {
    let gate = Arc::new(gate);
    let permits = Arc::new(Semaphore::new(gate.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = edgedesk_support::net::accept(&listener, "broker") => c,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            gate.metrics.broker_refused("connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (gate, shutdown) = (gate.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(&gate, stream, &shutdown).await {
                tracing::debug!(%peer, error = %e, "broker connection ended");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum GateError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("login took too long")]
    Deadline,
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
}

async fn connection(
    gate: &Gate,
    tcp: TcpStream,
    shutdown: &CancellationToken,
) -> Result<(), GateError> {
    match &gate.tls {
        Some(acceptor) => {
            let login = async {
                let mut tls = acceptor.accept(tcp).await?;
                let first = login(gate, &mut tls).await?;
                Ok::<_, GateError>((tls, first))
            };
            let (tls, (node, first)) = tokio::time::timeout(LOGIN_DEADLINE, login)
                .await
                .map_err(|_| GateError::Deadline)??;
            pump(gate, tls, node, first, shutdown).await
        }
        None => {
            let mut tcp = tcp;
            let (node, first) = tokio::time::timeout(LOGIN_DEADLINE, login(gate, &mut tcp))
                .await
                .map_err(|_| GateError::Deadline)??;
            pump(gate, tcp, node, first, shutdown).await
        }
    }
}

/// One packet as read: its first byte, all its bytes, where its body starts.
type Read = (u8, Vec<u8>, usize);

/// Read one packet.
async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Read>, GateError> {
    let mut head = vec![0u8; 1];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    let (len, _) = loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await?;
        head.push(b[0]);
        if let Some(l) = acl::remaining_length(&head[1..])? {
            break l;
        }
    };
    if len > max {
        return Err(GateError::TooLarge(len));
    }
    let start = head.len();
    head.resize(start + len, 0);
    r.read_exact(&mut head[start..]).await?;
    Ok(Some((head[0], head, start)))
}

/// The CONNECT: credentials and will checked. Returns the node and the
/// packet to forward.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    gate: &Gate,
    s: &mut S,
) -> Result<(String, Vec<u8>), GateError> {
    let Some((first, bytes, body_at)) = read_packet(s, gate.max_packet).await? else {
        return Err(GateError::Acl(AclError::NotConnect));
    };
    let packet = acl::parse(first, &bytes[body_at..])?;
    let Packet::Connect {
        client_id,
        user,
        password,
        ..
    } = &packet
    else {
        gate.metrics.broker_refused("not_connect");
        return Err(GateError::Acl(AclError::NotConnect));
    };
    let user = user.clone().unwrap_or_default();
    let ok = user != CONTROLLER_USER
        && gate
            .creds
            .check(client_id, &user, password.as_deref().unwrap_or_default());
    if !ok {
        gate.metrics.broker_refused("login");
        tracing::warn!(client_id = %clip(client_id), user = %clip(&user), "broker refused a login (bad credentials or revoked)");
        let _ = s.write_all(&CONNACK_NOT_AUTHORISED).await;
        return Err(GateError::Acl(AclError::Denied("login".into())));
    }
    if let Err(e) = acl::check(&user, &packet) {
        gate.metrics.broker_refused("acl");
        tracing::warn!(node = %user, error = %e, "broker refused a node's packet");
        let _ = s.write_all(&CONNACK_NOT_AUTHORISED).await;
        return Err(e.into());
    }
    Ok((user, bytes))
}

/// Forward both ways until either side closes, the node breaks a rule, it
/// is revoked, or the controller stops.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    gate: &Gate,
    client: S,
    node: String,
    connect: Vec<u8>,
    shutdown: &CancellationToken,
) -> Result<(), GateError> {
    let revoked = gate.creds.session(&node);
    let mut upstream = TcpStream::connect(gate.upstream).await?;
    let _ = upstream.set_nodelay(true);
    upstream.write_all(&connect).await?;
    let (mut up_read, mut up_write) = upstream.into_split();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let down = tokio::io::copy(&mut up_read, &mut client_write);
    let up = async {
        let mut tokens = gate.burst;
        let mut last = Instant::now();
        loop {
            let Some((first, bytes, body_at)) =
                read_packet(&mut client_read, gate.max_packet).await?
            else {
                return Ok::<(), GateError>(());
            };
            let packet = acl::parse(first, &bytes[body_at..])?;
            if let Err(e) = acl::check(&node, &packet) {
                gate.metrics.broker_refused("acl");
                tracing::warn!(node = %node, error = %e, "broker closed a node's connection");
                return Err(e.into());
            }
            // Token bucket: over the rate, stop reading until a token is due.
            let now = Instant::now();
            tokens = (tokens + now.duration_since(last).as_secs_f64() * gate.rate).min(gate.burst);
            last = now;
            if tokens < 1.0 {
                gate.metrics.broker_throttled.inc();
                let wait = Duration::from_secs_f64((1.0 - tokens) / gate.rate);
                tokio::time::sleep(wait).await;
                tokens = 1.0;
                last = Instant::now();
            }
            tokens -= 1.0;
            up_write.write_all(&bytes).await?;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = revoked.cancelled() => {
            tracing::info!(%node, "revoked: its broker connection is closed");
            Ok(())
        }
        r = down => r.map(|_| ()).map_err(GateError::from),
        r = up => r,
    }
}
