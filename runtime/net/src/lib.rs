//! twill's kernel seam. Everything privileged that a backend asks for — links,
//! addresses, routes, neighbours, FDB entries, route lookups — goes through the
//! [`Kernel`] trait; [`Netlink`] implements it over rtnetlink in the calling process's
//! network namespace, and a recording in-memory fake (feature `test-util`) stands in
//! for it in unit tests.
//!
//! The methods are blocking: they are called from the plugin threads, which are not
//! tokio workers. Async code calls them through `spawn_blocking`.
//!
//! This crate does not decide what may be touched; the plugin host checks every
//! request against the plugin's grant before it gets here.
//!
//! It holds the host's unsafe code, all of it in [`datapath`]: the TUN ioctls
//! (`TUNSETIFF`, `TUNSETOFFLOAD`), `read`/`writev` on the device, `recvmmsg`/`sendmmsg`
//! with their control messages (UDP GRO and GSO), `poll`, and glibc's `malloc_trim`
//! (the daemon returns a burst's freed heap pages). Everywhere else unsafe
//! is denied; every block carries a `// SAFETY:` comment (a workspace lint).
#![deny(unsafe_code)]

pub mod datapath;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod netlink;
mod observe;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

use twill_core::{MacAddr, Subnet};

pub use netlink::Netlink;
pub use observe::{KernelOp, Observed, Refusing};

/// A kernel network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// The link kind from IFLA_INFO_KIND (`vxlan`, `bridge`, `veth`, …); `None` for
    /// physical devices and loopback.
    pub kind: Option<String>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<MacAddr>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// VXLAN attributes, when `kind` is `vxlan`.
    pub vxlan: Option<VxlanInfo>,
    /// IP-in-IP tunnel attributes, when `kind` is `ipip`.
    pub ipip: Option<IpipInfo>,
}

/// The attributes of an existing VXLAN link that decide whether it can be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Local (source) address.
    pub local: Option<Ipv4Addr>,
    /// The underlay device index (IFLA_VXLAN_LINK).
    pub underlay: Option<u32>,
    /// Whether the link learns remote MACs.
    pub learning: bool,
}

/// The attributes of an existing IP-in-IP (`ipip`) link that decide whether it can be
/// kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpipInfo {
    /// Local tunnel endpoint (IFLA_IPTUN_LOCAL); `None` when unset (0.0.0.0).
    pub local: Option<Ipv4Addr>,
    /// Remote tunnel endpoint (IFLA_IPTUN_REMOTE); `None` for "any", as flannel's
    /// `flannel.ipip` has it (the peer is chosen per route).
    pub remote: Option<Ipv4Addr>,
    /// The underlay device index (IFLA_IPTUN_LINK); `None` when the tunnel is bound to
    /// no device.
    pub underlay: Option<u32>,
}

/// An IP-in-IP link to create: local endpoint set, remote any (`ip link add <name>
/// type ipip local <local> dev <underlay>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipSpec {
    /// Device name, e.g. `flannel.ipip`.
    pub name: String,
    /// Local tunnel endpoint: the node's interface address.
    pub local: Ipv4Addr,
    /// Index of the underlay device.
    pub underlay: u32,
}

/// A VXLAN link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name, e.g. `flannel.1`.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port (8472 for flannel).
    pub port: u16,
    /// Local (source) address: the node's public IP.
    pub local: Ipv4Addr,
    /// Index of the underlay device.
    pub underlay: u32,
    /// Whether the link learns remote MACs (flannel: off).
    pub learning: bool,
    /// The MAC to give the link at creation.
    pub mac: MacAddr,
}

/// An IPv4 address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// An IPv4 unicast route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: Subnet,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is on the link even if no prefix says so.
    pub onlink: bool,
}

/// The route protocol (`rtm_protocol`) of every route twill writes: `ip route` shows
/// `proto 167`. A route of the main table with another protocol is not twill's and is
/// never replaced or deleted for a plugin, except one that flannel itself made (see
/// the plugin host's route checks).
pub const ROUTE_PROTOCOL: u8 = 167;
/// `RTPROT_BOOT`: what flannel's routes (and `ip route add` without `proto`) carry.
pub const RTPROT_BOOT: u8 = 3;

/// A route of the main table as it stands, with what tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRoute {
    /// Destination and next hop (for a route that is not unicast, what it carries).
    pub route: Route,
    /// `rtm_protocol`: [`ROUTE_PROTOCOL`] for twill's, [`RTPROT_BOOT`] for flannel's and
    /// most operators', 2 (`kernel`) for connected routes, 4 (`static`), …
    pub protocol: u8,
    /// The route's priority (metric); twill writes 0.
    pub metric: u32,
    /// Whether it is a unicast route (not blackhole, unreachable, …).
    pub unicast: bool,
}

impl TableRoute {
    /// Whether it is one twill wrote: its protocol, at metric 0 (twill writes no other).
    pub fn is_twills(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL && self.metric == 0
    }

    /// Of `routes`, the one whose destination is exactly `dst`, the lowest metric first.
    pub fn at(routes: impl IntoIterator<Item = TableRoute>, dst: Subnet) -> Option<TableRoute> {
        routes
            .into_iter()
            .filter(|t| t.route.dst == dst)
            .min_by_key(|t| t.metric)
    }
}

/// What `ip route get` answers for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    /// The next hop, or `None` when the destination is on-link.
    pub gateway: Option<Ipv4Addr>,
    /// The output interface.
    pub oif: u32,
    /// The preferred source address.
    pub prefsrc: Option<Ipv4Addr>,
}

/// A permanent ARP entry (`ip neigh … nud permanent`). Not part of [`Kernel`]; the
/// fake and [`Netlink::neighbours`] report them for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// The neighbour's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its link-layer address.
    pub mac: MacAddr,
}

/// A VXLAN forwarding entry `mac → dst` on a link (`bridge fdb … dst …`). Not part
/// of [`Kernel`]; the fake and [`Netlink::fdb`] report them for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// Interface index of the VXLAN link.
    pub index: u32,
    /// The remote VTEP's MAC.
    pub mac: MacAddr,
    /// The remote VTEP's underlay address.
    pub dst: Ipv4Addr,
}

/// A TUN device the kernel seam opened for a data path.
#[derive(Debug, Clone)]
pub struct TunDevice {
    /// The link as the kernel lists it.
    pub link: LinkInfo,
    /// The open device; `None` in the fake kernel, which has no descriptors.
    pub tun: Option<Arc<datapath::Tun>>,
}

/// A kernel request that failed. Each case names the operation and its object.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("{op} {object}: {message}")]
    Request {
        /// The operation (`create vxlan`, `replace route`, …).
        op: &'static str,
        /// What it was about (device name, route, address).
        object: String,
        /// The kernel's or the library's message.
        message: String,
        /// The errno, when the kernel gave one.
        errno: Option<i32>,
    },
    /// The netlink socket could not be opened.
    #[error("open netlink socket: {0}")]
    Socket(#[source] std::io::Error),
}

impl NetError {
    /// The kernel's errno, if the failure carried one (e.g. `libc::EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Request { errno, .. } => *errno,
            NetError::Socket(e) => e.raw_os_error(),
        }
    }
}

/// The kernel operations twill needs, all in the caller's network namespace. Every
/// mutating call is idempotent where the kernel allows it (`replace` semantics):
/// replaying the same request leaves the same state.
pub trait Kernel: Send + Sync + 'static {
    /// Every link.
    fn links(&self) -> Result<Vec<LinkInfo>, NetError>;
    /// The link with this name, if any.
    fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetError>;
    /// The link with this index, if any.
    fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetError>;
    /// Create a VXLAN link (fails with EEXIST if the name is taken).
    fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetError>;
    /// Create an IP-in-IP link with remote any (fails with EEXIST if the name is taken;
    /// EOPNOTSUPP when the kernel has no ipip support).
    fn create_ipip(&self, spec: &IpipSpec) -> Result<LinkInfo, NetError>;
    /// Delete a link.
    fn delete_link(&self, index: u32) -> Result<(), NetError>;
    /// Set a link administratively up.
    fn set_link_up(&self, index: u32) -> Result<(), NetError>;
    /// Set a link's MTU.
    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError>;
    /// Every IPv4 address on every link.
    fn addrs(&self) -> Result<Vec<AddrInfo>, NetError>;
    /// Add an IPv4 address (EEXIST if present).
    fn add_addr(&self, addr: AddrInfo) -> Result<(), NetError>;
    /// Remove an IPv4 address.
    fn del_addr(&self, addr: AddrInfo) -> Result<(), NetError>;
    /// Every IPv4 unicast route in the main table.
    fn routes(&self) -> Result<Vec<Route>, NetError>;
    /// Every IPv4 route of the main table, of any type, with its protocol and metric.
    fn table_routes(&self) -> Result<Vec<TableRoute>, NetError>;
    /// The main table's route whose destination is exactly `dst` (of several, the one
    /// with the lowest metric), if any: what [`Kernel::table_routes`] holds for `dst`,
    /// without listing every route where the kernel can answer for one.
    fn table_route(&self, dst: Subnet) -> Result<Option<TableRoute>, NetError> {
        Ok(TableRoute::at(self.table_routes()?, dst))
    }
    /// Every permanent IPv4 neighbour entry, on every link.
    fn permanent_neighbours(&self) -> Result<Vec<Neighbour>, NetError>;
    /// Every FDB entry with a remote (VXLAN `dst`) destination, on every link.
    fn remote_fdb(&self) -> Result<Vec<FdbEntry>, NetError>;
    /// Add or replace a route (`ip route replace`), protocol boot, scope universe.
    fn replace_route(&self, route: &Route) -> Result<(), NetError>;
    /// Delete a route (ESRCH/ENOENT when absent).
    fn del_route(&self, route: &Route) -> Result<(), NetError>;
    /// Ask the kernel how it would reach `dst` (`ip route get`).
    fn route_get(&self, dst: Ipv4Addr) -> Result<RouteLookup, NetError>;
    /// Add or replace a permanent ARP entry `ip → mac` on a link.
    fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), NetError>;
    /// Delete an ARP entry.
    fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError>;
    /// Add or replace a permanent FDB entry `mac → dst` on a VXLAN link (NTF_SELF,
    /// `bridge fdb replace <mac> dev <link> dst <dst>`).
    fn replace_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError>;
    /// Delete an FDB entry.
    fn del_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError>;
    /// Create the persistent layer-3 TUN device `name`, or attach to the one a previous
    /// process left (EBUSY if another descriptor holds it; EEXIST-like if `name` is
    /// another kind of device).
    fn open_tun(&self, name: &str) -> Result<TunDevice, NetError>;
    /// Bind a non-blocking UDP socket for a data path; `None` in the fake kernel.
    fn bind_udp(&self, addr: SocketAddrV4) -> Result<Option<Arc<UdpSocket>>, NetError>;
}

/// A request that failed with an I/O error, as a [`NetError`].
pub(crate) fn io_error(op: &'static str, object: String, e: &std::io::Error) -> NetError {
    NetError::Request {
        op,
        object,
        message: e.to_string(),
        errno: e.raw_os_error(),
    }
}
