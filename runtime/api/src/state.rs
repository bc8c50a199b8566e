//! [`ApiState`]: what the daemon tells the API. The daemon calls the setters as things
//! happen; the handlers take a consistent snapshot under one read lock. Nothing here
//! blocks for long: every method holds the lock only to copy or update a few fields, so
//! it is safe to call from a tokio worker.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use twill_core::{Lease, LeaseEvent, Subnet};

use crate::model::{
    BackendData, ErrorInfo, HealthCounts, LeaseEntry, PROBE_LOSSES_UNREACHABLE, Peer, PeerHealth,
    PeerState, Plugin, Status, StoreState, StoreStatus, SubnetMoved,
};
use crate::time::{rfc3339, unix_seconds};

/// The node facts `/v1/status` shows that are known once, at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub node_name: String,
    /// The node's public (underlay) address.
    pub public_ip: Option<Ipv4Addr>,
    /// The external interface.
    pub interface: String,
    /// The backend type, e.g. `vxlan`.
    pub backend_type: String,
    /// The name of the plugin serving the backend.
    pub plugin: String,
    /// The etcd endpoints.
    pub store_endpoints: Vec<String>,
}

/// Why the node is not ready: the conditions still missing, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not ready: {}", .missing.join(", "))]
pub struct NotReady {
    /// Each missing condition, e.g. `no lease held`.
    pub missing: Vec<String>,
}

/// How long the store may be unreachable before `/readyz` fails, unless the daemon
/// says otherwise ([`ApiState::set_store_unready_after`]).
pub const STORE_UNREADY_AFTER: Duration = Duration::from_secs(60);

/// The daemon's view of itself, shared with the API server. Cloning is cheap (one
/// `Arc`); every clone sees the same state.
#[derive(Debug, Clone)]
pub struct ApiState {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug)]
struct Inner {
    started_at: SystemTime,
    started: Instant,
    node: NodeInfo,
    subnet: Option<Subnet>,
    mtu: Option<u32>,
    own_lease_expiry: Option<SystemTime>,
    store_state: StoreState,
    store_since: SystemTime,
    store_unready_after: Duration,
    subnet_moved: Option<SubnetMoved>,
    lease_held: bool,
    backend_initialised: bool,
    subnet_env_written: bool,
    leases: BTreeMap<Subnet, LeaseRecord>,
    peers: BTreeMap<Subnet, PeerRecord>,
    /// Probes of each peer unanswered since its last answer.
    probe_losses: BTreeMap<Subnet, u32>,
    plugins: BTreeMap<String, Plugin>,
}

/// A lease as the state keeps it, made a [`LeaseEntry`] when asked for: the subnet is
/// its key and the expiry a time, not text (a node keeps one per lease, 20,000 of them).
#[derive(Debug, Clone)]
struct LeaseRecord {
    public_ip: Ipv4Addr,
    backend_type: String,
    backend_data: Option<BackendData>,
    expires: Option<SystemTime>,
    invalid: Option<String>,
}

impl LeaseRecord {
    fn new(lease: &Lease) -> Self {
        Self {
            public_ip: lease.attrs.public_ip,
            backend_type: lease.attrs.backend_type.clone(),
            backend_data: backend_data(lease),
            expires: lease.expires.at(),
            invalid: None,
        }
    }

    fn entry(&self, subnet: Subnet, own: bool) -> LeaseEntry {
        LeaseEntry {
            subnet: subnet.to_string(),
            public_ip: self.public_ip,
            backend_type: self.backend_type.clone(),
            backend_data: self.backend_data.clone(),
            expires_at: self.expires.map(rfc3339),
            own,
            invalid: self.invalid.clone(),
        }
    }
}

/// A peer as the state keeps it, made a [`Peer`] when asked for: the subnet is its key,
/// times are times, and what was programmed is shared with the daemon's own record.
#[derive(Debug, Clone)]
struct PeerRecord {
    public_ip: Ipv4Addr,
    backend_type: String,
    backend_data: Option<BackendData>,
    programmed: Arc<str>,
    state: PeerState,
    state_since: SystemTime,
    last_error: Option<ErrorInfo>,
    health: Option<HealthRecord>,
}

/// [`PeerHealth`], with times as times.
#[derive(Debug, Clone, Copy)]
struct HealthRecord {
    reachable: bool,
    rtt_ms: Option<f64>,
    checked_at: SystemTime,
    since: SystemTime,
    lost_in_a_row: u32,
}

impl PeerRecord {
    fn peer(&self, subnet: Subnet) -> Peer {
        Peer {
            subnet: subnet.to_string(),
            public_ip: self.public_ip,
            backend_type: self.backend_type.clone(),
            backend_data: self.backend_data.clone(),
            programmed: self.programmed.to_string(),
            state: self.state,
            state_since: rfc3339(self.state_since),
            last_error: self.last_error.clone(),
            health: self.health.map(|h| PeerHealth {
                reachable: h.reachable,
                rtt_ms: h.rtt_ms,
                checked_at: rfc3339(h.checked_at),
                since: rfc3339(h.since),
                lost_in_a_row: h.lost_in_a_row,
            }),
        }
    }
}

/// Counts that the metrics gauges mirror, read in one go at scrape time.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct GaugeView {
    pub leases: usize,
    pub pending: usize,
    pub programmed: usize,
    pub error: usize,
    pub own_lease_expiry_unix: Option<u64>,
    /// How long the store has been unreachable (0 while it answers).
    pub store_unreachable: Duration,
    /// Leases this node does not program, by reason.
    pub invalid: BTreeMap<String, usize>,
    /// Each peer whose health is decided: its subnet, whether it answers, the last RTT.
    pub health: Vec<(String, bool, Option<f64>)>,
    /// Peers by probe result.
    pub health_counts: HealthCounts,
}

/// What one probe of a peer found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeResult {
    /// Answered after this round-trip time.
    Answered(Duration),
    /// Not answered in time.
    Lost,
}

impl Default for ApiState {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiState {
    /// A fresh state; the daemon's start time (for uptime) is now. Not ready, store
    /// `connecting`, no leases, peers or plugins.
    pub fn new() -> Self {
        let now = SystemTime::now();
        Self {
            inner: Arc::new(RwLock::new(Inner {
                started_at: now,
                started: Instant::now(),
                node: NodeInfo::default(),
                subnet: None,
                mtu: None,
                own_lease_expiry: None,
                store_state: StoreState::Connecting,
                store_since: now,
                store_unready_after: STORE_UNREADY_AFTER,
                subnet_moved: None,
                lease_held: false,
                backend_initialised: false,
                subnet_env_written: false,
                leases: BTreeMap::new(),
                peers: BTreeMap::new(),
                probe_losses: BTreeMap::new(),
                plugins: BTreeMap::new(),
            })),
        }
    }

    // A handler or setter never panics while holding the lock, but if one did, the data
    // is still whole (every update is a plain assignment), so a poisoned lock is used.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- node -------------------------------------------------------------------------

    /// Set the node facts known at start (name, public IP, interface, backend, plugin,
    /// store endpoints).
    pub fn set_node(&self, node: NodeInfo) {
        self.write().node = node;
    }

    /// Set the node's own subnet (once leased).
    pub fn set_subnet(&self, subnet: Subnet) {
        self.write().subnet = Some(subnet);
    }

    /// Set the MTU the backend registered.
    pub fn set_mtu(&self, mtu: u32) {
        self.write().mtu = Some(mtu);
    }

    /// Set when the node's own lease runs out (`None` for a reservation); call after
    /// every acquire and renewal.
    pub fn set_own_lease_expiry(&self, expires: Option<SystemTime>) {
        self.write().own_lease_expiry = expires;
    }

    /// Record the store connection state and return the one before; the time of a
    /// change is kept, a repeat of the same state keeps the earlier time.
    pub fn set_store_state(&self, state: StoreState) -> StoreState {
        let mut inner = self.write();
        let before = inner.store_state;
        if before != state {
            inner.store_state = state;
            inner.store_since = SystemTime::now();
        }
        before
    }

    /// How long the store may be unreachable (state `disconnected`) before the node
    /// reports itself not ready.
    pub fn set_store_unready_after(&self, after: Duration) {
        self.write().store_unready_after = after;
    }

    /// Another node took our subnet `from` (it is `taken_by`'s now) and the node moved
    /// to `to`: shown in `/v1/status`, and `/readyz` fails from now on, since the
    /// node's containers still have addresses in `from`.
    pub fn set_subnet_moved(&self, from: Subnet, to: Subnet, taken_by: Ipv4Addr) {
        let mut inner = self.write();
        inner.subnet = Some(to);
        inner.subnet_moved = Some(SubnetMoved {
            from: from.to_string(),
            to: to.to_string(),
            taken_by,
            at: rfc3339(SystemTime::now()),
        });
    }

    // ---- readiness --------------------------------------------------------------------

    /// Whether the node holds its lease.
    pub fn set_lease_held(&self, held: bool) {
        self.write().lease_held = held;
    }

    /// Whether the backend is initialised (and started).
    pub fn set_backend_initialised(&self, initialised: bool) {
        self.write().backend_initialised = initialised;
    }

    /// Whether subnet.env is written.
    pub fn set_subnet_env_written(&self, written: bool) {
        self.write().subnet_env_written = written;
    }

    /// `Ok` when the lease is held, the backend initialised and subnet.env written.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.read().readiness()
    }

    // ---- leases -----------------------------------------------------------------------

    /// Replace every lease with a snapshot of the store.
    pub fn set_leases<'a>(&self, leases: impl IntoIterator<Item = &'a Lease>) {
        let leases = leases
            .into_iter()
            .map(|l| (l.subnet, LeaseRecord::new(l)))
            .collect();
        self.write().leases = leases;
    }

    /// Apply one store event: an addition inserts or replaces, a removal deletes.
    pub fn apply_lease_event(&self, event: &LeaseEvent) {
        let mut inner = self.write();
        match event {
            LeaseEvent::Added(lease) => {
                inner.leases.insert(lease.subnet, LeaseRecord::new(lease));
            }
            LeaseEvent::Removed(lease) => {
                inner.leases.remove(&lease.subnet);
            }
        }
    }

    /// Expiries read after their leases were listed (subnets not listed are passed
    /// over).
    pub fn set_lease_expiries(&self, expiries: &[(Subnet, SystemTime)]) {
        let mut inner = self.write();
        for (subnet, t) in expiries {
            if let Some(entry) = inner.leases.get_mut(subnet) {
                entry.expires = Some(*t);
            }
        }
    }

    /// A lease this node does not program, and why (a short reason, from a fixed set);
    /// a later event for the subnet starts it over as valid. Unknown subnets are ignored.
    pub fn lease_invalid(&self, subnet: Subnet, reason: &str) {
        if let Some(entry) = self.write().leases.get_mut(&subnet) {
            entry.invalid = Some(reason.to_owned());
        }
    }

    // ---- peers ------------------------------------------------------------------------

    /// A peer was handed to the backend (or is about to be): it becomes `pending` with
    /// the lease's attributes. The last error of a peer already known is kept; a peer
    /// handed again with the same lease (a resync, a replay) keeps its state.
    pub fn peer_pending(&self, lease: &Lease) {
        let now = SystemTime::now();
        let mut inner = self.write();
        // The same lease handed again (a resync, a restart's replay) changes nothing:
        // the peer keeps its state and `state_since`.
        if inner.peers.get(&lease.subnet).is_some_and(|p| {
            p.public_ip == lease.attrs.public_ip
                && p.backend_type == lease.attrs.backend_type
                && p.backend_data == backend_data(lease)
        }) {
            return;
        }
        let (last_error, health) = inner
            .peers
            .get(&lease.subnet)
            .map(|p| (p.last_error.clone(), p.health))
            .unwrap_or_default();
        inner.peers.insert(
            lease.subnet,
            PeerRecord {
                public_ip: lease.attrs.public_ip,
                backend_type: lease.attrs.backend_type.clone(),
                backend_data: backend_data(lease),
                programmed: Arc::from(""),
                state: PeerState::Pending,
                state_since: now,
                last_error,
                health,
            },
        );
    }

    /// The backend programmed the peer; `programmed` says what, for a person (e.g.
    /// `route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink; neigh …; fdb …`).
    /// Unknown subnets are ignored.
    pub fn peer_programmed(&self, subnet: Subnet, programmed: impl Into<Arc<str>>) {
        let now = SystemTime::now();
        if let Some(peer) = self.write().peers.get_mut(&subnet) {
            peer.programmed = programmed.into();
            set_peer_state(peer, PeerState::Programmed, now);
        }
    }

    /// The backend failed to program the peer. Unknown subnets are ignored.
    pub fn peer_error(&self, subnet: Subnet, message: impl Into<String>) {
        let now = SystemTime::now();
        if let Some(peer) = self.write().peers.get_mut(&subnet) {
            set_peer_state(peer, PeerState::Error, now);
            record_error(&mut peer.last_error, message.into(), now);
        }
    }

    /// The peer's lease went away.
    pub fn peer_removed(&self, subnet: Subnet) {
        let mut inner = self.write();
        inner.peers.remove(&subnet);
        inner.probe_losses.remove(&subnet);
    }

    /// What the probes need: our subnet (once leased) and every peer's.
    pub fn probe_targets(&self) -> (Option<Subnet>, Vec<Subnet>) {
        let inner = self.read();
        (inner.subnet, inner.peers.keys().copied().collect())
    }

    /// A probe of `subnet`'s peer ended. Returns the peer's reachability when this
    /// result changed it (or decided it for the first time); unknown subnets are
    /// ignored.
    pub fn peer_probed(&self, subnet: Subnet, result: ProbeResult) -> Option<bool> {
        let now = SystemTime::now();
        let mut inner = self.write();
        let Inner {
            peers,
            probe_losses,
            ..
        } = &mut *inner;
        let peer = peers.get_mut(&subnet)?;
        let lost = probe_losses.entry(subnet).or_default();
        let previous = peer.health;
        let (reachable, rtt_ms) = match result {
            ProbeResult::Answered(rtt) => {
                *lost = 0;
                (true, Some(rtt.as_secs_f64() * 1000.0))
            }
            ProbeResult::Lost => {
                *lost = lost.saturating_add(1);
                match previous {
                    _ if *lost >= PROBE_LOSSES_UNREACHABLE => (false, None),
                    Some(h) => (h.reachable, h.rtt_ms),
                    // Not decided yet: the loss is counted, nothing shown.
                    None => return None,
                }
            }
        };
        let changed = previous.map(|h| h.reachable) != Some(reachable);
        let since = match previous {
            Some(h) if !changed => h.since,
            _ => now,
        };
        peer.health = Some(HealthRecord {
            reachable,
            rtt_ms,
            checked_at: now,
            since,
            lost_in_a_row: *lost,
        });
        changed.then_some(reachable)
    }

    // ---- plugins ----------------------------------------------------------------------

    /// Add or replace a loaded plugin (replacing resets its counts).
    pub fn set_plugin(&self, plugin: Plugin) {
        self.write().plugins.insert(plugin.name.clone(), plugin);
    }

    /// Change a known plugin in place, e.g. to copy the host's call counts; unknown
    /// names are ignored.
    pub fn update_plugin(&self, name: &str, change: impl FnOnce(&mut Plugin)) {
        if let Some(plugin) = self.write().plugins.get_mut(name) {
            change(plugin);
        }
    }

    /// Count one call into `function` of the plugin.
    pub fn plugin_call(&self, name: &str, function: &str) {
        self.update_plugin(name, |p| {
            *p.calls.entry(function.to_owned()).or_default() += 1
        });
    }

    /// Count one refused host call of the plugin, by capability.
    pub fn plugin_denied(&self, name: &str, capability: &str) {
        self.update_plugin(name, |p| {
            *p.denied.entry(capability.to_owned()).or_default() += 1;
        });
    }

    /// Record an error a call into the plugin returned.
    pub fn plugin_error(&self, name: &str, message: impl Into<String>) {
        let now = SystemTime::now();
        self.update_plugin(name, |p| {
            record_error(&mut p.last_error, message.into(), now)
        });
    }

    /// Count a trap of the plugin; the trap becomes its last error.
    pub fn plugin_trap(&self, name: &str, message: impl Into<String>) {
        let now = SystemTime::now();
        self.update_plugin(name, |p| {
            p.traps += 1;
            record_error(&mut p.last_error, message.into(), now);
        });
    }

    /// Count a restart of the plugin.
    pub fn plugin_restart(&self, name: &str) {
        self.update_plugin(name, |p| p.restarts += 1);
    }

    // ---- views for the handlers -------------------------------------------------------

    pub(crate) fn status(&self) -> Status {
        let now = SystemTime::now();
        let inner = self.read();
        let ready = inner.readiness();
        Status {
            node_name: inner.node.node_name.clone(),
            public_ip: inner.node.public_ip,
            interface: inner.node.interface.clone(),
            subnet: inner.subnet.map(|s| s.to_string()),
            mtu: inner.mtu,
            backend_type: inner.node.backend_type.clone(),
            plugin: inner.node.plugin.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: rfc3339(inner.started_at),
            uptime_seconds: inner.started.elapsed().as_secs(),
            store: StoreStatus {
                endpoints: inner.node.store_endpoints.clone(),
                state: inner.store_state,
                since: rfc3339(inner.store_since),
            },
            lease_expires_at: inner.own_lease_expiry.map(rfc3339),
            lease_expires_in_seconds: inner.own_lease_expiry.map(|t| seconds_between(now, t)),
            subnet_moved: inner.subnet_moved.clone(),
            peer_health: inner.health_counts(),
            ready: ready.is_ok(),
            not_ready_reason: ready.err().map(|e| e.to_string()),
        }
    }

    pub(crate) fn leases(&self) -> Vec<LeaseEntry> {
        let inner = self.read();
        inner
            .leases
            .iter()
            .map(|(subnet, entry)| entry.entry(*subnet, Some(*subnet) == inner.subnet))
            .collect()
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.read()
            .peers
            .iter()
            .map(|(subnet, peer)| peer.peer(*subnet))
            .collect()
    }

    pub(crate) fn plugins(&self) -> Vec<Plugin> {
        self.read().plugins.values().cloned().collect()
    }

    pub(crate) fn gauges(&self) -> GaugeView {
        let inner = self.read();
        let count = |state| inner.peers.values().filter(|p| p.state == state).count();
        GaugeView {
            leases: inner.leases.len(),
            pending: count(PeerState::Pending),
            programmed: count(PeerState::Programmed),
            error: count(PeerState::Error),
            own_lease_expiry_unix: inner.own_lease_expiry.map(unix_seconds),
            store_unreachable: inner.store_unreachable(),
            invalid: inner
                .leases
                .values()
                .filter_map(|e| e.invalid.clone())
                .fold(BTreeMap::new(), |mut m, r| {
                    *m.entry(r).or_default() += 1;
                    m
                }),
            health: inner
                .peers
                .iter()
                .filter_map(|(subnet, p)| {
                    let h = p.health.as_ref()?;
                    Some((subnet.to_string(), h.reachable, h.rtt_ms))
                })
                .collect(),
            health_counts: inner.health_counts(),
        }
    }
}

impl Inner {
    fn health_counts(&self) -> HealthCounts {
        let mut counts = HealthCounts::default();
        for peer in self.peers.values() {
            match peer.health.as_ref().map(|h| h.reachable) {
                Some(true) => counts.reachable += 1,
                Some(false) => counts.unreachable += 1,
                None => counts.unchecked += 1,
            }
        }
        counts
    }

    /// How long the store has been unreachable; zero while it answers.
    fn store_unreachable(&self) -> Duration {
        if self.store_state == StoreState::Disconnected {
            self.store_since.elapsed().unwrap_or_default()
        } else {
            Duration::ZERO
        }
    }

    fn readiness(&self) -> Result<(), NotReady> {
        let mut missing: Vec<String> = [
            (self.lease_held, "no lease held"),
            (self.backend_initialised, "backend not initialised"),
            (self.subnet_env_written, "subnet.env not written"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, reason)| reason.to_owned())
        .collect();
        if let Some(moved) = &self.subnet_moved {
            missing.push(format!(
                "subnet moved from {} to {} at {} ({} took it): the node's containers need \
                 addresses in {}; restart twill once they have them",
                moved.from, moved.to, moved.at, moved.taken_by, moved.to
            ));
        }
        let unreachable = self.store_unreachable();
        if unreachable > self.store_unready_after {
            missing.push(format!(
                "lease store unreachable for {}s (longer than {}s)",
                unreachable.as_secs(),
                self.store_unready_after.as_secs()
            ));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NotReady { missing })
        }
    }
}

/// The lease's BackendData, kept as its text.
fn backend_data(lease: &Lease) -> Option<BackendData> {
    lease.attrs.backend_data.as_deref().map(BackendData::new)
}

fn set_peer_state(peer: &mut PeerRecord, state: PeerState, now: SystemTime) {
    if peer.state != state {
        peer.state = state;
        peer.state_since = now;
    }
}

fn record_error(slot: &mut Option<ErrorInfo>, message: String, now: SystemTime) {
    if slot.as_ref().is_some_and(|e| e.message == message) {
        return;
    }
    *slot = Some(ErrorInfo {
        message,
        since: rfc3339(now),
    });
}

/// `to - from` in whole seconds, negative when `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twill_core::LeaseAttrs;

    use super::*;

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().expect("subnet"),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), "vxlan", Some(r#"{"VNI":1}"#))
                .expect("attrs"),
            expires: twill_core::Expiry::Never,
        }
    }

    #[test]
    fn readiness_lists_every_missing_condition_in_order() {
        let state = ApiState::new();
        let err = state.readiness().expect_err("fresh state is not ready");
        assert_eq!(
            err.to_string(),
            "not ready: no lease held, backend not initialised, subnet.env not written"
        );
        state.set_lease_held(true);
        state.set_subnet_env_written(true);
        assert_eq!(
            state.readiness().expect_err("no backend").missing,
            vec!["backend not initialised"]
        );
        state.set_backend_initialised(true);
        assert_eq!(state.readiness(), Ok(()));
    }

    #[test]
    fn an_unreachable_store_makes_the_node_unready_only_after_the_grace() {
        let state = ApiState::new();
        state.set_lease_held(true);
        state.set_subnet_env_written(true);
        state.set_backend_initialised(true);
        state.set_store_unready_after(Duration::from_millis(300));
        state.set_store_state(StoreState::Disconnected);
        assert_eq!(state.readiness(), Ok(()), "within the grace");
        assert!(state.gauges().store_unreachable < Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(400));
        let err = state.readiness().expect_err("past the grace");
        assert_eq!(err.missing.len(), 1);
        assert!(
            err.missing[0].starts_with("lease store unreachable for 0s (longer than 0s)"),
            "{err}"
        );
        assert!(state.gauges().store_unreachable >= Duration::from_millis(400));
        state.set_store_state(StoreState::Connected);
        assert_eq!(state.readiness(), Ok(()));
        assert_eq!(state.gauges().store_unreachable, Duration::ZERO);
    }

    #[test]
    fn an_expiry_read_later_fills_its_lease_and_no_other() {
        let state = ApiState::new();
        let mut unread = lease("10.244.2.0/24", [192, 168, 1, 2]);
        unread.expires = twill_core::Expiry::Unread;
        let reservation = lease("10.244.3.0/24", [192, 168, 1, 3]);
        state.set_leases([&unread, &reservation]);
        let expires_at = |state: &ApiState| -> Vec<Option<String>> {
            state.leases().into_iter().map(|l| l.expires_at).collect()
        };
        assert_eq!(expires_at(&state), vec![None, None], "not read yet");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let gone = "10.244.9.0/24".parse().expect("subnet");
        state.set_lease_expiries(&[(unread.subnet, at), (gone, at)]);
        assert_eq!(
            expires_at(&state),
            vec![Some("2027-01-15T08:00:00Z".to_owned()), None],
            "the read lease has its expiry; the reservation none; no lease for the gone one"
        );
        assert_eq!(state.leases().len(), 2);
    }

    #[test]
    fn peer_error_keeps_since_for_a_repeat_and_survives_recovery() {
        let state = ApiState::new();
        let l = lease("10.244.2.0/24", [192, 168, 1, 2]);
        state.peer_pending(&l);
        state.peer_error(l.subnet, "boom");
        let first = state.peers()[0].last_error.clone().expect("error recorded");
        state.peer_error(l.subnet, "boom");
        assert_eq!(state.peers()[0].last_error.as_ref(), Some(&first));

        state.peer_programmed(l.subnet, "route");
        let peer = &state.peers()[0];
        assert_eq!(peer.state, PeerState::Programmed);
        assert_eq!(peer.programmed, "route");
        assert_eq!(peer.last_error.as_ref(), Some(&first));

        // Re-sent as added with the same lease (the periodic repair, a replay): it
        // stays programmed, since when it was.
        let since = state.peers()[0].state_since.clone();
        std::thread::sleep(Duration::from_millis(1100));
        state.peer_pending(&l);
        assert_eq!(state.peers()[0].state, PeerState::Programmed);
        assert_eq!(state.peers()[0].state_since, since);
        // A changed lease is another peer to program: pending, the error kept.
        let moved = lease("10.244.2.0/24", [192, 168, 1, 9]);
        state.peer_pending(&moved);
        assert_eq!(state.peers()[0].state, PeerState::Pending);
        assert_eq!(state.peers()[0].last_error.as_ref(), Some(&first));

        state.peer_removed(l.subnet);
        assert!(state.peers().is_empty());
    }

    #[test]
    fn leases_follow_snapshots_and_events_and_mark_the_own_one() {
        let state = ApiState::new();
        let a = lease("10.244.1.0/24", [192, 168, 1, 1]);
        let b = lease("10.244.2.0/24", [192, 168, 1, 2]);
        state.set_leases([&a, &b]);
        state.set_subnet(a.subnet);
        let own: Vec<bool> = state.leases().iter().map(|l| l.own).collect();
        assert_eq!(own, vec![true, false]);

        state.apply_lease_event(&LeaseEvent::Removed(b.clone()));
        assert_eq!(state.leases().len(), 1);
        state.apply_lease_event(&LeaseEvent::Added(b));
        assert_eq!(state.gauges().leases, 2);
        assert_eq!(
            state.leases()[1]
                .backend_data
                .as_ref()
                .map(BackendData::to_json),
            Some(serde_json::json!({"VNI": 1}))
        );
    }

    #[test]
    fn plugin_counters_ignore_unknown_plugins() {
        let state = ApiState::new();
        state.plugin_call("ghost", "init");
        assert!(state.plugins().is_empty());
        state.set_plugin(Plugin {
            name: "vxlan".into(),
            ..Plugin::default()
        });
        state.plugin_call("vxlan", "init");
        state.plugin_call("vxlan", "init");
        state.plugin_denied("vxlan", "routes");
        state.plugin_trap("vxlan", "wasm trap: unreachable");
        state.plugin_restart("vxlan");
        let p = &state.plugins()[0];
        assert_eq!(p.calls.get("init"), Some(&2));
        assert_eq!(p.denied.get("routes"), Some(&1));
        assert_eq!((p.traps, p.restarts), (1, 1));
        assert_eq!(
            p.last_error.as_ref().map(|e| e.message.as_str()),
            Some("wasm trap: unreachable")
        );
    }

    #[test]
    fn lease_expiry_counts_down_and_goes_negative() {
        let now = SystemTime::now();
        assert_eq!(seconds_between(now, now + Duration::from_secs(90)), 90);
        assert_eq!(seconds_between(now + Duration::from_secs(90), now), -90);
    }
}
