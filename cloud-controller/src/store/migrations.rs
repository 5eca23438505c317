//! The controller's schema, one versioned list (SQLite `user_version`).
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

use edgedesk_support::sqlite::{Step, has_column};

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
];

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
}
