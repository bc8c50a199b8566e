//! twill-node: the node daemon that `twill run` starts, as a library the binary wires
//! from its command line ([`Options`]).
//!
//! 1. Resolve the external interface and public IP; wait for the network config.
//! 2. Load the backend plugin and `init` it, with our previous BackendData so the
//!    VTEP MAC survives restarts.
//! 3. Acquire a lease; `start` the backend (and its data path); write subnet.env.
//! 4. Loop: feed peer lease changes to the backend in batches, renew the lease a
//!    margin before it expires, re-apply every peer periodically (repairs kernel state
//!    someone removed), restart a trapped plugin, reload a changed one, and stop
//!    cleanly on SIGTERM/SIGINT, leaving the kernel objects in place.
//!
//! The parts: [`startup`] (steps 1-3), [`peers`] (the store's events → the peer set),
//! [`supervisor`] (the backend: batches, traps, restarts, reloads, resync, the data
//! path), [`report`] (the one writer of API state and metrics), [`retry`] (waiting out
//! the store), [`iface`], [`plugins`], [`switch`] (the previous backend's objects),
//! [`subnet_file`].
//!
//! It is application code split from the binary, so it keeps `anyhow`: its errors end
//! in one log line and the exit code, and no caller matches on them.
#![forbid(unsafe_code)]

mod failure;
mod health;
mod iface;
pub mod leave;
mod notify;
mod own;
mod peers;
mod plugins;
mod report;
mod retry;
mod rules;
mod startup;
mod subnet_file;

pub use failure::Failure;
pub use rules::FORWARD_CHAIN;
pub use startup::check_registered_mtu;
pub use subnet_file::write_atomically;
mod supervisor;
mod switch;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use failure::Classify;
use futures::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use twill_api::{ApiState, Metrics, StoreState};
use twill_core::Config;
use twill_core::lease::{Lease, LeaseAttrs};
use twill_store::{LeaseStore, LeaseWatch};

use peers::Peers;
use report::Report;
use retry::{error_chain, sleep_until};
use supervisor::Supervised;

/// How often peers the backend failed to program are handed to it again (at most as
/// often as the full resync).
const RETRY_FAILED: Duration = Duration::from_secs(5);
/// How often counters kept elsewhere (the store's watch connects) reach the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the store is asked whether it answers (for `/readyz` and
/// `twill_store_unreachable_seconds`), and how long one such request may take.
const STORE_PROBE: Duration = Duration::from_secs(5);
/// How many requests one store probe may try.
const PROBE_TRIES: usize = 3;
/// How often the plugin directory is looked at for changed files (hot reload).
const PLUGIN_DIR_POLL: Duration = Duration::from_secs(1);

/// Which lease store the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// etcd at [`Options::etcd_endpoints`].
    Etcd,
    /// The SQLite file at [`Options::store_path`].
    Embedded,
}

/// What `twill run` was told (its flags, documented there).
#[derive(Debug, Clone)]
pub struct Options {
    pub store: StoreKind,
    pub store_path: PathBuf,
    pub etcd_endpoints: Vec<String>,
    /// The key prefix (etcd's, and the embedded store's keys).
    pub etcd_prefix: String,
    /// TLS towards etcd: its CA, our client certificate and key (PEM files).
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    /// etcd's own authentication: user name and password.
    pub etcd_user: Option<(String, String)>,
    /// Interfaces by name or IPv4 address; the first that exists wins; none: the
    /// default route's.
    pub iface: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub plugin_call_timeout: Duration,
    pub plugin_memory_bytes: usize,
    /// How long before the lease expires it is renewed.
    pub renew_margin: Duration,
    pub api_addr: SocketAddr,
    /// How long the store may be unreachable before `/readyz` fails.
    pub store_unready_after: Duration,
    /// Masquerade traffic from the network to outside it (flannel's `--ip-masq`).
    pub ip_masq: bool,
    /// Without `--random-fully` (flannel's `--ip-masq-fully-random-disable`).
    pub ip_masq_fully_random_disable: bool,
    /// Accept the network's traffic in `FORWARD` (flannel's `--iptables-forward-rules`).
    pub iptables_forward_rules: bool,
    /// How often the rules are checked and repaired (flannel's `--iptables-resync`).
    pub iptables_resync: Duration,
    /// The separate health-check listener, if any.
    pub healthz_addr: Option<SocketAddr>,
    pub plugin_dir: Option<PathBuf>,
    pub plugin_cache_dir: Option<PathBuf>,
    /// How often each peer is probed through the overlay (at most); zero: never.
    pub peer_probe_interval: Duration,
    /// At most this many peer probes a second.
    pub peer_probe_rate: u32,
    /// How often the backend is given `init`, `start` and every peer again (repairing
    /// kernel state that went missing).
    pub resync_interval: Duration,
}

/// Ask the store for the config every [`STORE_PROBE`] and send its answer (the config
/// text, to notice a change) or why there is none;
/// ends when the node loop is gone. One probe tries up to [`PROBE_TRIES`] requests
/// within its time: the etcd client spreads requests over the endpoints, and one that
/// meets a dead member while the others answer is no outage.
async fn probe_store<S: LeaseStore>(
    store: S,
    answers: tokio::sync::mpsc::Sender<Result<Option<String>, String>>,
) {
    let mut every = tokio::time::interval(STORE_PROBE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let tries = async {
            let mut last = String::new();
            for _ in 0..PROBE_TRIES {
                match store.get_config().await {
                    Ok(config) => return Ok(config),
                    Err(e) => last = error_chain(&e),
                }
            }
            Err(last)
        };
        let answer = match tokio::time::timeout(STORE_PROBE, tries).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {}s", STORE_PROBE.as_secs())),
        };
        if answers.send(answer).await.is_err() {
            return;
        }
    }
}

/// A spawned task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The signals the daemon answers, registered before anything else so that one
/// arriving during startup is not lost (nor kills the process by its default action).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("install SIGHUP handler")?,
        })
    }

    /// The next SIGTERM or SIGINT, by name.
    async fn stopped(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Run the node until SIGTERM/SIGINT (`Ok`) or a fatal error.
pub async fn run(args: Options) -> anyhow::Result<()> {
    let signals = Signals::new()?;
    let api = ApiState::new();
    let metrics = Arc::new(Metrics::new());
    let stop_api = Arc::new(tokio::sync::Notify::new());
    start_api(&args, &api, &metrics, &stop_api).await?;
    let result = startup::run(args, Report::new(api, metrics), signals).await;
    stop_api.notify_waiters();
    result
}

/// Bind the API (and the separate health listener, when asked for) before anything
/// else, so a busy address is a clear error at once; serve until `stop`.
async fn start_api(
    args: &Options,
    api: &ApiState,
    metrics: &Arc<Metrics>,
    stop: &Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut servers = vec![(
        args.api_addr,
        twill_api::router(api.clone(), metrics.clone()),
    )];
    if let Some(addr) = args.healthz_addr {
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

/// Our lease and what it rests on.
struct OwnLease<S> {
    store: S,
    config: Config,
    /// What we publish.
    attrs: LeaseAttrs,
    lease: Lease,
    renew_margin: Duration,
    /// When to renew next (or, while `missing`, to try re-creating the lease).
    renew_at: Option<tokio::time::Instant>,
    /// Our key is gone from the store and not re-created yet.
    missing: bool,
    /// Another node (`taken_by`) holds our subnet and no new one is acquired yet.
    taken: bool,
    taken_by: Ipv4Addr,
    /// subnet.env, rewritten when the node moves to another subnet.
    subnet_file: PathBuf,
    /// The MTU subnet.env states.
    mtu: u32,
}

/// The masquerade and forward rules, and what the last check of them said.
struct Traffic {
    rules: rules::Rules,
    /// How often they are checked.
    resync: Duration,
    /// The last error (logged when it changes), cleared by a clean check.
    last_error: Option<String>,
}

/// What the peer probes need (`health.rs`).
struct Probes {
    kernel: Arc<dyn twill_net::Kernel>,
    settings: health::ProbeSettings,
}

/// A running node: its lease, its backend, its peers, and where it reports.
struct Node<S> {
    own: OwnLease<S>,
    backend: Supervised,
    peers: Peers,
    traffic: Traffic,
    probes: Probes,
    resync_interval: Duration,
    report: Report,
    /// The store's config text last looked at ([`Node::check_config`]).
    config_noticed: Option<String>,
}

impl<S: LeaseStore> Node<S> {
    /// Serve until SIGTERM/SIGINT or a fatal error. `watch` is the lease watch whose
    /// first listing the start read, and `listed` that listing with our lease as
    /// acquired: it is handed over first, then the watch's changes since.
    async fn run(
        mut self,
        mut signals: Signals,
        mut watch: LeaseWatch,
        listed: Vec<Lease>,
    ) -> anyhow::Result<()> {
        let (probe_tx, mut probed) = tokio::sync::mpsc::channel(1);
        let _probe = AbortOnDrop(tokio::spawn(probe_store(self.own.store.clone(), probe_tx)));
        let _peer_probes = (!self.probes.settings.interval.is_zero()).then(|| {
            AbortOnDrop(tokio::spawn(health::run(
                self.report.api.clone(),
                self.report.metrics.clone(),
                self.probes.kernel.clone(),
                self.own.config.network,
                self.probes.settings,
            )))
        });
        let mut plugin_files = tokio::time::interval(PLUGIN_DIR_POLL);
        let mut resync = tokio::time::interval(self.resync_interval);
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        let mut retry_failed = tokio::time::interval(RETRY_FAILED.min(self.resync_interval));
        retry_failed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rules_check = tokio::time::interval(self.traffic.resync);
        rules_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        self.own.renew_at = self.renew_deadline();
        self.on_watch(twill_store::WatchEvent::Snapshot(listed))
            .await
            .or_fail_as(Failure::Backend)?;
        loop {
            tokio::select! {
                event = watch.next() => {
                    let Some(event) = event else {
                        return Err(anyhow::anyhow!("the lease watch ended")).or_fail_as(Failure::Store);
                    };
                    self.report.watch_connects(self.own.store.watch_connects());
                    self.report.api.set_store_state(StoreState::Connected);
                    // Our lease's fatal errors are classified where they arise.
                    self.on_watch(event).await.or_fail_as(Failure::Backend)?;
                }
                () = sleep_until(self.own.renew_at) => {
                    self.renew_or_reclaim().await.or_fail_as(Failure::Lease)?;
                }
                _ = resync.tick() => self.resync().await?,
                _ = retry_failed.tick() => self.retry_failed().await?,
                () = sleep_until(self.backend.restart_at()) => {
                    self.restart_backend().await.or_fail_as(Failure::Backend)?;
                }
                _ = signals.hup.recv() => self.reload("SIGHUP", true).await.or_fail_as(Failure::Backend)?,
                _ = signals.term.recv() => return self.stop("SIGTERM").await,
                _ = signals.int.recv() => return self.stop("SIGINT").await,
                _ = plugin_files.tick() => {
                    if self.backend.plugin_dir_changed() {
                        self.reload("the plugin directory changed", false).await?;
                    }
                }
                Some(answer) = probed.recv() => self.on_store_probe(answer),
                _ = rules_check.tick() => self.check_rules().await,
                _ = stats.tick() => {
                    self.report.watch_connects(self.own.store.watch_connects());
                    self.check_datapath().await?;
                }
            }
        }
    }

    /// Check the masquerade and forward rules, and repair them: one log line per
    /// repair, and per error while it stays the same.
    async fn check_rules(&mut self) {
        match self.traffic.rules.ensure().await {
            Ok(done) => {
                for (kind, outcome) in done {
                    if outcome != rules::Outcome::Unchanged {
                        tracing::warn!(
                            ?kind,
                            ?outcome,
                            "iptables rules were missing or changed; repaired"
                        );
                    }
                }
                if self.traffic.last_error.take().is_some() {
                    tracing::info!("iptables rules in place again");
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                if self.traffic.last_error.as_ref() != Some(&message) {
                    tracing::warn!(
                        "iptables rules: {message}; retrying every {}s",
                        self.traffic.resync.as_secs()
                    );
                    self.traffic.last_error = Some(message);
                }
            }
        }
    }

    /// Whether the store answered: the state `/v1/status`, `/readyz` and the metrics
    /// show, and one log line when it stops or starts answering.
    fn on_store_probe(&mut self, answer: Result<Option<String>, String>) {
        match answer {
            Ok(config) => {
                self.check_config(config);
                let was = self.report.api.set_store_state(StoreState::Connected);
                if was == StoreState::Disconnected {
                    tracing::info!("the lease store answers again");
                }
            }
            Err(e) => {
                let was = self.report.api.set_store_state(StoreState::Disconnected);
                if was != StoreState::Disconnected {
                    tracing::warn!(
                        "the lease store does not answer: {e}; traffic is unaffected, \
                         peers and our lease wait for it"
                    );
                }
            }
        }
    }

    /// The network config as the store holds it now, against the one this node runs
    /// on (read at start): a change takes effect at the next start, so say so, once
    /// per change, instead of running on the old one in silence.
    fn check_config(&mut self, text: Option<String>) {
        let Some(text) = text else { return };
        if self.config_noticed.as_deref() == Some(text.as_str()) {
            return;
        }
        match twill_core::config::Config::parse(&text) {
            Ok(now) if now == self.own.config => {}
            Ok(_) => tracing::warn!(
                "the network config in the store changed; this node keeps running on the \
                 one it started with: restart twill to apply it (docs/operations.md, \
                 \"Change the cluster's backend\")"
            ),
            Err(e) => tracing::warn!(
                "the network config in the store is not valid any more ({e}); this node \
                 keeps running on the one it started with"
            ),
        }
        self.config_noticed = Some(text);
    }

    async fn stop(self, signal: &str) -> anyhow::Result<()> {
        tracing::info!("{signal} received; stopping (kernel objects and lease stay in place)");
        notify::notify(&format!("STOPPING=1\nSTATUS=stopping ({signal})"));
        self.backend.stop().await
    }
}
