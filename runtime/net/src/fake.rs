//! A recording, in-memory [`Kernel`] for tests.
//!
//! [`FakeKernel`] keeps links, IPv4 addresses, main-table routes, permanent ARP
//! entries and VXLAN FDB entries, applies the trait's calls to them with the kernel's
//! semantics where twill depends on them (replace is idempotent, creating a taken
//! name is `EEXIST`, deleting what is absent fails, deleting a link drops everything
//! on it, a VXLAN link's MTU is its underlay's minus 50, an ipip link's minus 20), and
//! records every mutating
//! call — successful or not — as a [`Call`].
//!
//! It does not model the kernel's own routes: adding an address adds no prefix route,
//! and [`Kernel::route_get`] answers only from the routes given to it.
//!
//! ```
//! use twill_net::Kernel;
//! use twill_net::fake::{Call, FakeKernel};
//!
//! let kernel = FakeKernel::new().with_link("eth0", 1500, "192.168.1.10".parse().unwrap(), 24);
//! let eth0 = kernel.link_by_name("eth0").unwrap().unwrap();
//! kernel.set_mtu(eth0.index, 9000).unwrap();
//! assert_eq!(kernel.calls(), vec![Call::SetMtu { index: eth0.index, mtu: 9000 }]);
//! ```

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

use twill_core::{MacAddr, Subnet};

use crate::{
    AddrInfo, FdbEntry, IpipInfo, IpipSpec, Kernel, LinkInfo, Neighbour, NetError, Route,
    RouteLookup, VxlanInfo, VxlanSpec,
};

use crate::{KernelOp, TunDevice};

/// The headroom the kernel subtracts from the underlay MTU for a VXLAN link over IPv4.
const VXLAN_HEADROOM: u32 = 50;
/// The headroom the kernel subtracts from the underlay MTU for an ipip link (the outer
/// IPv4 header).
const IPIP_HEADROOM: u32 = 20;

/// One mutating call made on a [`FakeKernel`], with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Kernel::create_vxlan`].
    CreateVxlan(VxlanSpec),
    /// [`Kernel::create_ipip`].
    CreateIpip(IpipSpec),
    /// [`Kernel::delete_link`].
    DeleteLink(u32),
    /// [`Kernel::set_link_up`].
    SetLinkUp(u32),
    /// [`Kernel::set_mtu`].
    SetMtu {
        /// Interface index.
        index: u32,
        /// The new MTU.
        mtu: u32,
    },
    /// [`Kernel::add_addr`].
    AddAddr(AddrInfo),
    /// [`Kernel::del_addr`].
    DelAddr(AddrInfo),
    /// [`Kernel::replace_route`].
    ReplaceRoute(Route),
    /// [`Kernel::del_route`].
    DelRoute(Route),
    /// [`Kernel::replace_neighbour`].
    ReplaceNeighbour {
        /// Interface index.
        index: u32,
        /// Neighbour address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: MacAddr,
    },
    /// [`Kernel::del_neighbour`].
    DelNeighbour {
        /// Interface index.
        index: u32,
        /// Neighbour address.
        ip: Ipv4Addr,
    },
    /// [`Kernel::replace_fdb`].
    ReplaceFdb {
        /// Interface index.
        index: u32,
        /// Remote MAC.
        mac: MacAddr,
        /// Remote underlay address.
        dst: Ipv4Addr,
    },
    /// [`Kernel::del_fdb`].
    DelFdb {
        /// Interface index.
        index: u32,
        /// Remote MAC.
        mac: MacAddr,
        /// Remote underlay address.
        dst: Ipv4Addr,
    },
    /// [`Kernel::open_tun`].
    OpenTun(String),
    /// [`Kernel::bind_udp`].
    BindUdp(SocketAddrV4),
}

impl Call {
    /// Which method this call is.
    pub fn op(&self) -> KernelOp {
        match self {
            Call::CreateVxlan(_) => KernelOp::CreateVxlan,
            Call::CreateIpip(_) => KernelOp::CreateIpip,
            Call::DeleteLink(_) => KernelOp::DeleteLink,
            Call::SetLinkUp(_) => KernelOp::SetLinkUp,
            Call::SetMtu { .. } => KernelOp::SetMtu,
            Call::AddAddr(_) => KernelOp::AddAddr,
            Call::DelAddr(_) => KernelOp::DelAddr,
            Call::ReplaceRoute(_) => KernelOp::ReplaceRoute,
            Call::DelRoute(_) => KernelOp::DelRoute,
            Call::ReplaceNeighbour { .. } => KernelOp::ReplaceNeighbour,
            Call::DelNeighbour { .. } => KernelOp::DelNeighbour,
            Call::ReplaceFdb { .. } => KernelOp::ReplaceFdb,
            Call::DelFdb { .. } => KernelOp::DelFdb,
            Call::OpenTun(_) => KernelOp::OpenTun,
            Call::BindUdp(_) => KernelOp::BindUdp,
        }
    }

    /// What the call is about, for its error message (its operation is [`Call::op`]).
    fn object(&self) -> String {
        match self {
            Call::CreateVxlan(spec) => spec.name.clone(),
            Call::CreateIpip(spec) => spec.name.clone(),
            Call::DeleteLink(index) => format!("#{index}"),
            Call::SetLinkUp(index) => format!("#{index}"),
            Call::SetMtu { index, mtu } => format!("#{index} mtu {mtu}"),
            Call::AddAddr(a) => describe_addr(a),
            Call::DelAddr(a) => describe_addr(a),
            Call::ReplaceRoute(r) => r.dst.to_string(),
            Call::DelRoute(r) => r.dst.to_string(),
            Call::ReplaceNeighbour { index, ip, mac } => format!("{ip} lladdr {mac} dev #{index}"),
            Call::DelNeighbour { index, ip } => format!("{ip} dev #{index}"),
            Call::OpenTun(name) => name.clone(),
            Call::BindUdp(addr) => addr.to_string(),
            Call::ReplaceFdb { index, mac, dst } => format!("{mac} dst {dst} dev #{index}"),
            Call::DelFdb { index, mac, dst } => format!("{mac} dst {dst} dev #{index}"),
        }
    }
}

fn describe_addr(a: &AddrInfo) -> String {
    format!("{}/{} dev #{}", a.addr, a.prefix, a.index)
}

#[derive(Debug, Default)]
struct State {
    /// Sorted by index.
    links: Vec<LinkInfo>,
    next_index: u32,
    addrs: Vec<AddrInfo>,
    routes: Vec<Route>,
    /// Each route's protocol: [`crate::ROUTE_PROTOCOL`] once replaced through the
    /// seam, boot for routes given to the fake (unless said otherwise).
    route_protocols: std::collections::BTreeMap<Subnet, u8>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
    calls: Vec<Call>,
    failures: Vec<(KernelOp, i32)>,
}

impl State {
    fn link(&self, index: u32) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.index == index)
    }

    fn link_mut(&mut self, index: u32) -> Option<&mut LinkInfo> {
        self.links.iter_mut().find(|l| l.index == index)
    }

    fn add_link(&mut self, mut link: LinkInfo) -> u32 {
        self.next_index = self.next_index.max(1);
        link.index = self.next_index;
        self.next_index += 1;
        let index = link.index;
        self.links.push(link);
        index
    }

    /// The route `ip route get` would pick: the longest matching prefix.
    fn lookup(&self, dst: Ipv4Addr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.dst.contains(dst))
            .max_by_key(|r| r.dst.prefix())
    }
}

/// An in-memory [`Kernel`] that records every mutating call. See the module docs.
#[derive(Debug)]
pub struct FakeKernel {
    state: Mutex<State>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

/// The error the real kernel would give, in the shape [`Netlink`](crate::Netlink)
/// reports it.
fn kernel_error(op: &'static str, object: String, errno: i32) -> NetError {
    NetError::Request {
        op,
        object,
        message: std::io::Error::from_raw_os_error(errno).to_string(),
        errno: Some(errno),
    }
}

impl FakeKernel {
    /// A kernel with only `lo` (index 1, up, 127.0.0.1/8).
    pub fn new() -> Self {
        let mut state = State::default();
        let lo = state.add_link(LinkInfo {
            index: 0,
            name: "lo".to_owned(),
            kind: None,
            mtu: 65536,
            mac: Some(MacAddr([0; 6])),
            up: true,
            vxlan: None,
            ipip: None,
        });
        state.addrs.push(AddrInfo {
            index: lo,
            addr: Ipv4Addr::LOCALHOST,
            prefix: 8,
        });
        Self {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Add an up Ethernet link (a NIC such as `eth0`) with one address, as a
    /// builder. Its MAC is `02:00:00:00:00:<index>`. Not recorded as a call.
    pub fn with_link(self, name: &str, mtu: u32, addr: Ipv4Addr, prefix: u8) -> Self {
        self.add_link(name, mtu, addr, prefix);
        self
    }

    /// Like [`with_link`](Self::with_link) on a shared kernel; returns the new
    /// link's index.
    pub fn add_link(&self, name: &str, mtu: u32, addr: Ipv4Addr, prefix: u8) -> u32 {
        let mut st = self.lock();
        let index = st.add_link(LinkInfo {
            index: 0,
            name: name.to_owned(),
            kind: None,
            mtu,
            mac: None,
            up: true,
            vxlan: None,
            ipip: None,
        });
        if let Some(link) = st.link_mut(index) {
            link.mac = Some(MacAddr([0x02, 0, 0, 0, 0, index.to_le_bytes()[0]]));
        }
        st.addrs.push(AddrInfo {
            index,
            addr,
            prefix,
        });
        index
    }

    /// Seed a link as given (its index is assigned), as a builder. Not recorded.
    pub fn with_link_info(self, link: LinkInfo) -> Self {
        self.lock().add_link(link);
        self
    }

    /// Seed an address, as a builder. Not recorded.
    pub fn with_addr(self, addr: AddrInfo) -> Self {
        self.lock().addrs.push(addr);
        self
    }

    /// Seed a route, as a builder (e.g. the default route via the NIC, so that
    /// [`Kernel::route_get`] can answer). Not recorded.
    pub fn with_route(self, route: Route) -> Self {
        self.with_route_protocol(route, crate::RTPROT_BOOT)
    }

    /// Seed a main-table route with this protocol (4 for `ip route add … proto static`).
    pub fn with_route_protocol(self, route: Route, protocol: u8) -> Self {
        {
            let mut st = self.lock();
            st.routes.push(route);
            st.route_protocols.insert(route.dst, protocol);
        }
        self
    }

    /// Make the next call of `op` fail with `errno` (before changing anything; the
    /// call is still recorded). Several may be queued.
    pub fn fail_next(&self, op: KernelOp, errno: i32) {
        self.lock().failures.push((op, errno));
    }

    /// Every mutating call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Every mutating call so far, and forget them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The current routes, in insertion order.
    pub fn routes(&self) -> Vec<Route> {
        self.lock().routes.clone()
    }

    /// The current ARP entries, in insertion order.
    pub fn neighbours(&self) -> Vec<Neighbour> {
        self.lock().neighbours.clone()
    }

    /// The current FDB entries, in insertion order.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        self.lock().fdb.clone()
    }

    /// The current addresses, in insertion order.
    pub fn addrs(&self) -> Vec<AddrInfo> {
        self.lock().addrs.clone()
    }

    /// The current links, by index.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.lock().links.clone()
    }

    /// Record `call`, then apply it unless a failure was queued for it.
    fn mutate<T>(
        &self,
        call: Call,
        apply: impl FnOnce(&mut State) -> Result<T, i32>,
    ) -> Result<T, NetError> {
        let mut st = self.lock();
        st.calls.push(call.clone());
        let op = call.op();
        let result = match st.failures.iter().position(|(o, _)| *o == op) {
            Some(pos) => Err(st.failures.remove(pos).1),
            None => apply(&mut st),
        };
        result.map_err(|errno| kernel_error(call.op().name(), call.object(), errno))
    }
}

fn require_link(st: &State, index: u32) -> Result<(), i32> {
    st.link(index).map(|_| ()).ok_or(libc::ENODEV)
}

impl Kernel for FakeKernel {
    fn permanent_neighbours(&self) -> Result<Vec<Neighbour>, NetError> {
        Ok(self.neighbours())
    }

    fn remote_fdb(&self) -> Result<Vec<FdbEntry>, NetError> {
        Ok(self.fdb())
    }

    fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        Ok(self.lock().links.clone())
    }

    fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetError> {
        Ok(self.lock().links.iter().find(|l| l.name == name).cloned())
    }

    fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetError> {
        Ok(self.lock().link(index).cloned())
    }

    fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetError> {
        self.mutate(Call::CreateVxlan(spec.clone()), |st| {
            if st.links.iter().any(|l| l.name == spec.name) {
                return Err(libc::EEXIST);
            }
            let underlay = st.link(spec.underlay).ok_or(libc::ENODEV)?;
            let mtu = underlay.mtu.saturating_sub(VXLAN_HEADROOM);
            let index = st.add_link(LinkInfo {
                index: 0,
                name: spec.name.clone(),
                kind: Some("vxlan".to_owned()),
                mtu,
                mac: Some(spec.mac),
                up: false,
                vxlan: Some(VxlanInfo {
                    vni: spec.vni,
                    port: spec.port,
                    local: Some(spec.local),
                    underlay: Some(spec.underlay),
                    learning: spec.learning,
                }),
                ipip: None,
            });
            st.link(index).cloned().ok_or(libc::ENODEV)
        })
    }

    fn create_ipip(&self, spec: &IpipSpec) -> Result<LinkInfo, NetError> {
        self.mutate(Call::CreateIpip(spec.clone()), |st| {
            if st.links.iter().any(|l| l.name == spec.name) {
                return Err(libc::EEXIST);
            }
            let underlay = st.link(spec.underlay).ok_or(libc::ENODEV)?;
            let mtu = underlay.mtu.saturating_sub(IPIP_HEADROOM);
            let index = st.add_link(LinkInfo {
                index: 0,
                name: spec.name.clone(),
                kind: Some("ipip".to_owned()),
                mtu,
                // An ipip link has no MAC (its IFLA_ADDRESS is the local IPv4 address).
                mac: None,
                up: false,
                vxlan: None,
                ipip: Some(IpipInfo {
                    local: Some(spec.local),
                    remote: None,
                    underlay: Some(spec.underlay),
                }),
            });
            st.link(index).cloned().ok_or(libc::ENODEV)
        })
    }

    fn delete_link(&self, index: u32) -> Result<(), NetError> {
        self.mutate(Call::DeleteLink(index), |st| {
            require_link(st, index)?;
            st.links.retain(|l| l.index != index);
            st.addrs.retain(|a| a.index != index);
            st.routes.retain(|r| r.oif != Some(index));
            st.neighbours.retain(|n| n.index != index);
            st.fdb.retain(|f| f.index != index);
            Ok(())
        })
    }

    fn set_link_up(&self, index: u32) -> Result<(), NetError> {
        self.mutate(Call::SetLinkUp(index), |st| {
            st.link_mut(index).ok_or(libc::ENODEV)?.up = true;
            Ok(())
        })
    }

    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError> {
        self.mutate(Call::SetMtu { index, mtu }, |st| {
            st.link_mut(index).ok_or(libc::ENODEV)?.mtu = mtu;
            Ok(())
        })
    }

    fn addrs(&self) -> Result<Vec<AddrInfo>, NetError> {
        Ok(self.lock().addrs.clone())
    }

    fn add_addr(&self, addr: AddrInfo) -> Result<(), NetError> {
        self.mutate(Call::AddAddr(addr), |st| {
            require_link(st, addr.index)?;
            if addr.prefix > 32 {
                return Err(libc::EINVAL);
            }
            if st
                .addrs
                .iter()
                .any(|a| a.index == addr.index && a.addr == addr.addr && a.prefix == addr.prefix)
            {
                return Err(libc::EEXIST);
            }
            st.addrs.push(addr);
            Ok(())
        })
    }

    fn del_addr(&self, addr: AddrInfo) -> Result<(), NetError> {
        self.mutate(Call::DelAddr(addr), |st| {
            let before = st.addrs.len();
            st.addrs.retain(|a| *a != addr);
            if st.addrs.len() == before {
                return Err(libc::EADDRNOTAVAIL);
            }
            Ok(())
        })
    }

    fn routes(&self) -> Result<Vec<Route>, NetError> {
        Ok(self.lock().routes.clone())
    }

    fn table_routes(&self) -> Result<Vec<crate::TableRoute>, NetError> {
        let st = self.lock();
        Ok(st
            .routes
            .iter()
            .map(|r| crate::TableRoute {
                route: *r,
                protocol: st
                    .route_protocols
                    .get(&r.dst)
                    .copied()
                    .unwrap_or(crate::RTPROT_BOOT),
                metric: 0,
                unicast: true,
            })
            .collect())
    }

    fn replace_route(&self, route: &Route) -> Result<(), NetError> {
        let route = *route;
        self.mutate(Call::ReplaceRoute(route), |st| {
            if let Some(oif) = route.oif {
                require_link(st, oif)?;
            }
            if route.gateway.is_none() && (route.oif.is_none() || route.onlink) {
                return Err(libc::EINVAL);
            }
            // The main table keys routes by destination (tos and metric are always 0
            // here), so a replace swaps whatever route that prefix had.
            match st.routes.iter_mut().find(|r| r.dst == route.dst) {
                Some(existing) => *existing = route,
                None => st.routes.push(route),
            }
            st.route_protocols.insert(route.dst, crate::ROUTE_PROTOCOL);
            Ok(())
        })
    }

    fn del_route(&self, route: &Route) -> Result<(), NetError> {
        let route = *route;
        self.mutate(Call::DelRoute(route), |st| {
            // As the kernel: what the request leaves out matches anything.
            let pos = st
                .routes
                .iter()
                .position(|r| {
                    r.dst == route.dst
                        && (route.gateway.is_none() || r.gateway == route.gateway)
                        && (route.oif.is_none() || r.oif == route.oif)
                })
                .ok_or(libc::ESRCH)?;
            st.routes.remove(pos);
            Ok(())
        })
    }

    fn route_get(&self, dst: Ipv4Addr) -> Result<RouteLookup, NetError> {
        let st = self.lock();
        let unreachable = || kernel_error("route get", dst.to_string(), libc::ENETUNREACH);
        let route = st.lookup(dst).ok_or_else(unreachable)?;
        let oif = match (route.oif, route.gateway) {
            (Some(oif), _) => oif,
            // A gateway without a device: the device that reaches the gateway.
            (None, Some(gw)) => st
                .lookup(gw)
                .filter(|r| r.gateway.is_none())
                .and_then(|r| r.oif)
                .ok_or_else(unreachable)?,
            (None, None) => return Err(unreachable()),
        };
        // The preferred source: an address on the device, preferably in a subnet
        // holding the next hop.
        let next_hop = route.gateway.unwrap_or(dst);
        let on_link: Vec<&AddrInfo> = st.addrs.iter().filter(|a| a.index == oif).collect();
        let prefsrc = on_link
            .iter()
            .find(|a| Subnet::containing(a.addr, a.prefix).is_ok_and(|s| s.contains(next_hop)))
            .or(on_link.first())
            .map(|a| a.addr);
        Ok(RouteLookup {
            gateway: route.gateway,
            oif,
            prefsrc,
        })
    }

    fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), NetError> {
        self.mutate(Call::ReplaceNeighbour { index, ip, mac }, |st| {
            require_link(st, index)?;
            let entry = Neighbour { index, ip, mac };
            match st
                .neighbours
                .iter_mut()
                .find(|n| n.index == index && n.ip == ip)
            {
                Some(existing) => *existing = entry,
                None => st.neighbours.push(entry),
            }
            Ok(())
        })
    }

    fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        self.mutate(Call::DelNeighbour { index, ip }, |st| {
            require_link(st, index)?;
            let pos = st
                .neighbours
                .iter()
                .position(|n| n.index == index && n.ip == ip)
                .ok_or(libc::ENOENT)?;
            st.neighbours.remove(pos);
            Ok(())
        })
    }

    fn replace_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError> {
        self.mutate(Call::ReplaceFdb { index, mac, dst }, |st| {
            let link = st.link(index).ok_or(libc::ENODEV)?;
            if link.vxlan.is_none() {
                // NTF_SELF on a device without its own FDB.
                return Err(libc::EOPNOTSUPP);
            }
            // As the VXLAN driver: a replace keeps one remote per MAC.
            let entry = FdbEntry { index, mac, dst };
            match st.fdb.iter_mut().find(|f| f.index == index && f.mac == mac) {
                Some(existing) => *existing = entry,
                None => st.fdb.push(entry),
            }
            Ok(())
        })
    }

    fn del_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError> {
        self.mutate(Call::DelFdb { index, mac, dst }, |st| {
            require_link(st, index)?;
            let pos = st
                .fdb
                .iter()
                .position(|f| f.index == index && f.mac == mac && f.dst == dst)
                .ok_or(libc::ENOENT)?;
            st.fdb.remove(pos);
            Ok(())
        })
    }

    fn open_tun(&self, name: &str) -> Result<TunDevice, NetError> {
        self.mutate(Call::OpenTun(name.to_owned()), |st| {
            if let Some(link) = st.links.iter().find(|l| l.name == name) {
                // A persistent TUN device a previous process left: attach to it.
                return match link.kind.as_deref() {
                    Some("tun") => Ok(TunDevice {
                        link: link.clone(),
                        tun: None,
                    }),
                    _ => Err(libc::EEXIST),
                };
            }
            let index = st.add_link(LinkInfo {
                index: 0,
                name: name.to_owned(),
                kind: Some("tun".to_owned()),
                mtu: 1500,
                mac: None,
                up: false,
                vxlan: None,
                ipip: None,
            });
            let link = st.link(index).cloned().ok_or(libc::ENODEV)?;
            Ok(TunDevice { link, tun: None })
        })
    }

    fn bind_udp(&self, addr: SocketAddrV4) -> Result<Option<Arc<UdpSocket>>, NetError> {
        self.mutate(Call::BindUdp(addr), |_| Ok(None))
    }
}

#[cfg(test)]
mod tests;
