//! A TCP fault proxy for link-cut tests: forwards 127.0.0.1:<port> to an
//! upstream address until `cut()`, which drops every connection and refuses
//! new ones until `restore()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct FaultProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    cuts: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (u, c, s) = (up.clone(), cuts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                if !u.load(Ordering::SeqCst) {
                    drop(client); // refused while cut
                    continue;
                }
                let cut = c.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                    }
                });
            }
        });
        FaultProxy {
            port,
            up,
            cuts,
            stop,
        }
    }

    /// Drop every connection and refuse new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut c = self.cuts.lock().unwrap();
        c.cancel();
        *c = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

/// A UDP forwarder for QUIC link-cut tests: 127.0.0.1:<port> ⇄ `upstream`,
/// one upstream socket per client address. Once `cut_after` bytes have come
/// back from upstream it drops every datagram both ways for `cut_for`, then
/// forwards again (a branch link that dies mid-download and comes back).
pub struct UdpCutProxy {
    pub port: u16,
    stop: CancellationToken,
}

impl UdpCutProxy {
    pub async fn start(
        upstream: std::net::SocketAddr,
        cut_after: u64,
        cut_for: std::time::Duration,
    ) -> UdpCutProxy {
        use std::collections::HashMap;
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let port = front.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let s = stop.clone();
        // None: not cut yet; Some(t): cut until t (then never again).
        let state = Arc::new(std::sync::Mutex::new((0u64, None::<tokio::time::Instant>)));
        tokio::spawn(async move {
            let mut backs: HashMap<std::net::SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let dropping = |st: &std::sync::Mutex<(u64, Option<tokio::time::Instant>)>| {
                let g = st.lock().unwrap();
                matches!(g.1, Some(until) if tokio::time::Instant::now() < until)
            };
            loop {
                let (n, client) = tokio::select! {
                    _ = s.cancelled() => break,
                    r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                if dropping(&state) {
                    continue;
                }
                let back = match backs.get(&client) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        b.connect(upstream).await.unwrap();
                        let (front, b2, st, s2) =
                            (front.clone(), b.clone(), state.clone(), s.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            loop {
                                let n = tokio::select! {
                                    _ = s2.cancelled() => break,
                                    r = b2.recv(&mut buf) => match r { Ok(n) => n, Err(_) => continue },
                                };
                                {
                                    let mut g = st.lock().unwrap();
                                    if let Some(until) = g.1 {
                                        if tokio::time::Instant::now() < until {
                                            continue;
                                        }
                                    } else {
                                        g.0 += n as u64;
                                        if g.0 >= cut_after {
                                            g.1 = Some(tokio::time::Instant::now() + cut_for);
                                            continue;
                                        }
                                    }
                                }
                                let _ = front.send_to(&buf[..n], client).await;
                            }
                        });
                        backs.insert(client, b.clone());
                        b
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        UdpCutProxy { port, stop }
    }
}

impl Drop for UdpCutProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
