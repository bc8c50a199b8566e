//! twill's lease store: the [`LeaseStore`] trait every store implements, the etcd
//! implementation with flannel's key layout (`<prefix>/config`,
//! `<prefix>/subnets/10.244.1.0-24`), the [`EmbeddedStore`] (the same keys and values
//! in a SQLite file, for one host without an etcd server), and [`acquire`], which holds
//! a lease the way flannel does and retries a lost create race instead of exiting.
//!
//! This crate talks to the store only; it never touches the kernel.
#![forbid(unsafe_code)]

mod embedded;
mod etcd;
mod keys;
mod manager;
mod tls;
mod watch;

use std::time::{Duration, SystemTime};

use futures::Stream;
#[cfg(doc)]
use twill_core::lease::Expiry;
use twill_core::lease::{Lease, LeaseAttrs, LeaseEvent};
use twill_core::subnet::Subnet;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use etcd::{EtcdOptions, EtcdStore};
pub use keys::DEFAULT_PREFIX;
pub use manager::{AcquireError, Acquired, acquire, acquire_listed};

/// flannel's lease TTL.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A lease watch: the deliveries of [`LeaseStore::watch_leases`], boxed.
pub type LeaseWatch = std::pin::Pin<Box<dyn Stream<Item = WatchEvent> + Send>>;

/// A store revision (etcd's header revision; the embedded store's change counter).
pub type Revision = i64;

/// Whether a transactional create won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key was created; the lease runs out at this time.
    Won(SystemTime),
    /// Another node holds the key.
    Lost,
}

/// What a lease watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A full listing: sent first, and again after a reconnect that lost history
    /// (compaction). The receiver diffs it against what it knows.
    Snapshot(Vec<Lease>),
    /// Changes since the previous delivery, in store order.
    Events(Vec<LeaseEvent>),
    /// The expiries of leases delivered as [`Expiry::Unread`], read since: each for a
    /// lease as the deliveries so far left it (a later change to a subnet drops its
    /// pending read). Not a change: no lease appears, goes or changes holder.
    Expiries(Vec<(Subnet, SystemTime)>),
}

/// A store failure. Store content that does not parse is never an error here: such
/// keys are skipped with a warning naming the key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the request.
    #[error("etcd request {op} failed")]
    Etcd {
        /// The operation that failed (`get config`, `list leases`, …).
        op: &'static str,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },
    /// Connecting to the endpoints failed.
    #[error("cannot connect to etcd at {endpoints}")]
    Connect {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },
    /// The store options cannot work (a TLS file without its pair, an http endpoint
    /// with TLS files, a file that is not PEM): the message says which.
    #[error("{0}")]
    Options(String),
    /// The TLS handshake with etcd was refused, by it or by us; the reason names which
    /// certificate.
    #[error("TLS with etcd at {endpoint}: {reason}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// What was refused and what to check.
        reason: String,
    },
    /// No etcd endpoint accepted a TCP connection (for the TLS check at connect).
    #[error("no etcd endpoint answers: {0}")]
    Unreachable(String),
    /// A file named by a flag cannot be read.
    #[error("{flag} {path}: cannot read it", path = .path.display())]
    File {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store's database failed (or stayed locked by another process for
    /// longer than its busy timeout).
    #[error("embedded store request {op} failed")]
    Embedded {
        /// The operation that failed (`list leases`, `create lease`, …).
        op: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The embedded store's directory or file could not be created.
    #[error("cannot create {path} for the embedded store")]
    EmbeddedCreate {
        /// The directory or file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store's file (or its `-wal`/`-shm`) could be changed by someone
    /// else than us or root: the leases in it cannot be trusted (security review L-7).
    #[error("the embedded store file {path} is not trusted: {reason}")]
    EmbeddedUntrusted {
        /// The file.
        path: std::path::PathBuf,
        /// Who could change it.
        reason: String,
    },
    /// The embedded store's database file could not be opened or set up.
    #[error("cannot open the embedded store at {path}")]
    EmbeddedOpen {
        /// The database file.
        path: std::path::PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

/// Why the store refuses us in a way that retrying the same request cannot change:
/// the operator has to fix a certificate, a password, a role or a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The options are unusable (see [`StoreError::Options`], [`StoreError::File`]).
    Options,
    /// The TLS handshake failed: the server's certificate is not signed by our CA or
    /// does not name the endpoint, or the server wants a client certificate we lack or
    /// does not trust ours.
    Tls,
    /// etcd rejected our user name or password.
    Authentication,
    /// etcd authenticated us but our role does not grant this key.
    Permission,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Options => "the flags must change",
            Refusal::Tls => "the TLS certificates or --etcd-cafile must change",
            Refusal::Authentication => "--etcd-username or --etcd-password must change",
            Refusal::Permission => {
                "the etcd role of --etcd-username must grant read-write on the prefix"
            }
        })
    }
}

impl StoreError {
    /// `Some` when retrying cannot help (see [`Refusal`]); `None` for failures that
    /// may pass (etcd unreachable, no leader, a timeout, a busy database).
    pub fn refusal(&self) -> Option<Refusal> {
        let source = match self {
            StoreError::Options(_) | StoreError::File { .. } => return Some(Refusal::Options),
            StoreError::Tls { .. } => return Some(Refusal::Tls),
            StoreError::Etcd { source, .. } | StoreError::Connect { source, .. } => source,
            _ => return None,
        };
        if let etcd_client::Error::GRpcStatus(status) = source {
            let message = status.message();
            match status.code() {
                tonic::Code::PermissionDenied => return Some(Refusal::Permission),
                _ if message.contains("authentication failed")
                    || message.contains("user name is empty") =>
                {
                    return Some(Refusal::Authentication);
                }
                _ => {}
            }
        }
        if tls::is_tls_failure(source) {
            return Some(Refusal::Tls);
        }
        None
    }
}

/// Where leases live (cloning shares the connection). Implementations keep flannel's semantics: leases expire after
/// their TTL unless renewed, creation is transactional, watches resume from a revision.
pub trait LeaseStore: Clone + Send + Sync + 'static {
    /// The network config text at `<prefix>/config`, or `None` if it is not there yet.
    fn get_config(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Every lease that parses, with its expiry, and the revision of the listing.
    fn list_leases(
        &self,
    ) -> impl Future<Output = Result<(Vec<Lease>, Revision), StoreError>> + Send;

    /// Every lease that parses, as [`list_leases`](Self::list_leases), but an expiry
    /// the store has to ask for lease by lease may be [`Expiry::Unread`]: for callers
    /// that need only who holds which subnet (a node choosing its own), which would
    /// otherwise cost etcd one `TimeToLive` request per lease.
    fn list_holders(
        &self,
    ) -> impl Future<Output = Result<(Vec<Lease>, Revision), StoreError>> + Send {
        self.list_leases()
    }

    /// Create the lease only if no key exists for `subnet` (etcd: key version = 0).
    fn create_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// Write the lease unconditionally with a fresh TTL and return its new expiry —
    /// except a reservation (a key with no TTL), which stays without one and returns
    /// `None`.
    fn renew_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<SystemTime>, StoreError>> + Send;

    /// Delete the lease for `subnet` (absent is not an error).
    fn delete_lease(&self, subnet: Subnet) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Watch every lease: a [`WatchEvent::Snapshot`] first (a fresh listing), then
    /// changes. Reconnects with backoff and re-lists after compaction on its own; the
    /// stream ends only when it is dropped.
    fn watch_leases(&self) -> impl Stream<Item = WatchEvent> + Send + 'static;

    /// A listing taken now, as [`list_holders`](Self::list_holders), and the lease watch
    /// that goes on from its revision with the changes since: [`watch_leases`] whose
    /// first snapshot is that listing, except that a failure to list is returned here
    /// (a node's start exits on a refusal) instead of retried.
    ///
    /// [`watch_leases`]: Self::watch_leases
    fn list_and_watch(
        &self,
    ) -> impl Future<Output = Result<(Vec<Lease>, LeaseWatch), StoreError>> + Send;

    /// How many times a lease watch connected to the store (the first time and every
    /// reconnect), for the metrics. Stores without connections answer 0.
    fn watch_connects(&self) -> u64 {
        0
    }
}
