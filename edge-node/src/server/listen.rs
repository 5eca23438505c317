//! Where the kiosk server accepts TCP connections, with the limits a
//! connection flood meets before any HTTP is parsed:
//!
//! - **Request deadline.** A connection must finish its first request's
//!   headers within `server.request_deadline_secs` or it is closed (a socket
//!   that sent half a request line used to stay open for minutes).
//! - **Per-address cap.** At most `server.max_connections_per_address` open
//!   connections from one client address (a branch's guest Wi-Fi shares one
//!   address: keep it generous); more are closed at accept.
//! - **Descriptor headroom.** Beyond `server.max_open_connections` (default:
//!   the process's descriptor limit less a reserve of [`HEADROOM`]) only the
//!   node's own host is accepted, so `/healthz` and `/metrics` answer under a
//!   flood; accept errors (out of descriptors) back off instead of spinning.
//!
//! Policy: refuse at once, never queue.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// Descriptors kept free for the store, model files, the uplink and the
/// node's own health checks.
pub const HEADROOM: usize = 64;

/// The limits, from `server.*`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_deadline: Duration,
    pub per_address: usize,
    pub max_open: usize,
}

impl Limits {
    /// `max_open` 0: the descriptor limit less [`HEADROOM`].
    pub fn new(request_deadline_secs: u32, per_address: usize, max_open: usize) -> Limits {
        let max_open = if max_open == 0 {
            descriptor_limit().saturating_sub(HEADROOM).max(16)
        } else {
            max_open
        };
        Limits {
            request_deadline: Duration::from_secs(request_deadline_secs.max(1) as u64),
            per_address,
            max_open,
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process (1024 if it cannot be read).
fn descriptor_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// Open connections, in total and by client address.
#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Decrements the counts when its connection is dropped.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
    }
}

/// An [`axum::serve::Listener`] applying [`Limits`].
pub struct GuardedListener {
    tcp: TcpListener,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
    metrics: Arc<Metrics>,
}

impl GuardedListener {
    pub fn new(tcp: TcpListener, limits: Limits, metrics: Arc<Metrics>) -> GuardedListener {
        GuardedListener {
            tcp,
            limits,
            counts: Arc::default(),
            metrics,
        }
    }

    /// Take a slot for `peer`, or say why not.
    fn admit(&self, peer: SocketAddr) -> Result<Slot, &'static str> {
        let ip = peer.ip();
        let local = ip.is_loopback();
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.max_open
            && !(local && c.total < self.limits.max_open + HEADROOM / 2)
        {
            return Err("descriptors");
        }
        let mine = c.by_ip.get(&ip).copied().unwrap_or(0);
        if mine >= self.limits.per_address {
            return Err("per_address");
        }
        c.total += 1;
        *c.by_ip.entry(ip).or_default() += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            ip,
        })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = edgedesk_support::net::accept(&self.tcp, "kiosk").await;
            match self.admit(peer) {
                Ok(slot) => {
                    let deadline = Box::pin(tokio::time::sleep(self.limits.request_deadline));
                    return (
                        Guarded {
                            stream,
                            _slot: slot,
                            headers: HeaderEnd::default(),
                            deadline: Some(deadline),
                        },
                        peer,
                    );
                }
                Err(reason) => {
                    self.metrics.reject(reason);
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Finds the end of the first request's headers (`\r\n\r\n`) in what is read.
#[derive(Debug, Default)]
struct HeaderEnd {
    matched: usize,
}

impl HeaderEnd {
    /// Feed bytes; true once the end was seen.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                return true;
            }
        }
        false
    }
}

/// A TCP connection that must send its first request's headers in time.
pub struct Guarded {
    stream: TcpStream,
    _slot: Slot,
    headers: HeaderEnd,
    /// Until the first request's headers are in.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Guarded {
    pub fn set_nodelay(&self, on: bool) -> std::io::Result<()> {
        self.stream.set_nodelay(on)
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() && this.headers.feed(&buf.filled()[before..]) {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request headers not sent in time",
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_per_address_and_in_all_with_room_for_this_host() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limits = Limits::new(10, 3, 4);
        let l = GuardedListener::new(tcp, limits, Arc::new(Metrics::new()));
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut held = Vec::new();
        for port in 1..=3 {
            held.push(l.admit(peer(&format!("10.0.0.1:{port}"))).unwrap());
        }
        assert_eq!(l.admit(peer("10.0.0.1:4")).err(), Some("per_address"));
        held.push(l.admit(peer("10.0.0.2:1")).unwrap());
        // Four open: others are refused, this host still gets in.
        assert_eq!(l.admit(peer("10.0.0.3:1")).err(), Some("descriptors"));
        let health = l.admit(peer("127.0.0.1:9")).unwrap();
        drop(health);
        // A closed connection frees its slot.
        held.remove(0);
        assert!(l.admit(peer("10.0.0.1:5")).is_ok());
    }

    #[test]
    fn the_end_of_the_headers_is_found_across_reads() {
        let mut h = HeaderEnd::default();
        assert!(!h.feed(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!h.feed(b"\n"));
        assert!(h.feed(b"\r\nbody"));
        let mut h = HeaderEnd::default();
        assert!(!h.feed(b"GET / HTTP/1.1\r\n\r"), "half the end");
        assert!(h.feed(b"\n"));
        let mut h = HeaderEnd::default();
        assert!(!h.feed(b"\r\r\n\r"));
        assert!(h.feed(b"\n"), "a stray CR restarts the match");
    }
}
