//! Layer-3 tests: [`Netlink`] against the real kernel.
//!
//! Every test runs in a dedicated thread that first moves itself into a fresh network
//! namespace with `unshare(CLONE_NEWNET)` and checks that it did, so nothing here can
//! touch the host's interfaces; the namespace disappears with the thread. They need
//! root (CAP_SYS_ADMIN) and fail — never skip — without it.
#![allow(
    clippy::unwrap_used,
    reason = "a failed setup step in a test is the failure"
)]

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use twill_core::{MacAddr, Subnet};
use twill_net::{
    AddrInfo, FdbEntry, IpipInfo, IpipSpec, Kernel, Neighbour, NetError, Netlink, Route, VxlanInfo,
    VxlanSpec,
};

/// The inode of the calling thread's network namespace.
fn netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// Run `body` on a new thread inside a fresh, empty network namespace, with a
/// [`Netlink`] opened there. Panics from the body are re-raised here.
fn in_fresh_netns<F>(name: &str, body: F)
where
    F: FnOnce(Netlink) + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let host = netns_inode();
            // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET moves only this
            // thread into a new network namespace, which no other thread shares.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            if rc != 0 {
                panic!(
                    "unshare(CLONE_NEWNET) failed: {}. These tests need root (CAP_SYS_ADMIN) \
                     and network namespace support; run them as root, e.g. \
                     `sudo -E cargo test -p twill-net --features test-util --test netlink`",
                    std::io::Error::last_os_error()
                );
            }
            assert_ne!(
                netns_inode(),
                host,
                "still in the original network namespace after unshare; refusing to go on"
            );
            let nl = Netlink::new().expect("open rtnetlink socket in the fresh namespace");
            body(nl);
        })
        .expect("spawn test thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn subnet(s: &str) -> Subnet {
    s.parse().unwrap()
}

/// Run an iproute2 command in the calling thread's namespace (children inherit it)
/// and return its stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd} (iproute2 must be installed): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Create a veth pair (the underlay stand-in; this kernel may lack `dummy`) directly
/// with rtnetlink.
fn add_veth(name: &str, peer: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        handle
            .link()
            .add(rtnetlink::LinkVeth::new(name, peer).build())
            .execute()
            .await
            .unwrap();
    });
}

/// `eth0` (one end of a veth pair, both up, 192.168.100.10/24) and `lo` up; returns
/// eth0's index.
fn underlay(nl: &Netlink) -> u32 {
    let lo = nl.link_by_name("lo").unwrap().expect("lo exists");
    nl.set_link_up(lo.index).unwrap();
    add_veth("eth0", "eth0-peer");
    let eth0 = nl.link_by_name("eth0").unwrap().expect("eth0 created");
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    let peer = nl.link_by_name("eth0-peer").unwrap().expect("peer created");
    nl.set_link_up(peer.index).unwrap();
    nl.set_link_up(eth0.index).unwrap();
    nl.add_addr(AddrInfo {
        index: eth0.index,
        addr: ip4("192.168.100.10"),
        prefix: 24,
    })
    .unwrap();
    eth0.index
}

const VTEP_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00]);
const PEER_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x00]);

fn flannel_spec(underlay: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".to_owned(),
        vni: 1,
        port: 8472,
        local: ip4("192.168.100.10"),
        underlay,
        learning: false,
        mac: VTEP_MAC,
    }
}

#[test]
fn namespace_is_fresh() {
    in_fresh_netns("fresh", |nl| {
        let links = nl.links().unwrap();
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lo"], "a fresh namespace holds only lo");
        let lo = &links[0];
        assert_eq!(lo.kind, None);
        assert!(!lo.up, "lo starts down in a new namespace");
        assert!(nl.routes().unwrap().is_empty());
        assert_eq!(nl.link_by_name("nope").unwrap(), None);
        assert_eq!(nl.link_by_index(9999).unwrap(), None);
    });
}

#[test]
fn vxlan_link_lifecycle() {
    in_fresh_netns("vxlan-link", |nl| {
        let eth0 = underlay(&nl);
        let vx = nl.create_vxlan(&flannel_spec(eth0)).unwrap();
        assert_eq!(vx.name, "flannel.1");
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert_eq!(vx.mac, Some(VTEP_MAC));
        assert!(!vx.up);
        assert_eq!(vx.mtu, 1450, "underlay MTU 1500 minus VXLAN headroom");
        assert_eq!(
            vx.vxlan,
            Some(VxlanInfo {
                vni: 1,
                port: 8472,
                local: Some(ip4("192.168.100.10")),
                underlay: Some(eth0),
                learning: false,
            })
        );
        assert_eq!(nl.link_by_index(vx.index).unwrap().as_ref(), Some(&vx));
        assert!(nl.links().unwrap().contains(&vx));

        let err = nl.create_vxlan(&flannel_spec(eth0)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");

        // The kernel's own view agrees.
        let detail = run("ip", &["-d", "link", "show", "flannel.1"]);
        for want in [
            "vxlan id 1 ",
            "local 192.168.100.10 ",
            "dev eth0 ",
            "dstport 8472 ",
            "nolearning",
            "link/ether 0a:58:0a:f4:01:00",
        ] {
            assert!(detail.contains(want), "{want:?} missing from:\n{detail}");
        }
        for unwanted in ["l2miss", "l3miss"] {
            assert!(!detail.contains(unwanted), "{unwanted} set:\n{detail}");
        }

        nl.set_link_up(vx.index).unwrap();
        nl.set_mtu(vx.index, 1400).unwrap();
        let now = nl.link_by_index(vx.index).unwrap().unwrap();
        assert!(now.up);
        assert_eq!(now.mtu, 1400);

        let a = AddrInfo {
            index: vx.index,
            addr: ip4("10.244.1.0"),
            prefix: 32,
        };
        nl.add_addr(a).unwrap();
        assert!(nl.addrs().unwrap().contains(&a));
        assert_eq!(nl.add_addr(a).unwrap_err().errno(), Some(libc::EEXIST));
        nl.del_addr(a).unwrap();
        assert!(!nl.addrs().unwrap().contains(&a));
        assert_eq!(
            nl.del_addr(a).unwrap_err().errno(),
            Some(libc::EADDRNOTAVAIL)
        );

        nl.delete_link(vx.index).unwrap();
        assert_eq!(nl.link_by_index(vx.index).unwrap(), None);
        assert_eq!(nl.link_by_name("flannel.1").unwrap(), None);
        assert_eq!(
            nl.delete_link(vx.index).unwrap_err().errno(),
            Some(libc::ENODEV)
        );
    });
}

#[test]
fn overlay_entries_replace_idempotently_and_delete() {
    in_fresh_netns("vxlan-entries", |nl| {
        let eth0 = underlay(&nl);
        let vx = nl.create_vxlan(&flannel_spec(eth0)).unwrap().index;
        nl.add_addr(AddrInfo {
            index: vx,
            addr: ip4("10.244.1.0"),
            prefix: 32,
        })
        .unwrap();
        nl.set_link_up(vx).unwrap();

        let peer_vtep = ip4("10.244.2.0");
        let peer_public = ip4("192.168.100.11");
        let route = Route {
            dst: subnet("10.244.2.0/24"),
            gateway: Some(peer_vtep),
            oif: Some(vx),
            onlink: true,
        };
        // flannel's order: ARP, FDB, route — and replaying it changes nothing.
        for _ in 0..3 {
            nl.replace_neighbour(vx, peer_vtep, PEER_MAC).unwrap();
            nl.replace_fdb(vx, PEER_MAC, peer_public).unwrap();
            nl.replace_route(&route).unwrap();
        }

        let neigh = Neighbour {
            index: vx,
            ip: peer_vtep,
            mac: PEER_MAC,
        };
        assert_eq!(
            nl.neighbours()
                .unwrap()
                .into_iter()
                .filter(|n| n.index == vx)
                .collect::<Vec<_>>(),
            vec![neigh]
        );
        let fdb = FdbEntry {
            index: vx,
            mac: PEER_MAC,
            dst: peer_public,
        };
        assert_eq!(
            nl.fdb()
                .unwrap()
                .into_iter()
                .filter(|f| f.index == vx)
                .collect::<Vec<_>>(),
            vec![fdb]
        );
        let routes = nl.routes().unwrap();
        assert_eq!(
            routes
                .iter()
                .filter(|r| r.dst == route.dst)
                .collect::<Vec<_>>(),
            vec![&route],
            "all routes: {routes:?}"
        );
        // The connected route of eth0 is there too, without a gateway.
        assert!(routes.contains(&Route {
            dst: subnet("192.168.100.0/24"),
            gateway: None,
            oif: Some(eth0),
            onlink: false,
        }));

        // Cross-check with iproute2.
        let fdb_show = run("bridge", &["fdb", "show", "dev", "flannel.1"]);
        assert!(
            fdb_show.contains("0a:58:0a:f4:02:00 dst 192.168.100.11 self permanent"),
            "{fdb_show}"
        );
        let neigh_show = run("ip", &["neigh", "show", "dev", "flannel.1"]);
        assert!(
            neigh_show.contains("10.244.2.0 lladdr 0a:58:0a:f4:02:00 PERMANENT"),
            "{neigh_show}"
        );
        let route_show = run("ip", &["-d", "route", "show", "10.244.2.0/24"]);
        assert!(
            route_show.contains(
                "unicast 10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 167 scope global onlink"
            ),
            "{route_show}"
        );
        // The table as the ownership checks read it: ours tagged, the connected
        // route the kernel's (protocol 2).
        let table = nl.table_routes().unwrap();
        let ours = table
            .iter()
            .find(|t| t.route.dst == subnet("10.244.2.0/24"))
            .expect("our route listed");
        assert_eq!((ours.protocol, ours.metric, ours.unicast), (167, 0, true));
        let connected = table
            .iter()
            .find(|t| t.route.dst == subnet("192.168.100.0/24"))
            .expect("connected route listed");
        assert_eq!(connected.protocol, 2, "{connected:?}");

        let lookup = nl.route_get(ip4("10.244.2.7")).unwrap();
        assert_eq!(lookup.gateway, Some(peer_vtep));
        assert_eq!(lookup.oif, vx);
        assert_eq!(lookup.prefsrc, Some(ip4("10.244.1.0")));
        let direct = nl.route_get(peer_public).unwrap();
        assert_eq!(direct.gateway, None, "on-link destination");
        assert_eq!(direct.oif, eth0);
        assert_eq!(direct.prefsrc, Some(ip4("192.168.100.10")));
        let err = nl.route_get(ip4("8.8.8.8")).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");

        // A replace with a new next hop swaps the route, not adds one.
        let moved = Route {
            gateway: Some(ip4("10.244.2.1")),
            ..route
        };
        nl.replace_route(&moved).unwrap();
        let now: Vec<Route> = nl
            .routes()
            .unwrap()
            .into_iter()
            .filter(|r| r.dst == route.dst)
            .collect();
        assert_eq!(now, vec![moved]);

        nl.del_route(&moved).unwrap();
        assert!(!nl.routes().unwrap().iter().any(|r| r.dst == route.dst));
        assert_eq!(nl.del_route(&moved).unwrap_err().errno(), Some(libc::ESRCH));

        nl.del_neighbour(vx, peer_vtep).unwrap();
        assert!(!nl.neighbours().unwrap().contains(&neigh));
        assert_eq!(
            nl.del_neighbour(vx, peer_vtep).unwrap_err().errno(),
            Some(libc::ENOENT)
        );

        nl.del_fdb(vx, PEER_MAC, peer_public).unwrap();
        assert!(!nl.fdb().unwrap().contains(&fdb));
        assert_eq!(
            nl.del_fdb(vx, PEER_MAC, peer_public).unwrap_err().errno(),
            Some(libc::ENOENT)
        );
    });
}

#[test]
fn usable_from_spawn_blocking_and_droppable_in_async() {
    in_fresh_netns("spawn-blocking", |nl| {
        let nl = Arc::new(nl);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let shared = Arc::clone(&nl);
        let lo = rt
            .block_on(async move {
                tokio::task::spawn_blocking(move || shared.link_by_name("lo"))
                    .await
                    .unwrap()
            })
            .unwrap();
        assert!(lo.is_some());
        // The last reference going away inside a task must not panic.
        rt.block_on(async move { drop(nl) });
    });
}

/// Create the device, failing with a clear message when the kernel cannot.
fn create(nl: &Netlink, spec: &IpipSpec) -> twill_net::LinkInfo {
    match nl.create_ipip(spec) {
        Ok(link) => link,
        Err(e @ NetError::Request { .. }) if e.errno() == Some(libc::EOPNOTSUPP) => panic!(
            "this kernel cannot create ipip devices ({e}): it needs CONFIG_NET_IPIP \
             (`modprobe ipip`); `ip link add t type ipip` fails the same way"
        ),
        Err(e) => panic!("create {}: {e}", spec.name),
    }
}

#[test]
#[ignore = "needs a kernel with CONFIG_NET_IPIP; this CI machine's kernel (6.18 -fc) has none, so `ip link add type ipip` fails there. Run with `cargo test -p twill-net --test netlink -- --ignored` on a kernel with ipip"]
fn ipip_link_as_flannel_makes_it() {
    in_fresh_netns("ipip-link", |nl| {
        let eth0 = underlay(&nl);
        let spec = IpipSpec {
            name: "flannel.ipip".to_owned(),
            local: ip4("192.168.100.10"),
            underlay: eth0,
        };
        let link = create(&nl, &spec);
        assert_eq!(link.name, "flannel.ipip");
        assert_eq!(link.kind.as_deref(), Some("ipip"));
        assert!(!link.up);
        assert_eq!(
            link.mtu, 1480,
            "underlay MTU 1500 minus the outer IPv4 header"
        );
        assert_eq!(link.vxlan, None);
        assert_eq!(
            link.ipip,
            Some(IpipInfo {
                local: Some(ip4("192.168.100.10")),
                remote: None,
                underlay: Some(eth0),
            })
        );
        assert_eq!(nl.link_by_index(link.index).unwrap().as_ref(), Some(&link));

        let err = nl.create_ipip(&spec).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");

        // The kernel's own view: flannel's device (remote any, nopmtudisc, ttl inherit).
        let detail = run("ip", &["-d", "link", "show", "flannel.ipip"]);
        for want in [
            "remote any ",
            "local 192.168.100.10 ",
            "dev eth0 ",
            "ttl inherit ",
            "nopmtudisc",
        ] {
            assert!(detail.contains(want), "{want:?} missing from:\n{detail}");
        }

        // What the ipip backend then does with it: /32 address, up, an onlink route
        // per peer via its public IP.
        nl.set_mtu(link.index, 1480).unwrap();
        nl.add_addr(AddrInfo {
            index: link.index,
            addr: ip4("10.244.1.0"),
            prefix: 32,
        })
        .unwrap();
        nl.set_link_up(link.index).unwrap();
        assert!(nl.link_by_index(link.index).unwrap().unwrap().up);
        let route = Route {
            dst: subnet("10.244.2.0/24"),
            gateway: Some(ip4("192.168.100.11")),
            oif: Some(link.index),
            onlink: true,
        };
        nl.replace_route(&route).unwrap();
        nl.replace_route(&route).unwrap();
        let routes: Vec<Route> = nl
            .routes()
            .unwrap()
            .into_iter()
            .filter(|r| r.dst == route.dst)
            .collect();
        assert_eq!(routes, vec![route]);
        let shown = run("ip", &["route", "show", "10.244.2.0/24"]);
        assert!(
            shown.contains("via 192.168.100.11 dev flannel.ipip") && shown.contains("onlink"),
            "{shown}"
        );
        nl.del_route(&route).unwrap();
        assert!(!nl.routes().unwrap().iter().any(|r| r.dst == route.dst));

        nl.delete_link(link.index).unwrap();
        assert_eq!(nl.link_by_name("flannel.ipip").unwrap(), None);
    });
}

/// The IPv4 header checksum of `header` (its checksum field zero).
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet (no UDP checksum, which IPv4 allows).
fn ipv4_udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let sum = ipv4_checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// The udp backend's TUN device on the real kernel (audit G-6): a packet the kernel
/// routes into it is read with its `virtio_net_hdr` (10 bytes) first; a packet written
/// with one reaches a local socket; the device is persistent, so it outlives the
/// descriptor and a second open attaches to the same device.
#[test]
fn a_tun_device_moves_packets_with_their_vnet_header_and_persists() {
    use std::io::IoSlice;
    use std::net::UdpSocket;
    use twill_net::datapath::Tun;
    const VNET_HDR: usize = 10;
    in_fresh_netns("tun", |nl| {
        let tun = Tun::open("twtun0").expect("open /dev/net/tun (needs root and the tun module)");
        run("ip", &["link", "set", "lo", "up"]);
        run("ip", &["addr", "add", "10.99.0.1/32", "dev", "twtun0"]);
        run("ip", &["link", "set", "twtun0", "up"]);
        run("ip", &["route", "add", "10.99.1.0/24", "dev", "twtun0"]);

        // Kernel → device.
        let sender = UdpSocket::bind("10.99.0.1:0").expect("bind");
        let payload = b"twill tun test, outbound";
        sender.send_to(payload, "10.99.1.5:9").expect("send");
        let mut buf = vec![0u8; 65_600];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let packet = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing read from twtun0"
            );
            match tun.read(&mut buf) {
                Ok(n) if n > VNET_HDR + 20 => {
                    let ip = &buf[VNET_HDR..n];
                    if ip[0] >> 4 == 4 && ip[16..20] == [10, 99, 1, 5] {
                        break ip.to_vec();
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("read twtun0: {e}"),
            }
        };
        assert_eq!(packet[9], 17, "UDP");
        assert_eq!(
            &packet[12..16],
            &[10, 99, 0, 1],
            "from the device's address"
        );
        assert!(packet.ends_with(payload), "{packet:?}");

        // Device → kernel.
        let receiver = UdpSocket::bind("10.99.0.1:0").expect("bind");
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let port = receiver.local_addr().expect("addr").port();
        let inbound = ipv4_udp(
            [10, 99, 1, 5],
            4000,
            [10, 99, 0, 1],
            port,
            b"twill tun test, inbound",
        );
        let written = tun
            .writev(&[IoSlice::new(&[0u8; VNET_HDR]), IoSlice::new(&inbound)])
            .expect("write twtun0");
        assert_eq!(written, VNET_HDR + inbound.len());
        let mut got = [0u8; 64];
        let (n, from) = receiver
            .recv_from(&mut got)
            .expect("the written packet arrives");
        assert_eq!(&got[..n], b"twill tun test, inbound");
        assert_eq!(from.to_string(), "10.99.1.5:4000");

        // Persistent.
        let index = nl
            .link_by_name("twtun0")
            .expect("get")
            .expect("exists")
            .index;
        drop(tun);
        let still = nl.link_by_name("twtun0").expect("get");
        assert_eq!(
            still.map(|l| l.index),
            Some(index),
            "the device outlives its descriptor"
        );
        // Other tests in this process spawn `ip`: a child forked while our descriptor
        // was open holds it until its exec closes it (O_CLOEXEC), and the device stays
        // attached that long (EBUSY). Only that is waited out, briefly.
        let mut tries = 0;
        let _again = loop {
            match Tun::open("twtun0") {
                Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.expect("attach again"),
            }
        };
        assert_eq!(
            nl.link_by_name("twtun0").expect("get").map(|l| l.index),
            Some(index),
            "a second open attaches to the same device"
        );
    });
}

/// `table_route` answers what the table holds at exactly one destination, on the real
/// kernel, whatever else covers it: a twill route, an operator's static route, a
/// blackhole (the lookup fails there), a destination with only the default route and a
/// covering /16, one under a more specific route.
#[test]
fn table_route_finds_exactly_the_route_at_a_destination() {
    in_fresh_netns("table-route", |nl| {
        add_veth("eth0", "eth0p");
        run("ip", &["addr", "add", "192.168.5.1/24", "dev", "eth0"]);
        run("ip", &["link", "set", "eth0", "up"]);
        run("ip", &["link", "set", "eth0p", "up"]);
        run("ip", &["route", "add", "default", "via", "192.168.5.254"]);
        run(
            "ip",
            &["route", "add", "10.244.0.0/16", "via", "192.168.5.9"],
        );
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap().index;
        nl.replace_route(&Route {
            dst: subnet("10.244.1.0/24"),
            gateway: Some(ip4("192.168.5.2")),
            oif: Some(eth0),
            onlink: false,
        })
        .unwrap();
        run(
            "ip",
            &[
                "route",
                "add",
                "10.244.2.0/24",
                "via",
                "192.168.5.3",
                "proto",
                "static",
            ],
        );
        run("ip", &["route", "add", "blackhole", "10.244.3.0/24"]);
        run(
            "ip",
            &["route", "add", "10.244.4.0/24", "via", "192.168.5.4"],
        );
        run(
            "ip",
            &["route", "add", "10.244.4.0/26", "via", "192.168.5.5"],
        );

        let at = |s: &str| nl.table_route(subnet(s)).unwrap();
        let twill = at("10.244.1.0/24").expect("twill's route");
        assert_eq!(twill.protocol, twill_net::ROUTE_PROTOCOL);
        assert_eq!(twill.route.gateway, Some(ip4("192.168.5.2")));
        let operator = at("10.244.2.0/24").expect("the operator's route");
        assert_eq!(operator.protocol, 4, "proto static");
        let blackhole = at("10.244.3.0/24").expect("the blackhole");
        assert!(!blackhole.unicast);
        let under = at("10.244.4.0/24").expect("the /24 under a /26");
        assert_eq!(under.route.gateway, Some(ip4("192.168.5.4")));
        assert_eq!(
            at("10.244.9.0/24"),
            None,
            "only the /16 and the default cover it"
        );
        assert_eq!(
            at("10.244.0.0/16").map(|t| t.route.gateway),
            Some(Some(ip4("192.168.5.9")))
        );
        // Whatever the kernel answers, the same as the listing says.
        for s in [
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.3.0/24",
            "10.244.4.0/24",
            "10.244.9.0/24",
        ] {
            let listed = nl
                .table_routes()
                .unwrap()
                .into_iter()
                .filter(|t| t.route.dst == subnet(s))
                .min_by_key(|t| t.metric);
            assert_eq!(at(s), listed, "{s}");
        }
    });
}
