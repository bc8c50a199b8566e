//! The one place where what the daemon observes is written to both the API state and
//! the metrics, so the two cannot disagree: lease events, plugin calls, traps,
//! restarts, denied host calls, watch connects, and the udp data path's counters.

use std::collections::BTreeMap;
use std::sync::Arc;

use twill_api::{ApiState, LeaseEventKind, Metrics};
use twill_core::Subnet;
use twill_core::lease::LeaseEvent;
use twill_datapath::{Counters, Direction, DropReason};
use twill_plugin_host::PluginStats;

pub(super) struct Report {
    pub(super) api: ApiState,
    pub(super) metrics: Arc<Metrics>,
    /// Denied host calls already reported, by capability (the plugin host counts
    /// totals per instance).
    denied_seen: BTreeMap<&'static str, u64>,
    /// Watch connects already reported (the store counts totals).
    watch_connects_seen: u64,
}

impl Report {
    pub(super) fn new(api: ApiState, metrics: Arc<Metrics>) -> Self {
        Self {
            api,
            metrics,
            denied_seen: BTreeMap::new(),
            watch_connects_seen: 0,
        }
    }

    /// A store event, before admission: the API lists every lease.
    pub(super) fn lease_event(&self, e: &LeaseEvent) {
        self.api.apply_lease_event(e);
        self.metrics.lease_event(match e {
            LeaseEvent::Added(_) => LeaseEventKind::Added,
            LeaseEvent::Removed(_) => LeaseEventKind::Removed,
        });
    }

    /// We re-created our lease (or wrote ours back over a changed value).
    pub(super) fn lease_reclaimed(&self) {
        self.metrics.lease_reclaimed();
    }

    /// Another node took our subnet `from`; we moved to `to`.
    pub(super) fn subnet_moved(&self, from: Subnet, to: Subnet, taken_by: std::net::Ipv4Addr) {
        self.metrics.subnet_moved();
        self.api.set_subnet_moved(from, to, taken_by);
    }

    /// Make one call into the plugin, counting it and how long it took
    /// (`twill_plugin_calls_total`, `twill_plugin_call_duration_seconds`): every call,
    /// at startup, in a resync, a restart or a reload alike.
    pub(super) async fn plugin_call<T>(
        &self,
        plugin: &str,
        function: &str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = std::time::Instant::now();
        let result = call.await;
        self.metrics
            .plugin_call(plugin, function, started.elapsed());
        result
    }

    /// The plugin trapped.
    pub(super) fn plugin_trapped(&self, plugin: &str, message: String) {
        self.api.plugin_trap(plugin, message);
        self.metrics.plugin_trap(plugin);
    }

    /// A fresh instance replaced the plugin's: its host-side counts start at zero.
    pub(super) fn new_instance(&mut self) {
        self.denied_seen.clear();
    }

    /// The plugin was restarted after a trap.
    pub(super) fn plugin_restarted(&mut self, plugin: &str) {
        self.new_instance();
        self.metrics.plugin_restart(plugin);
        self.api.plugin_restart(plugin);
    }

    /// Report the watch (re)connects the store made since the last look (`total` so far).
    pub(super) fn watch_connects(&mut self, total: u64) {
        for _ in self.watch_connects_seen..total {
            self.metrics.etcd_watch_connect();
        }
        self.watch_connects_seen = total;
    }

    /// Copy the plugin host's counters: calls by function into the API, and host calls
    /// denied since the last look into the API and the metrics.
    pub(super) fn plugin_stats(&mut self, plugin: &str, stats: &PluginStats) {
        let calls = stats.calls();
        self.api.update_plugin(plugin, |p| {
            p.calls = calls.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect();
        });
        for (capability, total) in stats.denied() {
            let seen = self.denied_seen.entry(capability).or_default();
            for _ in *seen..total {
                self.metrics.denied_host_call(capability);
                self.api.plugin_denied(plugin, capability);
            }
            *seen = total;
        }
    }

    /// The udp data path's counters, on these metrics.
    pub(super) fn udp_counters(&self) -> Arc<dyn Counters> {
        Arc::new(UdpCounters(self.metrics.clone()))
    }
}

/// The udp data path's [`Counters`] on the metrics (a newtype: the orphan rule forbids
/// implementing the data path's trait on the API's type here).
struct UdpCounters(Arc<Metrics>);

impl Counters for UdpCounters {
    fn packets(&self, direction: Direction, packets: u64, bytes: u64) {
        let direction = match direction {
            Direction::In => twill_api::Direction::In,
            Direction::Out => twill_api::Direction::Out,
        };
        self.0.udp_packets(direction, packets, bytes);
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        self.0.udp_drops_by(reason.as_str(), n);
    }
}
