//! `twill run`: the node daemon's lifecycle.
//!
//! 1. Resolve the external interface and public IP.
//! 2. Wait for the network config in the store.
//! 3. Load the backend plugin and `init` it, with our previous BackendData so the
//!    VTEP MAC survives restarts.
//! 4. Acquire a lease.
//! 5. `start` the backend and write subnet.env.
//! 6. Loop: feed peer lease changes to the backend in batches, renew the lease a
//!    margin before it expires, re-apply every peer periodically (repairs kernel state
//!    someone removed), and stop cleanly on SIGTERM/SIGINT, leaving the kernel objects
//!    in place.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use twill_api::{
    ApiState, LeaseEventKind, Metrics, NodeInfo as ApiNode, Plugin as ApiPlugin, StoreState,
};
use twill_core::lease::{Lease, LeaseAttrs, LeaseEvent};
use twill_core::subnet_env::SubnetEnv;
use twill_core::{Config, PeerSet, Subnet};
use twill_datapath::Pump;
use twill_net::{Kernel, Netlink};
use twill_plugin_host::{
    Backend, BackendError, CallError, ErrorKind, Grant, Limits, NodeInfo, Plugin, PluginHost,
    Registration,
};
use twill_store::{
    AcquireError, AnyStore, EmbeddedStore, EtcdOptions, EtcdStore, LEASE_TTL, LeaseStore,
    WatchEvent, acquire,
};

use crate::cli::{PluginDirArg, RunArgs, StoreKind};
use crate::metered::Metered;
use crate::report::UdpCounters;
use crate::{iface, plugins, subnet_file, switch};

/// How often every known peer is re-applied, repairing kernel state that went missing.
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// How often counters kept elsewhere (the store's watch connects) reach the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait before retrying a failed renewal (flannel: one minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How often to look for the network config while it is missing (flannel: 1 s).
const CONFIG_POLL: Duration = Duration::from_secs(1);
/// The longest wait between retries while etcd is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(10);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let api = ApiState::new();
    let metrics = Arc::new(Metrics::new());
    let stop_api = Arc::new(tokio::sync::Notify::new());
    start_api(&args, &api, &metrics, &stop_api).await?;
    let result = run_node(args, api, metrics).await;
    stop_api.notify_waiters();
    result
}

/// Bind the API (and the separate health listener, when asked for) before anything
/// else, so a busy address is a clear error at once; serve until `stop`.
async fn start_api(
    args: &RunArgs,
    api: &ApiState,
    metrics: &Arc<Metrics>,
    stop: &Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut servers = vec![(
        args.api_addr,
        twill_api::router(api.clone(), metrics.clone()),
    )];
    if args.healthz_port != 0 {
        let addr = std::net::SocketAddr::new(args.healthz_ip, args.healthz_port);
        servers.push((addr, twill_api::health_router(api.clone())));
    }
    for (addr, router) in servers {
        let listener = twill_api::bind(addr).await.context("start the HTTP API")?;
        tracing::info!(%addr, "serving the HTTP API");
        let stop = stop.clone();
        tokio::spawn(async move {
            let shutdown = async move { stop.notified().await };
            if let Err(e) = twill_api::serve_on(listener, router, shutdown).await {
                tracing::error!("HTTP API: {}", error_chain(&e));
            }
        });
    }
    Ok(())
}

async fn run_node(args: RunArgs, api: ApiState, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let netlink: Arc<dyn Kernel> = Arc::new(
        tokio::task::spawn_blocking(Netlink::new)
            .await?
            .context("open netlink")?,
    );
    let kernel: Arc<dyn Kernel> = Arc::new(Metered::new(netlink, metrics.clone()));
    let external = {
        let (k, wanted) = (kernel.clone(), args.iface.clone());
        tokio::task::spawn_blocking(move || iface::resolve(k.as_ref(), &wanted)).await??
    };
    let public_ip = args.public_ip.unwrap_or(external.addr);
    tracing::info!(
        iface = %external.name, index = external.index, mtu = external.mtu,
        iface_addr = %external.addr, %public_ip, "using interface"
    );

    api.set_store_state(StoreState::Connecting);
    let store = connect(&args).await?;
    let config = wait_for_config(&store, &args.etcd_prefix).await?;
    api.set_store_state(StoreState::Connected);
    tracing::info!(
        network = %config.network, subnet_len = config.subnet_len,
        subnet_min = %config.subnet_min, subnet_max = %config.subnet_max,
        backend = %config.backend.kind, "network config"
    );

    let host = PluginHost::with_cache(
        kernel.clone(),
        Limits {
            memory_bytes: usize::try_from(args.plugin_memory_mib << 20).unwrap_or(usize::MAX),
            call_timeout: Duration::from_secs(args.plugin_call_timeout),
        },
        args.plugin_cache.dir(),
    )
    .context("start the plugin host")?;
    let plugin = plugins::resolve(&host, &args.plugin_dir, &config.backend.kind)?;
    tracing::info!(plugin = %plugin.name, version = %plugin.version, source = %plugin.source,
        capabilities = ?plugin.capabilities, wit_version = %plugin.wit_version,
        load_ms = plugin.load_time.as_millis(), from_cache = plugin.from_cache,
        "loaded backend plugin");
    api.set_node(ApiNode {
        node_name: hostname(),
        public_ip: Some(public_ip),
        interface: external.name.clone(),
        backend_type: config.backend.kind.clone(),
        plugin: plugin.name.clone(),
        store_endpoints: match args.store {
            StoreKind::Etcd => args.etcd_endpoints.clone(),
            StoreKind::Embedded => vec![format!("file://{}", args.store_path.display())],
        },
    });
    api.set_plugin(ApiPlugin {
        name: plugin.name.clone(),
        version: plugin.version.clone(),
        wit_version: plugin.wit_version.clone(),
        sha256: plugin.sha256.clone(),
        source: plugin.source.clone(),
        capabilities: plugin.capabilities.clone(),
        ..Default::default()
    });

    let (leases, _) = retry("list leases", || store.list_leases()).await;
    // Our previous lease's BackendData, whatever its type: the backend keeps what it
    // recognises (the directrouting backend publishes `vxlan`, so matching on the
    // configured type would lose its VTEP MAC on every restart).
    let previous = leases.iter().find(|l| l.attrs.public_ip == public_ip);
    let previous_data = previous.and_then(|l| l.attrs.backend_data.clone());
    let previous_type = previous.map(|l| l.attrs.backend_type.clone());
    let grant = Grant {
        network: config.network,
        own_subnet: None,
        external: external.clone(),
        public_ip,
    };
    let backend = host.spawn(&plugin, grant.clone())?;
    let registration = backend
        .init(NodeInfo {
            config: config.backend.json.clone(),
            previous_data,
        })
        .await?;
    api.set_backend_initialised(true);
    api.set_mtu(registration.mtu);

    let attrs = LeaseAttrs::new(
        public_ip,
        &registration.backend_type,
        registration.backend_data.as_deref(),
    )
    .context("backend registered invalid BackendData")?;
    let previous_subnet = subnet_file::read_previous(&args.subnet_file);
    let lease = acquire_with_retry(&store, &config, &attrs, previous_subnet).await?;
    tracing::info!(subnet = %lease.subnet, expires = ?lease.expires, "holding lease");
    api.set_subnet(lease.subnet);
    api.set_lease_held(true);
    api.set_own_lease_expiry(lease.expires);

    if let Some(previous) = previous_type.filter(|t| *t != registration.backend_type) {
        let purge = switch::Purge {
            previous: previous.clone(),
            network: config.network,
            subnet_len: config.subnet_len,
            own: lease.subnet,
            external_index: external.index,
        };
        let k = kernel.clone();
        let removed = tokio::task::spawn_blocking(move || switch::purge(k.as_ref(), &purge))
            .await?
            .with_context(|| {
                format!("remove the objects of the previous backend ({previous:?})")
            })?;
        tracing::info!(
            previous = %previous, now = %registration.backend_type, removed = removed.len(),
            "backend type changed; removed the previous backend's objects: {}", removed.join(", ")
        );
    }
    backend.start(lease.subnet).await?;
    let grant_for_restart = grant.clone();
    let datapath = if plugin.has_datapath() {
        let setup = twill_datapath::Setup {
            host: &host,
            plugin: &plugin,
            grant,
            stats: backend.stats().clone(),
            config: &config.backend.json,
            own: lease.subnet,
            counters: Arc::new(UdpCounters(metrics.clone())),
        };
        // Seeded with the peers known now, so the first packets find their peer.
        let peers: Vec<LeaseEvent> = leases
            .iter()
            .filter(|l| {
                l.subnet.prefix() == config.subnet_len
                    && config.network.contains_subnet(&l.subnet)
                    && !l.subnet.overlaps(&lease.subnet)
            })
            .cloned()
            .map(LeaseEvent::Added)
            .collect();
        Some(Pump::start(setup, &peers)?)
    } else {
        None
    };
    subnet_file::write(
        &args.subnet_file,
        &SubnetEnv {
            network: config.network,
            subnet: lease.subnet,
            mtu: registration.mtu,
            ip_masq: false,
        },
    )?;
    tracing::info!(path = %args.subnet_file.display(), mtu = registration.mtu, "wrote subnet file");
    api.set_subnet_env_written(true);

    let node = Node {
        store,
        backend,
        datapath,
        restart: None,
        last_restart: None,
        handed: BTreeMap::new(),
        plugin_dir: args.plugin_dir.clone(),
        plugin_files: Vec::new(),
        host,
        plugin,
        grant: grant_for_restart,
        config,
        attrs,
        lease,
        peers: PeerSet::default(),
        peer_states: BTreeMap::new(),
        api,
        metrics,
        denied_seen: BTreeMap::new(),
        watch_connects_seen: 0,
        renew_margin: Duration::from_secs(u64::from(args.subnet_lease_renew_margin) * 60),
    };
    node.run().await
}

/// Exponential backoff for store requests while etcd is away: 1 s doubling to 10 s,
/// with a log line saying what failed and when the next try is.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(CONFIG_POLL)
    }

    async fn wait(&mut self, what: &str, error: &dyn std::error::Error) {
        tracing::warn!(
            "{what}: {}; retrying in {}s",
            error_chain(error),
            self.0.as_secs()
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_RETRY);
    }
}

/// The store `--store` names. etcd: connect, retrying with a log line while it is
/// unreachable. Embedded: open (creating) the SQLite file at `--store-path`.
async fn connect(args: &RunArgs) -> anyhow::Result<AnyStore> {
    if args.store == StoreKind::Embedded {
        let (path, prefix) = (args.store_path.clone(), args.etcd_prefix.clone());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create the store directory {}", dir.display()))?;
        }
        let store =
            tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, &prefix)).await??;
        tracing::info!(path = %args.store_path.display(), "using the embedded store");
        return Ok(store.into());
    }
    let opts = EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        prefix: args.etcd_prefix.clone(),
    };
    let mut backoff = Backoff::new();
    loop {
        match EtcdStore::connect(opts.clone()).await {
            Ok(store) => return Ok(store.into()),
            Err(e) => backoff.wait("connect to etcd", &e).await,
        }
    }
}

/// Wait until `<prefix>/config` exists (as flanneld does), then validate it.
async fn wait_for_config(store: &impl LeaseStore, prefix: &str) -> anyhow::Result<Config> {
    let mut logged = false;
    let mut backoff = Backoff::new();
    loop {
        match store.get_config().await {
            Ok(Some(text)) => return Ok(Config::parse(&text)?),
            Ok(None) => {
                if !logged {
                    tracing::info!("waiting for the network config at {prefix}/config");
                    logged = true;
                }
                backoff = Backoff::new();
                tokio::time::sleep(CONFIG_POLL).await;
            }
            Err(e) => {
                backoff
                    .wait("cannot read the network config from the store", &e)
                    .await
            }
        }
    }
}

/// Retry a store request with backoff until it succeeds (etcd may be briefly away).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, twill_store::StoreError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => backoff.wait(what, &e).await,
        }
    }
}

/// `acquire`, retried while the store is unreachable; a full network is fatal.
async fn acquire_with_retry(
    store: &impl LeaseStore,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<twill_core::Subnet>,
) -> anyhow::Result<Lease> {
    let mut backoff = Backoff::new();
    loop {
        match acquire(store, config, attrs, previous).await {
            Ok(acquired) => return Ok(acquired.lease),
            Err(AcquireError::Store(e)) => backoff.wait("acquire a lease", &e).await,
            Err(e) => return Err(e).context("acquire a subnet lease"),
        }
    }
}

/// The node's name: the kernel's hostname (of this UTS namespace).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A pending restart of a trapped backend.
#[derive(Debug, Clone, Copy)]
struct Restart {
    at: tokio::time::Instant,
    backoff: Duration,
    /// Restarts in a row without a healthy minute in between.
    attempt: u32,
}

/// How often the plugin directory is looked at for changed files (hot reload).
const PLUGIN_DIR_POLL: Duration = Duration::from_secs(1);

/// First wait before restarting a trapped plugin; doubled per trap in a row.
const RESTART_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between restarts.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A plugin that ran this long since its last restart starts over at RESTART_FIRST.
const RESTART_HEALTHY: Duration = Duration::from_secs(60);

/// What the backend last reported for a peer.
#[derive(Debug, Default)]
struct PeerState {
    /// What is programmed for it, when it is.
    programmed: Option<String>,
    /// Its error and since when, when it is in error.
    error: Option<(String, SystemTime)>,
}

struct Node<S> {
    store: S,
    api: ApiState,
    metrics: Arc<Metrics>,
    /// Denied host calls already reported, by capability (the plugin host counts totals).
    denied_seen: BTreeMap<&'static str, u64>,
    /// Watch connects already reported.
    watch_connects_seen: u64,
    peer_states: BTreeMap<Subnet, PeerState>,
    backend: Backend,
    /// The udp-style data path, for a backend that exports one.
    datapath: Option<Pump>,
    /// When the backend trapped: when to restart it and the backoff used.
    restart: Option<Restart>,
    /// The last restart made, to grow the backoff while the plugin keeps trapping.
    last_restart: Option<Restart>,
    /// The peer leases handed to the backend (added and not removed since).
    handed: BTreeMap<Subnet, Lease>,
    host: PluginHost,
    plugin: Plugin,
    grant: Grant,
    /// Where directory plugins come from, and what its files looked like last time.
    plugin_dir: PluginDirArg,
    plugin_files: Vec<plugins::FileStamp>,
    config: Config,
    attrs: LeaseAttrs,
    lease: Lease,
    peers: PeerSet,
    renew_margin: Duration,
}

impl<S: LeaseStore> Node<S> {
    async fn run(mut self) -> anyhow::Result<()> {
        self.peers = PeerSet::new(self.lease.subnet);
        let mut watch = pin!(self.store.watch_leases());
        let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
        let mut plugin_files = tokio::time::interval(PLUGIN_DIR_POLL);
        self.plugin_files = plugins::dir_fingerprint(&self.plugin_dir);
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        resync.tick().await;
        let mut renew_at = self.renew_deadline();
        loop {
            tokio::select! {
                event = watch.next() => {
                    let Some(event) = event else { bail!("the lease watch ended") };
                    self.sync_watch_connects();
                    self.api.set_store_state(StoreState::Connected);
                    self.on_watch(event).await?;
                }
                () = sleep_until(renew_at) => {
                    renew_at = match self.renew().await {
                        Ok(()) => {
                            self.api.set_store_state(StoreState::Connected);
                            self.renew_deadline()
                        }
                        Err(e) => {
                            self.api.set_store_state(StoreState::Disconnected);
                            tracing::warn!("renewing lease {}: {e:#}; retrying in {}s", self.lease.subnet, RENEW_RETRY.as_secs());
                            Some(tokio::time::Instant::now() + RENEW_RETRY)
                        }
                    };
                }
                _ = resync.tick() => self.resync().await?,
                () = sleep_until(self.restart.map(|r| r.at)) => self.restart_backend().await?,
                _ = sighup.recv() => self.reload("SIGHUP", true).await?,
                _ = plugin_files.tick() => {
                    let now = plugins::dir_fingerprint(&self.plugin_dir);
                    if now != self.plugin_files {
                        self.plugin_files = now;
                        self.reload("the plugin directory changed", false).await?;
                    }
                }
                _ = stats.tick() => {
                    self.sync_watch_connects();
                    self.check_datapath().await?;
                }
                _ = sigterm.recv() => return self.stop("SIGTERM").await,
                _ = sigint.recv() => return self.stop("SIGINT").await,
            }
        }
    }

    async fn on_watch(&mut self, event: WatchEvent) -> anyhow::Result<()> {
        let events = match event {
            WatchEvent::Snapshot(leases) => {
                self.api.set_leases(&leases);
                match leases.iter().find(|l| l.subnet == self.lease.subnet) {
                    Some(l) => self.check_own(l)?,
                    None => bail!(
                        "our lease {} is gone from the store; shutting down (as flanneld does)",
                        self.lease.subnet
                    ),
                }
                let admitted: Vec<Lease> = leases.into_iter().filter(|l| self.admit(l)).collect();
                self.peers.reset(admitted)
            }
            WatchEvent::Events(events) => {
                let mut admitted = Vec::with_capacity(events.len());
                for e in events {
                    self.api.apply_lease_event(&e);
                    self.metrics.lease_event(match e {
                        LeaseEvent::Added(_) => LeaseEventKind::Added,
                        LeaseEvent::Removed(_) => LeaseEventKind::Removed,
                    });
                    match &e {
                        LeaseEvent::Removed(l) if l.subnet == self.lease.subnet => bail!(
                            "our lease {} has been revoked; shutting down (as flanneld does)",
                            self.lease.subnet
                        ),
                        LeaseEvent::Added(l) if l.subnet == self.lease.subnet => {
                            self.check_own(l)?
                        }
                        LeaseEvent::Added(l) if !self.admit(l) => {}
                        _ => admitted.push(e),
                    }
                }
                self.peers.apply(admitted)
            }
        };
        for e in &events {
            match e {
                LeaseEvent::Added(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer added")
                }
                LeaseEvent::Removed(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer removed")
                }
            }
        }
        self.apply(events).await
    }

    /// Our own lease as the store reports it: still ours, or we stop.
    fn check_own(&mut self, lease: &Lease) -> anyhow::Result<()> {
        if lease.attrs.public_ip != self.attrs.public_ip {
            bail!(
                "our lease {} now belongs to {}; shutting down (as flanneld does)",
                lease.subnet,
                lease.attrs.public_ip
            );
        }
        self.lease.expires = lease.expires;
        self.api.set_own_lease_expiry(lease.expires);
        Ok(())
    }

    /// Whether a peer lease is one this network can have: a SubnetLen subnet inside the
    /// network, not overlapping ours. Anything else is skipped with a warning naming it.
    fn admit(&self, lease: &Lease) -> bool {
        let ok = lease.subnet.prefix() == self.config.subnet_len
            && self.config.network.contains_subnet(&lease.subnet)
            && !lease.subnet.overlaps(&self.lease.subnet);
        if !ok {
            tracing::warn!(
                key = %lease.subnet.key(), public_ip = %lease.attrs.public_ip,
                "skipping lease: not a /{} subnet of {} apart from ours {}",
                self.config.subnet_len, self.config.network, self.lease.subnet
            );
        }
        ok
    }

    /// Repeat `init` and `start` (they recreate a missing device with the same MAC and
    /// address) and re-send every peer (re-adds missing routes, neighbours, FDB entries).
    async fn resync(&mut self) -> anyhow::Result<()> {
        self.sync_watch_connects();
        if self.restart.is_some() {
            return Ok(());
        }
        let plugin = self.backend.plugin().to_owned();
        let started = std::time::Instant::now();
        let registration = self.backend.init(self.node_info()).await;
        self.metrics.plugin_call(&plugin, "init", started.elapsed());
        match registration {
            Ok(r) if r.backend_data != self.attrs.backend_data => tracing::warn!(
                "backend now registers {:?} but our lease has {:?}",
                r.backend_data,
                self.attrs.backend_data
            ),
            Ok(_) => {}
            Err(e @ CallError::Backend { .. }) => tracing::error!("resync: {e}"),
            Err(e) => {
                self.backend_trapped(e);
                return Ok(());
            }
        }
        let started = std::time::Instant::now();
        let result = self.backend.start(self.lease.subnet).await;
        self.metrics
            .plugin_call(&plugin, "start", started.elapsed());
        match result {
            Ok(()) => {}
            Err(e @ CallError::Backend { .. }) => tracing::error!("resync: {e}"),
            Err(e) => {
                self.backend_trapped(e);
                return Ok(());
            }
        }
        let all = self.replay_events();
        tracing::debug!(peers = all.len(), "periodic resync");
        self.apply(all).await
    }

    /// Hand a batch to the backend and record what came of each peer. A peer's error is
    /// logged when it appears or changes (naming the peer) and kept as the peer's state;
    /// the next resync tries again. A trap stops the daemon.
    async fn apply(&mut self, events: Vec<LeaseEvent>) -> anyhow::Result<()> {
        let sent: Vec<(Subnet, bool, std::net::Ipv4Addr)> = events
            .iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => (l.subnet, true, l.attrs.public_ip),
                LeaseEvent::Removed(l) => (l.subnet, false, l.attrs.public_ip),
            })
            .collect();
        for e in &events {
            if let LeaseEvent::Added(l) = e {
                self.api.peer_pending(l);
            }
        }
        if let Some(datapath) = &self.datapath {
            datapath.update(&events);
        }
        if self.restart.is_some() {
            // The backend is down; the restart replays every current lease (and
            // removes what it was given that is gone now).
            return Ok(());
        }
        for e in &events {
            match e {
                LeaseEvent::Added(l) => {
                    self.handed.insert(l.subnet, l.clone());
                }
                LeaseEvent::Removed(l) => {
                    self.handed.remove(&l.subnet);
                }
            }
        }
        let plugin = self.backend.plugin().to_owned();
        let started = std::time::Instant::now();
        let result = self.backend.on_leases(events).await;
        self.metrics
            .plugin_call(&plugin, "on-leases", started.elapsed());
        self.sync_plugin_stats(&plugin);
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e @ CallError::Backend { .. }) => {
                tracing::error!("{e}");
                self.api.plugin_error(&plugin, e.to_string());
                return Ok(());
            }
            Err(e) => {
                self.backend_trapped(e);
                return Ok(());
            }
        };
        if outcomes.len() != sent.len() {
            tracing::warn!(
                "backend answered {} outcomes for {} lease events",
                outcomes.len(),
                sent.len()
            );
        }
        for ((subnet, added, public_ip), outcome) in sent.into_iter().zip(outcomes) {
            if !added {
                if let Err(e) = &outcome.result {
                    tracing::warn!(%subnet, %public_ip, "removing peer: {e}");
                }
                self.peer_states.remove(&subnet);
                self.api.peer_removed(subnet);
                continue;
            }
            let state = self.peer_states.entry(subnet).or_default();
            match outcome.result {
                Ok(programmed) => {
                    if state.error.is_some() || state.programmed.as_deref() != Some(&programmed) {
                        tracing::info!(%subnet, %public_ip, "peer programmed: {programmed}");
                    }
                    self.api.peer_programmed(subnet, programmed.clone());
                    state.error = None;
                    state.programmed = Some(programmed);
                }
                Err(e) => {
                    let message = e.to_string();
                    self.api.peer_error(subnet, message.clone());
                    if state.error.as_ref().map(|(m, _)| m) != Some(&message) {
                        tracing::warn!(%subnet, %public_ip, "peer not programmed: {message}");
                        state.error = Some((message, SystemTime::now()));
                    }
                    state.programmed = None;
                }
            }
        }
        Ok(())
    }

    /// The backend trapped (or its thread is gone): count it and schedule a restart
    /// from a fresh Store, 1 s after the first trap, doubling up to 30 s while it keeps
    /// trapping within a minute of its last restart. The daemon goes on; the kernel
    /// state the plugin made stays, so traffic keeps flowing meanwhile.
    fn backend_trapped(&mut self, e: impl std::fmt::Display) {
        let plugin = self.plugin.name.clone();
        self.api.plugin_trap(&plugin, e.to_string());
        self.metrics.plugin_trap(&plugin);
        let now = tokio::time::Instant::now();
        let (backoff, attempt) = match self.last_restart {
            Some(last) if now.saturating_duration_since(last.at) < RESTART_HEALTHY => {
                ((last.backoff * 2).min(RESTART_MAX), last.attempt + 1)
            }
            _ => (RESTART_FIRST, 1),
        };
        tracing::error!(
            plugin = %plugin, attempt,
            "backend plugin failed: {e}; restarting it from a fresh instance in {}s",
            backoff.as_secs()
        );
        self.restart = Some(Restart {
            at: now + backoff,
            backoff,
            attempt,
        });
    }

    /// What `init` gets: the `Backend` config and our published BackendData (so a fresh
    /// instance keeps identifiers such as the VTEP MAC).
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            config: self.config.backend.json.clone(),
            previous_data: self.attrs.backend_data.clone(),
        }
    }

    /// Bring a fresh instance to where the running one is: `init`, which must register
    /// the BackendType our lease has, then `start` with our subnet.
    async fn bring_up(&self, backend: &Backend) -> Result<Registration, CallError> {
        let registration = backend.init(self.node_info()).await?;
        if registration.backend_type != self.attrs.backend_type {
            return Err(CallError::Backend {
                plugin: backend.plugin().to_owned(),
                function: "init",
                error: BackendError {
                    kind: ErrorKind::Invalid,
                    message: format!(
                        "registers BackendType {:?}, the lease has {:?}",
                        registration.backend_type, self.attrs.backend_type
                    ),
                },
            });
        }
        backend.start(self.lease.subnet).await?;
        Ok(registration)
    }

    /// Start the backend again from a fresh Store: `init` (with our published
    /// BackendData, so identifiers such as the VTEP MAC stay), `start`, then every
    /// current lease replayed.
    async fn restart_backend(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.restart.take() else {
            return Ok(());
        };
        self.last_restart = Some(Restart {
            at: tokio::time::Instant::now(),
            ..pending
        });
        let plugin = self.plugin.name.clone();
        match self.host.spawn(&self.plugin, self.grant.clone()) {
            Ok(backend) => drop(std::mem::replace(&mut self.backend, backend)),
            Err(e) => {
                self.backend_trapped(e);
                return Ok(());
            }
        }
        self.denied_seen.clear();
        self.metrics.plugin_restart(&plugin);
        self.api.plugin_restart(&plugin);
        match self.bring_up(&self.backend).await {
            Ok(r) if r.backend_data != self.attrs.backend_data => tracing::warn!(
                "restarted backend registers {:?} but our lease has {:?}",
                r.backend_data,
                self.attrs.backend_data
            ),
            Ok(_) => {}
            Err(e @ CallError::Backend { .. }) => tracing::error!("restart: {e}"),
            Err(e) => {
                self.backend_trapped(e);
                return Ok(());
            }
        }
        if let Err(e) = self.restart_datapath().await {
            self.backend_trapped(format!("{e:#}"));
            return Ok(());
        }
        let all = self.replay_events();
        let replayed = all.len();
        self.apply(all).await?;
        if self.restart.is_none() {
            tracing::info!(
                plugin = %plugin, attempt = pending.attempt, replayed,
                "backend plugin restarted; current leases replayed"
            );
        }
        Ok(())
    }

    /// Hot reload: resolve the backend again (plugin directory, then built-ins) and, if
    /// it changed (or `force`, for SIGHUP), swap in a fresh instance of it without
    /// touching kernel state: the new instance runs `init` (keeping our BackendData),
    /// `start`, then receives every current lease and reconciles. If the new one cannot
    /// be loaded or started, the running instance stays.
    async fn reload(&mut self, why: &str, force: bool) -> anyhow::Result<()> {
        let kind = self.config.backend.kind.clone();
        let resolved =
            tokio::task::block_in_place(|| plugins::resolve(&self.host, &self.plugin_dir, &kind));
        let plugin = match resolved {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reload ({why}): {e:#}; keeping the running plugin");
                return Ok(());
            }
        };
        if !force && plugin.sha256 == self.plugin.sha256 && plugin.source == self.plugin.source {
            return Ok(());
        }
        tracing::info!(
            plugin = %plugin.name, from = %self.plugin.sha256, to = %plugin.sha256,
            source = %plugin.source, "reloading the backend plugin ({why})"
        );
        let started = std::time::Instant::now();
        let backend = match self.host.spawn(&plugin, self.grant.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("reload ({why}): {e}; keeping the running plugin");
                return Ok(());
            }
        };
        let ready = self.bring_up(&backend).await.map_err(anyhow::Error::from);
        // A data-path plugin must also attach, before anything is swapped: the running
        // data path stays until its successor is known to start.
        let ready = ready.and_then(|_| {
            if !plugin.has_datapath() {
                return Ok(());
            }
            self.host
                .datapath(
                    &plugin,
                    self.grant.clone(),
                    backend.stats().clone(),
                    &self.config.backend.json,
                    self.lease.subnet,
                )
                .map(drop)
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = ready {
            tracing::warn!("reload ({why}): {e:#}; keeping the running plugin");
            return Ok(());
        }
        let old = std::mem::replace(&mut self.backend, backend);
        let previous = std::mem::replace(&mut self.plugin, plugin);
        self.denied_seen.clear();
        self.api.update_plugin(&previous.name, |p| {
            p.version = self.plugin.version.clone();
            p.wit_version = self.plugin.wit_version.clone();
            p.sha256 = self.plugin.sha256.clone();
            p.source = self.plugin.source.clone();
            p.capabilities = self.plugin.capabilities.clone();
        });
        if let Err(e) = old.shutdown().await {
            tracing::debug!("the replaced instance: {e}");
        }
        if let Err(e) = self.restart_datapath().await {
            self.backend_trapped(format!("{e:#}"));
        }
        let all = self.replay_events();
        let replayed = all.len();
        self.apply(all).await?;
        tracing::info!(
            plugin = %self.plugin.name, version = %self.plugin.version, replayed,
            took_ms = started.elapsed().as_millis(),
            "backend plugin reloaded; current leases replayed"
        );
        Ok(())
    }

    /// What a fresh instance must be told: a removal for every peer the backend was
    /// given that is gone now (it may have left while the backend was down), then every
    /// current peer.
    fn replay_events(&self) -> Vec<LeaseEvent> {
        let current: std::collections::BTreeSet<Subnet> =
            self.peers.leases().map(|l| l.subnet).collect();
        let gone = self
            .handed
            .values()
            .filter(|l| !current.contains(&l.subnet))
            .cloned()
            .map(LeaseEvent::Removed);
        gone.chain(self.peers.leases().cloned().map(LeaseEvent::Added))
            .collect()
    }

    /// A data path that stopped (a trap in one of its instances) stops the daemon, as a
    /// control-plane trap does.
    async fn check_datapath(&mut self) -> anyhow::Result<()> {
        let plugin = self.backend.plugin().to_owned();
        self.sync_plugin_stats(&plugin);
        let Some(failure) = self.datapath.as_ref().and_then(|d| d.failure()) else {
            return Ok(());
        };
        if let Some(datapath) = self.datapath.take() {
            tokio::task::spawn_blocking(move || datapath.stop()).await?;
        }
        // Restarted with the backend: fresh instances on the same TUN device and socket.
        self.backend_trapped(failure);
        Ok(())
    }

    /// (Re)start the data path of a backend that exports one, on the TUN device and
    /// socket the plugin had the host open, with fresh instances of the current plugin.
    async fn restart_datapath(&mut self) -> anyhow::Result<()> {
        if let Some(datapath) = self.datapath.take() {
            tokio::task::spawn_blocking(move || datapath.stop()).await?;
        }
        if !self.plugin.has_datapath() {
            return Ok(());
        }
        let setup = twill_datapath::Setup {
            host: &self.host,
            plugin: &self.plugin,
            grant: self.grant.clone(),
            stats: self.backend.stats().clone(),
            config: &self.config.backend.json,
            own: self.lease.subnet,
            counters: Arc::new(UdpCounters(self.metrics.clone())),
        };
        let peers: Vec<LeaseEvent> = self
            .peers
            .leases()
            .cloned()
            .map(LeaseEvent::Added)
            .collect();
        self.datapath = Some(Pump::start(setup, &peers)?);
        Ok(())
    }

    /// Report watch (re)connects the store made since the last look.
    fn sync_watch_connects(&mut self) {
        let total = self.store.watch_connects();
        for _ in self.watch_connects_seen..total {
            self.metrics.etcd_watch_connect();
        }
        self.watch_connects_seen = total;
    }

    /// Copy the plugin host's counters: calls by function into the API, and host calls
    /// denied since the last look into the API and the metrics.
    fn sync_plugin_stats(&mut self, plugin: &str) {
        let calls = self.backend.stats().calls();
        self.api.update_plugin(plugin, |p| {
            p.calls = calls.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect();
        });
        for (capability, total) in self.backend.stats().denied() {
            let seen = self.denied_seen.entry(capability).or_default();
            for _ in *seen..total {
                self.metrics.denied_host_call(capability);
                self.api.plugin_denied(plugin, capability);
            }
            *seen = total;
        }
    }

    fn renew_deadline(&self) -> Option<tokio::time::Instant> {
        let expires = self.lease.expires?;
        let wait = expires
            .checked_sub(self.renew_margin)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + wait)
    }

    async fn renew(&mut self) -> anyhow::Result<()> {
        let expires = self
            .store
            .renew_lease(self.lease.subnet, &self.attrs, LEASE_TTL)
            .await?;
        self.lease.expires = expires;
        self.api.set_own_lease_expiry(expires);
        tracing::info!(subnet = %self.lease.subnet, ?expires, "renewed lease");
        Ok(())
    }

    async fn stop(self, signal: &str) -> anyhow::Result<()> {
        tracing::info!("{signal} received; stopping (kernel objects and lease stay in place)");
        if let Some(datapath) = self.datapath {
            tokio::task::spawn_blocking(move || datapath.stop()).await?;
        }
        if let Err(e) = self.backend.shutdown().await {
            tracing::warn!("{e}");
        }
        Ok(())
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
