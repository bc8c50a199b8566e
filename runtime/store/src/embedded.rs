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
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_core::subnet::Subnet;

use crate::keys::{Keys, parse_key, parse_lease, placeholder_attrs, removed_attrs};
use crate::watch::{Polled, WatchSource, listed, watch};
use crate::{Created, LeaseStore, LeaseWatch, Revision, StoreError, WatchEvent};
use twill_core::error_chain;

mod poll;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use poll::*;
use schema::*;
use writer::*;

/// How often a watch polls the change log.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How many changes the change log keeps; a watch that falls further behind gets a
/// fresh snapshot.
const CHANGE_LOG_LIMIT: u64 = 10_000;

/// How long a request waits for another process's write transaction to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most changes one watch poll reads.
const POLL_BATCH: usize = 1_000;

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

/// The store file and its `-wal`/`-shm` files, where they exist, must belong to us
/// (the effective user, the owner of `/proc/self`) or root and be writable by nobody
/// else: a local user who planted or may write them would choose the leases (and so
/// the routes) of a root daemon.
fn check_owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let us = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let mut files = vec![path.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files {
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::EmbeddedCreate { path: file, source }),
        };
        let reason = if meta.file_type().is_symlink() {
            Some("it is a symbolic link".to_owned())
        } else if meta.uid() != us && meta.uid() != 0 {
            Some(format!(
                "it belongs to uid {}, not to us ({us}) or root",
                meta.uid()
            ))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!(
                "its mode {:o} lets others write it (chmod go-w)",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(StoreError::EmbeddedUntrusted { path: file, reason });
        }
    }
    Ok(())
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

    /// [`EmbeddedStore::open`], first creating what is missing owner-only: the file's
    /// directories (0700) and the file (0600; SQLite gives its `-wal` and `-shm` files
    /// the same mode). Leases and the config are nobody else's business on the host.
    /// An existing directory or file keeps its mode.
    pub fn open_creating(path: &Path, prefix: &str) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let created = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::EmbeddedCreate { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(created(dir))?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(created(path)(e)),
        }
        check_owner_only(path)?;
        Self::open(path, prefix)
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

    /// Write any text to `<prefix>/<key>` without a TTL, as `etcdctl put` does: the
    /// value is not checked (for tools and tests that write what a store may hold).
    pub async fn put_key(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let key = format!("{}/{}", self.inner.keys.prefix.trim_end_matches('/'), key);
        let value = value.to_owned();
        self.write("put key", move |w| w.put(&key, &value, None))
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
                    expires: row.expires_ms.map(to_time).into(),
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
        watch(EmbeddedSource {
            store: self.clone(),
        })
    }

    async fn list_and_watch(&self) -> Result<(Vec<Lease>, LeaseWatch), StoreError> {
        listed(EmbeddedSource {
            store: self.clone(),
        })
        .await
    }
}
