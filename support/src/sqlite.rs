//! SQLite set-up both stores share: open a database file (created 0600, WAL,
//! the chosen `synchronous` level) and bring it to the latest schema with
//! one versioned migration list, tracked in SQLite's `user_version`.
//!
//! Each step runs once, in order, in its own transaction. Never edit a
//! shipped step: append a new one.

use std::path::Path;

use rusqlite::{Connection, Transaction};

/// One schema step: plain SQL, or code for what SQL cannot say (adopting
/// tables an older build created, conditional columns).
pub enum Step {
    Sql(&'static str),
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database file or its folder cannot be created or opened.
    #[error("cannot open database {path}: {message}")]
    Open { path: String, message: String },
    /// The file was written by a newer build.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// How hard each commit is made durable (`PRAGMA synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives a power cut (an fsync per commit).
    Full,
    /// Survives a crash of the process; a power cut may lose the last commits.
    Normal,
}

/// Open (creating it owner-only) the database at `path` in WAL mode.
pub fn open(path: &Path, durability: Durability) -> Result<Connection, DbError> {
    let open_err = |message: String| DbError::Open {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    create_private(path).map_err(|e| open_err(e.to_string()))?;
    let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| open_err(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(format!(
            "WAL journal mode unavailable (got {mode})"
        )));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Create `path` empty and 0600 if it does not exist, so SQLite (and its
/// `-wal`/`-shm` files, which copy the main file's mode) never make it
/// readable by others.
pub fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Apply the steps of `migrations` not applied yet; returns the version now.
pub fn migrate(conn: &mut Connection, migrations: &[Step]) -> Result<u32, DbError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = migrations.len() as u32;
    if current > latest {
        return Err(DbError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (i, step) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        match step {
            Step::Sql(sql) => tx.execute_batch(sql)?,
            Step::Code(f) => f(&tx)?,
        }
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(latest)
}

/// Whether `table` has a column named `column` (for adopting older schemas).
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Step] = &[
        Step::Sql("CREATE TABLE a (x INTEGER);"),
        Step::Code(|tx| {
            if !has_column(tx, "a", "y")? {
                tx.execute_batch("ALTER TABLE a ADD COLUMN y TEXT;")?;
            }
            Ok(())
        }),
    ];

    #[test]
    fn migrates_once_and_refuses_newer_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/test.db");
        let mut c = open(&path, Durability::Full).unwrap();
        assert_eq!(migrate(&mut c, STEPS).unwrap(), 2);
        assert_eq!(migrate(&mut c, STEPS).unwrap(), 2, "idempotent");
        assert!(has_column(&c, "a", "y").unwrap());
        let e = migrate(&mut c, &STEPS[..1]).unwrap_err();
        assert!(matches!(
            e,
            DbError::SchemaTooNew {
                found: 2,
                supported: 1
            }
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "databases are owner-only");
        }
    }

    #[test]
    fn a_failing_step_leaves_the_version_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("t.db"), Durability::Normal).unwrap();
        let bad = [Step::Sql("CREATE TABLE b (x);"), Step::Sql("NOT SQL")];
        assert!(migrate(&mut c, &bad).is_err());
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }
}
