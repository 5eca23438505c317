//! Plumbing the two EdgeDesk binaries share, so each is said once:
//!
//! - [`config`]: layered configuration (documented defaults, file, environment).
//! - [`sqlite`]: opening a database file (0600, WAL) and the versioned migration runner.
//! - [`tls`]: a rustls client that trusts only a pinned CA.
//! - [`secret`]: files only their owner can read, written atomically.
//! - [`net`]: accepting TCP connections with a back-off on errors.
//! - [`logging`], [`telemetry`], [`limits`] and [`signal`]: process set-up
//!   for `main` (log lines, trace export over OTLP, the open-file limit,
//!   shutdown on signals).
//! - [`now_ms`]: the wall clock as both sides stamp things.
//!
//! Nothing here knows about chats, nodes or models.

pub mod config;
pub mod limits;
pub mod logging;
pub mod net;
pub mod secret;
pub mod signal;
pub mod sqlite;
pub mod telemetry;
pub mod tls;

/// Milliseconds since the Unix epoch (what both sides store and send).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
