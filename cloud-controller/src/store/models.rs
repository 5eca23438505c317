//! Published model releases (the signed release text; the files themselves
//! are content-addressed blobs on disk, see `crate::models`).

use super::sql::{Conn, OptionalExtension, Row, SqlError, params};
use edgedesk_common::release::SignedRelease;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// A published release as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRow {
    pub id: String,
    pub name: String,
    pub version: String,
    /// Total bytes of its files.
    pub bytes: u64,
    pub published_at: i64,
    #[schema(value_type = Object)]
    pub signed: SignedRelease,
}

const COLUMNS: &str = "id, name, version, signed, bytes, published_at";

fn row(r: &Row) -> Result<ModelRow, SqlError> {
    let signed: String = r.get(3)?;
    Ok(ModelRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        signed: serde_json::from_str(&signed).map_err(|e| SqlError::conversion(3, e))?,
        bytes: r.get::<_, i64>(4)? as u64,
        published_at: r.get(5)?,
    })
}

fn list(conn: &Conn) -> Result<Vec<ModelRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM models ORDER BY published_at DESC, id"
    ))?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A release by id, or by `name@version` / bare `version` (newest name).
fn get(conn: &Conn, key: &str) -> Result<Option<ModelRow>, StoreError> {
    let (name, version) = match key.split_once('@') {
        Some((n, v)) => (Some(n), v),
        None => (None, key),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM models
         WHERE id = ?1 OR (version = ?2 AND (CAST(?3 AS TEXT) IS NULL OR name = ?3))
         ORDER BY published_at DESC LIMIT 1"
    ))?;
    Ok(stmt
        .query_row(params![key, version, name], row)
        .optional()?)
}

impl Store {
    pub async fn models(&self) -> Result<Vec<ModelRow>, StoreError> {
        self.db.call(|c| list(c)).await
    }

    /// A release by id, `name@version` or version.
    pub async fn model(&self, key: &str) -> Result<Option<ModelRow>, StoreError> {
        let key = key.to_owned();
        self.db.call(move |c| get(c, &key)).await
    }

    /// Record a signed release under `id`; an existing `name@version` is
    /// returned instead (the caller compares contents).
    pub async fn model_insert(
        &self,
        id: String,
        signed: SignedRelease,
        name: String,
        version: String,
        bytes: u64,
        now: i64,
    ) -> Result<ModelRow, StoreError> {
        self.db
            .call(move |c| {
                let key = format!("{name}@{version}");
                if let Some(existing) = get(c, &key)?.filter(|r| r.name == name) {
                    return Ok(existing);
                }
                c.execute(
                    "INSERT INTO models (id, name, version, signed, bytes, published_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        id,
                        name,
                        version,
                        serde_json::to_string(&signed).expect("serialises"),
                        bytes as i64,
                        now
                    ],
                )?;
                get(c, &id)?.ok_or_else(|| StoreError::Corrupt(format!("release {id} vanished")))
            })
            .await
    }
}
