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

/// Check a username and password; `None` for any failure (unknown user, wrong
/// password, disabled), in about the same time. The hash is checked on the
/// hashing threads, not under the store's lock.
pub async fn authenticate(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<AgentRow>, StoreError> {
    let row = store.agent_login(username).await?;
    let known = row.is_some();
    let (id, phc) = row.unwrap_or_else(|| (String::new(), dummy_hash().to_owned()));
    let p = password.to_owned();
    let ok = hashing().run(move || verify_password(&p, &phc)).await;
    if !(ok && known) {
        return Ok(None);
    }
    Ok(store.agent(&id).await?.filter(|a| !a.disabled))
}

/// Password hashing runs on a fixed set of threads. Argon2id needs 19 MiB
/// per hash; on glibc, memory freed by a thread stays in that thread's
/// arena, so hashing on whichever blocking thread is free let a burst of 50
/// logins grow the controller to ~1 GiB. Two threads bound it to two hashes'
/// worth and keep hashing off the store's lock.
pub struct HashingThreads {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

const HASHING_THREADS: usize = 2;

impl HashingThreads {
    fn start(threads: usize) -> HashingThreads {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .expect("spawn a password hashing thread");
        }
        HashingThreads { jobs: tx }
    }

    /// Run `f` on a hashing thread and wait for its result.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(f());
        });
        if self.jobs.send(job).is_err() {
            unreachable!("hashing threads live as long as the process");
        }
        rx.await.expect("a hashing job always answers")
    }
}

/// The process's hashing threads (started on first use).
pub fn hashing() -> &'static HashingThreads {
    static POOL: std::sync::OnceLock<HashingThreads> = std::sync::OnceLock::new();
    POOL.get_or_init(|| HashingThreads::start(HASHING_THREADS))
}

/// Failed-login limiter: at most `max_failures` per key within `window_ms`.
/// Keys are the username and the client address, checked separately.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<i64>>>,
    max_failures: usize,
    window_ms: i64,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window_ms: i64) -> LoginLimiter {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
            max_failures,
            window_ms,
        }
    }

    /// Milliseconds until `keys` may try again, if any is blocked.
    pub fn blocked(&self, keys: &[&str], now: i64) -> Option<i64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for key in keys {
            if let Some(times) = map.get_mut(*key) {
                times.retain(|t| now - t < self.window_ms);
                if times.len() >= self.max_failures {
                    let until = times[0] + self.window_ms - now;
                    wait = Some(wait.map_or(until, |w: i64| w.max(until)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, keys: &[&str], now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bounded: forget everything old rather than grow without limit.
            map.retain(|_, v| v.last().is_some_and(|t| now - t < self.window_ms));
        }
        for key in keys {
            map.entry((*key).to_owned()).or_default().push(now);
        }
    }

    pub fn succeeded(&self, username: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(username);
    }
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
        let store = Store::open(&dir.path().join("cc.db")).unwrap();
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
    fn limiter_blocks_after_repeated_failures() {
        let l = LoginLimiter::new(3, 60_000);
        for t in 0..3 {
            assert!(l.blocked(&["ada", "10.0.0.1"], t).is_none());
            l.failed(&["ada", "10.0.0.1"], t);
        }
        assert_eq!(l.blocked(&["ada"], 10), Some(59_990));
        assert!(
            l.blocked(&["eve", "10.0.0.1"], 10).is_some(),
            "the address is blocked too"
        );
        assert!(l.blocked(&["eve", "10.0.0.2"], 10).is_none());
        assert!(l.blocked(&["ada"], 60_001).is_none(), "the window passes");
    }
}
