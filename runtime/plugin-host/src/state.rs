//! What each plugin's Store holds: its grant (what it may touch), the devices it owns,
//! its limits and counters, and the kernel it asks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};

use twill_core::Subnet;
use twill_net::{Kernel, NetError, TunDevice};
use wasmtime::StoreLimits;

use crate::bindings::Error;

/// The node's external interface, as the host resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIface {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Interface MTU.
    pub mtu: u32,
    /// The interface's IPv4 address.
    pub addr: Ipv4Addr,
}

impl ExternalIface {
    /// The interface `link`, reached at `addr`.
    pub fn of(link: &twill_net::LinkInfo, addr: Ipv4Addr) -> Self {
        ExternalIface {
            name: link.name.clone(),
            index: link.index,
            mtu: link.mtu,
            addr,
        }
    }
}

/// What a plugin instance may touch. Fixed at spawn, except the node's own subnet,
/// which is set when the node holds its lease (`start`).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The cluster network: route destinations must lie inside it.
    pub network: Subnet,
    /// The node's own subnet: routes to it are never the plugin's.
    pub own_subnet: Option<Subnet>,
    /// The node's external interface: usable only as the device of a route via a peer.
    pub external: ExternalIface,
    /// The node's public IP: the only local address a tunnel may use.
    pub public_ip: Ipv4Addr,
    /// The UDP ports the plugin may use, for a vxlan device or its socket (security
    /// review L-2): the config's `Backend.Port` when it gives one, else flannel's
    /// defaults ([`crate::DEFAULT_PORTS`]).
    pub ports: Vec<u16>,
}

/// Which plugin owns which device name, shared by every plugin of one host so that no
/// plugin can take over a device another one created.
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry(Arc<Mutex<HashMap<String, String>>>);

impl DeviceRegistry {
    /// Record that `plugin` owns `device`; refused if another plugin does.
    pub(crate) fn claim(&self, device: &str, plugin: &str) -> Result<(), String> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(device) {
            Some(owner) if owner != plugin => Err(owner.clone()),
            Some(_) => Ok(()),
            None => {
                map.insert(device.to_owned(), plugin.to_owned());
                Ok(())
            }
        }
    }

    /// Forget `device`.
    /// How many devices `plugin` holds, and whether `device` is one of them.
    pub(crate) fn held_by(&self, plugin: &str, device: &str) -> (usize, bool) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.values().filter(|p| *p == plugin).count();
        (count, map.get(device).is_some_and(|p| p == plugin))
    }

    pub(crate) fn release(&self, device: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(device);
    }
}

/// The data-path descriptors a plugin asked the host to open (`datapath-host`).
#[derive(Debug, Clone, Default)]
pub struct DatapathResources {
    /// The TUN device (`tun` is `None` in the fake kernel).
    pub tun: Option<TunDevice>,
    /// The bound address and the UDP socket (`None` in the fake kernel).
    pub udp: Option<(SocketAddrV4, Option<Arc<UdpSocket>>)>,
}

/// Data-path descriptors by plugin name, shared by every instance of one host: a
/// resync or a restarted instance finds the same TUN device (which the kernel would
/// refuse to open twice) and socket.
#[derive(Debug, Clone, Default)]
pub struct DatapathSlots(Arc<Mutex<HashMap<String, DatapathResources>>>);

impl DatapathSlots {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DatapathResources>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `plugin` opened, if anything.
    pub fn get(&self, plugin: &str) -> Option<DatapathResources> {
        self.lock().get(plugin).cloned()
    }
}

/// Per-plugin counters, readable while the plugin runs.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: Mutex<BTreeMap<&'static str, u64>>,
    denied: Mutex<BTreeMap<&'static str, u64>>,
}

impl PluginStats {
    pub(crate) fn count_call(&self, function: &'static str) {
        *self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(function)
            .or_default() += 1;
    }

    pub(crate) fn count_denied(&self, capability: &'static str) {
        *self
            .denied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(capability)
            .or_default() += 1;
    }

    /// Calls into the plugin, by exported function.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Denied host calls, by capability (WIT interface).
    pub fn denied(&self) -> BTreeMap<&'static str, u64> {
        self.denied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The data of one plugin instance's Store.
pub(crate) struct PluginState {
    pub(crate) plugin: String,
    pub(crate) kernel: Arc<dyn Kernel>,
    pub(crate) grant: Grant,
    pub(crate) devices: DeviceRegistry,
    pub(crate) datapath: DatapathSlots,
    pub(crate) owned: BTreeSet<u32>,
    pub(crate) limits: StoreLimits,
    pub(crate) stats: Arc<PluginStats>,
    /// A Store for `describe` only: no kernel, fresh registries, and every host call
    /// that does not go through the kernel refused too (security review H-1).
    pub(crate) describing: bool,
    /// The peers this instance was handed (subnet → PublicIP), the only next hops it may
    /// program (security review H-5). Additions count from the batch that brings them,
    /// removals once that batch is answered (so the plugin can still undo them).
    pub(crate) peers: PeerTable,
    /// The kernel entries this instance asked for and did not delete, to bound their
    /// number (security review M-2).
    pub(crate) held: Held,
    /// The main table's metric-0 routes inside the network, read at this call's first
    /// route request and kept up to date by its own requests (one dump per call, not
    /// per route); `None` outside a call.
    pub(crate) route_table: Option<std::collections::BTreeMap<Subnet, twill_net::TableRoute>>,
    /// Whether this call hands over so many leases that listing the routes once beats
    /// asking the kernel route by route ([`crate::instance`] sets it per batch).
    pub(crate) bulk_routes: bool,
    /// Owned devices found still the plugin's in this call ([`Self::require_owned`]).
    pub(crate) devices_checked: std::cell::RefCell<BTreeSet<u32>>,
    /// How many lines it may still log this second.
    pub(crate) log_budget: Mutex<crate::imports::log::LogBudget>,
}

/// The most devices one plugin may hold (flannel's backends use one or two).
pub const MAX_DEVICES: usize = 4;

/// The peers an instance was handed: subnet → PublicIP, and how many of them use each
/// PublicIP (several may share one), so that "is this a peer's address" is one lookup
/// whatever the cluster's size, not a scan of every peer on every kernel request.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    by_subnet: std::collections::BTreeMap<Subnet, std::net::Ipv4Addr>,
    by_ip: std::collections::HashMap<std::net::Ipv4Addr, u32>,
}

impl PeerTable {
    /// Add or update the peer of `subnet`.
    pub(crate) fn insert(&mut self, subnet: Subnet, ip: std::net::Ipv4Addr) {
        if let Some(old) = self.by_subnet.insert(subnet, ip) {
            self.forget_ip(old);
        }
        *self.by_ip.entry(ip).or_default() += 1;
    }

    /// Remove the peer of `subnet`.
    pub(crate) fn remove(&mut self, subnet: &Subnet) {
        if let Some(old) = self.by_subnet.remove(subnet) {
            self.forget_ip(old);
        }
    }

    fn forget_ip(&mut self, ip: std::net::Ipv4Addr) {
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Whether `ip` is a current peer's PublicIP.
    pub(crate) fn has_ip(&self, ip: std::net::Ipv4Addr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// How many peers.
    pub(crate) fn len(&self) -> usize {
        self.by_subnet.len()
    }
}

/// Kernel entries an instance holds, by kind and key: what bounds their number, and,
/// once the instance is replaced (a trap, a reload), what it leaves behind that its
/// successor does not make again ([`crate::PluginHost::remove_leftovers`]).
#[derive(Debug, Default, Clone)]
pub struct Held {
    pub(crate) routes: BTreeSet<Subnet>,
    /// (device, MAC) → destination.
    pub(crate) fdb: std::collections::BTreeMap<(u32, [u8; 6]), std::net::Ipv4Addr>,
    pub(crate) neighbours: BTreeSet<(u32, std::net::Ipv4Addr)>,
}

impl Held {
    /// How many entries, of every kind.
    pub fn len(&self) -> usize {
        self.routes.len() + self.fdb.len() + self.neighbours.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add what `other` holds (instances replaced one after another before one
    /// succeeded).
    pub fn absorb(&mut self, other: Held) {
        self.routes.extend(other.routes);
        self.fdb.extend(other.fdb);
        self.neighbours.extend(other.neighbours);
    }
}

impl PluginState {
    /// A fresh state for `plugin`: nothing owned, handed or held yet, not describing.
    pub(crate) fn new(
        plugin: &str,
        kernel: Arc<dyn Kernel>,
        grant: Grant,
        devices: DeviceRegistry,
        datapath: DatapathSlots,
        limits: StoreLimits,
        stats: Arc<PluginStats>,
    ) -> Self {
        PluginState {
            plugin: plugin.to_owned(),
            kernel,
            grant,
            devices,
            datapath,
            owned: Default::default(),
            limits,
            stats,
            describing: false,
            peers: Default::default(),
            held: Default::default(),
            route_table: None,
            bulk_routes: false,
            devices_checked: Default::default(),
            log_budget: Default::default(),
        }
    }

    /// How many entries of one kind (routes, FDB entries, neighbours) an instance may
    /// hold: two per peer it was handed, plus 64.
    pub(crate) fn entry_quota(&self) -> usize {
        2 * self.peers.len() + 64
    }

    /// Refuse a new entry of `kind` when the instance holds its quota already.
    pub(crate) fn check_quota(
        &self,
        capability: &'static str,
        kind: &str,
        held: usize,
        known: bool,
    ) -> Result<(), Error> {
        let quota = self.entry_quota();
        if !known && held >= quota {
            return self.deny(
                capability,
                format!("this plugin holds {held} {kind} already, the most it may with {} peers (2 per peer + 64)", self.peers.len()),
            );
        }
        Ok(())
    }

    /// Refuse a request: logged with the plugin's name, counted, and returned to the
    /// guest as `error::denied`.
    pub(crate) fn deny<T>(
        &self,
        capability: &'static str,
        reason: impl fmt::Display,
    ) -> Result<T, Error> {
        let reason = reason.to_string();
        if self.log_allowed() {
            tracing::warn!(plugin = %self.plugin, capability, "denied: {reason}");
        }
        self.stats.count_denied(capability);
        Err(Error::Denied(reason))
    }

    /// Whether `addr` is the PublicIP of a peer this instance was handed.
    pub(crate) fn is_peer_ip(&self, addr: std::net::Ipv4Addr) -> bool {
        self.peers.has_ip(addr)
    }

    /// Whether `index` is a device this plugin created or adopted.
    pub(crate) fn owns(&self, index: u32) -> bool {
        self.owned.contains(&index)
    }

    /// Refuse unless the plugin owns `index`, and the device at that index is still
    /// one of its `flannel*` devices (security review L-4: a device deleted or renamed
    /// under it, and its index reused, is never the plugin's). Checked with the kernel
    /// once per call and index.
    pub(crate) fn require_owned(&self, capability: &'static str, index: u32) -> Result<(), Error> {
        if !self.owns(index) {
            return self.deny(
                capability,
                format!("device {index} is not one this plugin created"),
            );
        }
        if self.devices_checked.borrow().contains(&index) {
            return Ok(());
        }
        let still = match self.kernel.link_by_index(index) {
            Ok(Some(link)) => self.devices.held_by(&self.plugin, &link.name).1,
            Ok(None) => false,
            // The kernel could not say: the request itself will tell.
            Err(_) => true,
        };
        if !still {
            return self.deny(
                capability,
                format!("device {index} is no longer this plugin's (deleted or renamed)"),
            );
        }
        self.devices_checked.borrow_mut().insert(index);
        Ok(())
    }

    /// The node's own subnet, or a denial when the node holds no lease yet.
    pub(crate) fn own_subnet(&self, capability: &'static str) -> Result<Subnet, Error> {
        match self.grant.own_subnet {
            Some(s) => Ok(s),
            None => self.deny(
                capability,
                "the node holds no lease yet (called before start)",
            ),
        }
    }
}

/// A kernel failure as the guest sees it.
pub(crate) fn kernel_error(e: NetError) -> Error {
    match e.errno() {
        Some(libc_errno::ENOENT | libc_errno::ESRCH | libc_errno::ENODEV) => {
            Error::NotFound(e.to_string())
        }
        Some(libc_errno::EEXIST) => Error::Exists(e.to_string()),
        _ => Error::Kernel(e.to_string()),
    }
}

/// A delete's outcome as the guest sees it: "already gone" is success.
pub(crate) fn deleted(result: Result<(), NetError>) -> Result<(), Error> {
    match result {
        Err(e)
            if !matches!(
                e.errno(),
                Some(
                    libc_errno::ENOENT
                        | libc_errno::ESRCH
                        | libc_errno::ENODEV
                        | libc_errno::EADDRNOTAVAIL
                )
            ) =>
        {
            Err(kernel_error(e))
        }
        _ => Ok(()),
    }
}

/// The errno values this crate tests for (Linux numbering), without a libc dependency.
pub(crate) mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const ENODEV: i32 = 19;
    pub const EEXIST: i32 = 17;
    pub const EADDRNOTAVAIL: i32 = 99;
}
