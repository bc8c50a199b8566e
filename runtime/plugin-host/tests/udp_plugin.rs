//! Layer 2: the real udp component (plugins/udp, embedded by twill-builtin): its
//! control plane against the recording fake kernel, and its batch data path called
//! directly with packets, as the daemon's data-path threads call it.

use std::net::Ipv4Addr;
use std::sync::Arc;

use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_net::fake::{Call, FakeKernel};
use twill_net::{Kernel, Route};
use twill_plugin_host::{Action, Grant, NodeInfo, Packet, Plugin, PluginHost, PluginStats};

mod common;

fn setup() -> (Arc<FakeKernel>, PluginHost, Plugin, Grant) {
    common::setup("udp")
}

/// An IPv4/UDP packet with a valid header checksum.
fn packet(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 32, 0, 1, 0, 0, ttl, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, 1, 2, 3, 4]);
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A data-path instance of node 10.244.1.0/24 on port 9000 that knows the peer
/// 10.244.2.0/24 at 192.168.0.2, and its call counters.
fn attached() -> (twill_plugin_host::Datapath, Arc<PluginStats>) {
    let (_kernel, host, plugin, grant) = setup();
    let stats = Arc::new(PluginStats::default());
    let own = "10.244.1.0/24".parse().expect("subnet");
    let mut dp = host
        .datapath(&plugin, grant, stats.clone(), r#"{"Port":9000}"#, own)
        .expect("attach");
    let peer = Lease {
        subnet: "10.244.2.0/24".parse().expect("subnet"),
        attrs: LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 2), "", None).expect("attrs"),
        expires: Expiry::Never,
    };
    dp.update(&[LeaseEvent::Added(peer)]).expect("update");
    (dp, stats)
}

#[tokio::test]
async fn udp_opens_its_tun_and_routes_the_network_to_it() {
    let (kernel, host, plugin, grant) = setup();
    assert_eq!(plugin.name, "udp");
    assert!(plugin.has_datapath());
    assert!(plugin.capabilities.iter().any(|c| c == "datapath-host"));
    let backend = host.spawn(&plugin, grant).expect("spawn");
    let reg = backend
        .init(NodeInfo::fresh(r#"{"Type":"udp"}"#))
        .await
        .expect("init");
    assert_eq!(
        reg.backend_type, "",
        "flannel's udp publishes no BackendType"
    );
    assert_eq!(reg.backend_data, None);
    assert_eq!(reg.mtu, 1472);
    backend
        .start("10.244.1.0/24".parse().expect("subnet"))
        .await
        .expect("start");
    let tun = kernel
        .link_by_name("flannel0")
        .expect("fake")
        .expect("flannel0");
    assert_eq!(tun.kind.as_deref(), Some("tun"));
    assert_eq!(tun.mtu, 1472);
    assert!(tun.up);
    let calls = kernel.calls();
    assert!(calls.contains(&Call::BindUdp("192.168.0.1:8285".parse().expect("addr"))));
    assert!(calls.contains(&Call::ReplaceRoute(Route {
        dst: "10.244.0.0/16".parse().expect("subnet"),
        gateway: None,
        oif: Some(tun.index),
        onlink: false,
    })));
    // A resync runs init and start again: the same device, opened once.
    backend
        .init(NodeInfo::fresh(r#"{"Type":"udp"}"#))
        .await
        .expect("init again");
    let opens = kernel
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::OpenTun(_)))
        .count();
    assert_eq!(opens, 1);
    let resources = host.datapath_resources("udp").expect("resources");
    assert_eq!(resources.tun.expect("tun").link.name, "flannel0");
}

#[test]
fn the_data_path_forwards_checks_and_answers_in_one_call_per_batch() {
    let (mut dp, stats) = attached();

    // Out, in this order: to the peer (TTL 64 → 63, checksum still valid), to nowhere
    // (an ICMP reply back into the TUN), TTL 1 (dropped), junk (dropped).
    let batch = [
        packet([10, 244, 1, 2], [10, 244, 2, 2], 64),
        packet([10, 244, 1, 2], [10, 244, 9, 9], 64),
        packet([10, 244, 1, 2], [10, 244, 2, 2], 1),
        b"junk".to_vec(),
    ];
    let mut arena = Vec::new();
    let mut packets = Vec::new();
    for p in &batch {
        packets.push(Packet {
            offset: arena.len() as u32,
            len: p.len() as u32,
            peer: 0,
        });
        arena.extend_from_slice(p);
    }
    let out = dp.encap(&arena, &packets).expect("encap");
    assert_eq!(out.packets.len(), 2, "{:?}", out.packets);
    let first = &out.packets[1];
    assert!(
        matches!(first.action, Action::ToTun),
        "then the ICMP reply: {first:?}"
    );
    let icmp = &out.arena[first.offset as usize..(first.offset + first.len) as usize];
    assert_eq!(
        (icmp[9], icmp[20], icmp[21]),
        (1, 3, 0),
        "ICMP net unreachable"
    );
    assert_eq!(&icmp[16..20], &[10, 244, 1, 2]);
    assert_eq!(checksum(&icmp[..20]), 0);
    let sent = &out.packets[0];
    match sent.action {
        Action::ToPeer(ep) => {
            assert_eq!(Ipv4Addr::from(ep.ip), Ipv4Addr::new(192, 168, 0, 2));
            assert_eq!(ep.port, 9000);
        }
        Action::ToTun => panic!("the first packet should go to the peer"),
    }
    let forwarded = &out.arena[sent.offset as usize..(sent.offset + sent.len) as usize];
    assert_eq!(forwarded[8], 63);
    assert_eq!(checksum(&forwarded[..20]), 0);
    assert_eq!(
        (
            out.drops.no_route,
            out.drops.ttl_expired,
            out.drops.malformed
        ),
        (1, 1, 1)
    );

    // In: from the peer (accepted), from a stranger, and a spoofed inner source.
    let batch = [
        (
            packet([10, 244, 2, 2], [10, 244, 1, 2], 64),
            [192, 168, 0, 2],
        ),
        (
            packet([10, 244, 2, 2], [10, 244, 1, 2], 64),
            [192, 168, 0, 77],
        ),
        (
            packet([10, 244, 3, 3], [10, 244, 1, 2], 64),
            [192, 168, 0, 2],
        ),
    ];
    let (mut arena, mut packets) = (Vec::new(), Vec::new());
    for (p, from) in &batch {
        packets.push(Packet {
            offset: arena.len() as u32,
            len: p.len() as u32,
            peer: u32::from(Ipv4Addr::from(*from)),
        });
        arena.extend_from_slice(p);
    }
    let out = dp.decap(&arena, &packets).expect("decap");
    assert_eq!(out.packets.len(), 1);
    assert!(matches!(out.packets[0].action, Action::ToTun));
    assert_eq!((out.drops.unknown_peer, out.drops.spoofed_source), (1, 1));
    // A descriptor pointing outside the arena is malformed, not a host read.
    let out = dp
        .decap(
            &arena,
            &[Packet {
                offset: 1_000_000,
                len: 20,
                peer: 0,
            }],
        )
        .expect("decap");
    assert_eq!(out.drops.malformed, 1);
    assert_eq!(stats.calls().get("encap"), Some(&1));
    assert_eq!(stats.calls().get("decap"), Some(&2));
}

/// The same verdicts through `datapath-heads`: the plugin sees each packet's first 128
/// bytes and its length, never the rest; it changes the head in place (TTL, checksum)
/// and makes the ICMP reply from the head alone.
#[test]
fn the_heads_path_gives_the_same_verdicts_from_the_first_bytes_alone() {
    use twill_plugin_host::{Fate, Head};
    let (mut dp, stats) = attached();
    assert!(dp.takes_heads(), "the built-in udp exports datapath-heads");
    // A 1,400-byte packet to the peer whose head alone is given (its IP total length
    // says 1,400), one to nowhere, one with TTL 1, and one whose header claims more
    // than the packet holds.
    let big = {
        let mut p = packet([10, 244, 1, 2], [10, 244, 2, 2], 64);
        p[2..4].copy_from_slice(&1400u16.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.resize(128, 0xab);
        p
    };
    let heads_given = [
        (big, 1400),
        (packet([10, 244, 1, 2], [10, 244, 9, 9], 64), 32),
        (packet([10, 244, 1, 2], [10, 244, 2, 2], 1), 32),
        (packet([10, 244, 1, 2], [10, 244, 2, 2], 64), 30),
    ];
    let (mut arena, mut heads) = (Vec::new(), Vec::new());
    for (h, total) in &heads_given {
        heads.push(Head {
            offset: arena.len() as u32,
            len: h.len() as u32,
            total: *total,
            peer: 0,
        });
        arena.extend_from_slice(h);
    }
    let out = dp
        .encap_heads(&arena, &heads)
        .expect("encap-heads")
        .expect("the plugin takes heads");
    assert_eq!(out.fates.len(), 4);
    match out.fates[0] {
        Fate::ToPeer(ep) => {
            assert_eq!(Ipv4Addr::from(ep.ip), Ipv4Addr::new(192, 168, 0, 2));
            assert_eq!(ep.port, 9000);
        }
        ref other => panic!("the big packet goes to the peer: {other:?}"),
    }
    assert_eq!(out.arena[8], 63, "the TTL went down in the head");
    assert_eq!(checksum(&out.arena[..20]), 0, "and the checksum holds");
    assert!(matches!(out.fates[1], Fate::Dropped));
    assert!(matches!(out.fates[2], Fate::Dropped));
    assert!(
        matches!(out.fates[3], Fate::Dropped),
        "a total length beyond the packet"
    );
    assert_eq!(
        (
            out.drops.no_route,
            out.drops.ttl_expired,
            out.drops.malformed
        ),
        (1, 1, 1)
    );
    assert_eq!(out.extra_packets.len(), 1, "the ICMP net-unreachable");
    let reply = &out.extra_packets[0];
    assert!(matches!(reply.action, Action::ToTun));
    let icmp = &out.extra[reply.offset as usize..(reply.offset + reply.len) as usize];
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 0));
    assert_eq!(stats.calls().get("encap-heads"), Some(&1));
    assert_eq!(stats.calls().get("encap"), None, "no whole packet crossed");
}
