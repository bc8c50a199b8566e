//! [`Metrics`]: twill's Prometheus registry. Counters and the latency histogram are
//! recorded by the daemon through the methods here; the gauges that describe state
//! (`twill_leases_known`, `twill_peers`, `twill_own_lease_expiry_timestamp_seconds`)
//! are copied from [`ApiState`] at every scrape, so they cannot drift from what
//! `/v1/leases` and `/v1/peers` show.
//!
//! Label values come from the daemon and must be drawn from small fixed sets (function
//! names, capability names, netlink operation kinds, drop reasons), never from error
//! text: every value is a time series. The one exception is the per-peer health
//! (`twill_peer_reachable`, `twill_peer_rtt_seconds`): one series per peer subnet, as
//! many as there are peers, and gone with the peer.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::model::PeerState;
use crate::state::{ApiState, GaugeView};

/// Plugin call latency buckets, in seconds: from 100 µs up to the 30 s epoch deadline.
const CALL_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// The lease event kinds `lease_event` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEventKind {
    /// A lease appeared or changed.
    Added,
    /// A lease went away.
    Removed,
}

impl LeaseEventKind {
    fn as_str(self) -> &'static str {
        match self {
            LeaseEventKind::Added => "added",
            LeaseEventKind::Removed => "removed",
        }
    }
}

/// The direction of udp backend traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the underlay.
    In,
    /// Sent to the underlay.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: String,
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabel {
    capability: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubnetLabel {
    subnet: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// twill's metrics. Share one `Arc<Metrics>` between the daemon and the router; every
/// method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    leases_known: Gauge,
    leases_invalid: Family<ReasonLabel, Gauge>,
    peers: Family<StateLabel, Gauge>,
    lease_events: Family<KindLabel, Counter>,
    plugin_calls: Family<PluginCallLabels, Counter>,
    plugin_call_duration: HistogramFamily<FunctionLabel>,
    denied: Family<CapabilityLabel, Counter>,
    plugin_traps: Family<PluginLabel, Counter>,
    plugin_restarts: Family<PluginLabel, Counter>,
    netlink_operations: Family<KindLabel, Counter>,
    netlink_errors: Family<KindLabel, Counter>,
    etcd_watch_connects: Counter,
    lease_reclaims: Counter,
    subnet_moves: Counter,
    own_lease_expiry: Gauge,
    store_unreachable: Gauge<f64, std::sync::atomic::AtomicU64>,
    udp_packets: Family<DirectionLabel, Counter>,
    udp_bytes: Family<DirectionLabel, Counter>,
    udp_drops: Family<ReasonLabel, Counter>,
    peer_reachable: Family<SubnetLabel, Gauge>,
    peer_rtt: Family<SubnetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    peers_unreachable: Gauge,
    peer_probes: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every twill family registered. Series with a fixed label set
    /// (peer states, lease event kinds, udp directions) start at zero so that they are
    /// scraped before the first event.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            leases_known: Gauge::default(),
            leases_invalid: Family::default(),
            peers: Family::default(),
            lease_events: Family::default(),
            plugin_calls: Family::default(),
            plugin_call_duration: Family::new_with_constructor(call_histogram),
            denied: Family::default(),
            plugin_traps: Family::default(),
            plugin_restarts: Family::default(),
            netlink_operations: Family::default(),
            netlink_errors: Family::default(),
            etcd_watch_connects: Counter::default(),
            lease_reclaims: Counter::default(),
            subnet_moves: Counter::default(),
            own_lease_expiry: Gauge::default(),
            store_unreachable: Gauge::default(),
            udp_packets: Family::default(),
            udp_bytes: Family::default(),
            udp_drops: Family::default(),
            peer_reachable: Family::default(),
            peer_rtt: Family::default(),
            peers_unreachable: Gauge::default(),
            peer_probes: Family::default(),
        };
        metrics.register_all()
    }

    fn register_all(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "twill_leases_known",
            "Leases in the store, as this node last saw them",
            self.leases_known.clone(),
        );
        r.register(
            "twill_leases_invalid",
            "Leases in the store this node does not program, by reason (not_a_lease, overlaps_ours, public_ip, our_public_ip, backend_data_too_large, vtep_mac)",
            self.leases_invalid.clone(),
        );
        r.register(
            "twill_peers",
            "Remote nodes by the state of their routes (pending, programmed, error)",
            self.peers.clone(),
        );
        r.register(
            "twill_lease_events",
            "Lease events handled, by kind (added, removed)",
            self.lease_events.clone(),
        );
        r.register(
            "twill_plugin_calls",
            "Calls into a plugin, by plugin and exported function",
            self.plugin_calls.clone(),
        );
        r.register_with_unit(
            "twill_plugin_call_duration",
            "Time a call into a plugin took, by exported function",
            Unit::Seconds,
            self.plugin_call_duration.clone(),
        );
        r.register(
            "twill_plugin_denied_host_calls",
            "Host calls of a plugin refused by its grant, by capability",
            self.denied.clone(),
        );
        r.register(
            "twill_plugin_traps",
            "Plugin traps, by plugin",
            self.plugin_traps.clone(),
        );
        r.register(
            "twill_plugin_restarts",
            "Plugin restarts, by plugin",
            self.plugin_restarts.clone(),
        );
        r.register(
            "twill_netlink_operations",
            "Netlink requests made for plugins, by kind",
            self.netlink_operations.clone(),
        );
        r.register(
            "twill_netlink_errors",
            "Netlink requests that failed, by kind",
            self.netlink_errors.clone(),
        );
        r.register(
            "twill_etcd_watch_connects",
            "Lease watches started on etcd, the first one and every reconnect",
            self.etcd_watch_connects.clone(),
        );
        r.register(
            "twill_lease_reclaims",
            "Times this node re-created its own lease after it went missing from the store, or wrote its value back after it was changed there",
            self.lease_reclaims.clone(),
        );
        r.register(
            "twill_subnet_moves",
            "Times another node took this node's subnet and this node moved to a new one (its containers need new addresses)",
            self.subnet_moves.clone(),
        );
        r.register_with_unit(
            "twill_own_lease_expiry_timestamp",
            "When this node's lease runs out, as a Unix time; 0 while none is held or for a reservation",
            Unit::Seconds,
            self.own_lease_expiry.clone(),
        );
        r.register_with_unit(
            "twill_store_unreachable",
            "How long the lease store has been unreachable; 0 while it answers (/readyz fails past --store-unready-after)",
            Unit::Seconds,
            self.store_unreachable.clone(),
        );
        r.register(
            "twill_udp_packets",
            "Packets the udp backend moved, by direction (in, out)",
            self.udp_packets.clone(),
        );
        r.register_with_unit(
            "twill_udp",
            "Bytes the udp backend moved, by direction (in, out)",
            Unit::Bytes,
            self.udp_bytes.clone(),
        );
        r.register(
            "twill_udp_dropped_packets",
            "Packets the udp backend dropped, by reason",
            self.udp_drops.clone(),
        );
        r.register(
            "twill_peer_reachable",
            "Whether the peer answers this node's probes through the overlay (1) or left the last 3 unanswered (0), by peer subnet; no series until decided",
            self.peer_reachable.clone(),
        );
        r.register_with_unit(
            "twill_peer_rtt",
            "Round-trip time of the last answered probe through the overlay, by peer subnet",
            Unit::Seconds,
            self.peer_rtt.clone(),
        );
        r.register(
            "twill_peers_unreachable",
            "Peers that left the last 3 probes unanswered",
            self.peers_unreachable.clone(),
        );
        r.register(
            "twill_peer_probes",
            "Probes sent to peers through the overlay, by result (answered, lost)",
            self.peer_probes.clone(),
        );

        for result in ["answered", "lost"] {
            self.peer_probes
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        for state in PeerState::ALL {
            self.peers
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(0);
        }
        for kind in [LeaseEventKind::Added, LeaseEventKind::Removed] {
            self.lease_events
                .get_or_create(&kind_label(kind.as_str()))
                .inc_by(0);
        }
        for direction in [Direction::In, Direction::Out] {
            let label = DirectionLabel {
                direction: direction.as_str(),
            };
            self.udp_packets.get_or_create(&label).inc_by(0);
            self.udp_bytes.get_or_create(&label).inc_by(0);
        }
        self
    }

    /// Count one lease event handled.
    pub fn lease_event(&self, kind: LeaseEventKind) {
        self.lease_events
            .get_or_create(&kind_label(kind.as_str()))
            .inc();
    }

    /// Count one call into `function` of `plugin` and record how long it took.
    pub fn plugin_call(&self, plugin: &str, function: &str, took: Duration) {
        self.plugin_calls
            .get_or_create(&PluginCallLabels {
                plugin: plugin.to_owned(),
                function: function.to_owned(),
            })
            .inc();
        self.plugin_call_duration
            .get_or_create(&FunctionLabel {
                function: function.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Count one host call refused for lack of `capability`.
    pub fn denied_host_call(&self, capability: &str) {
        self.denied
            .get_or_create(&CapabilityLabel {
                capability: capability.to_owned(),
            })
            .inc();
    }

    /// Count one trap of `plugin`.
    pub fn plugin_trap(&self, plugin: &str) {
        self.plugin_traps.get_or_create(&plugin_label(plugin)).inc();
    }

    /// Count one restart of `plugin`.
    pub fn plugin_restart(&self, plugin: &str) {
        self.plugin_restarts
            .get_or_create(&plugin_label(plugin))
            .inc();
    }

    /// Count one netlink request of `kind` (e.g. `route_replace`), and whether it failed.
    pub fn netlink_operation(&self, kind: &str, failed: bool) {
        let label = kind_label(kind);
        self.netlink_operations.get_or_create(&label).inc();
        if failed {
            self.netlink_errors.get_or_create(&label).inc();
        }
    }

    /// Count one lease watch started on etcd (the first and every reconnect).
    pub fn etcd_watch_connect(&self) {
        self.etcd_watch_connects.inc();
    }

    /// Count one re-creation (or rewrite) of this node's own lease.
    pub fn lease_reclaimed(&self) {
        self.lease_reclaims.inc();
    }

    /// Count one move of this node to a new subnet.
    pub fn subnet_moved(&self) {
        self.subnet_moves.inc();
    }

    /// Count `packets` udp packets of `bytes` bytes in all moved in `direction` (one
    /// batch of the data path).
    pub fn udp_packets(&self, direction: Direction, packets: u64, bytes: u64) {
        let label = DirectionLabel {
            direction: direction.as_str(),
        };
        self.udp_packets.get_or_create(&label).inc_by(packets);
        self.udp_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// Count `n` udp packets dropped for `reason`.
    pub fn udp_drops_by(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.udp_drops
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Count one probe of a peer that was answered (or not).
    pub fn peer_probe(&self, answered: bool) {
        let result = if answered { "answered" } else { "lost" };
        self.peer_probes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The registry in the Prometheus text format (version 0.0.4), with the state
    /// gauges taken from `state` first.
    pub fn encode(&self, state: &ApiState) -> Result<String, std::fmt::Error> {
        self.observe(state.gauges());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn observe(&self, view: GaugeView) {
        self.leases_known.set(saturating_i64(view.leases));
        // Reasons no lease has any more read 0, not the last count.
        self.leases_invalid.clear();
        for (reason, count) in &view.invalid {
            self.leases_invalid
                .get_or_create(&ReasonLabel {
                    reason: reason.clone(),
                })
                .set(saturating_i64(*count));
        }
        for (state, count) in [
            (PeerState::Pending, view.pending),
            (PeerState::Programmed, view.programmed),
            (PeerState::Error, view.error),
        ] {
            self.peers
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(saturating_i64(count));
        }
        let expiry = view
            .own_lease_expiry_unix
            .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX));
        self.own_lease_expiry.set(expiry);
        self.store_unreachable
            .set(view.store_unreachable.as_secs_f64());
        // A peer that went away (or is undecided) has no series.
        self.peer_reachable.clear();
        self.peer_rtt.clear();
        for (subnet, reachable, rtt_ms) in view.health {
            let label = SubnetLabel { subnet };
            if let Some(ms) = rtt_ms {
                self.peer_rtt.get_or_create(&label).set(ms / 1000.0);
            }
            self.peer_reachable
                .get_or_create(&label)
                .set(i64::from(reachable));
        }
        self.peers_unreachable
            .set(saturating_i64(view.health_counts.unreachable));
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn kind_label(kind: &str) -> KindLabel {
    KindLabel {
        kind: kind.to_owned(),
    }
}

fn plugin_label(plugin: &str) -> PluginLabel {
    PluginLabel {
        plugin: plugin.to_owned(),
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
