//! The etcd v3 lease store, with flannel's key layout and lease protocol
//! (`pkg/subnet/etcd/{registry.go,local_manager.go}`), minus two of its defects:
//! reservations (keys without an etcd lease) stay without one when renewed (#1329), and
//! the etcd lease a renewal replaces is revoked instead of left to run out.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use futures::{Stream, StreamExt, TryStreamExt};
use tracing::{debug, warn};
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_core::subnet::Subnet;

use crate::keys::{DEFAULT_PREFIX, Keys, parse_key, parse_lease, placeholder_attrs};
use crate::tls::{self, Probe};
use crate::watch::{Polled, WatchSource, listed, watch};
use crate::{Created, LeaseStore, LeaseWatch, Revision, StoreError, WatchEvent};

/// How many `TimeToLive` requests a listing keeps in flight.
const TTL_CONCURRENCY: usize = 16;

/// The longest a single store request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times `renew_lease` re-reads a key that changed under it before it writes
/// unconditionally, as flannel always does.
const RENEW_TRIES: usize = 5;

/// Where the etcd store is, how to prove who we are to it, and where under it
/// flannel's keys live.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379` or `https://10.0.0.5:2379` (a bare
    /// `host:port` means http, or https when TLS files are given).
    pub endpoints: Vec<String>,
    /// The key prefix, flannel's `--etcd-prefix` (default `/coreos.com/network`).
    pub prefix: String,
    /// flannel's `--etcd-cafile`: the CA that signed the servers' certificates (PEM).
    /// Without it, https endpoints are checked against the system's trust roots.
    pub ca_file: Option<PathBuf>,
    /// flannel's `--etcd-certfile`: our client certificate (PEM), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// flannel's `--etcd-keyfile`: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// flannel's `--etcd-username` / `--etcd-password`: etcd's own authentication.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: DEFAULT_PREFIX.to_owned(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
        }
    }
}

impl EtcdOptions {
    /// Plain endpoints under `prefix`, no TLS, no user.
    pub fn plain(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }

    /// Whether any TLS file is given (then every endpoint must be https).
    pub(crate) fn tls_wanted(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The endpoints as URLs: a bare `host:port` gets https when TLS files are given,
    /// http otherwise; an http URL with TLS files is refused, since the files would
    /// silently not be used.
    fn urls(&self) -> Result<Vec<String>, StoreError> {
        let tls = self.tls_wanted();
        self.endpoints
            .iter()
            .map(|e| {
                if e.starts_with("https://") {
                    Ok(e.clone())
                } else if e.starts_with("http://") {
                    if tls {
                        Err(StoreError::Options(format!(
                            "--etcd-endpoints {e} is http://, but TLS files \
                             (--etcd-cafile/--etcd-certfile/--etcd-keyfile) are given; \
                             use https:// endpoints"
                        )))
                    } else {
                        Ok(e.clone())
                    }
                } else if e.contains("://") {
                    Err(StoreError::Options(format!(
                        "--etcd-endpoints {e}: only http:// and https:// endpoints are supported"
                    )))
                } else {
                    Ok(format!("{}://{e}", if tls { "https" } else { "http" }))
                }
            })
            .collect()
    }
}

/// Probe the TLS handshake with every https endpoint (see [`tls`]): a refusal by
/// every endpoint that answers is a [`StoreError::Tls`]; when none answers, a
/// [`StoreError::Unreachable`] to retry; one refusal among acceptances is a warning.
async fn check_handshakes(urls: &[String], opts: &EtcdOptions) -> Result<(), StoreError> {
    // Without a CA file the system's roots are the transport's business: no probe.
    let Some(config) = tls::probe_config(opts)? else {
        return Ok(());
    };
    let mut refused = Vec::new();
    let mut unreachable = Vec::new();
    let mut accepted = false;
    for url in urls.iter().filter(|u| u.starts_with("https://")) {
        match tls::probe(url, &config).await? {
            Probe::Accepted => accepted = true,
            Probe::Refused(reason) => refused.push((url.clone(), reason)),
            Probe::Unreachable(reason) => unreachable.push(format!("{url}: {reason}")),
        }
    }
    if accepted {
        for (url, reason) in &refused {
            warn!(endpoint = %url, "TLS handshake refused: {reason}");
        }
        return Ok(());
    }
    if let Some((endpoint, reason)) = refused.into_iter().next() {
        return Err(StoreError::Tls { endpoint, reason });
    }
    Err(StoreError::Unreachable(unreachable.join("; ")))
}

/// Leases in etcd under `<prefix>/subnets/`, the config at `<prefix>/config`.
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    /// How many times a lease watch was opened on etcd (first time and reconnects).
    watch_connects: Arc<AtomicU64>,
    expiries: Expiries,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

fn etcd_err(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |source| StoreError::Etcd { op, source }
}

/// A TTL as whole etcd seconds, rounded up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// `now + secs`, with etcd's `-1` (lease gone) read as "already expired".
fn expiry_in(secs: i64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The subnet and attributes of a lease key-value, or `None` (with a warning).
fn parse_kv(keys: &Keys, kv: &KeyValue) -> Option<(Subnet, LeaseAttrs)> {
    parse_lease(keys, kv.key(), kv.value())
}

/// When each etcd lease runs out, by lease ID, as read from etcd: a lease's expiry is
/// fixed when it is granted, since flanneld and twill grant a new etcd lease at every
/// renewal instead of keeping one alive, so it is asked of etcd once per ID instead of
/// once per listing and per event. Without it a node's start asked 3 × N `TimeToLive`s
/// of etcd (the listings for the previous lease, the subnet choice and the watch),
/// 2.7–3.7 s at 5,000 peers (`bench --scale 5000`). A listing keeps only the IDs it
/// saw, so the map holds about one entry per lease.
#[derive(Clone, Default)]
struct Expiries(Arc<std::sync::Mutex<HashMap<i64, SystemTime>>>);

impl Expiries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, SystemTime>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A lease this client just granted.
    fn granted(&self, id: i64, expires: SystemTime) {
        self.lock().insert(id, expires);
    }

    /// When etcd lease `id` runs out, if that is known without asking etcd.
    fn known(&self, id: i64) -> Expiry {
        if id == 0 {
            return Expiry::Never;
        }
        self.lock()
            .get(&id)
            .map_or(Expiry::Unread, |t| Expiry::At(*t))
    }

    /// When etcd lease `id` runs out; `None` for id 0 (a key without a lease).
    async fn of(&self, client: &Client, id: i64) -> Result<Option<SystemTime>, etcd_client::Error> {
        if id == 0 {
            return Ok(None);
        }
        if let Some(expires) = self.lock().get(&id) {
            return Ok(Some(*expires));
        }
        let ttl = client.clone().lease_time_to_live(id, None).await?.ttl();
        let expires = expiry_in(ttl);
        // -1: the lease is gone already; its key goes with it, nothing to keep.
        if ttl >= 0 {
            self.lock().insert(id, expires);
        }
        Ok(Some(expires))
    }

    /// The expiries of `ids`, in order, [`TTL_CONCURRENCY`] lookups at a time.
    async fn of_all(
        &self,
        client: &Client,
        ids: Vec<i64>,
    ) -> Result<Vec<Option<SystemTime>>, etcd_client::Error> {
        futures::stream::iter(ids)
            .map(|id| self.of(client, id))
            .buffered(TTL_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Forget the leases not in `ids` (a full listing's).
    fn keep_only(&self, ids: &HashSet<i64>) {
        self.lock().retain(|id, _| ids.contains(id));
    }
}

/// Every lease under the subnets prefix that parses, each with its etcd lease ID, and
/// the listing's revision. An expiry not in `expiries` is [`Expiry::Unread`]: no
/// `TimeToLive` is asked here.
async fn list_unread(
    client: &Client,
    keys: &Keys,
    expiries: &Expiries,
) -> Result<(Vec<(Lease, i64)>, Revision), StoreError> {
    let mut resp = client
        .clone()
        .get(keys.subnets.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err("list leases"))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let kvs = resp.take_kvs();
    expiries.keep_only(&kvs.iter().map(KeyValue::lease).collect());
    let leases = kvs
        .iter()
        .filter_map(|kv| {
            let (subnet, attrs) = parse_kv(keys, kv)?;
            let lease = Lease {
                subnet,
                attrs,
                expires: expiries.known(kv.lease()),
            };
            Some((lease, kv.lease()))
        })
        .collect();
    Ok((leases, revision))
}

/// Every lease under the subnets prefix that parses, with its expiry (asked of etcd
/// for the leases not in `expiries`), and the listing's revision.
async fn list(
    client: &Client,
    keys: &Keys,
    expiries: &Expiries,
) -> Result<(Vec<Lease>, Revision), StoreError> {
    let (leases, revision) = list_unread(client, keys, expiries).await?;
    let unread: Vec<i64> = leases
        .iter()
        .filter(|(l, _)| l.expires == Expiry::Unread)
        .map(|(_, id)| *id)
        .collect();
    let mut read = expiries
        .of_all(client, unread)
        .await
        .map_err(etcd_err("lease time-to-live"))?
        .into_iter();
    let leases = leases
        .into_iter()
        .map(|(mut lease, _)| {
            if lease.expires == Expiry::Unread {
                lease.expires = read.next().flatten().into();
            }
            lease
        })
        .collect();
    Ok((leases, revision))
}

/// Revoke an etcd lease we no longer need. Failure only costs the lease running out
/// on its own, so it is logged, not returned.
async fn revoke(client: &Client, id: i64, why: &str) {
    if let Err(e) = client.clone().lease_revoke(id).await {
        debug!(lease = id, error = %e, "could not revoke etcd lease ({why})");
    }
}

impl EtcdStore {
    /// A store client for `opts.endpoints`. The connection is made lazily: without a
    /// user this fails only for unusable options (no endpoints, not a URL, TLS files
    /// missing or not PEM); an unreachable etcd shows up as [`StoreError::Etcd`] on the
    /// first request. With a user it authenticates here, so a wrong password fails
    /// here ([`StoreError::refusal`] says so).
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let urls = opts.urls()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // Bounds each unary request; a watch stream is not cut by it (tonic applies
            // it until the response headers, checked against etcd 3.4).
            .with_timeout(REQUEST_TIMEOUT)
            // Notice a dead connection under a long-lived watch.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            // As flannel's WithRequireLeader: fail rather than hang without a leader.
            .with_require_leader(true);
        let https = urls.iter().any(|u| u.starts_with("https://"));
        if https {
            options = options.with_tls(tls::transport(&opts)?);
            check_handshakes(&urls, &opts).await?;
        }
        if let Some((name, password)) = &opts.user {
            // etcd's tokens expire (--auth-token-ttl, 5 min by default): authenticate
            // again and retry when a request meets an expired one.
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let client = Client::connect(&urls, Some(options))
            .await
            .map_err(|source| StoreError::Connect {
                endpoints: opts.endpoints.join(","),
                source,
            })?;
        Ok(EtcdStore {
            watch_connects: Arc::default(),
            expiries: Expiries::default(),
            client,
            keys: Keys::new(&opts.prefix),
        })
    }

    /// Write the network config to `<prefix>/config`, as `etcdctl put` does (the text
    /// is the caller's to validate).
    pub async fn put_config(&self, json: &str) -> Result<(), StoreError> {
        self.client
            .clone()
            .put(self.keys.config(), json, None)
            .await
            .map(drop)
            .map_err(etcd_err("put config"))
    }

    /// Delete every key under the prefix (the config and all leases): for a prefix
    /// that a tool made for itself, such as `twill demo`'s.
    pub async fn delete_prefix(&self) -> Result<(), StoreError> {
        let key = format!("{}/", self.keys.prefix.trim_end_matches('/'));
        self.client
            .clone()
            .delete(key, Some(DeleteOptions::new().with_prefix()))
            .await
            .map(drop)
            .map_err(etcd_err("delete prefix"))
    }

    /// The etcd key holding the lease on `subnet`: `<prefix>/subnets/10.244.1.0-24`.
    pub fn lease_key(&self, subnet: Subnet) -> String {
        self.keys.lease(subnet)
    }

    /// The etcd key holding the network config: `<prefix>/config`.
    pub fn config_key(&self) -> String {
        self.keys.config()
    }

    /// A fresh watch source on this client.
    fn source(&self) -> EtcdSource {
        EtcdSource {
            connects: self.watch_connects.clone(),
            expiries: self.expiries.clone(),
            client: self.client.clone(),
            keys: self.keys.clone(),
            stream: None,
            unread: HashMap::new(),
            reading: None,
        }
    }

    async fn grant(&self, ttl: Duration) -> Result<(i64, SystemTime), StoreError> {
        let resp = self
            .client
            .clone()
            .lease_grant(ttl_secs(ttl), None)
            .await
            .map_err(etcd_err("grant lease"))?;
        let expires = expiry_in(resp.ttl());
        self.expiries.granted(resp.id(), expires);
        Ok((resp.id(), expires))
    }
}

impl LeaseStore for EtcdStore {
    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        let mut resp = self
            .client
            .clone()
            .get(self.keys.config(), None)
            .await
            .map_err(etcd_err("get config"))?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn list_leases(&self) -> Result<(Vec<Lease>, Revision), StoreError> {
        list(&self.client, &self.keys, &self.expiries).await
    }

    async fn list_holders(&self) -> Result<(Vec<Lease>, Revision), StoreError> {
        let (leases, revision) = list_unread(&self.client, &self.keys, &self.expiries).await?;
        Ok((leases.into_iter().map(|(l, _)| l).collect(), revision))
    }

    async fn create_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Created, StoreError> {
        let key = self.keys.lease(subnet);
        let (id, expires) = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        match self.client.clone().txn(txn).await {
            Ok(resp) if resp.succeeded() => Ok(Created::Won(expires)),
            Ok(_) => {
                revoke(&self.client, id, "lost create race").await;
                Ok(Created::Lost)
            }
            Err(e) => {
                revoke(&self.client, id, "create failed").await;
                Err(StoreError::Etcd {
                    op: "create lease",
                    source: e,
                })
            }
        }
    }

    async fn renew_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<SystemTime>, StoreError> {
        let key = self.keys.lease(subnet);
        let value = attrs.to_json();
        for attempt in 1..=RENEW_TRIES {
            let mut resp = self
                .client
                .clone()
                .get(key.as_str(), None)
                .await
                .map_err(etcd_err("read lease"))?;
            let current = resp.take_kvs().into_iter().next();
            let last = attempt == RENEW_TRIES;
            // Write only if the key is still as read (or still absent), so a
            // reservation made meanwhile is not put under a TTL; the last try writes
            // unconditionally, as flannel always does.
            let guard = match &current {
                _ if last => vec![],
                Some(kv) => vec![Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )],
                None => vec![Compare::version(key.as_str(), CompareOp::Equal, 0)],
            };
            let old_lease = current.as_ref().map_or(0, KeyValue::lease);
            if current.is_some() && old_lease == 0 {
                // A reservation: keep it without a TTL (flannel #1329 puts it under one).
                let txn = Txn::new().when(guard).and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    None,
                )]);
                let resp = self
                    .client
                    .clone()
                    .txn(txn)
                    .await
                    .map_err(etcd_err("renew reservation"))?;
                if resp.succeeded() {
                    return Ok(None);
                }
                debug!(key, "reservation changed while renewing it; reading again");
                continue;
            }
            let (id, expires) = self.grant(ttl).await?;
            let txn = Txn::new().when(guard).and_then([TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(id)),
            )]);
            match self.client.clone().txn(txn).await {
                Ok(resp) if resp.succeeded() => {
                    if old_lease != 0 && old_lease != id {
                        revoke(&self.client, old_lease, "replaced by renewal").await;
                    }
                    return Ok(Some(expires));
                }
                Ok(_) => {
                    revoke(&self.client, id, "renewal raced").await;
                    debug!(key, "lease changed while renewing it; reading again");
                }
                Err(e) => {
                    revoke(&self.client, id, "renewal failed").await;
                    return Err(StoreError::Etcd {
                        op: "renew lease",
                        source: e,
                    });
                }
            }
        }
        // Unreachable: the last try has no guard, so its txn succeeds or fails above.
        Err(StoreError::Etcd {
            op: "renew lease",
            source: etcd_client::Error::Internal("renewal kept racing".to_owned()),
        })
    }

    async fn delete_lease(&self, subnet: Subnet) -> Result<(), StoreError> {
        self.client
            .clone()
            .delete(self.keys.lease(subnet), None)
            .await
            .map_err(etcd_err("delete lease"))?;
        Ok(())
    }

    fn watch_connects(&self) -> u64 {
        self.watch_connects.load(Ordering::Relaxed)
    }

    fn watch_leases(&self) -> impl Stream<Item = WatchEvent> + Send + 'static {
        watch(self.source())
    }

    async fn list_and_watch(&self) -> Result<(Vec<Lease>, LeaseWatch), StoreError> {
        listed(self.source()).await
    }
}

/// etcd as the watch loop sees it: a listing, then an etcd watch opened at the
/// revision after it (and opened again after a failure).
///
/// Leases are delivered as soon as they are listed or changed, with the expiries
/// [`Expiries`] knows; the others are delivered [`Expiry::Unread`] and read afterwards,
/// [`READ_CHUNK`] at a time, once the watch has been quiet for [`QUIET`], by a task that
/// a change arriving meanwhile does not wait for. A node joining 5,000 peers so
/// programs them without first waiting for 5,000 `TimeToLive` round trips (0.9 s here),
/// and a live change is not held behind them.
struct EtcdSource {
    connects: Arc<AtomicU64>,
    expiries: Expiries,
    client: Client,
    keys: Keys,
    stream: Option<WatchStream>,
    /// The leases delivered unread and not changed since, by subnet: their etcd lease.
    unread: HashMap<Subnet, i64>,
    /// The chunk of `unread` being read, if one is.
    reading: Option<Reading>,
}

/// What a chunk read answers: each lease's expiry, in the chunk's order.
type ReadResult = Result<Vec<Option<SystemTime>>, etcd_client::Error>;

/// A chunk of unread expiries being read by a task of its own.
struct Reading {
    /// Each lease's subnet and etcd lease, in the order asked.
    chunk: Vec<(Subnet, i64)>,
    task: tokio::task::JoinHandle<ReadResult>,
}

/// How many unread expiries one [`WatchEvent::Expiries`] carries at most (about 50 ms
/// of `TimeToLive` requests here).
const READ_CHUNK: usize = 256;

/// How long the lease watch must be quiet before unread expiries are read.
const QUIET: Duration = Duration::from_millis(50);

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

/// What etcd says when the history is gone.
const COMPACTED: &str = "lease watch history was compacted";

impl WatchSource for EtcdSource {
    async fn list(&mut self) -> Result<(Vec<Lease>, Revision), StoreError> {
        // The watch reopens at the revision after this listing; a chunk being read
        // belongs to the listing before.
        self.stream = None;
        if let Some(reading) = self.reading.take() {
            reading.task.abort();
        }
        let (leases, revision) = list_unread(&self.client, &self.keys, &self.expiries).await?;
        self.unread = leases
            .iter()
            .filter(|(l, _)| l.expires == Expiry::Unread)
            .map(|(l, id)| (l.subnet, *id))
            .collect();
        Ok((leases.into_iter().map(|(l, _)| l).collect(), revision))
    }

    async fn poll(&mut self, since: Revision) -> Polled {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let options = WatchOptions::new()
                    .with_prefix()
                    // No prev_kv: the deleted values would cost etcd a read per key
                    // (a range delete of 500 leases reached the node ~60 ms later with
                    // them), and the peer set knows each removed lease already.
                    .with_progress_notify()
                    .with_start_revision(since);
                let opened = self
                    .client
                    .clone()
                    .watch(self.keys.subnets.as_str(), Some(options))
                    .await;
                match opened {
                    Ok(stream) => {
                        self.connects.fetch_add(1, Ordering::Relaxed);
                        self.stream.insert(stream)
                    }
                    Err(e) if is_compacted(&e) => {
                        return Polled::Compacted {
                            what: COMPACTED,
                            revision: 0,
                        };
                    }
                    Err(e) => {
                        return Polled::Failed(format!("opening the lease watch failed: {e}"));
                    }
                }
            }
        };
        let message = if self.unread.is_empty() {
            stream.message().await
        } else {
            // Changes first: a chunk of unread expiries starts to be read once the watch
            // has been quiet for [`QUIET`] (a burst of changes comes in several
            // responses; reads between them would make etcd answer them later). The
            // chunk is read by a task of its own, so a change that arrives meanwhile
            // is delivered at once and the chunk's requests are not asked again.
            let (reading, unread) = (&mut self.reading, &self.unread);
            let (expiries, client) = (&self.expiries, &self.client);
            let read = async {
                if reading.is_none() {
                    tokio::time::sleep(QUIET).await;
                    let chunk: Vec<(Subnet, i64)> = unread
                        .iter()
                        .take(READ_CHUNK)
                        .map(|(subnet, id)| (*subnet, *id))
                        .collect();
                    let ids = chunk.iter().map(|(_, id)| *id).collect();
                    let (expiries, client) = (expiries.clone(), client.clone());
                    let task = tokio::spawn(async move { expiries.of_all(&client, ids).await });
                    *reading = Some(Reading { chunk, task });
                }
                match reading.as_mut() {
                    Some(r) => (&mut r.task).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                message = stream.message() => message,
                read = read => return self.read(read),
            }
        };
        let polled = match message {
            Ok(Some(resp)) => self.handle(resp, since).await,
            Ok(None) => Polled::Failed("the lease watch was closed".to_owned()),
            Err(e) if is_compacted(&e) => Polled::Compacted {
                what: COMPACTED,
                revision: 0,
            },
            Err(e) => Polled::Failed(format!("the lease watch failed: {e}")),
        };
        if !matches!(polled, Polled::Changes { .. }) {
            self.stream = None;
        }
        polled
    }
}

impl EtcdSource {
    /// The chunk read finished: the expiries of its leases that are still unread as
    /// they were (a lease changed or removed since is passed over: its new etcd lease,
    /// if any, is read in a later chunk).
    fn read(&mut self, read: Result<ReadResult, tokio::task::JoinError>) -> Polled {
        let chunk = self.reading.take().map(|r| r.chunk).unwrap_or_default();
        match read {
            Ok(Ok(times)) => Polled::Expiries(
                chunk
                    .into_iter()
                    .zip(times)
                    .filter_map(|((subnet, id), expires)| {
                        if self.unread.get(&subnet) != Some(&id) {
                            return None;
                        }
                        self.unread.remove(&subnet);
                        expires.map(|t| (subnet, t))
                    })
                    .collect(),
            ),
            // Still unread: asked again after the backoff.
            Ok(Err(e)) => Polled::Failed(format!("lease time-to-live failed: {e}")),
            Err(e) => Polled::Failed(format!("lease time-to-live task failed: {e}")),
        }
    }

    async fn handle(&mut self, resp: WatchResponse, since: Revision) -> Polled {
        if resp.compact_revision() != 0 {
            return Polled::Compacted {
                what: COMPACTED,
                revision: resp.compact_revision(),
            };
        }
        if resp.canceled() {
            let reason = resp.cancel_reason();
            // etcd checks a watch's token when the watch is created, and cancels it
            // at once if the token expired (or etcd restarted and forgot it); the
            // client's automatic refresh covers only unary requests, so the watch
            // authenticates again before it reconnects.
            if reason.contains("invalid auth token") {
                if let Err(e) = self.client.refresh_token().await {
                    return Polled::Failed(format!(
                        "the lease watch was canceled ({reason}) and authenticating \
                         again failed: {e}"
                    ));
                }
                debug!("the lease watch's auth token expired; authenticated again");
            }
            return Polled::Failed(format!("the lease watch was canceled: {reason}"));
        }
        if resp.events().is_empty() {
            // A progress notification promises every event up to its revision was
            // sent. The creation response does not: its revision is the store's, and
            // older events may still be on their way.
            let next = match resp.header() {
                Some(h) if !resp.created() => since.max(h.revision() + 1),
                _ => since,
            };
            return Polled::Changes {
                events: Vec::new(),
                next,
            };
        }
        // Additions with the expiries known, the others unread (read later).
        let mut events = Vec::with_capacity(resp.events().len());
        let mut last = since;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            last = last.max(kv.mod_revision() + 1);
            let Some(subnet) = parse_key(&self.keys, kv.key()) else {
                continue;
            };
            self.unread.remove(&subnet);
            let attrs = match event.event_type() {
                EventType::Put => parse_kv(&self.keys, kv).map(|(_, attrs)| attrs),
                EventType::Delete => None,
            };
            let Some(attrs) = attrs else {
                // Deleted, or the key now holds garbage (skipped with a warning): the
                // lease it held is gone, as a re-list would find. The subnet alone:
                // the peer set answers with the lease it stored.
                debug!(%subnet, "lease removed");
                events.push(LeaseEvent::Removed(Lease {
                    subnet,
                    attrs: placeholder_attrs(),
                    expires: Expiry::Never,
                }));
                continue;
            };
            let expires = self.expiries.known(kv.lease());
            if expires == Expiry::Unread {
                self.unread.insert(subnet, kv.lease());
            }
            events.push(LeaseEvent::Added(Lease {
                subnet,
                attrs,
                expires,
            }));
        }
        Polled::Changes { events, next: last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_secs(86400)), 86400);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
