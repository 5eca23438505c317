//! Human agents' accounts and console sessions (issue 4 groundwork).
//!
//! Passwords are hashed with Argon2id (RustCrypto `argon2`, default
//! parameters). A login creates a session: a random token (only its sha256 is
//! stored) sent as an HttpOnly, SameSite=Strict cookie, plus a CSRF token the
//! console echoes in a header on every state-changing request. Sessions end
//! on logout, after `idle_timeout` without use, or when the agent is disabled.
//! Failed logins are rate-limited per username and per client address.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use edgedesk_support::secret::random_hex as random_token;
use crate::store::{Db, StoreError, sha256_hex};

/// Roles, in increasing power: supervisors see every chat, admins also manage agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Supervisor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "agent" => Role::Agent,
            "supervisor" => Role::Supervisor,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub languages: Vec<String>,
    pub capacity: u32,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("username must be 1-32 of a-z 0-9 . _ -")]
    BadUsername,
    #[error("password must be at least 10 characters")]
    WeakPassword,
    #[error("username {0} is taken")]
    Taken(String),
    #[error("capacity must be between 1 and 50")]
    BadCapacity,
    #[error("no such agent")]
    NotFound,
}

/// Create the agents tables (idempotent; called at start-up).
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS agents (
            id            TEXT PRIMARY KEY,
            username      TEXT NOT NULL UNIQUE,
            display_name  TEXT NOT NULL,
            role          TEXT NOT NULL,
            password_hash TEXT NOT NULL,   -- Argon2id PHC string
            languages     TEXT NOT NULL,   -- JSON array
            capacity      INTEGER NOT NULL,
            disabled      INTEGER NOT NULL DEFAULT 0,
            created_at    INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS agent_sessions (
            token_hash TEXT PRIMARY KEY,   -- sha256 of the cookie value
            agent_id   TEXT NOT NULL,
            csrf       TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_seen  INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS agent_sessions_agent ON agent_sessions(agent_id);",
    )?;
    Ok(())
}

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

fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

const COLUMNS: &str = "id, username, display_name, role, languages, capacity, disabled, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    let role: String = r.get(3)?;
    let langs: String = r.get(4)?;
    Ok(AgentRow {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
        role: Role::parse(&role).unwrap_or(Role::Agent),
        languages: serde_json::from_str(&langs).unwrap_or_default(),
        capacity: r.get(5)?,
        disabled: r.get(6)?,
        created_at: r.get(7)?,
    })
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NewAgent {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub password: String,
    pub languages: Vec<String>,
    pub capacity: u32,
}

/// Check a new account's fields (before spending a password hash on it).
pub fn validate(a: &NewAgent) -> Result<(), AccountError> {
    if !valid_username(&a.username) {
        return Err(AccountError::BadUsername);
    }
    if a.password.chars().count() < 10 {
        return Err(AccountError::WeakPassword);
    }
    if !(1..=50).contains(&a.capacity) {
        return Err(AccountError::BadCapacity);
    }
    Ok(())
}

/// Create an account: validate, hash the password off the store's lock,
/// insert.
pub async fn create_account(
    db: &Db,
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
    db.call(move |c| create(c, &a, &hash, now)).await
}

/// Insert an account whose password is already hashed (`password_hash`, a PHC
/// string); the fields are validated again.
pub fn create(
    conn: &Connection,
    a: &NewAgent,
    password_hash: &str,
    now: i64,
) -> Result<Result<AgentRow, AccountError>, StoreError> {
    if let Err(e) = validate(a) {
        return Ok(Err(e));
    }
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM agents WHERE username = ?1)",
        [&a.username],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(Err(AccountError::Taken(a.username.clone())));
    }
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute(
        "INSERT INTO agents (id, username, display_name, role, password_hash, languages, capacity, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            a.username,
            a.display_name,
            a.role.as_str(),
            password_hash,
            serde_json::to_string(&a.languages).unwrap_or_else(|_| "[]".into()),
            a.capacity,
            now
        ],
    )?;
    Ok(Ok(get(conn, &id)?.expect("just inserted")))
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<AgentRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM agents WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<AgentRow>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM agents ORDER BY username"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Disable an agent and end all their sessions.
pub fn disable(conn: &Connection, id: &str) -> Result<Result<(), AccountError>, StoreError> {
    let n = conn.execute("UPDATE agents SET disabled = 1 WHERE id = ?1", [id])?;
    if n == 0 {
        return Ok(Err(AccountError::NotFound));
    }
    conn.execute("DELETE FROM agent_sessions WHERE agent_id = ?1", [id])?;
    Ok(Ok(()))
}

/// Check a username and password; `None` for any failure (unknown user, wrong
/// password, disabled), in about the same time. The hash is checked on the
/// hashing threads, not under the store's lock.
pub async fn authenticate(
    db: &Db,
    username: &str,
    password: &str,
) -> Result<Option<AgentRow>, StoreError> {
    let u = username.to_owned();
    let row: Option<(String, String)> = db
        .call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id, password_hash FROM agents WHERE username = ?1",
                    [u],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
        })
        .await?;
    let known = row.is_some();
    let (id, phc) = row.unwrap_or_else(|| (String::new(), dummy_hash().to_owned()));
    let p = password.to_owned();
    let ok = hashing().run(move || verify_password(&p, &phc)).await;
    if !(ok && known) {
        return Ok(None);
    }
    Ok(db
        .call(move |conn| get(conn, &id))
        .await?
        .filter(|a| !a.disabled))
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

/// A new session: (cookie token, CSRF token).
pub fn open_session(
    conn: &Connection,
    agent_id: &str,
    now: i64,
) -> Result<(String, String), StoreError> {
    let (token, csrf) = (random_token(32), random_token(16));
    conn.execute(
        "INSERT INTO agent_sessions (token_hash, agent_id, csrf, created_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![sha256_hex(&token), agent_id, csrf, now],
    )?;
    Ok((token, csrf))
}

/// The agent and CSRF token of a live session, touching it; expired or
/// disabled sessions are deleted and give `None`.
pub fn session(
    conn: &Connection,
    token: &str,
    now: i64,
    idle_ms: i64,
) -> Result<Option<(AgentRow, String)>, StoreError> {
    let hash = sha256_hex(token);
    let row: Option<(String, String, i64)> = conn
        .query_row(
            "SELECT agent_id, csrf, last_seen FROM agent_sessions WHERE token_hash = ?1",
            [&hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((agent_id, csrf, last_seen)) = row else {
        return Ok(None);
    };
    let agent = get(conn, &agent_id)?.filter(|a| !a.disabled);
    if now - last_seen > idle_ms || agent.is_none() {
        conn.execute("DELETE FROM agent_sessions WHERE token_hash = ?1", [&hash])?;
        return Ok(None);
    }
    conn.execute(
        "UPDATE agent_sessions SET last_seen = ?2 WHERE token_hash = ?1",
        params![hash, now],
    )?;
    Ok(agent.map(|a| (a, csrf)))
}

pub fn close_session(conn: &Connection, token: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM agent_sessions WHERE token_hash = ?1",
        [sha256_hex(token)],
    )?;
    Ok(())
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

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        c
    }

    /// Stands in for a hash where the test is not about passwords.
    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";

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
        let db = Db::open(&dir.path().join("cc.db")).unwrap();
        db.call(|c| migrate(c)).await.unwrap();
        let a = create_account(&db, new_agent("ada", Role::Agent), 0)
            .await
            .unwrap()
            .unwrap();
        let phc: String = db
            .call(|c| Ok(c.query_row("SELECT password_hash FROM agents", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        let login = |u: &'static str, p: &'static str| {
            let db = db.clone();
            async move { authenticate(&db, u, p).await.unwrap() }
        };
        assert_eq!(
            login("ada", "correct horse battery").await.unwrap().id,
            a.id
        );
        assert!(login("ada", "wrong password!").await.is_none());
        assert!(login("nobody", "correct horse battery").await.is_none());
        let id = a.id.clone();
        db.call(move |c| disable(c, &id)).await.unwrap().unwrap();
        assert!(
            login("ada", "correct horse battery").await.is_none(),
            "disabled agents cannot log in"
        );
        let mut weak = new_agent("bob", Role::Agent);
        weak.password = "short".into();
        assert_eq!(
            create_account(&db, weak, 0).await.unwrap(),
            Err(AccountError::WeakPassword)
        );
    }

    #[test]
    fn account_rules() {
        let c = conn();
        assert_eq!(
            create(&c, &new_agent("Ada Lovelace", Role::Agent), PHC, 0).unwrap(),
            Err(AccountError::BadUsername)
        );
        let mut weak = new_agent("bob", Role::Agent);
        weak.password = "short".into();
        assert_eq!(
            create(&c, &weak, PHC, 0).unwrap(),
            Err(AccountError::WeakPassword)
        );
        let mut cap = new_agent("bob", Role::Agent);
        cap.capacity = 0;
        assert_eq!(
            create(&c, &cap, PHC, 0).unwrap(),
            Err(AccountError::BadCapacity)
        );
        create(&c, &new_agent("bob", Role::Agent), PHC, 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            create(&c, &new_agent("bob", Role::Admin), PHC, 0).unwrap(),
            Err(AccountError::Taken("bob".into()))
        );
    }

    #[test]
    fn sessions_idle_out_and_end_when_disabled() {
        let c = conn();
        let a = create(&c, &new_agent("ada", Role::Supervisor), PHC, 0)
            .unwrap()
            .unwrap();
        let (token, csrf) = open_session(&c, &a.id, 1_000).unwrap();
        let (got, got_csrf) = session(&c, &token, 2_000, 10_000).unwrap().unwrap();
        assert_eq!((got.role, got_csrf), (Role::Supervisor, csrf));
        assert!(session(&c, "forged", 2_000, 10_000).unwrap().is_none());
        // Idle longer than the timeout (last use at 2,000).
        assert!(session(&c, &token, 12_001, 10_000).unwrap().is_none());
        assert!(
            session(&c, &token, 12_002, 1_000_000).unwrap().is_none(),
            "an expired session is gone"
        );
        let (token, _) = open_session(&c, &a.id, 20_000).unwrap();
        disable(&c, &a.id).unwrap().unwrap();
        assert!(session(&c, &token, 20_001, 10_000).unwrap().is_none());
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
