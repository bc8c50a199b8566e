//! A [`Kernel`] that counts every request by kind, and its failures, into the
//! Prometheus metrics (`twill_netlink_operations_total`, `twill_netlink_errors_total`),
//! then forwards it.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

use twill_api::Metrics;
use twill_core::MacAddr;
use twill_net::{
    AddrInfo, IpipSpec, Kernel, LinkInfo, NetError, Route, RouteLookup, TunDevice, VxlanSpec,
};

pub struct Metered {
    inner: Arc<dyn Kernel>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Kernel>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn count<T>(&self, kind: &str, result: Result<T, NetError>) -> Result<T, NetError> {
        self.metrics.netlink_operation(kind, result.is_err());
        result
    }
}

impl Kernel for Metered {
    fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        self.count("list_links", self.inner.links())
    }
    fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetError> {
        self.count("get_link", self.inner.link_by_name(name))
    }
    fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetError> {
        self.count("get_link", self.inner.link_by_index(index))
    }
    fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetError> {
        self.count("create_link", self.inner.create_vxlan(spec))
    }
    fn create_ipip(&self, spec: &IpipSpec) -> Result<LinkInfo, NetError> {
        self.count("create_link", self.inner.create_ipip(spec))
    }
    fn delete_link(&self, index: u32) -> Result<(), NetError> {
        self.count("delete_link", self.inner.delete_link(index))
    }
    fn set_link_up(&self, index: u32) -> Result<(), NetError> {
        self.count("set_link", self.inner.set_link_up(index))
    }
    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError> {
        self.count("set_link", self.inner.set_mtu(index, mtu))
    }
    fn addrs(&self) -> Result<Vec<AddrInfo>, NetError> {
        self.count("list_addresses", self.inner.addrs())
    }
    fn add_addr(&self, addr: AddrInfo) -> Result<(), NetError> {
        self.count("add_address", self.inner.add_addr(addr))
    }
    fn del_addr(&self, addr: AddrInfo) -> Result<(), NetError> {
        self.count("delete_address", self.inner.del_addr(addr))
    }
    fn routes(&self) -> Result<Vec<Route>, NetError> {
        self.count("list_routes", self.inner.routes())
    }
    fn replace_route(&self, route: &Route) -> Result<(), NetError> {
        self.count("replace_route", self.inner.replace_route(route))
    }
    fn del_route(&self, route: &Route) -> Result<(), NetError> {
        self.count("delete_route", self.inner.del_route(route))
    }
    fn route_get(&self, dst: Ipv4Addr) -> Result<RouteLookup, NetError> {
        self.count("route_get", self.inner.route_get(dst))
    }
    fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), NetError> {
        self.count(
            "replace_neighbour",
            self.inner.replace_neighbour(index, ip, mac),
        )
    }
    fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        self.count("delete_neighbour", self.inner.del_neighbour(index, ip))
    }
    fn replace_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError> {
        self.count("replace_fdb", self.inner.replace_fdb(index, mac, dst))
    }
    fn del_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError> {
        self.count("delete_fdb", self.inner.del_fdb(index, mac, dst))
    }
    // Not netlink requests, but counted beside them: they are the data path's kernel objects.
    fn open_tun(&self, name: &str) -> Result<TunDevice, NetError> {
        self.count("open_tun", self.inner.open_tun(name))
    }
    fn bind_udp(&self, addr: SocketAddrV4) -> Result<Option<Arc<UdpSocket>>, NetError> {
        self.count("bind_udp", self.inner.bind_udp(addr))
    }
}
