//! The controller's schema, one versioned list per backend (SQLite
//! `user_version`; PostgreSQL, see [`POSTGRES`]).
//!
//! Steps 1 and 2 are the registry, events and command queue as first
//! shipped. Step 3 adopts the tables that older builds created with
//! `CREATE TABLE IF NOT EXISTS` at start-up (agents, tickets, canned
//! responses, models, rollouts, chats and their full-text index) and adds
//! the `chats.escalated` column where an older build lacked it; on a fresh
//! database it simply creates them. Step 4 adds what the desk needs to
//! survive a restart and show the queue truthfully: whether the visitor is
//! still there, and since when a chat waits. Step 5 strips transcripts that
//! older builds also kept in the event log. Step 6 adds small settings (the
//! reserved top of envelope sequence numbers). Step 7 keeps each branch's
//! hours and facts as operators set them. Step 8 keeps the learning loop's
//! samples. Never edit a step: append one.

use edgedesk_support::sqlite::{DbError, Step, has_column};

use super::{Conn, StoreError};

pub const STEPS: &[Step] = &[
    Step::Sql(
        r#"
    CREATE TABLE tokens (
        hash        TEXT PRIMARY KEY,     -- sha256 of the one-time token
        node_id     TEXT,                 -- optional: only this node may use it
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        used_at     INTEGER,
        used_by     TEXT
    );
    CREATE TABLE nodes (
        id             TEXT PRIMARY KEY,
        sign_key       TEXT NOT NULL,
        seal_key       TEXT NOT NULL,
        mqtt_pass_hash TEXT NOT NULL,
        labels         TEXT NOT NULL DEFAULT '{}',
        enrolled_at    INTEGER NOT NULL,
        revoked_at     INTEGER,
        online         INTEGER NOT NULL DEFAULT 0,
        last_seen      INTEGER,
        heartbeat      TEXT,               -- last common::sync::Heartbeat as JSON
        seq_high       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE node_history (
        id      INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        at      INTEGER NOT NULL,
        kind    TEXT NOT NULL,            -- enrolled, online, offline, revoked, labels, refused
        detail  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX node_history_node ON node_history(node_id, id);
    CREATE TABLE events (
        id          TEXT PRIMARY KEY,     -- event id from the node: stored once
        node_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        at          INTEGER NOT NULL,     -- when it happened (node clock)
        received_at INTEGER NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX events_node_at ON events(node_id, at);
    CREATE INDEX events_kind_at ON events(kind, at);
    CREATE INDEX events_at ON events(at);
    CREATE TABLE commands (
        id         TEXT PRIMARY KEY,
        node_id    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        args       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        sent_at    INTEGER,
        acked_at   INTEGER,
        ok         INTEGER,
        detail     TEXT
    );
    CREATE INDEX commands_pending ON commands(node_id, acked_at, created_at);
"#,
    ),
    Step::Sql(
        r#"
    -- Ordered command streams (per conversation): the last seq given out.
    ALTER TABLE commands ADD COLUMN stream TEXT;
    ALTER TABLE commands ADD COLUMN stream_seq INTEGER;
    CREATE TABLE command_streams (
        node_id TEXT NOT NULL,
        key     TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        PRIMARY KEY (node_id, key)
    );
"#,
    ),
    Step::Code(|tx| {
        tx.execute_batch(
            r#"
    CREATE TABLE IF NOT EXISTS agents (
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
    CREATE INDEX IF NOT EXISTS agent_sessions_agent ON agent_sessions(agent_id);
    CREATE TABLE IF NOT EXISTS tickets (
        id           TEXT PRIMARY KEY,   -- the offline-message event id
        node_id      TEXT NOT NULL,
        conversation TEXT NOT NULL,
        lang         TEXT NOT NULL,
        name         TEXT NOT NULL,
        contact      TEXT NOT NULL,
        message      TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        state        TEXT NOT NULL DEFAULT 'open',   -- open, claimed, resolved
        agent_id     TEXT,
        resolution   TEXT,
        resolved_at  INTEGER
    );
    CREATE INDEX IF NOT EXISTS tickets_state ON tickets(state, created_at);
    CREATE TABLE IF NOT EXISTS canned (
        id       INTEGER PRIMARY KEY,
        lang     TEXT NOT NULL,
        shortcut TEXT NOT NULL,
        text     TEXT NOT NULL,
        UNIQUE (lang, shortcut)
    );
    CREATE TABLE IF NOT EXISTS models (
        id           TEXT PRIMARY KEY,   -- sha256 of the signed release text
        name         TEXT NOT NULL,
        version      TEXT NOT NULL,
        signed       TEXT NOT NULL,      -- SignedRelease as JSON
        bytes        INTEGER NOT NULL,
        published_at INTEGER NOT NULL,
        UNIQUE (name, version)
    );
    CREATE TABLE IF NOT EXISTS rollouts (
        id         TEXT PRIMARY KEY,
        model_id   TEXT NOT NULL,
        version    TEXT NOT NULL,
        selector   TEXT NOT NULL,
        phase      TEXT NOT NULL,
        state      TEXT NOT NULL,     -- crate::rollout::Rollout as JSON
        commands   TEXT NOT NULL,     -- node -> id of the last command sent
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS chats (
        id          TEXT PRIMARY KEY,      -- the node's conversation id
        node_id     TEXT NOT NULL,
        lang        TEXT NOT NULL,
        state       TEXT NOT NULL,         -- waiting, assigned, closed
        agent_id    TEXT,
        intents     TEXT NOT NULL DEFAULT '[]',
        created_at  INTEGER NOT NULL,
        assigned_at INTEGER,
        first_response_at INTEGER,
        closed_at   INTEGER,
        resolution  TEXT,
        rating      INTEGER,
        escalated   INTEGER NOT NULL DEFAULT 1   -- 0: the bot handled it alone
    );
    CREATE INDEX IF NOT EXISTS chats_state ON chats(state, created_at);
    CREATE INDEX IF NOT EXISTS chats_agent ON chats(agent_id, state);
    CREATE TABLE IF NOT EXISTS chat_lines (
        id       INTEGER PRIMARY KEY,
        chat_id  TEXT NOT NULL,
        key      TEXT NOT NULL,            -- dedupe: node line id or agent line uuid
        sender   TEXT NOT NULL,            -- visitor, bot, agent, system
        agent_id TEXT,
        text     TEXT NOT NULL,
        at       INTEGER NOT NULL,
        UNIQUE (chat_id, key)
    );
    CREATE INDEX IF NOT EXISTS chat_lines_chat ON chat_lines(chat_id, id);
    CREATE VIRTUAL TABLE IF NOT EXISTS chat_lines_fts USING fts5(
        text, content='chat_lines', content_rowid='id', tokenize='trigram'
    );
    CREATE TRIGGER IF NOT EXISTS chat_lines_ai AFTER INSERT ON chat_lines BEGIN
        INSERT INTO chat_lines_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER IF NOT EXISTS chat_lines_ad AFTER DELETE ON chat_lines BEGIN
        INSERT INTO chat_lines_fts(chat_lines_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
"#,
        )?;
        // A chats table from a build before bot-only transcripts lacks it.
        if !has_column(tx, "chats", "escalated")? {
            tx.execute_batch("ALTER TABLE chats ADD COLUMN escalated INTEGER NOT NULL DEFAULT 1;")?;
        }
        tx.execute_batch("CREATE INDEX IF NOT EXISTS chats_created ON chats(created_at);")?;
        Ok(())
    }),
    Step::Sql(
        r#"
    ALTER TABLE chats ADD COLUMN visitor_present INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE chats ADD COLUMN queued_at INTEGER;   -- since when it waits (waiting chats)
    UPDATE chats SET queued_at = created_at WHERE state = 'waiting';
"#,
    ),
    // One copy of a transcript (the chat's lines): older builds also kept it
    // in the event log.
    Step::Sql(
        r#"
    UPDATE events SET body = json_set(body, '$.transcript', json('[]'))
        WHERE kind = 'escalation' AND json_array_length(body, '$.transcript') > 0;
    UPDATE events SET body = json_set(body, '$.line.text', '')
        WHERE kind = 'chat_line' AND json_extract(body, '$.line.text') <> '';
"#,
    ),
    Step::Sql(
        r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
"#,
    ),
    Step::Sql(
        r#"
    CREATE TABLE branches (
        node_id     TEXT PRIMARY KEY,
        info        TEXT NOT NULL,       -- common::branch::BranchInfo as JSON
        updated_at  INTEGER NOT NULL,
        updated_by  TEXT NOT NULL,       -- "api" or "kubernetes"
        command_id  TEXT NOT NULL        -- the set_branch command carrying it
    );
"#,
    ),
    Step::Sql(
        r#"
    CREATE TABLE samples (
        id             TEXT PRIMARY KEY,  -- the event id
        node_id        TEXT NOT NULL,
        conversation   TEXT NOT NULL,
        text           TEXT NOT NULL,     -- masked on the node
        lang           TEXT NOT NULL,
        reason         TEXT NOT NULL,     -- common::event::SampleReason
        model_version  TEXT NOT NULL,
        guesses        TEXT NOT NULL,     -- [{label, score}] as JSON
        at             INTEGER NOT NULL,
        label          TEXT,              -- set by a person (the label queue)
        labelled_by    TEXT,
        labelled_at    INTEGER
    );
    CREATE INDEX samples_at ON samples (at);
    CREATE INDEX samples_unlabelled ON samples (label, at);
"#,
    ),
    // 9: the learning loop's training runs (the run as JSON, its state a
    // column so unfinished runs are found at start).
    Step::Sql(
        r#"
    CREATE TABLE trainings (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX trainings_created ON trainings (created_at);
"#,
    ),
    // 10: supervisors' review of a sample of the labels.
    Step::Sql(
        r#"
    ALTER TABLE samples ADD COLUMN reviewed_by TEXT;
    ALTER TABLE samples ADD COLUMN reviewed_at INTEGER;
"#,
    ),
    // 11: answers supervisors wrote for intents the model learns; they ship
    // in the next trained model's bundle.
    Step::Sql(
        r#"
    CREATE TABLE intent_answers (
        intent      TEXT PRIMARY KEY,
        en          TEXT NOT NULL,
        zh          TEXT NOT NULL,
        updated_by  TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
"#,
    ),
    // 12: suggested intents (groups of questions the fleet did not
    // understand) and what a supervisor decided about each.
    Step::Sql(
        r#"
    CREATE TABLE suggestions (
        id          TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL,
        members     TEXT NOT NULL,
        cohesion    REAL NOT NULL,
        state       TEXT NOT NULL,
        intent      TEXT,
        decided_by  TEXT,
        decided_at  INTEGER
    );
"#,
    ),
    // 13: quick replies of the supervisors' answers (JSON arrays).
    Step::Sql(
        r#"
    ALTER TABLE intent_answers ADD COLUMN quick_en TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE intent_answers ADD COLUMN quick_zh TEXT NOT NULL DEFAULT '[]';
"#,
    ),
    // 14: the inbound replay window shared by replicas (mqtt.shared_group):
    // each sequence number a node used lately, pruned below its `seq_high`.
    Step::Sql(
        r#"
    CREATE TABLE inbound_seqs (
        node_id  TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        PRIMARY KEY (node_id, seq)
    );
"#,
    ),
];

/// The PostgreSQL schema at [`POSTGRES_BASELINE`] (the SQLite steps 1 to
/// 13 as one, there being no older PostgreSQL database to adopt), then one
/// entry per later version: a new step appends to both lists, so the two
/// backends share version numbers. Kept in the `schema_version` table.
pub const POSTGRES_BASELINE: u32 = 13;

pub const POSTGRES: &[&str] = &[
    r#"
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE TABLE tokens (
        hash        TEXT PRIMARY KEY,
        node_id     TEXT,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        used_at     BIGINT,
        used_by     TEXT
    );
    CREATE TABLE nodes (
        id             TEXT PRIMARY KEY,
        sign_key       TEXT NOT NULL,
        seal_key       TEXT NOT NULL,
        mqtt_pass_hash TEXT NOT NULL,
        labels         TEXT NOT NULL DEFAULT '{}',
        enrolled_at    BIGINT NOT NULL,
        revoked_at     BIGINT,
        online         BIGINT NOT NULL DEFAULT 0,
        last_seen      BIGINT,
        heartbeat      TEXT,
        seq_high       BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE node_history (
        id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        node_id TEXT NOT NULL,
        at      BIGINT NOT NULL,
        kind    TEXT NOT NULL,
        detail  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX node_history_node ON node_history(node_id, id);
    CREATE TABLE events (
        id          TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        at          BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX events_node_at ON events(node_id, at);
    CREATE INDEX events_kind_at ON events(kind, at);
    CREATE INDEX events_at ON events(at);
    CREATE TABLE commands (
        seq        BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
        id         TEXT PRIMARY KEY,
        node_id    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        args       TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        sent_at    BIGINT,
        acked_at   BIGINT,
        ok         BIGINT,
        detail     TEXT,
        stream     TEXT,
        stream_seq BIGINT
    );
    CREATE INDEX commands_pending ON commands(node_id, acked_at, created_at);
    CREATE TABLE command_streams (
        node_id TEXT NOT NULL,
        key     TEXT NOT NULL,
        seq     BIGINT NOT NULL,
        PRIMARY KEY (node_id, key)
    );
    CREATE TABLE agents (
        id            TEXT PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE,
        display_name  TEXT NOT NULL,
        role          TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        languages     TEXT NOT NULL,
        capacity      BIGINT NOT NULL,
        disabled      BIGINT NOT NULL DEFAULT 0,
        created_at    BIGINT NOT NULL
    );
    CREATE TABLE agent_sessions (
        token_hash TEXT PRIMARY KEY,
        agent_id   TEXT NOT NULL,
        csrf       TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_seen  BIGINT NOT NULL
    );
    CREATE INDEX agent_sessions_agent ON agent_sessions(agent_id);
    CREATE TABLE tickets (
        id           TEXT PRIMARY KEY,
        node_id      TEXT NOT NULL,
        conversation TEXT NOT NULL,
        lang         TEXT NOT NULL,
        name         TEXT NOT NULL,
        contact      TEXT NOT NULL,
        message      TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        state        TEXT NOT NULL DEFAULT 'open',
        agent_id     TEXT,
        resolution   TEXT,
        resolved_at  BIGINT
    );
    CREATE INDEX tickets_state ON tickets(state, created_at);
    CREATE TABLE canned (
        id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        lang     TEXT NOT NULL,
        shortcut TEXT NOT NULL,
        text     TEXT NOT NULL,
        UNIQUE (lang, shortcut)
    );
    CREATE TABLE models (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        version      TEXT NOT NULL,
        signed       TEXT NOT NULL,
        bytes        BIGINT NOT NULL,
        published_at BIGINT NOT NULL,
        UNIQUE (name, version)
    );
    CREATE TABLE rollouts (
        id         TEXT PRIMARY KEY,
        model_id   TEXT NOT NULL,
        version    TEXT NOT NULL,
        selector   TEXT NOT NULL,
        phase      TEXT NOT NULL,
        state      TEXT NOT NULL,
        commands   TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE chats (
        id          TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        lang        TEXT NOT NULL,
        state       TEXT NOT NULL,
        agent_id    TEXT,
        intents     TEXT NOT NULL DEFAULT '[]',
        created_at  BIGINT NOT NULL,
        assigned_at BIGINT,
        first_response_at BIGINT,
        closed_at   BIGINT,
        resolution  TEXT,
        rating      BIGINT,
        escalated   BIGINT NOT NULL DEFAULT 1,
        visitor_present BIGINT NOT NULL DEFAULT 1,
        queued_at   BIGINT
    );
    CREATE INDEX chats_state ON chats(state, created_at);
    CREATE INDEX chats_agent ON chats(agent_id, state);
    CREATE INDEX chats_created ON chats(created_at);
    CREATE TABLE chat_lines (
        id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        chat_id  TEXT NOT NULL,
        key      TEXT NOT NULL,
        sender   TEXT NOT NULL,
        agent_id TEXT,
        text     TEXT NOT NULL,
        at       BIGINT NOT NULL,
        UNIQUE (chat_id, key)
    );
    CREATE INDEX chat_lines_chat ON chat_lines(chat_id, id);
    -- History search: trigram index for substring matches of three or more
    -- characters; shorter (Chinese one- and two-character words) scan.
    CREATE INDEX chat_lines_text ON chat_lines USING gin (text gin_trgm_ops);
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE branches (
        node_id     TEXT PRIMARY KEY,
        info        TEXT NOT NULL,
        updated_at  BIGINT NOT NULL,
        updated_by  TEXT NOT NULL,
        command_id  TEXT NOT NULL
    );
    CREATE TABLE samples (
        id             TEXT PRIMARY KEY,
        node_id        TEXT NOT NULL,
        conversation   TEXT NOT NULL,
        text           TEXT NOT NULL,
        lang           TEXT NOT NULL,
        reason         TEXT NOT NULL,
        model_version  TEXT NOT NULL,
        guesses        TEXT NOT NULL,
        at             BIGINT NOT NULL,
        label          TEXT,
        labelled_by    TEXT,
        labelled_at    BIGINT,
        reviewed_by    TEXT,
        reviewed_at    BIGINT
    );
    CREATE INDEX samples_at ON samples (at);
    CREATE INDEX samples_unlabelled ON samples (label, at);
    CREATE TABLE trainings (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX trainings_created ON trainings (created_at);
    CREATE TABLE intent_answers (
        intent      TEXT PRIMARY KEY,
        en          TEXT NOT NULL,
        zh          TEXT NOT NULL,
        updated_by  TEXT NOT NULL,
        updated_at  BIGINT NOT NULL,
        quick_en    TEXT NOT NULL DEFAULT '[]',
        quick_zh    TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE suggestions (
        id          TEXT PRIMARY KEY,
        created_at  BIGINT NOT NULL,
        members     TEXT NOT NULL,
        cohesion    DOUBLE PRECISION NOT NULL,
        state       TEXT NOT NULL,
        intent      TEXT,
        decided_by  TEXT,
        decided_at  BIGINT
    );
"#,
    r#"
    CREATE TABLE inbound_seqs (
        node_id  TEXT NOT NULL,
        seq      BIGINT NOT NULL,
        PRIMARY KEY (node_id, seq)
    );
"#,
];

/// The advisory lock replicas take while migrating ("EDGEDESK" in ASCII).
const MIGRATION_LOCK: i64 = 0x4544_4745_4445_534b;

/// Bring a PostgreSQL database to the latest version (see [`POSTGRES`]);
/// refuses a database newer than this build.
pub fn migrate_postgres(conn: &mut Conn) -> Result<u32, StoreError> {
    let latest = POSTGRES_BASELINE + POSTGRES.len() as u32 - 1;
    conn.execute("SELECT pg_advisory_lock(?1)", [MIGRATION_LOCK])?;
    let result = (|| {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let current: Option<u32> =
            conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
        if let Some(found) = current.filter(|v| *v > latest) {
            return Err(StoreError::Db(DbError::SchemaTooNew {
                found,
                supported: latest,
            }));
        }
        let done = current.map_or(0, |v| (v + 1 - POSTGRES_BASELINE) as usize);
        for (i, step) in POSTGRES.iter().enumerate().skip(done) {
            let version = POSTGRES_BASELINE + i as u32;
            let tx = conn.transaction()?;
            tx.execute_batch(step)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [version],
            )?;
            tx.commit()?;
            tracing::info!(version, "applied PostgreSQL schema migration");
        }
        Ok(latest)
    })();
    conn.execute("SELECT pg_advisory_unlock(?1)", [MIGRATION_LOCK])?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_from_an_older_build_is_adopted() {
        // What a build with start-up `CREATE TABLE IF NOT EXISTS` left: the
        // versioned steps 1-2 and a chats table without `escalated`.
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        edgedesk_support::sqlite::migrate(&mut c, &STEPS[..2]).unwrap();
        c.execute_batch(
            "CREATE TABLE chats (id TEXT PRIMARY KEY, node_id TEXT NOT NULL, lang TEXT NOT NULL,
               state TEXT NOT NULL, agent_id TEXT, intents TEXT NOT NULL DEFAULT '[]',
               created_at INTEGER NOT NULL, assigned_at INTEGER, first_response_at INTEGER,
               closed_at INTEGER, resolution TEXT, rating INTEGER);
             INSERT INTO chats (id, node_id, lang, state, created_at) VALUES ('c', 'n', 'en', 'closed', 1);",
        )
        .unwrap();
        assert_eq!(
            edgedesk_support::sqlite::migrate(&mut c, STEPS).unwrap(),
            STEPS.len() as u32
        );
        let escalated: i64 = c
            .query_row("SELECT escalated FROM chats WHERE id = 'c'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(escalated, 1, "old chats were all escalated ones");
    }

    #[test]
    fn transcripts_kept_twice_by_older_builds_are_stripped_from_the_event_log() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        edgedesk_support::sqlite::migrate(&mut c, &STEPS[..4]).unwrap();
        c.execute_batch(
            r#"INSERT INTO events (id, node_id, kind, at, received_at, body) VALUES
              ('e1', 'n', 'escalation', 1, 1, '{"id":"e1","at":1,"kind":"escalation","conversation":"c","lang":"en","reason":"requested","last_text":"hi","intents":[],"transcript":[{"id":1,"from":"visitor","text":"card 4111","at":1}]}'),
              ('e2', 'n', 'chat_line', 1, 1, '{"id":"e2","at":1,"kind":"chat_line","conversation":"c","line":{"id":2,"from":"visitor","text":"call 1381","at":1}}');"#,
        )
        .unwrap();
        edgedesk_support::sqlite::migrate(&mut c, STEPS).unwrap();
        let bodies: Vec<String> = c
            .prepare("SELECT body FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(bodies[0].contains(r#""transcript":[]"#), "{}", bodies[0]);
        assert!(bodies[1].contains(r#""text":"""#), "{}", bodies[1]);
        assert!(!bodies.concat().contains("4111") && !bodies.concat().contains("1381"));
    }
    /// Every table and column of the SQLite schema, by name.
    fn sqlite_columns() -> std::collections::BTreeMap<String, Vec<String>> {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        edgedesk_support::sqlite::migrate(&mut c, STEPS).unwrap();
        let tables: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'chat_lines_fts%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables
            .into_iter()
            .map(|t| {
                let mut cols: Vec<String> = c
                    .prepare("SELECT name FROM pragma_table_info(?1)")
                    .unwrap()
                    .query_map([&t], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                cols.sort();
                (t, cols)
            })
            .collect()
    }

    #[test]
    fn the_postgres_schema_has_every_table_and_column_of_the_sqlite_one() {
        let mut pg = std::collections::BTreeMap::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for line in POSTGRES.concat().lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("CREATE TABLE ") {
                let name = rest.split_whitespace().next().unwrap().to_owned();
                current = Some((name, Vec::new()));
            } else if line.starts_with(");") {
                let (t, mut cols) = current.take().unwrap();
                cols.sort();
                pg.insert(t, cols);
            } else if let Some((_, cols)) = current.as_mut() {
                let word = line.split_whitespace().next().unwrap_or("");
                if !word.is_empty() && !["PRIMARY", "UNIQUE", "--"].contains(&word) {
                    cols.push(word.to_owned());
                }
            }
        }
        let mut sqlite = sqlite_columns();
        // PostgreSQL's own: the queue order of commands (SQLite's rowid).
        pg.get_mut("commands").unwrap().retain(|c| c != "seq");
        assert_eq!(
            POSTGRES_BASELINE as usize + POSTGRES.len() - 1,
            STEPS.len(),
            "both backends are at the same version"
        );
        sqlite.remove("schema_version");
        assert_eq!(pg, sqlite);
    }
}
