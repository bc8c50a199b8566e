//! [`Kernel`] over rtnetlink, in the network namespace the socket was opened in.
//!
//! rtnetlink is async; the trait is blocking. Each [`Netlink`] owns a private
//! current-thread tokio runtime with the rtnetlink connection spawned on it, and every
//! method runs its request with `block_on` under a mutex, which also polls the
//! connection task. Callers therefore need no tokio context of their own: plain
//! threads and `spawn_blocking` both work. (Calling from *inside* an async task would
//! panic, as any nested `block_on` does; use `spawn_blocking`.)

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use futures::TryStreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkIpIp, LinkUnspec, LinkVxlan, RouteMessageBuilder,
};
use tokio::runtime::Runtime;
use tracing::debug;
use twill_core::{MacAddr, Subnet};

use crate::{
    AddrInfo, FdbEntry, IpipInfo, IpipSpec, Kernel, LinkInfo, Neighbour, NetError, ROUTE_PROTOCOL,
    Route, RouteLookup, TableRoute, VxlanInfo, VxlanSpec,
};

use crate::{TunDevice, datapath, io_error};

mod codec;

use codec::*;

/// The kernel, through an rtnetlink socket opened by [`Netlink::new`] in the calling
/// thread's network namespace. Requests are serialised.
pub struct Netlink {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Always `Some` until drop; taken there to shut down without blocking.
    rt: Option<Runtime>,
    handle: Handle,
    requests: Requests,
}

/// A second rtnetlink socket, for the requests a join repeats thousands of times
/// (replacing and deleting routes, neighbours and FDB entries, and the route lookup
/// that checks whose route a destination has): each is written and its
/// acknowledgement read on the calling thread, with no runtime, task or channel in
/// between. The kernel does the work inside the `send`, so this is what is left of a
/// request's cost besides the kernel's own: with the async path, the plugin thread spent
/// a third as long in user space as in the kernel during a 5,000-peer join.
struct Requests {
    socket: netlink_sys::Socket,
    sequence: u32,
    /// The request being sent, and the answer read (reused).
    out: Vec<u8>,
    answer: Vec<u8>,
}

impl Requests {
    fn open() -> std::io::Result<Self> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        // Acknowledgements without a copy of the request.
        socket.set_cap_ack(true)?;
        Ok(Self {
            socket,
            sequence: 0,
            out: Vec::new(),
            answer: Vec::with_capacity(8192),
        })
    }

    /// Send `message` with `flags` (plus REQUEST), and read the kernel's answer: the
    /// message it answers with, `None` for an acknowledgement, or its error as
    /// [`request_error`] words it.
    fn exchange(
        &mut self,
        op: &'static str,
        object: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Option<RouteNetlinkMessage>, NetError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | flags;
        request.header.sequence_number = self.sequence;
        request.finalize();
        self.out.resize(request.buffer_len(), 0);
        request.serialize(&mut self.out);
        let io = |e: std::io::Error, object: String| NetError::Request {
            op,
            object,
            message: e.to_string(),
            errno: e.raw_os_error(),
        };
        if let Err(e) = self.socket.send(&self.out, 0) {
            return Err(io(e, object()));
        }
        loop {
            self.answer.clear();
            if let Err(e) = self.socket.recv(&mut self.answer, 0) {
                return Err(io(e, object()));
            }
            let mut at = 0;
            while at < self.answer.len() {
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.answer[at..]);
                let reply = match parsed {
                    Ok(reply) => reply,
                    Err(e) => {
                        return Err(NetError::Request {
                            op,
                            object: object(),
                            message: format!("an answer that does not parse: {e}"),
                            errno: None,
                        });
                    }
                };
                let length = reply.header.length as usize;
                // An answer to an earlier request (one given up on) is passed over.
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(request_error(
                                op,
                                object(),
                                rtnetlink::Error::NetlinkError(e),
                            ));
                        }
                        NetlinkPayload::InnerMessage(answer) => return Ok(Some(answer)),
                        _ => return Ok(None),
                    }
                }
                if length == 0 {
                    break;
                }
                // Messages are 4-byte aligned in a datagram.
                at += (length + 3) & !3;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // `Runtime`'s own drop blocks and panics inside an async context; a
        // background shutdown does neither. The connection task only holds the
        // socket, so abandoning it is harmless.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Netlink {
    /// Every IPv4 route message, as `parse` reads it (messages it refuses are left out).
    fn dump_routes<T: Send + 'static>(
        &self,
        parse: fn(&RouteMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.run(|h| async move {
            let msgs: Vec<RouteMessage> = h
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("list routes", String::new(), e))?;
            Ok(msgs.iter().filter_map(parse).collect())
        })
    }

    /// Open an rtnetlink socket in the calling thread's network namespace, with a
    /// private runtime to drive it.
    pub fn new() -> Result<Self, NetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetError::Socket)?;
        // The socket registers with the runtime's reactor, so it must be created
        // inside the runtime's context.
        let (connection, handle, _messages) = {
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(NetError::Socket)?
        };
        rt.spawn(connection);
        Ok(Self {
            inner: Mutex::new(Inner {
                rt: Some(rt),
                handle,
                requests: Requests::open().map_err(NetError::Socket)?,
            }),
        })
    }

    /// One request on the synchronous socket ([`Requests::exchange`]), serialised
    /// with every other.
    fn exchange(
        &self,
        op: &'static str,
        object: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Option<RouteNetlinkMessage>, NetError> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .requests
            .exchange(op, object, message, flags)
    }

    /// A change on the synchronous socket, acknowledged by the kernel.
    fn acked(
        &self,
        op: &'static str,
        object: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetError> {
        self.exchange(op, object, message, NLM_F_ACK | flags)
            .map(drop)
    }

    /// Run one request on the private runtime, serialised with every other.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, NetError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, NetError>>,
    {
        // A panic while holding the lock leaves nothing half-done that matters:
        // each request is self-contained.
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let handle = inner.handle.clone();
        match &inner.rt {
            Some(rt) => rt.block_on(f(handle)),
            None => Err(NetError::Socket(std::io::Error::other(
                "netlink runtime already shut down",
            ))),
        }
    }

    /// Every permanent IPv4 neighbour (ARP) entry. Not part of [`Kernel`]; for
    /// inspection and tests.
    /// Add a link and read it back as the kernel made it.
    fn create_link(
        &self,
        op: &'static str,
        name: String,
        msg: LinkMessage,
    ) -> Result<LinkInfo, NetError> {
        self.run(|h| async move {
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| request_error(op, name.clone(), e))?;
            let mut stream = h.link().get().match_name(name.clone()).execute();
            match stream.try_next().await {
                Ok(Some(msg)) => Ok(link_from_message(msg)),
                Ok(None) => Err(NetError::Request {
                    op,
                    object: name,
                    message: "link not found after creation".to_owned(),
                    errno: None,
                }),
                Err(e) => Err(request_error(op, name, e)),
            }
        })
    }

    pub fn neighbours(&self) -> Result<Vec<Neighbour>, NetError> {
        self.run(|h| async move {
            let msgs: Vec<NeighbourMessage> = h
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("list neighbours", String::new(), e))?;
            Ok(msgs
                .into_iter()
                .filter(|m| m.header.state == NeighbourState::Permanent)
                .filter_map(|m| {
                    let (ip, mac) = neighbour_fields(&m);
                    Some(Neighbour {
                        index: m.header.ifindex,
                        ip: ip?,
                        mac: mac?,
                    })
                })
                .collect())
        })
    }

    /// Every FDB entry that has a remote destination (VXLAN `dst`). Not part of
    /// [`Kernel`]; for inspection and tests.
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, NetError> {
        self.run(|h| async move {
            let msgs: Vec<NeighbourMessage> = h
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("list fdb", String::new(), e))?;
            Ok(msgs
                .into_iter()
                .filter_map(|m| {
                    let (dst, mac) = neighbour_fields(&m);
                    Some(FdbEntry {
                        index: m.header.ifindex,
                        mac: mac?,
                        dst: dst?,
                    })
                })
                .collect())
        })
    }
}

/// A permanent FDB entry on the device's own table, as `bridge fdb … dev D dst IP self
/// permanent` writes it: AF_BRIDGE, NUD_PERMANENT, NDA_LLADDR, NDA_DST; `Own` is
/// NTF_SELF.
fn fdb_message(index: u32, mac: MacAddr, dst: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unspec;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    msg
}

impl Kernel for Netlink {
    fn permanent_neighbours(&self) -> Result<Vec<Neighbour>, NetError> {
        self.neighbours()
    }

    fn remote_fdb(&self) -> Result<Vec<FdbEntry>, NetError> {
        self.fdb()
    }

    fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        self.run(|h| async move {
            let msgs: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("list links", String::new(), e))?;
            Ok(msgs.into_iter().map(link_from_message).collect())
        })
    }

    fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetError> {
        self.run(|h| async move {
            let mut stream = h.link().get().match_name(name).execute();
            match stream.try_next().await {
                Ok(msg) => Ok(msg.map(link_from_message)),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
                Err(e) => Err(request_error("get link", name.to_owned(), e)),
            }
        })
    }

    fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetError> {
        self.run(|h| async move {
            let mut stream = h.link().get().match_index(index).execute();
            match stream.try_next().await {
                Ok(msg) => Ok(msg.map(link_from_message)),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
                Err(e) => Err(request_error("get link", format!("#{index}"), e)),
            }
        })
    }

    fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetError> {
        debug!(?spec, "create vxlan");
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay)
            .local(spec.local)
            .port(spec.port)
            .learning(spec.learning)
            .l2miss(false)
            .l3miss(false)
            .address(spec.mac.0.to_vec())
            .build();
        self.create_link("create vxlan", spec.name.clone(), msg)
    }

    fn create_ipip(&self, spec: &IpipSpec) -> Result<LinkInfo, NetError> {
        debug!(?spec, "create ipip");
        let msg = ipip_message(spec);
        self.create_link("create ipip", spec.name.clone(), msg)
    }

    fn delete_link(&self, index: u32) -> Result<(), NetError> {
        debug!(index, "delete link");
        self.run(|h| async move {
            h.link()
                .del(index)
                .execute()
                .await
                .map_err(|e| request_error("delete link", format!("#{index}"), e))
        })
    }

    fn set_link_up(&self, index: u32) -> Result<(), NetError> {
        debug!(index, "set link up");
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.run(|h| async move {
            h.link()
                .change(msg)
                .execute()
                .await
                .map_err(|e| request_error("set link up", format!("#{index}"), e))
        })
    }

    fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError> {
        debug!(index, mtu, "set mtu");
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.run(|h| async move {
            h.link()
                .change(msg)
                .execute()
                .await
                .map_err(|e| request_error("set mtu", format!("#{index} mtu {mtu}"), e))
        })
    }

    fn addrs(&self) -> Result<Vec<AddrInfo>, NetError> {
        self.run(|h| async move {
            let msgs: Vec<AddressMessage> = h
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_error("list addresses", String::new(), e))?;
            Ok(msgs
                .into_iter()
                .filter(|m| m.header.family == AddressFamily::Inet)
                .filter_map(|m| {
                    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
                    // peer on point-to-point links and equal to it otherwise.
                    let mut local = None;
                    let mut address = None;
                    for attr in &m.attributes {
                        match attr {
                            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
                            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
                            _ => {}
                        }
                    }
                    Some(AddrInfo {
                        index: m.header.index,
                        addr: local.or(address)?,
                        prefix: m.header.prefix_len,
                    })
                })
                .collect())
        })
    }

    fn add_addr(&self, addr: AddrInfo) -> Result<(), NetError> {
        debug!(?addr, "add address");
        self.run(|h| async move {
            h.address()
                .add(addr.index, IpAddr::V4(addr.addr), addr.prefix)
                .execute()
                .await
                .map_err(|e| {
                    request_error(
                        "add address",
                        format!("{}/{} dev #{}", addr.addr, addr.prefix, addr.index),
                        e,
                    )
                })
        })
    }

    fn del_addr(&self, addr: AddrInfo) -> Result<(), NetError> {
        debug!(?addr, "delete address");
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(addr.index)
            .address(addr.addr, addr.prefix)
            .build();
        self.run(|h| async move {
            h.address().del(msg).execute().await.map_err(|e| {
                request_error(
                    "delete address",
                    format!("{}/{} dev #{}", addr.addr, addr.prefix, addr.index),
                    e,
                )
            })
        })
    }

    fn routes(&self) -> Result<Vec<Route>, NetError> {
        self.dump_routes(route_from_message)
    }

    fn table_routes(&self) -> Result<Vec<TableRoute>, NetError> {
        self.dump_routes(table_route_from_message)
    }

    /// One request instead of a dump: `ip route get fibmatch <dst's address>`, the FIB
    /// entry the kernel's lookup lands on. That entry is `dst`'s route when there is
    /// one, unless a more specific route covers the address, or the lookup fails
    /// (which a blackhole or unreachable route at `dst` also makes it do): then the
    /// table is listed after all. An entry less specific than `dst` (the default
    /// route, the network's) means there is none at `dst`.
    fn table_route(&self, dst: Subnet) -> Result<Option<TableRoute>, NetError> {
        let mut query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), 32)
            .build();
        query.header.table = RouteHeader::RT_TABLE_UNSPEC;
        query.header.protocol = RouteProtocol::Unspec;
        query.header.scope = RouteScope::Universe;
        query.header.kind = RouteType::Unspec;
        query.header.flags = RouteFlags::FibMatch;
        // On the synchronous socket: a peer's route added or removed asks this first.
        let answer = self.exchange(
            "route get",
            || dst.to_string(),
            RouteNetlinkMessage::GetRoute(query),
            0,
        );
        // A failed lookup (no route, a blackhole) is read from the table below.
        let matched = match answer {
            Ok(Some(RouteNetlinkMessage::NewRoute(msg))) => Some(msg),
            _ => None,
        };
        let entry = matched.as_ref().and_then(table_route_from_message);
        match entry {
            Some(t) if t.route.dst == dst => Ok(Some(t)),
            Some(t) if t.route.dst.prefix() < dst.prefix() && t.route.dst.contains_subnet(&dst) => {
                Ok(None)
            }
            _ => Ok(TableRoute::at(self.table_routes()?, dst)),
        }
    }

    fn replace_route(&self, route: &Route) -> Result<(), NetError> {
        debug!(?route, "replace route");
        let mut msg = route_message(route);
        // Tagged as twill's, so that no route without the tag is ever taken for ours.
        msg.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        self.acked(
            "replace route",
            || describe_route(route),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn del_route(&self, route: &Route) -> Result<(), NetError> {
        debug!(?route, "delete route");
        // As `ip route del`: any protocol, scope and type; the destination, gateway
        // and device given must match.
        let mut msg = route_message(route);
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        msg.header.flags = RouteFlags::empty();
        self.acked(
            "delete route",
            || describe_route(route),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
    }

    fn route_get(&self, dst: Ipv4Addr) -> Result<RouteLookup, NetError> {
        // As `ip route get`: only the family and the /32 destination are set.
        let mut query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        query.header.table = RouteHeader::RT_TABLE_UNSPEC;
        query.header.protocol = RouteProtocol::Unspec;
        query.header.scope = RouteScope::Universe;
        query.header.kind = RouteType::Unspec;
        self.run(|h| async move {
            let mut stream = h.route().get(query).execute();
            let msg = stream
                .try_next()
                .await
                .map_err(|e| request_error("route get", dst.to_string(), e))?;
            let Some(msg) = msg else {
                return Err(NetError::Request {
                    op: "route get",
                    object: dst.to_string(),
                    message: "no answer from the kernel".to_owned(),
                    errno: None,
                });
            };
            let mut gateway = None;
            let mut oif = None;
            let mut prefsrc = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Gateway(a) => gateway = route_addr_v4(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::PrefSource(a) => prefsrc = route_addr_v4(a),
                    _ => {}
                }
            }
            let oif = oif.ok_or_else(|| NetError::Request {
                op: "route get",
                object: dst.to_string(),
                message: "the kernel's answer has no output interface".to_owned(),
                errno: None,
            })?;
            Ok(RouteLookup {
                gateway,
                oif,
                prefsrc,
            })
        })
    }

    fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), NetError> {
        debug!(index, %ip, %mac, "replace neighbour");
        // As `ip neigh replace … nud permanent`.
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.acked(
            "replace neighbour",
            || format!("{ip} lladdr {mac} dev #{index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        debug!(index, %ip, "delete neighbour");
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.acked(
            "delete neighbour",
            || format!("{ip} dev #{index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
    }

    fn replace_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError> {
        debug!(index, %mac, %dst, "replace fdb");
        self.acked(
            "replace fdb",
            || format!("{mac} dst {dst} dev #{index}"),
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn del_fdb(&self, index: u32, mac: MacAddr, dst: Ipv4Addr) -> Result<(), NetError> {
        debug!(index, %mac, %dst, "delete fdb");
        self.acked(
            "delete fdb",
            || format!("{mac} dst {dst} dev #{index}"),
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)),
            0,
        )
    }

    fn open_tun(&self, name: &str) -> Result<TunDevice, NetError> {
        debug!(name, "open tun");
        let tun =
            datapath::Tun::open(name).map_err(|e| io_error("open tun", name.to_owned(), &e))?;
        let link = self.link_by_name(name)?.ok_or_else(|| NetError::Request {
            op: "open tun",
            object: name.to_owned(),
            message: "link not found after creation".to_owned(),
            errno: None,
        })?;
        Ok(TunDevice {
            link,
            tun: Some(std::sync::Arc::new(tun)),
        })
    }

    fn bind_udp(
        &self,
        addr: std::net::SocketAddrV4,
    ) -> Result<Option<std::sync::Arc<std::net::UdpSocket>>, NetError> {
        debug!(%addr, "bind udp");
        let socket =
            datapath::bind_udp(addr).map_err(|e| io_error("bind udp", addr.to_string(), &e))?;
        Ok(Some(std::sync::Arc::new(socket)))
    }
}

#[cfg(test)]
mod ipip_tests {
    use netlink_packet_route::link::InfoKind;
    use rtnetlink::packet_core::{Emitable, Parseable};

    use super::*;

    fn spec() -> IpipSpec {
        IpipSpec {
            name: "flannel.ipip".to_owned(),
            local: Ipv4Addr::new(192, 168, 100, 10),
            underlay: 7,
        }
    }

    /// The request carries flannel's attributes, and what the kernel would echo back
    /// reads as the same device (no kernel needed; `tests/ipip.rs` runs it for real).
    #[test]
    fn ipip_request_has_flannels_attributes_and_reads_back() {
        let msg = ipip_message(&spec());
        let infos = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .expect("IFLA_LINKINFO");
        assert!(infos.contains(&NlLinkInfo::Kind(InfoKind::IpIp)));
        let data = infos
            .iter()
            .find_map(|i| match i {
                NlLinkInfo::Data(InfoData::IpTunnel(d)) => Some(d.clone()),
                _ => None,
            })
            .expect("IFLA_INFO_DATA");
        assert!(data.contains(&InfoIpTunnel::Local(IpAddr::V4(spec().local))));
        assert!(data.contains(&InfoIpTunnel::Link(7)));
        assert!(data.contains(&InfoIpTunnel::PMtuDisc(false)));
        assert!(
            !data.iter().any(|d| matches!(d, InfoIpTunnel::Remote(_))),
            "remote any: {data:?}"
        );
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("flannel.ipip".to_owned()))
        );

        // Through the wire format and back, with the remote the kernel reports as 0.0.0.0.
        let mut echoed = msg.clone();
        for attr in &mut echoed.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let NlLinkInfo::Data(InfoData::IpTunnel(d)) = info {
                        d.push(InfoIpTunnel::Remote(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
                    }
                }
            }
        }
        echoed.attributes.push(LinkAttribute::Mtu(1480));
        let mut buf = vec![0; echoed.buffer_len()];
        echoed.emit(&mut buf);
        let parsed = LinkMessage::parse(buf.as_slice()).expect("parses");
        let link = link_from_message(parsed);
        assert_eq!(link.name, "flannel.ipip");
        assert_eq!(link.kind.as_deref(), Some("ipip"));
        assert_eq!(link.mtu, 1480);
        assert_eq!(link.vxlan, None);
        assert_eq!(
            link.ipip,
            Some(IpipInfo {
                local: Some(Ipv4Addr::new(192, 168, 100, 10)),
                remote: None,
                underlay: Some(7),
            })
        );
    }
}
