//! Agents' accounts and console sessions as stored. Passwords arrive here
//! already hashed (Argon2id PHC strings, see `crate::accounts`); session
//! tokens are stored as their sha256 only.

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, sha256_hex};
use edgedesk_support::secret::random_hex;

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

pub fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

const COLUMNS: &str = "id, username, display_name, role, languages, capacity, disabled, created_at";

fn from_row(r: &Row) -> Result<AgentRow, SqlError> {
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

/// Insert an account whose password is already hashed (`password_hash`, a PHC
/// string); the fields are validated again.
fn create(
    conn: &Conn,
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

pub(super) fn get(conn: &Conn, id: &str) -> Result<Option<AgentRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM agents WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

fn list(conn: &Conn) -> Result<Vec<AgentRow>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM agents ORDER BY username"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Disable an agent and end all their sessions.
fn disable(conn: &Conn, id: &str) -> Result<Result<(), AccountError>, StoreError> {
    let n = conn.execute("UPDATE agents SET disabled = 1 WHERE id = ?1", [id])?;
    if n == 0 {
        return Ok(Err(AccountError::NotFound));
    }
    conn.execute("DELETE FROM agent_sessions WHERE agent_id = ?1", [id])?;
    Ok(Ok(()))
}

/// A new session: (cookie token, CSRF token).
fn open_session(conn: &Conn, agent_id: &str, now: i64) -> Result<(String, String), StoreError> {
    let (token, csrf) = (random_hex(32), random_hex(16));
    conn.execute(
        "INSERT INTO agent_sessions (token_hash, agent_id, csrf, created_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![sha256_hex(&token), agent_id, csrf, now],
    )?;
    Ok((token, csrf))
}

/// How long a console session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Ends after this long without activity (`touch`).
    pub idle_ms: i64,
    /// Ends this long after login, however active.
    pub max_ms: i64,
}

/// The agent and CSRF token of a live session; `touch` counts this use as
/// activity (reads and polling do not). Expired or disabled sessions are
/// deleted and give `None`.
fn session(
    conn: &Conn,
    token: &str,
    now: i64,
    limits: SessionLimits,
    touch: bool,
) -> Result<Option<(AgentRow, String)>, StoreError> {
    let hash = sha256_hex(token);
    let row: Option<(String, String, i64, i64)> = conn
        .query_row(
            "SELECT agent_id, csrf, last_seen, created_at FROM agent_sessions WHERE token_hash = ?1",
            [&hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((agent_id, csrf, last_seen, created_at)) = row else {
        return Ok(None);
    };
    let agent = get(conn, &agent_id)?.filter(|a| !a.disabled);
    if now - last_seen > limits.idle_ms || now - created_at > limits.max_ms || agent.is_none() {
        conn.execute("DELETE FROM agent_sessions WHERE token_hash = ?1", [&hash])?;
        return Ok(None);
    }
    if touch {
        conn.execute(
            "UPDATE agent_sessions SET last_seen = ?2 WHERE token_hash = ?1",
            params![hash, now],
        )?;
    }
    Ok(agent.map(|a| (a, csrf)))
}

fn set_role(conn: &Conn, id: &str, role: Role) -> Result<Result<(), AccountError>, StoreError> {
    let n = conn.execute(
        "UPDATE agents SET role = ?2 WHERE id = ?1",
        params![id, role.as_str()],
    )?;
    Ok(if n == 0 {
        Err(AccountError::NotFound)
    } else {
        Ok(())
    })
}

fn close_session(conn: &Conn, token: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM agent_sessions WHERE token_hash = ?1",
        [sha256_hex(token)],
    )?;
    Ok(())
}

impl Store {
    /// Insert an account whose password is already hashed; the fields are
    /// validated again.
    pub async fn agent_create(
        &self,
        a: NewAgent,
        password_hash: String,
        now: i64,
    ) -> Result<Result<AgentRow, AccountError>, StoreError> {
        self.db
            .call(move |c| create(c, &a, &password_hash, now))
            .await
    }

    pub async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| get(c, &id)).await
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.db.call(|c| list(c)).await
    }

    /// Disable an agent and end all their sessions.
    pub async fn agent_disable(&self, id: &str) -> Result<Result<(), AccountError>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| disable(c, &id)).await
    }

    /// (id, password hash) of the account called `username`.
    pub async fn agent_login(
        &self,
        username: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let u = username.to_owned();
        self.db
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT id, password_hash FROM agents WHERE username = ?1",
                        [u],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?)
            })
            .await
    }

    /// A new console session: (cookie token, CSRF token).
    pub async fn session_open(
        &self,
        agent: &str,
        now: i64,
    ) -> Result<(String, String), StoreError> {
        let agent = agent.to_owned();
        self.db.call(move |c| open_session(c, &agent, now)).await
    }

    /// The agent and CSRF token of a live session; `touch` counts the use as
    /// activity. Expired or disabled sessions are deleted and give `None`.
    pub async fn session(
        &self,
        token: &str,
        now: i64,
        limits: SessionLimits,
        touch: bool,
    ) -> Result<Option<(AgentRow, String)>, StoreError> {
        let token = token.to_owned();
        self.db
            .call(move |c| session(c, &token, now, limits, touch))
            .await
    }

    /// Change an agent's role (their open consoles reconnect with it).
    pub async fn agent_set_role(
        &self,
        id: &str,
        role: Role,
    ) -> Result<Result<(), AccountError>, StoreError> {
        let id = id.to_owned();
        self.db.call(move |c| set_role(c, &id, role)).await
    }

    pub async fn session_close(&self, token: &str) -> Result<(), StoreError> {
        let token = token.to_owned();
        self.db.call(move |c| close_session(c, &token)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn account_rules() {
        let c = super::super::test_conn();
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
        let c = super::super::test_conn();
        let a = create(&c, &new_agent("ada", Role::Supervisor), PHC, 0)
            .unwrap()
            .unwrap();
        let limits = SessionLimits {
            idle_ms: 10_000,
            max_ms: 100_000,
        };
        let (token, csrf) = open_session(&c, &a.id, 1_000).unwrap();
        let (got, got_csrf) = session(&c, &token, 2_000, limits, true).unwrap().unwrap();
        assert_eq!((got.role, got_csrf), (Role::Supervisor, csrf));
        assert!(
            session(&c, "forged", 2_000, limits, true)
                .unwrap()
                .is_none()
        );
        // Polling does not count as activity: last use stays at 2,000.
        assert!(
            session(&c, &token, 11_000, limits, false)
                .unwrap()
                .is_some()
        );
        assert!(
            session(&c, &token, 12_001, limits, false)
                .unwrap()
                .is_none()
        );
        assert!(
            session(&c, &token, 12_002, limits, true).unwrap().is_none(),
            "an expired session is gone"
        );
        // Activity keeps a session, but not past its absolute lifetime.
        let (token, _) = open_session(&c, &a.id, 0).unwrap();
        for now in (5_000..100_000).step_by(5_000) {
            assert!(
                session(&c, &token, now, limits, true).unwrap().is_some(),
                "{now}"
            );
        }
        assert!(
            session(&c, &token, 100_001, limits, true)
                .unwrap()
                .is_none()
        );
        let (token, _) = open_session(&c, &a.id, 20_000).unwrap();
        disable(&c, &a.id).unwrap().unwrap();
        assert!(session(&c, &token, 20_001, limits, true).unwrap().is_none());
        assert_eq!(
            set_role(&c, "nobody", Role::Agent).unwrap(),
            Err(AccountError::NotFound)
        );
        set_role(&c, &a.id, Role::Agent).unwrap().unwrap();
        assert_eq!(get(&c, &a.id).unwrap().unwrap().role, Role::Agent);
    }
}
