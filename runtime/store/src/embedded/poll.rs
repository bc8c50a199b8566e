//! Reading the store: a listing, the change log since a revision, and the store as
//! the watch loop sees it.

use super::*;

/// One row of `kv` as read.
pub(super) struct Row {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) expires_ms: Option<i64>,
}

/// One row of `changes` as read.
pub(super) struct Change {
    pub(super) key: String,
    pub(super) kind: Kind,
    pub(super) value: String,
    pub(super) expires_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Put,
    Delete,
}

/// What one watch poll found.
pub(super) enum Poll {
    /// The change log no longer reaches back to the revision asked for.
    Compacted(Revision),
    /// The changes under the subnets prefix from the revision asked for, and the first
    /// revision not yet read.
    Changes {
        changes: Vec<Change>,
        next: Revision,
        /// The batch is full: more changes may be waiting.
        full: bool,
    },
}

impl Inner {
    /// The unexpired rows under the subnets prefix and the revision they were read at.
    pub(super) fn list(&self, conn: &mut Connection) -> rusqlite::Result<(Vec<Row>, Revision)> {
        sweep_due(conn, self.options.change_log_limit)?;
        let tx = conn.transaction()?;
        let revision = meta(&tx, "revision")?;
        let rows = {
            let mut stmt = tx.prepare_cached(
                "SELECT key, value, expires_ms FROM kv
                 WHERE key >= ?1 AND key < ?2 AND (expires_ms IS NULL OR expires_ms > ?3)
                 ORDER BY key",
            )?;
            stmt.query_map(
                params![self.keys.subnets, self.keys.subnets_end(), now_ms()],
                |r| {
                    Ok(Row {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        expires_ms: r.get(2)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        Ok((rows, revision))
    }

    /// The changes under the subnets prefix from revision `since` on.
    pub(super) fn poll(&self, conn: &mut Connection, since: Revision) -> rusqlite::Result<Poll> {
        sweep_due(conn, self.options.change_log_limit)?;
        let tx = conn.transaction()?;
        let compacted = meta(&tx, "compacted")?;
        if since <= compacted {
            return Ok(Poll::Compacted(compacted));
        }
        let revision = meta(&tx, "revision")?;
        let mut last = since - 1;
        let changes = {
            let mut stmt = tx.prepare_cached(
                "SELECT revision, key, kind, value, expires_ms FROM changes
                 WHERE revision >= ?1 AND key >= ?2 AND key < ?3
                 ORDER BY revision LIMIT ?4",
            )?;
            let batch = i64::try_from(POLL_BATCH).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![since, self.keys.subnets, self.keys.subnets_end(), batch],
                |r| {
                    let kind: String = r.get(2)?;
                    Ok((
                        r.get::<_, i64>(0)?,
                        Change {
                            key: r.get(1)?,
                            kind: if kind == "delete" {
                                Kind::Delete
                            } else {
                                Kind::Put
                            },
                            value: r.get(3)?,
                            expires_ms: r.get(4)?,
                        },
                    ))
                },
            )?;
            let mut changes = Vec::new();
            for row in rows {
                let (rev, change) = row?;
                last = rev;
                changes.push(change);
            }
            changes
        };
        tx.commit()?;
        let full = changes.len() == POLL_BATCH;
        // A short batch read everything up to `revision` (changes to other keys too).
        let next = if full { last + 1 } else { revision + 1 };
        Ok(Poll::Changes {
            changes,
            next,
            full,
        })
    }
}

/// The embedded store as the watch loop sees it: a listing, then its change log
/// polled every `poll_interval` (at once again after a full page).
pub(super) struct EmbeddedSource {
    pub(super) store: EmbeddedStore,
}

impl WatchSource for EmbeddedSource {
    async fn list(&mut self) -> Result<(Vec<Lease>, Revision), StoreError> {
        self.store.list().await
    }

    async fn poll(&mut self, since: Revision) -> Polled {
        let polled = self
            .store
            .blocking("watch leases", move |inner, conn| inner.poll(conn, since))
            .await;
        match polled {
            Ok(Poll::Compacted(compacted)) => Polled::Compacted {
                what: "lease change log was trimmed",
                revision: compacted,
            },
            Ok(Poll::Changes {
                changes,
                next,
                full,
            }) => {
                let events = self.events(changes);
                if events.is_empty() && !full {
                    tokio::time::sleep(self.store.inner.options.poll_interval).await;
                }
                Polled::Changes { events, next }
            }
            Err(e) => Polled::Failed(format!(
                "polling the lease change log failed: {}",
                error_chain(&e)
            )),
        }
    }
}

impl EmbeddedSource {
    fn events(&self, changes: Vec<Change>) -> Vec<LeaseEvent> {
        let keys = &self.store.inner.keys;
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            match change.kind {
                Kind::Put => {
                    match parse_lease(keys, change.key.as_bytes(), change.value.as_bytes()) {
                        Some((subnet, attrs)) => events.push(LeaseEvent::Added(Lease {
                            subnet,
                            attrs,
                            expires: change.expires_ms.map(to_time).into(),
                        })),
                        // The key now holds garbage (skipped with a warning): whatever
                        // lease it held before is gone, as a re-list would find.
                        None => {
                            if let Some(subnet) = parse_key(keys, change.key.as_bytes()) {
                                events.push(LeaseEvent::Removed(Lease {
                                    subnet,
                                    attrs: placeholder_attrs(),
                                    expires: Expiry::Never,
                                }));
                            }
                        }
                    }
                }
                Kind::Delete => {
                    let Some(subnet) = parse_key(keys, change.key.as_bytes()) else {
                        continue;
                    };
                    debug!(%subnet, "lease removed");
                    events.push(LeaseEvent::Removed(Lease {
                        subnet,
                        attrs: removed_attrs(Some(change.value.as_bytes())),
                        expires: Expiry::Never,
                    }));
                }
            }
        }
        events
    }
}
