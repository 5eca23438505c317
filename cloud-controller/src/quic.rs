//! Bundle delivery over QUIC (quinn, TLS 1.3, ALPN `edgedesk-models/1`).
//!
//! One bidirectional stream per file. The node sends one JSON line, a
//! [`FetchRequest`] signed with its enrolment key, and closes its side; the
//! controller answers one JSON line ([`FetchHeader`]) and then the blob's
//! bytes from the requested offset to the end. Resuming is asking again from
//! the last byte the node verified. At most `models.max_transfers` transfers
//! are served at once; the rest wait in line (tokio's semaphore is fair).
//! The server certificate is the broker's, from the controller's CA, which
//! nodes pin at enrolment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use edgedesk_common::sync::{FetchHeader, FetchRequest, MODELS_ALPN};
use edgedesk_support::logging::clip;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::downlink::now_ms;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::TlsError;

/// Unacknowledged bytes a connection may have in flight (memory per transfer).
const SEND_WINDOW: u64 = 4 << 20;

/// Largest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Build the QUIC endpoint on `listen` with the certificate and key files.
pub fn endpoint(
    listen: SocketAddr,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<quinn::Endpoint, TlsError> {
    let cfg = |e: String| TlsError::Config(e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cfg(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cfg(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| cfg(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cfg(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| cfg(e.to_string()))?;
    tls.alpn_protocols = vec![MODELS_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| cfg(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let transport = Arc::get_mut(&mut server.transport).expect("fresh config");
    transport.max_concurrent_bidi_streams(8u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Room for a fast loopback or LAN link (the defaults cap a stream near
    // 100 MB/s at 1 ms RTT), but bounded: unacknowledged data per connection
    // is held in memory, times `max_transfers`.
    transport.stream_receive_window((16u32 << 20).into());
    transport.send_window(SEND_WINDOW);
    quinn::Endpoint::server(server, listen).map_err(|e| cfg(e.to_string()))
}

/// What serving needs: the registry (nodes' keys), metrics, the clock skew allowed.
#[derive(Clone)]
pub struct Service {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub max_skew_ms: i64,
}

/// Serve bundle files until `shutdown`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    hub: Service,
    models_dir: PathBuf,
    max_transfers: usize,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_transfers));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let (hub, dir, permits) = (hub.clone(), models_dir.clone(), permits.clone());
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC handshake failed");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let (hub, dir, permits) = (hub.clone(), dir.clone(), permits.clone());
                tokio::spawn(async move {
                    if let Err(e) = transfer(&hub, &dir, &permits, send, recv).await {
                        tracing::debug!(error = %e, "model transfer ended early");
                    }
                });
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
}

async fn transfer(
    hub: &Service,
    dir: &std::path::Path,
    permits: &Semaphore,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    let line = recv
        .read_to_end(MAX_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let answer = |h: FetchHeader| {
        let mut v = serde_json::to_vec(&h).expect("serialises");
        v.push(b'\n');
        v
    };
    let req: FetchRequest = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = send
                .write_all(&answer(FetchHeader::refused(format!("bad request: {e}"))))
                .await;
            let _ = send.finish();
            return Err("bad request".into());
        }
    };
    let path = match check(hub, dir, &req).await {
        Ok(p) => p,
        Err(reason) => {
            hub.metrics.refuse("model_fetch");
            tracing::warn!(node = %clip(&req.node), blob = %clip(&req.blob), %reason, "model fetch refused");
            let _ = send.write_all(&answer(FetchHeader::refused(reason))).await;
            let _ = send.finish();
            return Err("refused".into());
        }
    };
    let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| e.to_string())?;
    let size = file.metadata().await.map_err(|e| e.to_string())?.len();
    let offset = req.offset.min(size);
    send.write_all(&answer(FetchHeader {
        ok: true,
        size,
        error: String::new(),
    }))
    .await
    .map_err(|e| e.to_string())?;
    if offset > 0 {
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        send.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    let _ = send.stopped().await;
    hub.metrics.model_bytes_sent.inc_by(sent);
    Ok(())
}

/// The blob's path if `req` is from an enrolled, unrevoked node, signed by
/// its key, recent, and names a blob we have.
async fn check(
    hub: &Service,
    dir: &std::path::Path,
    req: &FetchRequest,
) -> Result<PathBuf, String> {
    if (req.ts - now_ms()).abs() > hub.max_skew_ms {
        return Err("request timestamp outside the allowed clock skew".into());
    }
    let row = hub
        .store
        .node(&req.node)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("unknown node")?;
    if row.revoked_at.is_some() {
        return Err("node revoked".into());
    }
    let peer = row.keys.parse().map_err(|e| e.to_string())?;
    if !peer.verify(&req.signed_text(), &req.sig) {
        return Err("bad signature".into());
    }
    let path = crate::models::blob_path(dir, &req.blob).ok_or("malformed blob name")?;
    if !path.is_file() {
        return Err("no such blob".into());
    }
    Ok(path)
}
