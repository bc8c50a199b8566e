//! The embedded lease store: flannel's keys and values in one SQLite file, for a host
//! that has no etcd (`twill demo`, a laptop, a test). etcd stays the store for real
//! clusters.
//!
//! # Format
//!
//! SQLite (the `rusqlite` crate with SQLite compiled in), not a file format of our own:
//! it is crash-safe, and its locking lets several processes share one file. The file
//! holds three tables:
//!
//! - `kv (key, value, expires_ms, revision)`: the keys and values as in etcd —
//!   `<prefix>/config` with the network config text, `<prefix>/subnets/10.244.1.0-24`
//!   with the lease JSON as [`LeaseAttrs::to_json`] writes it. `expires_ms` is the
//!   expiry in milliseconds since the Unix epoch (wall clock, shared by every process
//!   on the host); `NULL` is a key without a TTL (the config, a reservation).
//! - `meta (name, value)`: `revision`, the store revision, raised by one for every
//!   change a write transaction makes (as etcd's); `compacted`, the newest revision no
//!   longer in the change log.
//! - `changes (revision, key, kind, value, expires_ms)`: the change log, one row per
//!   change; a delete keeps the value it removed, so a removal carries the last
//!   attributes (as etcd's `prev_kv`). It keeps the last [`CHANGE_LOG_LIMIT`] (10 000)
//!   changes.
//!
//! # Concurrency
//!
//! Every twill process on the host opens the same file: WAL journal (readers never
//! wait for the writer), a busy timeout of [`BUSY_TIMEOUT`] (5 s: a writer waits for
//! another process's write instead of failing), and every write is one
//! `BEGIN IMMEDIATE` transaction (it takes the write lock before it reads, so no other
//! process writes between a create's check and its write). SQLite calls block, so
//! each runs on tokio's blocking pool (`spawn_blocking`), never on a worker.
//!
//! # Expiry
//!
//! Every read leaves out keys whose expiry has passed. They are deleted lazily: by the
//! next write transaction (of any process), and by a watch poll or listing that finds
//! one. Each deletion goes through the change log, so every watch reports it as a
//! [`LeaseEvent::Removed`] with the lease's last attributes.
//!
//! # Watch
//!
//! A watch polls the change log every [`POLL_INTERVAL`] (200 ms): first a
//! [`WatchEvent::Snapshot`] at revision R, then [`WatchEvent::Events`] with the
//! changes after R in revision order. If the log was trimmed past the revision the
//! watch needs, it sends a fresh snapshot instead (as the etcd watch does after
//! compaction). Failures are logged and retried with backoff; the stream ends only
//! when it is dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tracing::{debug, warn};
use twill_core::lease::{Lease, LeaseAttrs, LeaseEvent};
use twill_core::subnet::Subnet;

use crate::keys::{Keys, error_chain, parse_key, parse_lease, placeholder_attrs, removed_attrs};
use crate::{Created, LeaseStore, Revision, StoreError, WatchEvent};

/// How often a watch polls the change log.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How many changes the change log keeps; a watch that falls further behind gets a
/// fresh snapshot.
const CHANGE_LOG_LIMIT: u64 = 10_000;

/// How long a request waits for another process's write transaction to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most changes one watch poll reads.
const POLL_BATCH: usize = 1_000;

/// Watch retry backoff after a failure: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_ms INTEGER,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('put', 'delete')),
    value TEXT NOT NULL,
    expires_ms INTEGER
);
";

/// Tuning for an [`EmbeddedStore`]; the defaults suit a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How often a watch polls the change log (default 200 ms).
    pub poll_interval: Duration,
    /// How many changes the change log keeps, at least 1 (default 10 000).
    pub change_log_limit: u64,
    /// How long a request waits for another process's write (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            poll_interval: POLL_INTERVAL,
            change_log_limit: CHANGE_LOG_LIMIT,
            busy_timeout: BUSY_TIMEOUT,
        }
    }
}

/// Leases in a SQLite file under `<prefix>/subnets/`, the config at `<prefix>/config`.
///
/// Cloning is cheap and shares the connection; a second [`EmbeddedStore::open`] of the
/// same file (in this process or another) is a second, independent connection.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    keys: Keys,
    path: PathBuf,
    options: EmbeddedOptions,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// One row of `kv` as read.
struct Row {
    key: String,
    value: String,
    expires_ms: Option<i64>,
}

/// One row of `changes` as read.
struct Change {
    key: String,
    kind: Kind,
    value: String,
    expires_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put,
    Delete,
}

/// What one watch poll found.
enum Poll {
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

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A TTL in milliseconds, at least 1.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn meta(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<i64> {
    tx.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
}

/// Open the file and make sure it has the schema.
fn setup(path: &Path, options: &EmbeddedOptions) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(options.busy_timeout)?;
    // Stored in the file: set once, every later connection gets it.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(
            path = %path.display(),
            journal_mode = %mode,
            "the embedded store could not switch to WAL; readers will wait for writers"
        );
    }
    // Safe with WAL: a crash loses at most the last commits, never the file.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(conn)
}

/// One write transaction: holds the write lock from the start, deletes every expired
/// key first, logs each change under its own revision, and trims the log on commit.
struct Writer<'c> {
    tx: Transaction<'c>,
    now: i64,
    start: Revision,
    revision: Revision,
}

impl<'c> Writer<'c> {
    fn begin(conn: &'c mut Connection) -> rusqlite::Result<Self> {
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
    fn sweep(&mut self) -> rusqlite::Result<()> {
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
    fn get(&self, key: &str) -> rusqlite::Result<Option<(String, Option<i64>)>> {
        self.tx
            .query_row(
                "SELECT value, expires_ms FROM kv WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    fn put(&mut self, key: &str, value: &str, expires_ms: Option<i64>) -> rusqlite::Result<()> {
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
    fn delete(&mut self, key: &str) -> rusqlite::Result<bool> {
        match self.get(key)? {
            Some((value, _)) => {
                self.remove(key, &value)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove(&mut self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.revision += 1;
        self.tx
            .prepare_cached("DELETE FROM kv WHERE key = ?1")?
            .execute([key])?;
        self.log(key, Kind::Delete, value, None)
    }

    fn log(
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
    fn commit(self, limit: u64) -> rusqlite::Result<()> {
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
fn sweep_due(conn: &mut Connection, limit: u64) -> rusqlite::Result<()> {
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

impl Inner {
    /// The unexpired rows under the subnets prefix and the revision they were read at.
    fn list(&self, conn: &mut Connection) -> rusqlite::Result<(Vec<Row>, Revision)> {
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
    fn poll(&self, conn: &mut Connection, since: Revision) -> rusqlite::Result<Poll> {
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

impl EmbeddedStore {
    /// Open (creating if needed) the store file at `path` with leases under `prefix`
    /// (flannel's `--etcd-prefix`, e.g. [`crate::DEFAULT_PREFIX`]).
    ///
    /// This does blocking file I/O and may wait up to the busy timeout (5 s) for another
    /// process that is setting up the same file: call it at startup, or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, prefix: &str) -> Result<Self, StoreError> {
        Self::open_with(path, prefix, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with other tuning.
    pub fn open_with(
        path: &Path,
        prefix: &str,
        options: EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        let conn = setup(path, &options).map_err(|source| StoreError::EmbeddedOpen {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                keys: Keys::new(prefix),
                path: path.to_owned(),
                options,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The key holding the lease on `subnet`: `<prefix>/subnets/10.244.1.0-24`.
    pub fn lease_key(&self, subnet: Subnet) -> String {
        self.inner.keys.lease(subnet)
    }

    /// The key holding the network config: `<prefix>/config`.
    pub fn config_key(&self) -> String {
        self.inner.keys.config()
    }

    /// Write the network config text (flannel's net-conf JSON) at `<prefix>/config`,
    /// as `etcdctl put <prefix>/config` does. It is stored as given, not validated.
    pub async fn put_config(&self, text: &str) -> Result<(), StoreError> {
        let key = self.inner.keys.config();
        let text = text.to_owned();
        self.write("put config", move |w| w.put(&key, &text, None))
            .await
    }

    /// Write a reservation: the lease on `subnet` with no TTL, which never expires and
    /// stays without one when renewed (flannel's `Documentation/reservations.md`).
    pub async fn put_reservation(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
    ) -> Result<(), StoreError> {
        let key = self.inner.keys.lease(subnet);
        let value = attrs.to_json();
        self.write("put reservation", move |w| w.put(&key, &value, None))
            .await
    }

    /// Run `f` with the connection on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            // A panic elsewhere left no transaction open: dropping one rolls it back.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&inner, &mut conn)
        })
        .await;
        match joined {
            Ok(result) => result.map_err(|source| StoreError::Embedded { op, source }),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime shuts down before the task ran.
                Err(_) => Err(StoreError::Embedded {
                    op,
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
                        Some("the runtime shut down before the request ran".to_owned()),
                    ),
                }),
            },
        }
    }

    /// Run `f` in one write transaction on the blocking pool.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.blocking(op, move |inner, conn| {
            let mut writer = Writer::begin(conn)?;
            let out = f(&mut writer)?;
            writer.commit(inner.options.change_log_limit)?;
            Ok(out)
        })
        .await
    }

    async fn list(&self) -> Result<(Vec<Lease>, Revision), StoreError> {
        let (rows, revision) = self
            .blocking("list leases", |inner, conn| inner.list(conn))
            .await?;
        let keys = &self.inner.keys;
        let leases = rows
            .into_iter()
            .filter_map(|row| {
                let (subnet, attrs) = parse_lease(keys, row.key.as_bytes(), row.value.as_bytes())?;
                Some(Lease {
                    subnet,
                    attrs,
                    expires: row.expires_ms.map(to_time),
                })
            })
            .collect();
        Ok((leases, revision))
    }
}

impl LeaseStore for EmbeddedStore {
    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        let key = self.inner.keys.config();
        self.blocking("get config", move |_, conn| {
            conn.query_row(
                "SELECT value FROM kv
                 WHERE key = ?1 AND (expires_ms IS NULL OR expires_ms > ?2)",
                params![key, now_ms()],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    async fn list_leases(&self) -> Result<(Vec<Lease>, Revision), StoreError> {
        self.list().await
    }

    async fn create_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Created, StoreError> {
        let key = self.inner.keys.lease(subnet);
        let value = attrs.to_json();
        self.write("create lease", move |w| {
            // An expired key was swept when the transaction began.
            if w.get(&key)?.is_some() {
                return Ok(Created::Lost);
            }
            let expires = w.now.saturating_add(ttl_ms(ttl));
            w.put(&key, &value, Some(expires))?;
            Ok(Created::Won(to_time(expires)))
        })
        .await
    }

    async fn renew_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<SystemTime>, StoreError> {
        let key = self.inner.keys.lease(subnet);
        let value = attrs.to_json();
        self.write("renew lease", move |w| {
            // One transaction: nobody can turn the key into a reservation in between.
            if let Some((_, None)) = w.get(&key)? {
                // A reservation stays without a TTL (flannel #1329 puts it under one).
                w.put(&key, &value, None)?;
                return Ok(None);
            }
            let expires = w.now.saturating_add(ttl_ms(ttl));
            w.put(&key, &value, Some(expires))?;
            Ok(Some(to_time(expires)))
        })
        .await
    }

    async fn delete_lease(&self, subnet: Subnet) -> Result<(), StoreError> {
        let key = self.inner.keys.lease(subnet);
        self.write("delete lease", move |w| w.delete(&key).map(drop))
            .await
    }

    fn watch_leases(&self) -> impl Stream<Item = WatchEvent> + Send + 'static {
        let state = Watcher {
            store: self.clone(),
            since: 0,
            resync: true,
            backoff: BACKOFF_MIN,
        };
        futures::stream::unfold(state, |mut w| async move {
            let event = w.next().await;
            Some((event, w))
        })
    }
}

/// The state of one lease watch. It does nothing until polled.
struct Watcher {
    store: EmbeddedStore,
    /// The first revision not yet delivered.
    since: Revision,
    /// A fresh listing is due (first poll, or the change log was trimmed past `since`).
    resync: bool,
    backoff: Duration,
}

impl Watcher {
    /// The next delivery; retries store failures forever with backoff.
    async fn next(&mut self) -> WatchEvent {
        loop {
            if self.resync {
                match self.store.list().await {
                    Ok((leases, revision)) => {
                        self.resync = false;
                        self.since = revision + 1;
                        self.backoff = BACKOFF_MIN;
                        return WatchEvent::Snapshot(leases);
                    }
                    Err(e) => {
                        self.fail(&format!("listing leases failed: {}", error_chain(&e)))
                            .await;
                        continue;
                    }
                }
            }
            let since = self.since;
            let polled = self
                .store
                .blocking("watch leases", move |inner, conn| inner.poll(conn, since))
                .await;
            match polled {
                Ok(Poll::Compacted(compacted)) => {
                    warn!(
                        since,
                        compacted, "lease change log was trimmed; listing leases again"
                    );
                    self.resync = true;
                }
                Ok(Poll::Changes {
                    changes,
                    next,
                    full,
                }) => {
                    self.backoff = BACKOFF_MIN;
                    self.since = next;
                    let events = self.events(changes);
                    if !events.is_empty() {
                        return WatchEvent::Events(events);
                    }
                    if !full {
                        tokio::time::sleep(self.store.inner.options.poll_interval).await;
                    }
                }
                Err(e) => {
                    self.fail(&format!(
                        "polling the lease change log failed: {}",
                        error_chain(&e)
                    ))
                    .await;
                }
            }
        }
    }

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
                            expires: change.expires_ms.map(to_time),
                        })),
                        // The key now holds garbage (skipped with a warning): whatever
                        // lease it held before is gone, as a re-list would find.
                        None => {
                            if let Some(subnet) = parse_key(keys, change.key.as_bytes()) {
                                events.push(LeaseEvent::Removed(Lease {
                                    subnet,
                                    attrs: placeholder_attrs(),
                                    expires: None,
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
                        expires: None,
                    }));
                }
            }
        }
        events
    }

    async fn fail(&mut self, why: &str) {
        warn!(retry_in = ?self.backoff, since = self.since, "{why}");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::pin::pin;

    use futures::StreamExt;

    use super::*;

    /// A store file in a private directory, removed on drop.
    struct Scratch {
        dir: PathBuf,
        store: EmbeddedStore,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "twill-store-unit-{name}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&dir).expect("create test directory");
            let store =
                EmbeddedStore::open(&dir.join("store.db"), "/coreos.com/network").expect("open");
            Scratch { dir, store }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn assert_send_static<T: Send + 'static>(_: &T) {}

    #[tokio::test]
    async fn garbage_is_skipped_by_listings_and_read_as_removal_by_watches() {
        let scratch = Scratch::new("garbage");
        let store = &scratch.store;
        let good = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 6), "vxlan", None).expect("attrs");
        let subnet = |s: &str| s.parse::<Subnet>().expect("subnet");
        store
            .create_lease(subnet("10.244.6.0/24"), &good, Duration::from_secs(600))
            .await
            .expect("create");
        let garbage = [
            (
                "/coreos.com/network/subnets/10.244.7.0-24",
                "this is not json",
            ),
            (
                "/coreos.com/network/subnets/10.244.8.0-24",
                r#"{"PublicIP":"300.0.0.1"}"#,
            ),
            (
                "/coreos.com/network/subnets/not-a-subnet",
                r#"{"PublicIP":"1.1.1.1"}"#,
            ),
            (
                "/coreos.com/network/subnets/10.244.9.7-24",
                r#"{"PublicIP":"1.1.1.1"}"#,
            ),
            (
                "/elsewhere/subnets/10.244.9.0-24",
                r#"{"PublicIP":"1.1.1.1"}"#,
            ),
        ];
        store
            .write("put garbage", move |w| {
                garbage
                    .iter()
                    .try_for_each(|(key, value)| w.put(key, value, None))
            })
            .await
            .expect("put garbage");
        let (leases, revision) = store.list_leases().await.expect("garbage is no error");
        assert_eq!(revision, 6);
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leases[0].attrs, good);

        let watch = store.watch_leases();
        assert_send_static(&watch);
        let mut watch = pin!(watch);
        let Some(WatchEvent::Snapshot(snap)) = watch.next().await else {
            panic!("expected a snapshot")
        };
        assert_eq!(snap.len(), 1);
        store
            .write("put garbage", |w| {
                w.put(
                    "/coreos.com/network/subnets/10.244.10.0-24",
                    "garbage",
                    None,
                )
            })
            .await
            .expect("put");
        store
            .create_lease(subnet("10.244.11.0/24"), &good, Duration::from_secs(600))
            .await
            .expect("create");
        let mut got = Vec::new();
        while got.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                Ok(Some(WatchEvent::Events(events))) => got.extend(events),
                other => panic!("expected events, got {other:?}"),
            }
        }
        assert_eq!(
            got,
            vec![
                LeaseEvent::Removed(Lease {
                    subnet: subnet("10.244.10.0/24"),
                    attrs: placeholder_attrs(),
                    expires: None,
                }),
                LeaseEvent::Added(leases_of(store).await.remove(1)),
            ]
        );
    }

    async fn leases_of(store: &EmbeddedStore) -> Vec<Lease> {
        let (mut leases, _) = store.list_leases().await.expect("list");
        leases.sort_by_key(|l| l.subnet);
        leases
    }

    #[tokio::test]
    async fn a_write_sweeps_expired_keys_and_trims_the_log() {
        let scratch = Scratch::new("sweep");
        let store = &scratch.store;
        let a = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 7), "", None).expect("attrs");
        let subnet = |s: &str| s.parse::<Subnet>().expect("subnet");
        store
            .create_lease(subnet("10.244.1.0/24"), &a, Duration::from_millis(1))
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Absent to a read before anyone deleted it.
        let present = store
            .blocking("count", |_, conn| {
                conn.query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))
            })
            .await
            .expect("count");
        assert_eq!(present, 1);
        assert_eq!(
            store
                .create_lease(subnet("10.244.1.0/24"), &a, Duration::from_secs(60))
                .await
                .expect("create over an expired lease"),
            Created::Won(to_time(
                store
                    .blocking("expiry", |_, conn| conn.query_row(
                        "SELECT expires_ms FROM kv",
                        [],
                        |r| r.get::<_, i64>(0)
                    ))
                    .await
                    .expect("expiry")
            ))
        );
        // put, delete (the sweep), put.
        let kinds = store
            .blocking("log", |_, conn| {
                let mut stmt = conn.prepare("SELECT kind FROM changes ORDER BY revision")?;
                stmt.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .expect("log");
        assert_eq!(kinds, ["put", "delete", "put"]);

        // The log keeps the last CHANGE_LOG_LIMIT changes.
        store
            .write("many", |w| {
                (0..CHANGE_LOG_LIMIT).try_for_each(|_| w.put("/coreos.com/network/x", "y", None))
            })
            .await
            .expect("many writes");
        let (oldest, count, compacted) = store
            .blocking("log", |_, conn| {
                conn.query_row(
                    "SELECT min(revision), count(*),
                        (SELECT value FROM meta WHERE name = 'compacted') FROM changes",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
            })
            .await
            .expect("log");
        let limit = i64::try_from(CHANGE_LOG_LIMIT).expect("limit");
        assert_eq!((oldest, count, compacted), (4, limit, 3));
    }
}
