//! Human agents' accounts: password hashing, login checks and the
//! failed-login limiter (what is stored lives in `store::agents`).
//!
//! Passwords are hashed with Argon2id (RustCrypto `argon2`, default
//! parameters). A login creates a session: a random token (only its sha256 is
//! stored) sent as an HttpOnly, SameSite=Strict cookie, plus a CSRF token the
//! console echoes in a header on every state-changing request. Sessions end
//! on logout, after `idle_timeout` without use, or when the agent is disabled.
//! Failed logins are rate-limited per username and per client address.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::agents::validate;
use crate::store::{AccountError, AgentRow, NewAgent, Store, StoreError};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("OS random source");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .expect("Argon2id with default parameters")
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the username is unknown, so that the time a
/// login takes does not reveal whether the account exists.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not-a-real-password"))
}

/// Create an account: validate, hash the password off the store's lock,
/// insert.
pub async fn create_account(
    store: &Store,
    a: NewAgent,
    now: i64,
) -> Result<Result<AgentRow, AccountError>, StoreError> {
    if let Err(e) = validate(&a) {
        return Ok(Err(e));
    }
    let hash = hashing().run({
        let p = a.password.clone();
        move || hash_password(&p)
    });
    let hash = hash.await;
    store.agent_create(a, hash, now).await
}

/// Why a login could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many logins are being checked right now.
    #[error("too many logins at once; try again in a moment")]
    Busy,
}

/// Check a username and password; `None` for any failure (unknown user, wrong
/// password, disabled), in about the same time. The hash is checked on the
/// hashing threads, not under the store's lock; a full queue is `Busy`.
pub async fn authenticate(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<AgentRow>, AuthError> {
    let row = store.agent_login(username).await?;
    let known = row.is_some();
    let (id, phc) = row.unwrap_or_else(|| (String::new(), dummy_hash().to_owned()));
    let p = password.to_owned();
    let ok = hashing()
        .try_run(move || verify_password(&p, &phc))
        .await
        .map_err(|Busy| AuthError::Busy)?;
    if !(ok && known) {
        return Ok(None);
    }
    Ok(store.agent(&id).await?.filter(|a| !a.disabled))
}

/// Password hashing runs on a fixed set of threads. Argon2id needs 19 MiB
/// per hash; on glibc, memory freed by a thread stays in that thread's
/// arena, so hashing on whichever blocking thread is free let a burst of 50
/// logins grow the controller to ~1 GiB. Two threads bound it to two hashes'
/// worth and keep hashing off the store's lock. The queue in front of them is
/// bounded ([`HASH_QUEUE`]): a login that finds it full is refused at once
/// ([`Busy`], 503 with Retry-After) instead of waiting behind a flood.
pub struct HashingThreads {
    jobs: tokio::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

const HASHING_THREADS: usize = 2;
/// Hashes waiting for a thread, at most (about half a second of work).
pub const HASH_QUEUE: usize = 8;

/// The hashing queue is full; try again in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl HashingThreads {
    fn start(threads: usize) -> HashingThreads {
        let (tx, rx) = tokio::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>(HASH_QUEUE);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                        match job {
                            Some(job) => job(),
                            None => break,
                        }
                    }
                })
                .expect("spawn a password hashing thread");
        }
        HashingThreads { jobs: tx }
    }

    /// Run `f` on a hashing thread and wait for its result, waiting for room
    /// in the queue (operators creating accounts).
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(f());
        });
        if self.jobs.send(job).await.is_err() {
            unreachable!("hashing threads live as long as the process");
        }
        rx.await.expect("a hashing job always answers")
    }

    /// Run `f` on a hashing thread unless the queue is full (logins).
    pub async fn try_run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.try_send(job).map_err(|_| Busy)?;
        Ok(rx.await.expect("a hashing job always answers"))
    }
}

/// The process's hashing threads (started on first use).
pub fn hashing() -> &'static HashingThreads {
    static POOL: std::sync::OnceLock<HashingThreads> = std::sync::OnceLock::new();
    POOL.get_or_init(|| HashingThreads::start(HASHING_THREADS))
}

/// Failed-login limiter: at most `per_user` failures per username and
/// `per_address` per client address within `window_ms`, counted separately,
/// so a locked account does not lock out its colleagues and one address
/// guessing many names is stopped too. An attempt is reserved (counted as a
/// failure) before its password is hashed, so a concurrent burst cannot slip
/// past the check; a success takes the reservation back.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<i64>>>,
    per_user: usize,
    per_address: usize,
    window_ms: i64,
}

/// A reserved login attempt; hand it back with [`LoginLimiter::succeeded`].
#[derive(Debug)]
pub struct Attempt {
    user: Option<String>,
    address: String,
    at: i64,
}

/// Keys the limiter keeps at most; beyond it, entries outside the window go.
const LIMITER_KEYS: usize = 100_000;

impl LoginLimiter {
    pub fn new(per_user: usize, per_address: usize, window_ms: i64) -> LoginLimiter {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
            per_user,
            per_address,
            window_ms,
        }
    }

    /// Reserve an attempt for `user` (`None` when the name cannot be an
    /// account) from `address`; `Err(ms)` to wait when either is over its limit.
    pub fn reserve(&self, user: Option<&str>, address: &str, now: i64) -> Result<Attempt, i64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > LIMITER_KEYS {
            map.retain(|_, v| v.last().is_some_and(|t| now - t < self.window_ms));
        }
        let user_key = user.map(|u| format!("user:{u}"));
        let address_key = format!("addr:{address}");
        let mut wait: Option<i64> = None;
        for (key, limit) in [
            (user_key.as_deref(), self.per_user),
            (Some(address_key.as_str()), self.per_address),
        ] {
            let Some(key) = key else { continue };
            if let Some(times) = map.get_mut(key) {
                times.retain(|t| now - t < self.window_ms);
                if times.len() >= limit {
                    let until = times[0] + self.window_ms - now;
                    wait = Some(wait.map_or(until, |w| w.max(until)));
                }
            }
        }
        if let Some(w) = wait {
            return Err(w.max(1));
        }
        for key in user_key.iter().chain([&address_key]) {
            map.entry(key.clone()).or_default().push(now);
        }
        Ok(Attempt {
            user: user_key,
            address: address_key,
            at: now,
        })
    }

    /// The attempt was never checked (the hashing queue was full): take
    /// its reservation back from both keys.
    pub fn release(&self, attempt: Attempt) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in attempt.user.iter().chain([&attempt.address]) {
            if let Some(times) = map.get_mut(key) {
                if let Some(i) = times.iter().rposition(|t| *t == attempt.at) {
                    times.remove(i);
                }
            }
        }
    }

    /// The attempt succeeded: the user's failures are forgotten and the
    /// address's reservation taken back.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = &attempt.user {
            map.remove(user);
        }
        if let Some(times) = map.get_mut(&attempt.address) {
            if let Some(i) = times.iter().rposition(|t| *t == attempt.at) {
                times.remove(i);
            }
        }
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not itself a trusted
/// proxy (the header's left part is the client's to write, so only the part
/// appended by trusted proxies is believed).
pub fn client_address(
    peer: std::net::IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    if let Some(list) = forwarded_for {
        for hop in list.rsplit(',') {
            match hop.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if trusted.contains(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn new_agent(username: &str, role: Role) -> NewAgent {
        NewAgent {
            username: username.into(),
            display_name: "Ada".into(),
            role,
            password: "correct horse battery".into(),
            languages: vec!["en".into(), "zh".into()],
            capacity: 3,
        }
    }

    #[tokio::test]
    async fn passwords_are_argon2id_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::test_store(&dir.path().join("cc.db"));
        let a = create_account(&store, new_agent("ada", Role::Agent), 0)
            .await
            .unwrap()
            .unwrap();
        let phc = store.agent_login("ada").await.unwrap().unwrap().1;
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        let login = |u: &'static str, p: &'static str| {
            let store = store.clone();
            async move { authenticate(&store, u, p).await.unwrap() }
        };
        assert_eq!(
            login("ada", "correct horse battery").await.unwrap().id,
            a.id
        );
        assert!(login("ada", "wrong password!").await.is_none());
        assert!(login("nobody", "correct horse battery").await.is_none());
        store.agent_disable(&a.id).await.unwrap().unwrap();
        assert!(
            login("ada", "correct horse battery").await.is_none(),
            "disabled agents cannot log in"
        );
        let mut weak = new_agent("bob", Role::Agent);
        weak.password = "short".into();
        assert_eq!(
            create_account(&store, weak, 0).await.unwrap(),
            Err(AccountError::WeakPassword)
        );
    }

    #[test]
    fn limiter_reserves_before_hashing_and_keys_users_and_addresses_apart() {
        let l = LoginLimiter::new(3, 5, 60_000);
        // A concurrent burst: reservations count before any hash finishes.
        let burst: Vec<_> = (0..3)
            .map(|_| l.reserve(Some("ada"), "10.0.0.1", 0).unwrap())
            .collect();
        assert_eq!(l.reserve(Some("ada"), "10.0.0.9", 1).unwrap_err(), 59_999);
        // A locked account does not lock a colleague at another address…
        assert!(l.reserve(Some("eve"), "10.0.0.2", 1).is_ok());
        // …and the address guessing names is stopped after five in all.
        l.reserve(Some("bob"), "10.0.0.1", 2).unwrap();
        l.reserve(None, "10.0.0.1", 2).unwrap();
        assert!(l.reserve(Some("carol"), "10.0.0.1", 3).is_err());
        assert!(
            l.reserve(Some("ada"), "10.0.0.1", 60_001).is_ok(),
            "the window passes"
        );
        // A success takes its reservation back and clears the user.
        let l = LoginLimiter::new(3, 5, 60_000);
        for a in burst {
            l.succeeded(a);
        }
        let a = l.reserve(Some("ada"), "10.0.0.1", 0).unwrap();
        l.reserve(Some("ada"), "10.0.0.1", 0).unwrap();
        l.succeeded(a);
        for t in 1..3 {
            l.reserve(Some("ada"), "10.0.0.1", t).unwrap();
        }
        assert!(
            l.reserve(Some("ada"), "10.0.0.1", 4).is_ok(),
            "the user was cleared"
        );
    }

    #[tokio::test]
    async fn a_full_hashing_queue_refuses_logins_at_once() {
        let pool = HashingThreads::start(1);
        // Hold the only thread until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = held.recv();
        });
        assert!(pool.jobs.try_send(hold).is_ok());
        while pool.jobs.capacity() < HASH_QUEUE {
            tokio::task::yield_now().await; // the thread has taken it
        }
        for _ in 0..HASH_QUEUE {
            let noop: Box<dyn FnOnce() + Send> = Box::new(|| {});
            assert!(pool.jobs.try_send(noop).is_ok());
        }
        assert_eq!(pool.try_run(|| 1).await, Err(Busy), "refused, not queued");
        release.send(()).unwrap();
        assert_eq!(pool.run(|| 2).await, 2, "operators' hashes wait for room");
    }

    #[test]
    fn client_address_believes_only_trusted_proxies() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        // A direct client cannot claim another address.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Through the proxy: the address the proxy saw.
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        // A forged left part is ignored; two trusted hops are skipped.
        assert_eq!(
            client_address(
                ip("10.0.0.1"),
                Some("1.2.3.4, 198.51.100.7, 10.0.0.2"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.1"), None, &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("not-an-ip"), &trusted),
            ip("10.0.0.1")
        );
    }
}
