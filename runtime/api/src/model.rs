//! What the JSON endpoints return, field for field. These types are the API's wire
//! format: their snake_case field names are stable and documented in `docs/openapi.json`,
//! every field is always present (absent values are `null`), and times are RFC 3339 in
//! UTC. They deserialize too, so a client (`twill status`) can read them back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A lease's `BackendData` as the store holds it (JSON text), written out as JSON.
/// Kept as text: a parsed `serde_json::Value` per lease and per peer cost about 600
/// bytes each, a third of the daemon's memory at 20,000 peers (issue 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendData(Arc<str>);

impl BackendData {
    /// The stored text.
    pub fn new(text: &str) -> Self {
        BackendData(text.into())
    }

    /// As JSON (text that is not JSON, which the core does not let through, as a
    /// string rather than dropped).
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or_else(|_| Value::String(self.0.to_string()))
    }
}

impl Serialize for BackendData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BackendData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BackendData(
            Value::deserialize(deserializer)?.to_string().into(),
        ))
    }
}

/// `GET /healthz` and `GET /readyz` when all is well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` for `/healthz`, `"ready"` for `/readyz`.
    pub status: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person; never internals.
    pub error: String,
}

/// `GET /v1/status`: this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The node's name (flannel's `--node-name`, else the host name).
    pub node_name: String,
    /// The node's public (underlay) address, once the interface is resolved.
    pub public_ip: Option<Ipv4Addr>,
    /// The external interface.
    pub interface: String,
    /// The node's own subnet, once leased (`10.244.1.0/24`).
    pub subnet: Option<String>,
    /// The MTU the backend registered, once initialised.
    pub mtu: Option<u32>,
    /// The backend type, e.g. `vxlan`.
    pub backend_type: String,
    /// The name of the plugin serving the backend.
    pub plugin: String,
    /// twill's version.
    pub version: String,
    /// When the daemon started.
    pub started_at: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// The lease store.
    pub store: StoreStatus,
    /// When the node's own lease runs out; `null` before it is held, or for a
    /// reservation (a lease without a TTL).
    pub lease_expires_at: Option<String>,
    /// Seconds until then (negative once past).
    pub lease_expires_in_seconds: Option<i64>,
    /// Set when another node took this node's subnet and it moved to a new one: the
    /// node's containers need addresses in the new subnet.
    pub subnet_moved: Option<SubnetMoved>,
    /// Peers by what this node's probes say (`reachable`, `unreachable`, `unchecked`).
    pub peer_health: HealthCounts,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready_reason: Option<String>,
}

/// A move of this node to another subnet (its old one was taken by another node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetMoved {
    /// The subnet the node had.
    pub from: String,
    /// The subnet it has now.
    pub to: String,
    /// The PublicIP that holds `from` now.
    pub taken_by: Ipv4Addr,
    /// When the node moved.
    pub at: String,
}

/// The lease store as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The etcd endpoints the daemon was given.
    pub endpoints: Vec<String>,
    /// The connection state.
    pub state: StoreState,
    /// Since when it is in that state.
    pub since: String,
}

/// The daemon's connection to the lease store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Not connected yet.
    Connecting,
    /// Connected; the lease watch is running.
    Connected,
    /// The connection or the watch failed; the daemon is reconnecting.
    Disconnected,
}

/// `GET /v1/leases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leases {
    /// Every lease the store holds, ordered by subnet.
    pub leases: Vec<LeaseEntry>,
}

/// One lease as the store has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// The leased subnet (`10.244.1.0/24`).
    pub subnet: String,
    /// The node's public IP (flannel's `PublicIP`).
    pub public_ip: Ipv4Addr,
    /// flannel's `BackendType`; empty for flannel's udp backend.
    pub backend_type: String,
    /// flannel's `BackendData`, as stored (any JSON), or `null`.
    pub backend_data: Option<BackendData>,
    /// When the lease runs out; `null` for a reservation, and for a lease whose expiry
    /// is still being read (etcd is asked lease by lease once the peers are programmed).
    pub expires_at: Option<String>,
    /// Whether it is this node's own lease.
    pub own: bool,
    /// Why this node does not program it (`not_a_lease`, `overlaps_ours`, `public_ip`,
    /// `our_public_ip`, `backend_data_too_large`, `vtep_mac`); `null` for a peer it
    /// programs and for its own lease.
    pub invalid: Option<String>,
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// Every remote node, ordered by subnet.
    pub peers: Vec<Peer>,
}

/// One remote node and what the backend did for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's subnet (`10.244.2.0/24`).
    pub subnet: String,
    /// The peer's public IP.
    pub public_ip: Ipv4Addr,
    /// The peer's backend type.
    pub backend_type: String,
    /// The peer's `BackendData`, or `null`.
    pub backend_data: Option<BackendData>,
    /// What was programmed for it (routes, neighbours, FDB entries), for a person;
    /// empty until programmed.
    pub programmed: String,
    /// Where the peer stands.
    pub state: PeerState,
    /// Since when it is in that state.
    pub state_since: String,
    /// The last error programming it; stays after a later success.
    pub last_error: Option<ErrorInfo>,
    /// Whether packets pass to it through the overlay, from this node's probes;
    /// `null` until the first probe answers or enough are lost to call it unreachable.
    pub health: Option<PeerHealth>,
}

/// What this node's probes say about the data path to one peer: an ICMP echo from our
/// subnet's address to the peer's, through the overlay (see `docs/api.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// Whether the peer answers: `true` after an answer, `false` after
    /// [`PROBE_LOSSES_UNREACHABLE`] probes in a row went unanswered.
    pub reachable: bool,
    /// The round-trip time of the last answered probe, in milliseconds; `null` while
    /// the peer is unreachable.
    pub rtt_ms: Option<f64>,
    /// When the last probe was answered or given up.
    pub checked_at: String,
    /// When `reachable` last changed (or was first set).
    pub since: String,
    /// Probes unanswered since the last answer.
    pub lost_in_a_row: u32,
}

/// How many probes in a row a peer may leave unanswered before it is unreachable.
pub const PROBE_LOSSES_UNREACHABLE: u32 = 3;

/// `/v1/status`'s count of peers by probe result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCounts {
    /// Peers whose last probe was answered.
    pub reachable: usize,
    /// Peers that left the last probes unanswered.
    pub unreachable: usize,
    /// Peers not decided yet (new, or probes off).
    pub unchecked: usize,
}

/// Whether a peer's routes are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Known, not yet handed to the backend or not yet answered.
    Pending,
    /// The backend programmed it.
    Programmed,
    /// The backend failed to program it.
    Error,
}

impl PeerState {
    /// Every state, in the order the API lists them.
    pub const ALL: [PeerState; 3] = [PeerState::Pending, PeerState::Programmed, PeerState::Error];

    /// The state's name as in JSON and in the `state` label of `twill_peers`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Pending => "pending",
            PeerState::Programmed => "programmed",
            PeerState::Error => "error",
        }
    }
}

/// An error and since when it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The error, one line.
    pub message: String,
    /// When this error was first seen (a repeat of the same message keeps the time).
    pub since: String,
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugins {
    /// Every loaded plugin, ordered by name.
    pub plugins: Vec<Plugin>,
}

/// One loaded plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugin {
    /// The plugin's name, from `describe`.
    pub name: String,
    /// The plugin's version, from `describe`.
    pub version: String,
    /// The version of the `twill:backend` WIT package it was built against.
    pub wit_version: String,
    /// SHA-256 of the component's bytes, lower-case hex.
    pub sha256: String,
    /// Where it came from: `built-in:<name>` or the component's file path (from `--plugin-dir`).
    pub source: String,
    /// The host interfaces it imports (its capability request), e.g. `routes`.
    pub capabilities: Vec<String>,
    /// Calls into the plugin, by exported function.
    pub calls: BTreeMap<String, u64>,
    /// Host calls refused, by capability.
    pub denied: BTreeMap<String, u64>,
    /// The last error a call returned or the last trap.
    pub last_error: Option<ErrorInfo>,
    /// Traps so far.
    pub traps: u64,
    /// Restarts so far.
    pub restarts: u64,
}
