use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("valid IPv4")
}

fn subnet(s: &str) -> Subnet {
    s.parse().expect("valid subnet")
}

fn spec(underlay: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".to_owned(),
        vni: 1,
        port: 8472,
        local: ip("192.168.1.10"),
        underlay,
        learning: false,
        mac: MacAddr([0x0a, 1, 2, 3, 4, 5]),
    }
}

fn with_eth0() -> (FakeKernel, u32) {
    let k = FakeKernel::new().with_link("eth0", 1500, ip("192.168.1.10"), 24);
    let eth0 = k
        .link_by_name("eth0")
        .expect("lookup")
        .expect("seeded")
        .index;
    (k, eth0)
}

#[test]
fn vxlan_create_reads_back_and_rejects_a_taken_name() {
    let (k, eth0) = with_eth0();
    let link = k.create_vxlan(&spec(eth0)).expect("create");
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert_eq!(link.mtu, 1450);
    assert_eq!(link.mac, Some(MacAddr([0x0a, 1, 2, 3, 4, 5])));
    assert!(!link.up);
    let vx = link.vxlan.clone().expect("vxlan info");
    assert_eq!((vx.vni, vx.port, vx.underlay), (1, 8472, Some(eth0)));
    assert_eq!(k.link_by_index(link.index).expect("lookup"), Some(link));

    let err = k.create_vxlan(&spec(eth0)).expect_err("taken");
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert_eq!(
        k.create_vxlan(&VxlanSpec {
            name: "other".into(),
            ..spec(999)
        })
        .expect_err("no underlay")
        .errno(),
        Some(libc::ENODEV)
    );
    assert_eq!(k.link_by_name("nope").expect("lookup"), None);
    assert_eq!(k.calls().len(), 3, "failed calls are recorded too");
}

#[test]
fn ipip_create_reads_back_and_rejects_a_taken_name() {
    let (k, eth0) = with_eth0();
    let spec = IpipSpec {
        name: "flannel.ipip".to_owned(),
        local: ip("192.168.1.10"),
        underlay: eth0,
    };
    let link = k.create_ipip(&spec).expect("create");
    assert_eq!(link.kind.as_deref(), Some("ipip"));
    assert_eq!(link.mtu, 1480, "underlay MTU minus the outer IPv4 header");
    assert_eq!((link.mac, link.up, link.vxlan.clone()), (None, false, None));
    assert_eq!(
        link.ipip,
        Some(IpipInfo {
            local: Some(ip("192.168.1.10")),
            remote: None,
            underlay: Some(eth0),
        })
    );
    assert_eq!(k.link_by_name("flannel.ipip").expect("lookup"), Some(link));
    assert_eq!(
        k.create_ipip(&spec).expect_err("taken").errno(),
        Some(libc::EEXIST)
    );
    k.fail_next(KernelOp::CreateIpip, libc::EOPNOTSUPP);
    let other = IpipSpec {
        name: "flannel.ip2".to_owned(),
        ..spec.clone()
    };
    assert_eq!(
        k.create_ipip(&other).expect_err("injected").errno(),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(
        k.calls(),
        vec![
            Call::CreateIpip(spec.clone()),
            Call::CreateIpip(spec),
            Call::CreateIpip(other)
        ]
    );
}

#[test]
fn replaces_are_idempotent_and_recorded() {
    let (k, eth0) = with_eth0();
    let vx = k.create_vxlan(&spec(eth0)).expect("create").index;
    k.take_calls();
    let route = Route {
        dst: subnet("10.244.2.0/24"),
        gateway: Some(ip("10.244.2.0")),
        oif: Some(vx),
        onlink: true,
    };
    let mac = MacAddr([0x0a, 9, 9, 9, 9, 9]);
    for _ in 0..2 {
        k.replace_neighbour(vx, ip("10.244.2.0"), mac)
            .expect("neigh");
        k.replace_fdb(vx, mac, ip("192.168.1.11")).expect("fdb");
        k.replace_route(&route).expect("route");
    }
    assert_eq!(k.routes(), vec![route]);
    assert_eq!(
        k.neighbours(),
        vec![Neighbour {
            index: vx,
            ip: ip("10.244.2.0"),
            mac
        }]
    );
    assert_eq!(
        k.fdb(),
        vec![FdbEntry {
            index: vx,
            mac,
            dst: ip("192.168.1.11")
        }]
    );
    let calls = k.take_calls();
    assert_eq!(calls.len(), 6);
    assert_eq!(calls[2], Call::ReplaceRoute(route));
    assert_eq!(
        calls[0],
        Call::ReplaceNeighbour {
            index: vx,
            ip: ip("10.244.2.0"),
            mac
        }
    );

    // A replace of the same prefix swaps the route.
    let moved = Route {
        gateway: Some(ip("10.244.2.1")),
        ..route
    };
    k.replace_route(&moved).expect("replace");
    assert_eq!(k.routes(), vec![moved]);

    // Deletes remove, and fail when nothing matches.
    k.del_route(&moved).expect("del route");
    assert_eq!(
        k.del_route(&moved).expect_err("gone").errno(),
        Some(libc::ESRCH)
    );
    k.del_neighbour(vx, ip("10.244.2.0")).expect("del neigh");
    k.del_fdb(vx, mac, ip("192.168.1.11")).expect("del fdb");
    assert_eq!(
        k.del_fdb(vx, mac, ip("192.168.1.11"))
            .expect_err("gone")
            .errno(),
        Some(libc::ENOENT)
    );
    assert!(k.routes().is_empty() && k.neighbours().is_empty() && k.fdb().is_empty());
}

#[test]
fn route_get_uses_longest_prefix() {
    let (k, eth0) = with_eth0();
    let k = k
        .with_route(Route {
            dst: subnet("0.0.0.0/0"),
            gateway: Some(ip("192.168.1.1")),
            oif: None,
            onlink: false,
        })
        .with_route(Route {
            dst: subnet("192.168.1.0/24"),
            gateway: None,
            oif: Some(eth0),
            onlink: false,
        });
    let vx = k.create_vxlan(&spec(eth0)).expect("create").index;
    k.add_addr(AddrInfo {
        index: vx,
        addr: ip("10.244.1.0"),
        prefix: 32,
    })
    .expect("addr");
    k.replace_route(&Route {
        dst: subnet("10.244.2.0/24"),
        gateway: Some(ip("10.244.2.0")),
        oif: Some(vx),
        onlink: true,
    })
    .expect("route");

    let on_link = k.route_get(ip("192.168.1.11")).expect("lookup");
    assert_eq!(
        on_link,
        RouteLookup {
            gateway: None,
            oif: eth0,
            prefsrc: Some(ip("192.168.1.10"))
        }
    );
    let default = k.route_get(ip("8.8.8.8")).expect("lookup");
    assert_eq!(default.gateway, Some(ip("192.168.1.1")));
    assert_eq!(default.oif, eth0);
    let overlay = k.route_get(ip("10.244.2.7")).expect("lookup");
    assert_eq!(
        overlay,
        RouteLookup {
            gateway: Some(ip("10.244.2.0")),
            oif: vx,
            prefsrc: Some(ip("10.244.1.0"))
        }
    );
    assert_eq!(
        FakeKernel::new()
            .route_get(ip("8.8.8.8"))
            .expect_err("no route")
            .errno(),
        Some(libc::ENETUNREACH)
    );
}

#[test]
fn addresses_links_and_injected_failures() {
    let (k, eth0) = with_eth0();
    let a = AddrInfo {
        index: eth0,
        addr: ip("10.0.0.1"),
        prefix: 32,
    };
    k.add_addr(a).expect("add");
    assert_eq!(k.add_addr(a).expect_err("dup").errno(), Some(libc::EEXIST));
    assert!(Kernel::addrs(&k).expect("addrs").contains(&a));
    k.del_addr(a).expect("del");
    assert_eq!(
        k.del_addr(a).expect_err("gone").errno(),
        Some(libc::EADDRNOTAVAIL)
    );

    let vx = k.create_vxlan(&spec(eth0)).expect("create").index;
    k.set_link_up(vx).expect("up");
    k.set_mtu(vx, 1400).expect("mtu");
    let link = k.link_by_index(vx).expect("lookup").expect("exists");
    assert!(link.up);
    assert_eq!(link.mtu, 1400);

    k.fail_next(KernelOp::SetMtu, libc::EPERM);
    assert_eq!(
        k.set_mtu(vx, 1300).expect_err("injected").errno(),
        Some(libc::EPERM)
    );
    k.set_mtu(vx, 1300).expect("only once");

    k.replace_fdb(vx, MacAddr([2; 6]), ip("192.168.1.12"))
        .expect("fdb");
    k.delete_link(vx).expect("delete");
    assert!(k.fdb().is_empty(), "entries go with their link");
    assert_eq!(k.link_by_index(vx).expect("lookup"), None);
    assert_eq!(
        k.delete_link(vx).expect_err("gone").errno(),
        Some(libc::ENODEV)
    );
    assert_eq!(
        k.replace_fdb(eth0, MacAddr([2; 6]), ip("192.168.1.12"))
            .expect_err("not vxlan")
            .errno(),
        Some(libc::EOPNOTSUPP)
    );
}
