//! Every kind of [`Kernel`] request as a [`KernelOp`], and the two kernels built from
//! that list: [`Observed`] (forwards each request and tells a callback what it was
//! and whether it failed: the daemon's netlink metrics) and [`Refusing`] (refuses
//! every request: a plugin host that may only look, for `twill plugin list`). The
//! methods are listed once, in [`kernel_methods!`], and both impls are generated from
//! that list.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

use twill_core::{MacAddr, Subnet};

use crate::{
    AddrInfo, FdbEntry, IpipSpec, Kernel, LinkInfo, Neighbour, NetError, Route, RouteLookup,
    TableRoute, TunDevice, VxlanSpec,
};

/// Which [`Kernel`] method a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelOp {
    /// [`Kernel::links`].
    ListLinks,
    /// [`Kernel::link_by_name`], [`Kernel::link_by_index`].
    GetLink,
    /// [`Kernel::create_vxlan`].
    CreateVxlan,
    /// [`Kernel::create_ipip`].
    CreateIpip,
    /// [`Kernel::delete_link`].
    DeleteLink,
    /// [`Kernel::set_link_up`].
    SetLinkUp,
    /// [`Kernel::set_mtu`].
    SetMtu,
    /// [`Kernel::addrs`].
    ListAddrs,
    /// [`Kernel::add_addr`].
    AddAddr,
    /// [`Kernel::del_addr`].
    DelAddr,
    /// [`Kernel::routes`], [`Kernel::table_routes`].
    ListRoutes,
    /// [`Kernel::replace_route`].
    ReplaceRoute,
    /// [`Kernel::del_route`].
    DelRoute,
    /// [`Kernel::route_get`], [`Kernel::table_route`].
    RouteGet,
    /// [`Kernel::permanent_neighbours`].
    ListNeighbours,
    /// [`Kernel::replace_neighbour`].
    ReplaceNeighbour,
    /// [`Kernel::del_neighbour`].
    DelNeighbour,
    /// [`Kernel::remote_fdb`].
    ListFdb,
    /// [`Kernel::replace_fdb`].
    ReplaceFdb,
    /// [`Kernel::del_fdb`].
    DelFdb,
    /// [`Kernel::open_tun`].
    OpenTun,
    /// [`Kernel::bind_udp`].
    BindUdp,
}

impl KernelOp {
    /// What the request does, for a person (`create vxlan`, `replace route`).
    pub fn name(self) -> &'static str {
        match self {
            KernelOp::ListLinks => "list links",
            KernelOp::GetLink => "get link",
            KernelOp::CreateVxlan => "create vxlan",
            KernelOp::CreateIpip => "create ipip",
            KernelOp::DeleteLink => "delete link",
            KernelOp::SetLinkUp => "set link up",
            KernelOp::SetMtu => "set mtu",
            KernelOp::ListAddrs => "list addresses",
            KernelOp::AddAddr => "add address",
            KernelOp::DelAddr => "delete address",
            KernelOp::ListRoutes => "list routes",
            KernelOp::ReplaceRoute => "replace route",
            KernelOp::DelRoute => "delete route",
            KernelOp::RouteGet => "route get",
            KernelOp::ListNeighbours => "list neighbours",
            KernelOp::ReplaceNeighbour => "replace neighbour",
            KernelOp::DelNeighbour => "delete neighbour",
            KernelOp::ListFdb => "list fdb",
            KernelOp::ReplaceFdb => "replace fdb",
            KernelOp::DelFdb => "delete fdb",
            KernelOp::OpenTun => "open tun",
            KernelOp::BindUdp => "bind udp",
        }
    }

    /// The `kind` label of twill's netlink metrics: creating either tunnel kind is
    /// `create_link`, setting a link up or its MTU is `set_link`.
    pub fn metric_kind(self) -> &'static str {
        match self {
            KernelOp::ListLinks => "list_links",
            KernelOp::GetLink => "get_link",
            KernelOp::CreateVxlan | KernelOp::CreateIpip => "create_link",
            KernelOp::DeleteLink => "delete_link",
            KernelOp::SetLinkUp | KernelOp::SetMtu => "set_link",
            KernelOp::ListAddrs => "list_addresses",
            KernelOp::AddAddr => "add_address",
            KernelOp::DelAddr => "delete_address",
            KernelOp::ListRoutes => "list_routes",
            KernelOp::ReplaceRoute => "replace_route",
            KernelOp::DelRoute => "delete_route",
            KernelOp::RouteGet => "route_get",
            KernelOp::ListNeighbours => "list_neighbours",
            KernelOp::ReplaceNeighbour => "replace_neighbour",
            KernelOp::DelNeighbour => "delete_neighbour",
            KernelOp::ListFdb => "list_fdb",
            KernelOp::ReplaceFdb => "replace_fdb",
            KernelOp::DelFdb => "delete_fdb",
            KernelOp::OpenTun => "open_tun",
            KernelOp::BindUdp => "bind_udp",
        }
    }
}

/// Calls `$then!` with every [`Kernel`] method: `name(arg: Type, …) -> Ok = Op;`.
macro_rules! kernel_methods {
    ($then:ident) => {
        $then! {
            links() -> Vec<LinkInfo> = ListLinks;
            link_by_name(name: &str) -> Option<LinkInfo> = GetLink;
            link_by_index(index: u32) -> Option<LinkInfo> = GetLink;
            create_vxlan(spec: &VxlanSpec) -> LinkInfo = CreateVxlan;
            create_ipip(spec: &IpipSpec) -> LinkInfo = CreateIpip;
            delete_link(index: u32) -> () = DeleteLink;
            set_link_up(index: u32) -> () = SetLinkUp;
            set_mtu(index: u32, mtu: u32) -> () = SetMtu;
            addrs() -> Vec<AddrInfo> = ListAddrs;
            add_addr(addr: AddrInfo) -> () = AddAddr;
            del_addr(addr: AddrInfo) -> () = DelAddr;
            routes() -> Vec<Route> = ListRoutes;
            table_routes() -> Vec<TableRoute> = ListRoutes;
            table_route(dst: Subnet) -> Option<TableRoute> = RouteGet;
            replace_route(route: &Route) -> () = ReplaceRoute;
            del_route(route: &Route) -> () = DelRoute;
            route_get(dst: Ipv4Addr) -> RouteLookup = RouteGet;
            permanent_neighbours() -> Vec<Neighbour> = ListNeighbours;
            replace_neighbour(index: u32, ip: Ipv4Addr, mac: MacAddr) -> () = ReplaceNeighbour;
            del_neighbour(index: u32, ip: Ipv4Addr) -> () = DelNeighbour;
            remote_fdb() -> Vec<FdbEntry> = ListFdb;
            replace_fdb(index: u32, mac: MacAddr, dst: Ipv4Addr) -> () = ReplaceFdb;
            del_fdb(index: u32, mac: MacAddr, dst: Ipv4Addr) -> () = DelFdb;
            open_tun(name: &str) -> TunDevice = OpenTun;
            bind_udp(addr: SocketAddrV4) -> Option<Arc<UdpSocket>> = BindUdp;
        }
    };
}

/// A [`Kernel`] that forwards every request to `inner`, then tells `observe` which
/// request it was and whether it failed.
pub struct Observed<F> {
    inner: Arc<dyn Kernel>,
    observe: F,
}

impl<F: Fn(KernelOp, bool) + Send + Sync + 'static> Observed<F> {
    pub fn new(inner: Arc<dyn Kernel>, observe: F) -> Self {
        Self { inner, observe }
    }
}

macro_rules! observed {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $ok:ty = $op:ident;)*) => {
        impl<F: Fn(KernelOp, bool) + Send + Sync + 'static> Kernel for Observed<F> {
            $(fn $method(&self, $($arg: $ty),*) -> Result<$ok, NetError> {
                let result = self.inner.$method($($arg),*);
                (self.observe)(KernelOp::$op, result.is_err());
                result
            })*
        }
    };
}
kernel_methods!(observed);

/// A [`Kernel`] that refuses every request, for a plugin host that must not touch the
/// machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refusing;

impl Refusing {
    fn refuse(op: KernelOp) -> NetError {
        NetError::Request {
            op: op.name(),
            object: String::new(),
            message: "this plugin host has no kernel access".into(),
            errno: None,
        }
    }
}

macro_rules! refusing {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $ok:ty = $op:ident;)*) => {
        impl Kernel for Refusing {
            $(fn $method(&self, $(_: $ty),*) -> Result<$ok, NetError> {
                Err(Self::refuse(KernelOp::$op))
            })*
        }
    };
}
kernel_methods!(refusing);
