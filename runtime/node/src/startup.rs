//! From `twill run` to a running node, as named steps: the interface, the store and
//! its config, the plugin, the backend's `init`, the lease, the previous backend's
//! objects, `start` (and the data path), subnet.env.

use std::sync::Arc;

use anyhow::Context;
use twill_api::{NodeInfo as ApiNode, Plugin as ApiPlugin, StoreState};
use twill_core::Config;
use twill_core::lease::{Lease, LeaseAttrs};
use twill_core::subnet_env::SubnetEnv;
use twill_datapath::Pump;
use twill_net::{Kernel, KernelOp, Netlink, Observed};
use twill_plugin_host::{
    Backend, ExternalIface, Grant, Limits, NodeInfo, Plugin, PluginHost, Registration,
};
use twill_store::{
    AcquireError, EmbeddedStore, EtcdOptions, EtcdStore, LeaseStore, LeaseWatch, acquire_listed,
};

use crate::failure::{Classify, Failure};
use crate::peers::Peers;
use crate::report::Report;
use crate::retry::{Backoff, CONFIG_POLL, retry};
use crate::supervisor::Supervised;
use crate::{Node, OwnLease};
use crate::{Options, StoreKind, iface, plugins, subnet_file, switch};

/// Steps 1-3 of the daemon, then its loop until SIGTERM/SIGINT: the kernel and the
/// interface, the store `--store` names, then the node on it.
///
/// SIGTERM or SIGINT during these steps (waiting for etcd, say) stops the daemon at
/// once with exit status 0, as it does later; nothing is torn down.
pub(super) async fn run(
    args: Options,
    report: Report,
    mut signals: crate::Signals,
) -> anyhow::Result<()> {
    let kernel = open_kernel(&report).await.or_fail_as(Failure::Node)?;
    let (external, public_ip) = resolve_iface(&args, &kernel)
        .await
        .or_fail_as(Failure::Node)?;
    report.api.set_store_state(StoreState::Connecting);
    report.api.set_store_unready_after(args.store_unready_after);
    let iface = (kernel, external, public_ip);
    macro_rules! until_stopped {
        ($step:expr) => {
            tokio::select! {
                result = $step => result,
                signal = signals.stopped() => {
                    tracing::info!("{signal} received during startup; stopping");
                    return Ok(());
                }
            }
        };
    }
    match args.store {
        StoreKind::Embedded => {
            let store = until_stopped!(open_embedded(&args)).or_fail_as(Failure::Store)?;
            let (node, watch, listed) = until_stopped!(with_store(args, report, iface, store))?;
            node.run(signals, watch, listed).await
        }
        StoreKind::Etcd => {
            let store = until_stopped!(connect_etcd(&args)).or_fail_as(Failure::Store)?;
            let (node, watch, listed) = until_stopped!(with_store(args, report, iface, store))?;
            node.run(signals, watch, listed).await
        }
    }
}

/// Everything up to a node that holds its lease, has its backend started and
/// subnet.env written; with the lease watch, and its first listing with our lease as
/// acquired (see [`Node::run`]).
async fn with_store<S: LeaseStore>(
    args: Options,
    report: Report,
    (kernel, external, public_ip): (Arc<dyn Kernel>, ExternalIface, std::net::Ipv4Addr),
    store: S,
) -> anyhow::Result<(Node<S>, LeaseWatch, Vec<Lease>)> {
    let config = wait_for_config(&store, &args.etcd_prefix).await?;
    report.api.set_store_state(StoreState::Connected);
    check_network_apart_from_underlay(&config, &external, public_ip).or_fail_as(Failure::Config)?;
    tracing::info!(
        network = %config.network, subnet_len = config.subnet_len,
        subnet_min = %config.subnet_min, subnet_max = %config.subnet_max,
        backend = %config.backend.kind, "network config"
    );
    let (host, plugin) =
        load_plugin(&args, kernel.clone(), &config).or_fail_as(Failure::Backend)?;
    describe_node(&args, &report, &external, public_ip, &config, &plugin);

    // One listing serves the start: the lease watch's first, read here for our previous
    // lease and the subnet choice, and handed to the backend once the node runs; the
    // watch goes on from its revision, so what changes meanwhile arrives as events.
    // (Three listings, 15 ms each at 5,000 leases, were a tenth of a join.)
    let (mut leases, watch) = retry("list leases", || store.list_and_watch())
        .await
        .or_fail_as(Failure::Store)?;
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
        // The config's Port, else flannel's defaults (security review L-2).
        ports: config
            .backend
            .port()
            .map_or_else(|| twill_plugin_host::DEFAULT_PORTS.to_vec(), |p| vec![p]),
    };
    let backend = host
        .spawn(&plugin, grant.clone())
        .or_fail_as(Failure::Backend)?;
    let registration = init_backend(&backend, &config, previous_data, &report, external.mtu)
        .await
        .or_fail_as(Failure::Backend)?;
    let attrs = LeaseAttrs::new(
        public_ip,
        &registration.backend_type,
        registration.backend_data.as_deref(),
    )
    .context("backend registered invalid BackendData")
    .or_fail_as(Failure::Backend)?;
    let previous_subnet = subnet_file::read_previous(&args.subnet_file);
    let lease = acquire_with_retry(&store, &config, &attrs, previous_subnet, leases.clone())
        .await
        .or_fail_as(Failure::Lease)?;
    tracing::info!(subnet = %lease.subnet, expires = ?lease.expires, "holding lease");
    report.api.set_subnet(lease.subnet);
    report.api.set_lease_held(true);
    report.api.set_own_lease_expiry(lease.expires.at());

    // What ran before: our lease says, or, when it ran out while the node was down,
    // the flannel devices still on the node.
    let previous_types = match previous_type {
        Some(t) => (t != registration.backend_type)
            .then_some(t)
            .into_iter()
            .collect(),
        None => {
            let (k, current) = (kernel.clone(), registration.backend_type.clone());
            tokio::task::spawn_blocking(move || switch::left_behind(k.as_ref(), &current))
                .await?
                .context("list the devices an earlier backend left")
                .or_fail_as(Failure::Node)?
        }
    };
    for previous in previous_types {
        purge_previous(&kernel, previous, &registration, &config, &lease, &external).await?;
    }
    // Before this run's instance makes anything: what earlier runs left.
    let earlier_run = {
        let (k, network, own) = (kernel.clone(), config.network, lease.subnet);
        tokio::task::spawn_blocking(move || {
            twill_plugin_host::left_by_an_earlier_run(k.as_ref(), network, own)
        })
        .await?
    };
    report
        .plugin_call(backend.plugin(), "start", backend.start(lease.subnet))
        .await
        .or_fail_as(Failure::Backend)?;
    let peers = Peers::new(lease.subnet, &config, public_ip);
    let datapath = if plugin.has_datapath() {
        let setup = twill_datapath::Setup {
            host: &host,
            plugin: &plugin,
            grant: grant.clone(),
            stats: backend.stats().clone(),
            config: &config.backend.json,
            own: lease.subnet,
            counters: report.udp_counters(),
        };
        // Seeded with the peers known now, so the first packets find their peer.
        Some(Pump::start(setup, &peers.admitted(&leases))?)
    } else {
        None
    };
    let traffic = install_rules(&args, &config, &lease)
        .await
        .or_fail_as(Failure::Node)?;
    write_env(&args, &config, &lease, &registration, &report)?;
    // The listing as acquiring left it: our lease as written, and without the leases
    // with our PublicIP that no longer fit the config, which acquiring deleted (the
    // watch says so too).
    leases.retain(|l| {
        l.subnet != lease.subnet && (l.attrs.public_ip != public_ip || config.fits(&l.subnet))
    });
    leases.push(lease.clone());
    let node = Node {
        own: OwnLease {
            store,
            config,
            attrs,
            lease,
            renew_margin: args.renew_margin,
            renew_at: None,
            missing: false,
            taken: false,
            taken_by: std::net::Ipv4Addr::UNSPECIFIED,
            subnet_file: args.subnet_file.clone(),
            mtu: registration.mtu,
        },
        backend: Supervised::new(
            host,
            plugin,
            grant,
            backend,
            datapath,
            args.plugin_dir,
            earlier_run,
        ),
        peers,
        traffic,
        probes: crate::Probes {
            kernel,
            settings: crate::health::ProbeSettings {
                interval: args.peer_probe_interval,
                rate: args.peer_probe_rate,
            },
        },
        resync_interval: args.resync_interval,
        config_noticed: None,
        report,
    };
    Ok((node, watch, leases))
}

/// The masquerade and forward rules the flags ask for (and removal of those they no
/// longer ask for). Masquerade that cannot be installed ends startup; forward rules
/// that cannot (no iptables here) are a warning, as they are on by default.
async fn install_rules(
    args: &Options,
    config: &Config,
    lease: &Lease,
) -> anyhow::Result<crate::Traffic> {
    let rules = crate::rules::Rules {
        masquerade: args.ip_masq,
        forward: args.iptables_forward_rules,
        random_fully: !args.ip_masq_fully_random_disable,
        network: config.network,
        own: lease.subnet,
    };
    let mut last_error = None;
    match rules.ensure().await {
        Ok(done) => {
            for (kind, outcome) in done {
                tracing::info!(?kind, ?outcome, "iptables rules");
            }
        }
        Err(e) if args.ip_masq => return Err(e.context("install the masquerade rules (--ip-masq)")),
        Err(e) => {
            tracing::warn!(
                "{e:#}; overlay traffic is not accepted explicitly where FORWARD drops (as \
                 Docker sets it); --iptables-forward-rules=false turns this off"
            );
            last_error = Some(format!("{e:#}"));
        }
    }
    Ok(crate::Traffic {
        rules,
        resync: args.iptables_resync,
        last_error,
    })
}

/// Netlink in this namespace, every request counted into the metrics.
async fn open_kernel(report: &Report) -> anyhow::Result<Arc<dyn Kernel>> {
    let netlink: Arc<dyn Kernel> = Arc::new(
        tokio::task::spawn_blocking(Netlink::new)
            .await?
            .context("open netlink")?,
    );
    let metrics = report.metrics.clone();
    Ok(Arc::new(Observed::new(
        netlink,
        move |op: KernelOp, failed| metrics.netlink_operation(op.metric_kind(), failed),
    )))
}

/// The external interface (`--iface`, else the default route's) and the public IP
/// (`--public-ip`, else the interface's address).
async fn resolve_iface(
    args: &Options,
    kernel: &Arc<dyn Kernel>,
) -> anyhow::Result<(ExternalIface, std::net::Ipv4Addr)> {
    let external = {
        let (k, wanted) = (kernel.clone(), args.iface.clone());
        tokio::task::spawn_blocking(move || iface::resolve(k.as_ref(), &wanted)).await??
    };
    let public_ip = args.public_ip.unwrap_or(external.addr);
    tracing::info!(
        iface = %external.name, index = external.index, mtu = external.mtu,
        iface_addr = %external.addr, %public_ip, "using interface"
    );
    Ok((external, public_ip))
}

/// The plugin host and the configured backend's plugin.
fn load_plugin(
    args: &Options,
    kernel: Arc<dyn Kernel>,
    config: &Config,
) -> anyhow::Result<(PluginHost, Plugin)> {
    let host = PluginHost::with_cache(
        kernel,
        Limits {
            memory_bytes: args.plugin_memory_bytes,
            call_timeout: args.plugin_call_timeout,
        },
        args.plugin_cache_dir.as_deref(),
    )
    .context("start the plugin host")?;
    let plugin = plugins::resolve(&host, args.plugin_dir.as_deref(), &config.backend.kind)?;
    tracing::info!(plugin = %plugin.name, version = %plugin.version, source = %plugin.source,
        capabilities = ?plugin.capabilities, wit_version = %plugin.wit_version,
        load_ms = plugin.load_time.as_millis(), from_cache = plugin.from_cache,
        "loaded backend plugin");
    Ok((host, plugin))
}

/// What the API says about this node and its plugin.
fn describe_node(
    args: &Options,
    report: &Report,
    external: &ExternalIface,
    public_ip: std::net::Ipv4Addr,
    config: &Config,
    plugin: &Plugin,
) {
    report.api.set_node(ApiNode {
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
    report.api.set_plugin(ApiPlugin {
        name: plugin.name.clone(),
        version: plugin.version.clone(),
        wit_version: plugin.wit_version.clone(),
        sha256: plugin.sha256.clone(),
        source: plugin.source.clone(),
        capabilities: plugin.capabilities.clone(),
        ..Default::default()
    });
}

/// The smallest MTU an IPv4 link may have (RFC 791).
const MIN_MTU: u32 = 68;

/// Whether the MTU a backend registered may go into subnet.env: it is handed to every
/// pod (security review L-3), so an MTU no link can carry, or more than the underlay's,
/// would break every new pod. Also what `twill config check` and `twill plugin test`
/// hold a plugin's `init` to.
pub fn check_registered_mtu(plugin: &str, mtu: u32, underlay_mtu: u32) -> anyhow::Result<()> {
    if !(MIN_MTU..=underlay_mtu).contains(&mtu) {
        anyhow::bail!(
            "backend {plugin} registered MTU {mtu}, outside {MIN_MTU}..={underlay_mtu} (the \
             external interface's MTU): not written to subnet.env"
        );
    }
    Ok(())
}

/// `init` with the `Backend` config and our previous BackendData.
async fn init_backend(
    backend: &Backend,
    config: &Config,
    previous_data: Option<String>,
    report: &Report,
    underlay_mtu: u32,
) -> anyhow::Result<Registration> {
    let info = NodeInfo {
        config: config.backend.json.clone(),
        previous_data,
    };
    let registration = report
        .plugin_call(backend.plugin(), "init", backend.init(info))
        .await?;
    check_registered_mtu(backend.plugin(), registration.mtu, underlay_mtu)?;
    report.api.set_backend_initialised(true);
    report.api.set_mtu(registration.mtu);
    Ok(registration)
}

/// Our previous lease had another BackendType: remove what that backend leaves behind.
async fn purge_previous(
    kernel: &Arc<dyn Kernel>,
    previous: String,
    registration: &Registration,
    config: &Config,
    lease: &Lease,
    external: &ExternalIface,
) -> anyhow::Result<()> {
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
        .with_context(|| format!("remove the objects of the previous backend ({previous:?})"))?;
    tracing::info!(
        previous = %previous, now = %registration.backend_type, removed = removed.len(),
        "backend type changed; removed the previous backend's objects: {}", removed.join(", ")
    );
    Ok(())
}

/// subnet.env, atomically.
fn write_env(
    args: &Options,
    config: &Config,
    lease: &Lease,
    registration: &Registration,
    report: &Report,
) -> anyhow::Result<()> {
    subnet_file::write(
        &args.subnet_file,
        &SubnetEnv {
            network: config.network,
            subnet: lease.subnet,
            mtu: registration.mtu,
            ip_masq: args.ip_masq,
        },
    )?;
    tracing::info!(path = %args.subnet_file.display(), mtu = registration.mtu, "wrote subnet file");
    report.api.set_subnet_env_written(true);
    Ok(())
}

/// The embedded store: open (creating) the SQLite file at `--store-path`.
async fn open_embedded(args: &Options) -> anyhow::Result<EmbeddedStore> {
    let (path, prefix) = (args.store_path.clone(), args.etcd_prefix.clone());
    let store =
        tokio::task::spawn_blocking(move || EmbeddedStore::open_creating(&path, &prefix)).await??;
    tracing::info!(path = %args.store_path.display(), "using the embedded store");
    Ok(store)
}

/// etcd: connect, retrying with a log line while it is unreachable.
async fn connect_etcd(args: &Options) -> anyhow::Result<EtcdStore> {
    let opts = EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        prefix: args.etcd_prefix.clone(),
        ca_file: args.etcd_ca_file.clone(),
        cert_file: args.etcd_cert_file.clone(),
        key_file: args.etcd_key_file.clone(),
        user: args.etcd_user.clone(),
    };
    let mut backoff = Backoff::new();
    loop {
        match EtcdStore::connect(opts.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) => backoff.wait("connect to etcd", &e).await?,
        }
    }
}

/// Wait until `<prefix>/config` exists (as flanneld does), then validate it.
async fn wait_for_config(store: &impl LeaseStore, prefix: &str) -> anyhow::Result<Config> {
    let mut logged = false;
    let mut backoff = Backoff::new();
    loop {
        match store.get_config().await {
            Ok(Some(text)) => {
                let config = Config::parse(&text).or_fail_as(Failure::Config)?;
                for notice in Config::notices(&text) {
                    tracing::warn!("network config at {prefix}/config: {notice}");
                }
                return Ok(config);
            }
            Ok(None) => {
                if !logged {
                    tracing::info!("waiting for the network config at {prefix}/config");
                    logged = true;
                }
                backoff = Backoff::new();
                tokio::time::sleep(CONFIG_POLL).await;
            }
            Err(e) => backoff
                .wait("cannot read the network config from the store", &e)
                .await
                .or_fail_as(Failure::Store)?,
        }
    }
}

/// The cluster network must not contain the node's own addresses: routes to peers'
/// subnets would then take over the underlay (security review M-1).
fn check_network_apart_from_underlay(
    config: &Config,
    external: &ExternalIface,
    public_ip: std::net::Ipv4Addr,
) -> anyhow::Result<()> {
    for (addr, what) in [
        (public_ip, "public IP"),
        (external.addr, "interface address"),
    ] {
        if config.network.contains(addr) {
            anyhow::bail!(
                "network config field Network: {} contains this node's {what} {addr} (on {}): \
                 routes to peers' subnets would take over the underlay; the cluster network \
                 must not include the nodes' own addresses",
                config.network,
                external.name
            );
        }
    }
    Ok(())
}

/// `acquire`, retried while the store is unreachable; a full network is fatal.
async fn acquire_with_retry(
    store: &impl LeaseStore,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<twill_core::Subnet>,
    listed: Vec<Lease>,
) -> anyhow::Result<Lease> {
    let mut backoff = Backoff::new();
    // The first try chooses from the start's listing; a retry lists afresh.
    let mut listed = Some(listed);
    loop {
        match acquire_listed(store, config, attrs, previous, listed.take()).await {
            Ok(acquired) => return Ok(acquired.lease),
            Err(AcquireError::Store(e)) => backoff
                .wait("acquire a lease", &e)
                .await
                .or_fail_as(Failure::Store)?,
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
