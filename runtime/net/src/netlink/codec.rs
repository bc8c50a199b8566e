//! Netlink messages to and from the types of the `Kernel` trait, and rtnetlink's errors
//! as [`NetError`]s.

use super::*;

/// Turn an rtnetlink failure into a [`NetError::Request`], keeping the kernel's errno
/// (positive, as in `libc::EEXIST`).
pub(super) fn request_error(op: &'static str, object: String, err: rtnetlink::Error) -> NetError {
    let (message, errno) = match &err {
        rtnetlink::Error::NetlinkError(msg) => (
            msg.to_io().to_string(),
            msg.code.and_then(|c| c.get().checked_neg()),
        ),
        other => (other.to_string(), None),
    };
    debug!(op, %object, %message, ?errno, "netlink request failed");
    NetError::Request {
        op,
        object,
        message,
        errno,
    }
}

pub(super) fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get().checked_neg() == Some(errno)))
}

pub(super) fn mac_from(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

pub(super) fn ipv4_from(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

pub(super) fn link_from_message(msg: LinkMessage) -> LinkInfo {
    let mut link = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
        ipip: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(addr) => link.mac = mac_from(&addr),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        NlLinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        NlLinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(vxlan_from_attrs(attrs));
                        }
                        // ipip, sit and ip6tnl share these attributes; only ipip's
                        // are reported (the kind says which it is).
                        NlLinkInfo::Data(InfoData::IpTunnel(attrs)) => {
                            link.ipip = Some(ipip_from_attrs(attrs));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

pub(super) fn vxlan_from_attrs(attrs: Vec<InfoVxlan>) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        port: 0,
        local: None,
        underlay: None,
        learning: false,
    };
    for attr in attrs {
        match attr {
            InfoVxlan::Id(vni) => info.vni = vni,
            InfoVxlan::Port(port) => info.port = port,
            InfoVxlan::Local(ip) if !ip.is_unspecified() => info.local = Some(ip),
            InfoVxlan::Link(index) if index != 0 => info.underlay = Some(index),
            InfoVxlan::Learning(on) => info.learning = on,
            _ => {}
        }
    }
    info
}

pub(super) fn ipip_from_attrs(attrs: Vec<InfoIpTunnel>) -> IpipInfo {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    };
    let mut info = IpipInfo {
        local: None,
        remote: None,
        underlay: None,
    };
    for attr in attrs {
        match attr {
            InfoIpTunnel::Local(ip) => info.local = v4(ip),
            InfoIpTunnel::Remote(ip) => info.remote = v4(ip),
            InfoIpTunnel::Link(index) if index != 0 => info.underlay = Some(index),
            _ => {}
        }
    }
    info
}

/// NDA_DST (as IPv4, whatever the family) and NDA_LLADDR of a neighbour message.
pub(super) fn neighbour_fields(msg: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
            // AF_BRIDGE messages carry NDA_DST unparsed.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => ip = ipv4_from(raw),
            NeighbourAttribute::LinkLayerAddress(raw) => mac = mac_from(raw),
            _ => {}
        }
    }
    (ip, mac)
}

pub(super) fn route_addr_v4(addr: &RouteAddress) -> Option<Ipv4Addr> {
    match addr {
        RouteAddress::Inet(v4) => Some(*v4),
        _ => None,
    }
}

/// An IPv4 unicast route of the main table, or `None` for anything else.
pub(super) fn route_from_message(msg: &RouteMessage) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    main_table_route(msg).map(|(route, _)| route)
}

/// An IPv4 route of the main table of any type, with its protocol and metric.
pub(super) fn table_route_from_message(msg: &RouteMessage) -> Option<TableRoute> {
    let (route, metric) = main_table_route(msg)?;
    Some(TableRoute {
        route,
        protocol: u8::from(msg.header.protocol),
        metric,
        unicast: msg.header.kind == RouteType::Unicast,
    })
}

/// The destination, next hop and metric of an IPv4 route of the main table.
fn main_table_route(msg: &RouteMessage) -> Option<(Route, u32)> {
    let h = &msg.header;
    if h.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut onlink = h.flags.contains(RouteFlags::Onlink);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_addr_v4(a)?,
            RouteAttribute::Gateway(a) => gateway = route_addr_v4(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) => {
                // twill never writes multipath routes; report the first hop.
                if let Some(hop) = hops.first() {
                    oif = Some(hop.interface_index);
                    onlink |= hop
                        .flags
                        .contains(netlink_packet_route::route::RouteNextHopFlags::Onlink);
                    gateway = hop.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_addr_v4(g),
                        _ => None,
                    });
                }
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = Subnet::containing(dst, h.destination_prefix_length).ok()?;
    Some((
        Route {
            dst,
            gateway,
            oif,
            onlink,
        },
        metric,
    ))
}

pub(super) fn describe_route(route: &Route) -> String {
    let mut s = route.dst.to_string();
    if let Some(gw) = route.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if route.onlink {
        s.push_str(" onlink");
    }
    s
}

/// A route message carrying `route`'s destination, gateway, device and flags, in
/// the main table, with the header left for the caller to finish.
pub(super) fn route_message(route: &Route) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.addr(), route.dst.prefix());
    if let Some(gw) = route.gateway {
        b = b.gateway(gw);
    }
    if let Some(oif) = route.oif {
        b = b.output_interface(oif);
    }
    if route.onlink {
        b = b.onlink();
    }
    b.build()
}

/// `ip link add <name> type ipip local <local> dev <underlay> nopmtudisc`: remote any,
/// TTL inherited, as flannel's `flannel.ipip` (`netlink.Iptun{Local: IfaceAddr}`, whose
/// zero `PMtuDisc` the Go library always sends).
pub(super) fn ipip_message(spec: &IpipSpec) -> LinkMessage {
    LinkIpIp::new(&spec.name)
        .local(spec.local)
        .dev(spec.underlay)
        .pmtudisc(false)
        .build()
}
