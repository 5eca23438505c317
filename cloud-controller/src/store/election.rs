//! Which of several controllers sharing one PostgreSQL database is active:
//! the holder of a session advisory lock (active/standby, docs/REPLICAS.md).
//!
//! The lock lives on a connection of its own, on a thread of its own. A
//! standby tries it every `poll` and reports who holds it (by the holder's
//! `application_name`). The holder checks its connection every second: when
//! the connection fails, PostgreSQL has released the lock (or soon will), so
//! the holder takes it again as soon as the database answers (a database
//! restart under a single controller changes nothing); if another replica
//! took it first, [`Leadership::lost`] fires and the process stops acting. A process that
//! dies loses its connection and with it the lock, so a standby takes over
//! at its next attempt; [`Leadership::release`] unlocks at shutdown. A
//! network partition: the lock connection is "watchful" (keepalives and a
//! TCP user timeout on this side, keepalives on the server's), so the
//! active replica's check fails within about 15 s and stops it, before the
//! server drops the session (about 20 s) and a standby can take the lock.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sql::{Conn, SqlError};

/// Where the active controller serves HTTP: standbys forward requests
/// there (`http::forward`). Kept in `settings` by the active controller
/// once it holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActiveAddress {
    /// The holder's name, as the lock reports it ([`Standby::LedBy`]).
    pub replica: String,
    /// Where other replicas reach it (`http.replica_url`).
    pub url: String,
    /// The name its HTTPS certificate is checked against (the public URL's host).
    pub tls_name: String,
}

const ACTIVE_KEY: &str = "active_http";

impl super::Store {
    /// Record where this, the active, controller serves HTTP.
    pub async fn publish_active(&self, a: &ActiveAddress) -> Result<(), super::StoreError> {
        let value =
            serde_json::to_string(a).map_err(|e| super::StoreError::Corrupt(e.to_string()))?;
        self.db
            .call(move |c| super::seq::set_setting(c, ACTIVE_KEY, &value))
            .await
    }

    /// Where the active controller said it serves HTTP, if it said.
    pub async fn active_address(&self) -> Result<Option<ActiveAddress>, super::StoreError> {
        let v = self.db.call(|c| super::seq::setting(c, ACTIVE_KEY)).await?;
        v.map(|v| serde_json::from_str(&v).map_err(|e| super::StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}

/// The advisory lock key ("EDGELEAD"); advisory locks are per database.
pub const LEADER_LOCK: i64 = 0x4544_4745_4c45_4144;

/// How often the holder checks its lock connection.
const CHECK: Duration = Duration::from_secs(1);

/// This process holds the lock.
pub struct Leadership {
    lost: CancellationToken,
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Leadership {
    /// Cancelled when the lock connection failed: stop acting at once.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Unlock and close the lock connection (waits for its thread).
    pub fn release(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// What a standby sees while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standby {
    /// Another process holds the lock (its name, empty if unknown).
    LedBy(String),
    /// The database cannot be reached.
    NoDatabase(String),
}

/// Wait until this process (`me`) holds the lock, reporting the wait on
/// `waiting`; `None` if `shutdown` came first.
pub async fn acquire(
    url: &str,
    me: &str,
    poll: Duration,
    waiting: tokio::sync::watch::Sender<Standby>,
    shutdown: &CancellationToken,
) -> Option<Leadership> {
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop, stop_rx) = mpsc::channel::<()>();
    let lost = CancellationToken::new();
    let (url, me, lost_in) = (url.to_owned(), me.to_owned(), lost.clone());
    let thread = std::thread::Builder::new()
        .name("controller-leader".into())
        .spawn(move || hold(&url, &me, poll, &waiting, got_tx, &stop_rx, &lost_in))
        .ok()?;
    let mut leadership = Leadership {
        lost,
        stop,
        thread: Some(thread),
    };
    tokio::select! {
        got = got_rx => match got {
            Ok(()) => Some(leadership),
            Err(_) => {
                leadership.stop_thread();
                None
            }
        },
        _ = shutdown.cancelled() => {
            leadership.stop_thread();
            None
        }
    }
}

/// The lock thread: try until held, then hold until told to stop (unlock)
/// or the connection fails (`lost`).
fn hold(
    url: &str,
    me: &str,
    poll: Duration,
    waiting: &tokio::sync::watch::Sender<Standby>,
    got: tokio::sync::oneshot::Sender<()>,
    stop: &mpsc::Receiver<()>,
    lost: &CancellationToken,
) {
    let stopped =
        |wait: Duration| !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout));
    let mut conn: Option<Conn> = None;
    loop {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            conn = match Conn::postgres_watchful(url, me) {
                Ok(c) => Some(c),
                Err(e) => {
                    waiting.send_replace(Standby::NoDatabase(e.to_string()));
                    None
                }
            };
        }
        if let Some(c) = &conn {
            match try_lock(c) {
                Ok(true) => break,
                Ok(false) => {
                    waiting.send_replace(Standby::LedBy(holder(c).unwrap_or_default()));
                }
                Err(e) => {
                    waiting.send_replace(Standby::NoDatabase(e.to_string()));
                }
            }
        }
        if stopped(poll) {
            return;
        }
    }
    tracing::info!(identity = %me, "leader lock acquired: this controller is active");
    if got.send(()).is_err() {
        if let Some(c) = &conn {
            let _ = c.execute("SELECT pg_advisory_unlock(?1)", [LEADER_LOCK]);
        }
        return;
    }
    let mut held = conn;
    loop {
        if stopped(CHECK) {
            if let Some(c) = &held {
                match c.query_row("SELECT pg_advisory_unlock(?1)", [LEADER_LOCK], |r| {
                    r.get::<_, bool>(0)
                }) {
                    Ok(_) => tracing::info!(identity = %me, "leader lock released"),
                    Err(e) => {
                        tracing::warn!(error = %e, "releasing the leader lock failed; it goes with the connection")
                    }
                }
            }
            return;
        }
        let alive = held
            .as_ref()
            .is_some_and(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).is_ok());
        if alive {
            continue;
        }
        // The lock went with its connection (a database restart, a network
        // fault). Take it again as soon as the database answers; if another
        // replica took it first, stop acting.
        if held.take().is_some() {
            tracing::warn!("the leader lock's connection failed; taking the lock again");
        }
        match Conn::postgres_watchful(url, me).and_then(|c| try_lock(&c).map(|got| (c, got))) {
            Ok((c, true)) => {
                tracing::info!(identity = %me, "leader lock taken again: this controller stays active");
                held = Some(c);
            }
            Ok((c, false)) => {
                let other = holder(&c).unwrap_or_default();
                tracing::error!(active = %other, "another controller took the leader lock: this one stops acting");
                lost.cancel();
                return;
            }
            Err(e) => tracing::debug!(error = %e, "the database is still unavailable"),
        }
    }
}

fn try_lock(c: &Conn) -> Result<bool, SqlError> {
    c.query_row("SELECT pg_try_advisory_lock(?1)", [LEADER_LOCK], |r| {
        r.get(0)
    })
}

/// The `application_name` of the session holding the lock in this database.
fn holder(c: &Conn) -> Result<String, SqlError> {
    let (class, obj) = (LEADER_LOCK >> 32, LEADER_LOCK & 0xffff_ffff);
    c.query_row(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = ?1
           AND l.objid::bigint = ?2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [class, obj],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_active_address_is_kept_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::test_store(&dir.path().join("c.db"));
        assert_eq!(store.active_address().await.unwrap(), None);
        let a = ActiveAddress {
            replica: "a-1".into(),
            url: "https://10.0.0.7:8700".into(),
            tls_name: "desk.example".into(),
        };
        store.publish_active(&a).await.unwrap();
        let b = ActiveAddress {
            replica: "b-2".into(),
            ..a.clone()
        };
        store.publish_active(&b).await.unwrap();
        assert_eq!(store.active_address().await.unwrap(), Some(b));
    }
}
