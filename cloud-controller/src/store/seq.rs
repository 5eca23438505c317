//! The controller's envelope sequence numbers, reserved a block per start
//! (see [`SeqCounter`]), and the operator's way to raise them after the
//! database was restored from a backup.

use super::sql::{Conn, OptionalExtension, params};
use edgedesk_common::envelope::{SEQ_BLOCK, SeqCounter};

use super::{Store, StoreError};

const KEY: &str = "seq_reserved";

/// The small setting `key` (the `settings` table), if set.
pub(crate) fn setting(conn: &Conn, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Set the small setting `key` to `value`.
pub(crate) fn set_setting(conn: &Conn, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn reserved(conn: &Conn) -> Result<u64, StoreError> {
    Ok(setting(conn, KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn set_reserved(conn: &Conn, top: u64) -> Result<(), StoreError> {
    set_setting(conn, KEY, &top.to_string())
}

impl Store {
    /// This run's sequence numbers; the new top is stored before any is used.
    pub async fn reserve_seq(&self, now_micros: u64) -> Result<SeqCounter, StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let (seq, top) = SeqCounter::resume(reserved(&tx)?, now_micros);
                set_reserved(&tx, top)?;
                tx.commit()?;
                Ok(seq)
            })
            .await
    }

    /// Move the reserved top up by `blocks` starts' worth (recovery after a
    /// restore from backup: nodes refuse numbers at or below what they saw).
    /// Returns the new top.
    pub async fn raise_seq(&self, blocks: u64) -> Result<u64, StoreError> {
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let top = reserved(&tx)?.saturating_add(blocks.saturating_mul(SEQ_BLOCK));
                set_reserved(&tx, top)?;
                tx.commit()?;
                Ok(top)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_tops_are_stored_and_raised() {
        let c = super::super::test_conn();
        assert_eq!(reserved(&c).unwrap(), 0);
        set_reserved(&c, 42).unwrap();
        set_reserved(&c, 43).unwrap();
        assert_eq!(reserved(&c).unwrap(), 43);
    }
}
