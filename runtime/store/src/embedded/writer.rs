//! One write transaction (`BEGIN IMMEDIATE`): expired keys swept, every change logged
//! with its revision, the log trimmed at commit.

use super::*;

/// One write transaction: holds the write lock from the start, deletes every expired
/// key first, logs each change under its own revision, and trims the log on commit.
pub(super) struct Writer<'c> {
    pub(super) tx: Transaction<'c>,
    pub(super) now: i64,
    pub(super) start: Revision,
    pub(super) revision: Revision,
}

impl<'c> Writer<'c> {
    pub(super) fn begin(conn: &'c mut Connection) -> rusqlite::Result<Self> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision = meta(&tx, "revision")?;
        let mut writer = Writer {
            tx,
            // Taken under the write lock, so expiry is judged in commit order.
            now: now_ms(),
            start: revision,
            revision,
        };
        writer.sweep()?;
        Ok(writer)
    }

    /// Delete every key whose expiry has passed.
    pub(super) fn sweep(&mut self) -> rusqlite::Result<()> {
        let expired = {
            let mut stmt = self.tx.prepare_cached(
                "SELECT key, value FROM kv
                 WHERE expires_ms IS NOT NULL AND expires_ms <= ?1 ORDER BY key",
            )?;
            stmt.query_map([self.now], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()?
        };
        for (key, value) in expired {
            debug!(key, "lease expired; deleting it");
            self.remove(&key, &value)?;
        }
        Ok(())
    }

    /// The value and expiry of a key (expired keys are already gone).
    pub(super) fn get(&self, key: &str) -> rusqlite::Result<Option<(String, Option<i64>)>> {
        self.tx
            .query_row(
                "SELECT value, expires_ms FROM kv WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: &str,
        expires_ms: Option<i64>,
    ) -> rusqlite::Result<()> {
        self.revision += 1;
        self.tx
            .prepare_cached(
                "INSERT INTO kv (key, value, expires_ms, revision) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET
                     value = excluded.value,
                     expires_ms = excluded.expires_ms,
                     revision = excluded.revision",
            )?
            .execute(params![key, value, expires_ms, self.revision])?;
        self.log(key, Kind::Put, value, expires_ms)
    }

    /// Delete a key if it is there; whether it was.
    pub(super) fn delete(&mut self, key: &str) -> rusqlite::Result<bool> {
        match self.get(key)? {
            Some((value, _)) => {
                self.remove(key, &value)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) fn remove(&mut self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.revision += 1;
        self.tx
            .prepare_cached("DELETE FROM kv WHERE key = ?1")?
            .execute([key])?;
        self.log(key, Kind::Delete, value, None)
    }

    pub(super) fn log(
        &mut self,
        key: &str,
        kind: Kind,
        value: &str,
        expires_ms: Option<i64>,
    ) -> rusqlite::Result<()> {
        let kind = match kind {
            Kind::Put => "put",
            Kind::Delete => "delete",
        };
        self.tx
            .prepare_cached(
                "INSERT INTO changes (revision, key, kind, value, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![self.revision, key, kind, value, expires_ms])?;
        Ok(())
    }

    /// Store the new revision and trim the log to the last `limit` changes.
    pub(super) fn commit(self, limit: u64) -> rusqlite::Result<()> {
        if self.revision != self.start {
            self.tx.execute(
                "UPDATE meta SET value = ?1 WHERE name = 'revision'",
                [self.revision],
            )?;
            let keep_after = self.revision - i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
            if keep_after > 0 {
                self.tx
                    .prepare_cached("DELETE FROM changes WHERE revision <= ?1")?
                    .execute([keep_after])?;
                self.tx.execute(
                    "UPDATE meta SET value = max(value, ?1) WHERE name = 'compacted'",
                    [keep_after],
                )?;
            }
        }
        self.tx.commit()
    }
}

/// Delete expired keys if there are any (a write transaction only then).
pub(super) fn sweep_due(conn: &mut Connection, limit: u64) -> rusqlite::Result<()> {
    let due: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?1)",
        [now_ms()],
        |r| r.get(0),
    )?;
    if due {
        Writer::begin(conn)?.commit(limit)?;
    }
    Ok(())
}
