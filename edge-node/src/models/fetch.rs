//! Download bundle files from the controller over QUIC, verified chunk by
//! chunk against the signed release and resumable from the last verified
//! byte (the partial file is `<incoming>/<sha256>.part`; only whole verified
//! chunks are ever kept in it).

use std::io::{Read, Seek, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgedesk_common::envelope::Identity;
use edgedesk_common::release::{CHUNK_SIZE, FileEntry};
use edgedesk_common::sync::{FetchHeader, FetchRequest, MODELS_ALPN, ModelEndpoint};
use quinn::crypto::rustls::QuicClientConfig;
use sha2::{Digest, Sha256};

use super::{ModelError, blocking};

/// How long a silent connection lives before the download gives up on it.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6);

/// What a node needs to fetch: who it is and where the controller serves.
#[derive(Clone)]
pub struct FetchContext {
    pub node: String,
    pub identity: Identity,
    pub endpoint: ModelEndpoint,
}

/// A QUIC connection to the controller's model service.
pub struct Fetcher {
    ctx: FetchContext,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

fn net(e: impl std::fmt::Display) -> ModelError {
    ModelError::Fetch(e.to_string())
}

impl Fetcher {
    pub async fn connect(ctx: FetchContext) -> Result<Fetcher, ModelError> {
        let mut tls =
            (*edgedesk_support::tls::pinned_client(&ctx.endpoint.ca_pem).map_err(net)?).clone();
        tls.alpn_protocols = vec![MODELS_ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(net)?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window((16u32 << 20).into());
        transport.receive_window((64u32 << 20).into());
        // A dead link is noticed within IDLE_TIMEOUT (keep-alives every 2 s
        // keep a quiet but live one open); the download then resumes.
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
        transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(net)?));
        client.transport_config(Arc::new(transport));
        let addr = (ctx.endpoint.quic_host.as_str(), ctx.endpoint.quic_port)
            .to_socket_addrs()
            .map_err(net)?
            .next()
            .ok_or_else(|| net("the controller's QUIC address does not resolve"))?;
        let bind: std::net::SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(net)?;
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(addr, &ctx.endpoint.quic_host)
            .map_err(net)?
            .await
            .map_err(net)?;
        Ok(Fetcher {
            ctx,
            endpoint,
            conn,
        })
    }

    /// Fetch `file` into `dest` (created atomically), resuming from
    /// `<incoming>/<sha>.part`. Returns the bytes transferred this time.
    /// File work (hashing, writing, fsync) runs on blocking threads.
    pub async fn fetch(
        &self,
        file: &FileEntry,
        incoming: &Path,
        dest: &Path,
    ) -> Result<u64, ModelError> {
        let part = part_path(incoming, &file.sha256);
        let mut verified = {
            let (incoming, part, file) = (incoming.to_owned(), part.clone(), file.clone());
            blocking(move || {
                std::fs::create_dir_all(&incoming)?;
                // Exists even for an empty file (no chunk to fetch).
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&part)?;
                verified_prefix(&part, &file)
            })
            .await?
        };
        let mut transferred = 0u64;
        while verified < file.size {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(net)?;
            let mut req = FetchRequest {
                node: self.ctx.node.clone(),
                blob: file.sha256.clone(),
                offset: verified,
                ts: chrono::Utc::now().timestamp_millis(),
                sig: String::new(),
            };
            req.sig = self.ctx.identity.sign(&req.signed_text());
            send.write_all(&serde_json::to_vec(&req).expect("serialises"))
                .await
                .map_err(net)?;
            send.finish().map_err(net)?;
            let header = read_header(&mut recv).await?;
            if !header.ok {
                // Not a network fault: no point retrying.
                return Err(ModelError::Refused(format!(
                    "controller refused {}: {}",
                    file.sha256, header.error
                )));
            }
            if header.size != file.size {
                return Err(ModelError::Verify(format!(
                    "{} is {} bytes on the controller, the release says {}",
                    file.sha256, header.size, file.size
                )));
            }
            let mut out = {
                let part = part.clone();
                blocking(move || {
                    let mut out = std::fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(false)
                        .open(&part)?;
                    out.set_len(verified)?;
                    out.seek(std::io::SeekFrom::Start(verified))?;
                    Ok(out)
                })
                .await?
            };
            let mut chunk = Vec::with_capacity(CHUNK_SIZE as usize);
            let mut idx = (verified / CHUNK_SIZE) as usize;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match recv.read(&mut buf).await {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    // A dropped connection: keep what was verified, resume later.
                    Err(e) => {
                        blocking(move || Ok(out.sync_all()?)).await?;
                        return Err(net(e));
                    }
                };
                let mut data = &buf[..n];
                while !data.is_empty() {
                    let want = chunk_len(file, idx) - chunk.len();
                    let take = want.min(data.len());
                    chunk.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if chunk.len() == chunk_len(file, idx) {
                        let expected = file.chunks.get(idx).cloned();
                        let blob = file.sha256.clone();
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_SIZE as usize));
                        let len = full.len() as u64;
                        out = blocking(move || {
                            let got = hex::encode(Sha256::digest(&full));
                            if Some(&got) != expected.as_ref() {
                                return Err(ModelError::Verify(format!(
                                    "chunk {idx} of {blob} has sha256 {got}, the release says {}",
                                    expected.as_deref().unwrap_or("nothing")
                                )));
                            }
                            out.write_all(&full)?;
                            Ok(out)
                        })
                        .await?;
                        verified += len;
                        transferred += len;
                        idx += 1;
                    }
                }
            }
            blocking(move || Ok(out.sync_all()?)).await?;
            if verified < file.size {
                return Err(net(format!(
                    "stream ended at byte {verified} of {}",
                    file.size
                )));
            }
        }
        // The whole file once more against the release's sha256.
        let (sha, dest) = (file.sha256.clone(), dest.to_owned());
        blocking(move || {
            let whole = sha256_of(&part)?;
            if whole != sha {
                let _ = std::fs::remove_file(&part);
                return Err(ModelError::Verify(format!(
                    "{sha} downloaded with sha256 {whole}"
                )));
            }
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&part, &dest)?;
            Ok(())
        })
        .await?;
        Ok(transferred)
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

fn chunk_len(file: &FileEntry, idx: usize) -> usize {
    let start = idx as u64 * CHUNK_SIZE;
    (file.size - start).min(CHUNK_SIZE) as usize
}

async fn read_header(recv: &mut quinn::RecvStream) -> Result<FetchHeader, ModelError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match recv.read(&mut byte).await.map_err(net)? {
            Some(1) if byte[0] == b'\n' => break,
            Some(1) => line.push(byte[0]),
            Some(_) => {}
            None => return Err(net("the controller closed the stream")),
        }
        if line.len() > 4096 {
            return Err(net("answer line too long"));
        }
    }
    serde_json::from_slice(&line).map_err(net)
}

/// Bytes at the start of `part` that make whole chunks matching the
/// release; the rest (a torn tail after a crash) is cut off.
pub fn verified_prefix(part: &Path, file: &FileEntry) -> Result<u64, ModelError> {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)
    else {
        return Ok(0);
    };
    let len = f.metadata()?.len();
    let mut good = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    for (idx, expected) in file.chunks.iter().enumerate() {
        let n = chunk_len(file, idx);
        if good + n as u64 > len {
            break;
        }
        f.read_exact(&mut buf[..n])?;
        if &hex::encode(Sha256::digest(&buf[..n])) != expected {
            break;
        }
        good += n as u64;
    }
    if good < len {
        f.set_len(good)?;
    }
    Ok(good)
}

pub fn sha256_of(path: &Path) -> Result<String, ModelError> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Where a blob lands while downloading.
pub fn part_path(incoming: &Path, sha256: &str) -> PathBuf {
    incoming.join(format!("{sha256}.part"))
}
