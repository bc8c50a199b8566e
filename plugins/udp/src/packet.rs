//! The per-packet decisions of the udp backend, as pure functions over one batch: no
//! host calls, no allocation per packet. The data-path export feeds them the batch's
//! arena (which they modify in place: TTL and checksum) and collects the verdicts.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fixed multiplicative hash for IPv4 keys. std's default hasher seeds itself from
/// WASI's random source, which twill does not grant plugins; keys here are addresses
/// of the cluster's own leases, not attacker-chosen.
#[derive(Default)]
pub struct IpHasher(u64);

impl Hasher for IpHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<IpHasher>>;

/// An IPv4 prefix in host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Network address.
    pub addr: u32,
    /// Prefix length, 0..=32.
    pub len: u8,
}

impl Prefix {
    /// The mask of this prefix.
    pub fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Whether `ip` lies inside.
    pub fn contains(self, ip: u32) -> bool {
        ip & self.mask() == self.addr
    }
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// From an address that holds no lease.
    UnknownPeer,
    /// Inner source outside the sender's subnet.
    SpoofedSource,
    /// No lease covers the destination (an ICMP net-unreachable may have been queued).
    NoRoute,
    /// TTL ran out.
    TtlExpired,
    /// Not a well-formed IPv4 packet.
    Malformed,
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it as one datagram to this peer's public IP.
    ToPeer(u32),
    /// Write it to the TUN device.
    ToTun,
    /// Drop it, for this reason.
    Drop(Drop),
}

/// The peers a data-path instance knows: subnet → public IP and back.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    by_subnet: Map<Prefix, u32>,
    by_ip: Map<u32, Prefix>,
    /// The distinct prefix lengths present, longest first.
    lens: Vec<u8>,
}

impl Peers {
    /// Add or replace the peer holding `subnet`.
    pub fn insert(&mut self, subnet: Prefix, public_ip: u32) {
        if let Some(old) = self.by_subnet.insert(subnet, public_ip) {
            self.by_ip.remove(&old);
        }
        if let Some(old_subnet) = self.by_ip.insert(public_ip, subnet)
            && old_subnet != subnet
        {
            self.by_subnet.remove(&old_subnet);
        }
        self.reindex();
    }

    /// Forget the peer holding `subnet`.
    pub fn remove(&mut self, subnet: Prefix) {
        if let Some(ip) = self.by_subnet.remove(&subnet)
            && self.by_ip.get(&ip) == Some(&subnet)
        {
            self.by_ip.remove(&ip);
        }
        self.reindex();
    }

    fn reindex(&mut self) {
        self.lens = self.by_subnet.keys().map(|p| p.len).collect();
        self.lens.sort_unstable_by(|a, b| b.cmp(a));
        self.lens.dedup();
    }

    /// The public IP of the peer whose subnet holds `dst`.
    pub fn next_hop(&self, dst: u32) -> Option<u32> {
        self.lens.iter().find_map(|&len| {
            let p = Prefix { addr: 0, len };
            self.by_subnet
                .get(&Prefix {
                    addr: dst & p.mask(),
                    len,
                })
                .copied()
        })
    }

    /// The subnet of the peer at `public_ip`.
    pub fn subnet_of(&self, public_ip: u32) -> Option<Prefix> {
        self.by_ip.get(&public_ip).copied()
    }

    /// How many peers.
    pub fn len(&self) -> usize {
        self.by_subnet.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_subnet.is_empty()
    }
}

/// The node's view for the data path.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    /// The cluster network.
    pub network: Prefix,
    /// This node's subnet.
    pub own: Prefix,
}

const IPV4_MIN_HEADER: usize = 20;
const PROTO_ICMP: u8 = 1;
/// ICMP destination unreachable, code net unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_NET_UNREACH: u8 = 0;
/// The TTL of the ICMP errors this node sends.
const ICMP_TTL: u8 = 64;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The IPv4 header length if `packet` starts with a well-formed IPv4 header, for a
/// packet of `whole` bytes of which `packet` is the start (all of it, or a head of the
/// host's `datapath-heads`): the header lies in `packet`, its total length within
/// `whole`.
fn header_len_within(packet: &[u8], whole: usize) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER || packet.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl || total > whole {
        return None;
    }
    Some(ihl)
}

/// Decrement the TTL and fix the header checksum incrementally (RFC 1624, eqn. 3).
/// `false` (and the packet untouched) when the TTL would reach zero.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    let ttl = packet[8];
    if ttl <= 1 {
        return false;
    }
    let old_word = u16::from_be_bytes([ttl, packet[9]]);
    packet[8] = ttl - 1;
    let new_word = u16::from_be_bytes([packet[8], packet[9]]);
    let old_sum = u16::from_be_bytes([packet[10], packet[11]]);
    // HC' = ~(~HC + ~m + m')
    let mut sum = u32::from(!old_sum) + u32::from(!old_word) + u32::from(new_word);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let new_sum = !(sum as u16);
    packet[10..12].copy_from_slice(&new_sum.to_be_bytes());
    true
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Decide the fate of a packet read from the TUN device (TTL already checked and
/// decremented in place when it goes to a peer).
pub fn encap_verdict(packet: &mut [u8], node: &Node, peers: &Peers) -> Verdict {
    let whole = packet.len();
    encap_verdict_head(packet, whole, node, peers)
}

/// [`encap_verdict`] from the first bytes of a packet of `whole` bytes.
pub fn encap_verdict_head(packet: &mut [u8], whole: usize, node: &Node, peers: &Peers) -> Verdict {
    if header_len_within(packet, whole).is_none() {
        return Verdict::Drop(Drop::Malformed);
    }
    let dst = be32(packet, 16);
    let Some(peer) = peers.next_hop(dst).filter(|_| !node.own.contains(dst)) else {
        return Verdict::Drop(Drop::NoRoute);
    };
    if !decrement_ttl(packet) {
        return Verdict::Drop(Drop::TtlExpired);
    }
    Verdict::ToPeer(peer)
}

/// Decide the fate of a datagram's payload from `sender`.
pub fn decap_verdict(packet: &mut [u8], sender: u32, node: &Node, peers: &Peers) -> Verdict {
    let whole = packet.len();
    decap_verdict_head(packet, whole, sender, node, peers)
}

/// [`decap_verdict`] from the first bytes of a packet of `whole` bytes.
pub fn decap_verdict_head(
    packet: &mut [u8],
    whole: usize,
    sender: u32,
    node: &Node,
    peers: &Peers,
) -> Verdict {
    let Some(subnet) = peers.subnet_of(sender) else {
        return Verdict::Drop(Drop::UnknownPeer);
    };
    if header_len_within(packet, whole).is_none() {
        return Verdict::Drop(Drop::Malformed);
    }
    if !subnet.contains(be32(packet, 12)) {
        return Verdict::Drop(Drop::SpoofedSource);
    }
    if !node.own.contains(be32(packet, 16)) {
        return Verdict::Drop(Drop::NoRoute);
    }
    if !decrement_ttl(packet) {
        return Verdict::Drop(Drop::TtlExpired);
    }
    Verdict::ToTun
}

/// Whether a packet that found no route deserves an ICMP net-unreachable: its
/// destination is inside the network, it is the first fragment, and it is not an ICMP
/// error itself (RFC 1122 3.2.2: never answer an error with an error). flannel skips
/// every ICMP packet; answering queries such as echo too lets `ping` say
/// "Destination Net Unreachable" instead of timing out.
pub fn wants_unreachable(packet: &[u8], node: &Node) -> bool {
    wants_unreachable_head(packet, packet.len(), node)
}

/// [`wants_unreachable`] from the first bytes of a packet of `whole` bytes.
pub fn wants_unreachable_head(packet: &[u8], whole: usize, node: &Node) -> bool {
    let Some(ihl) = header_len_within(packet, whole) else {
        return false;
    };
    let frag_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    let icmp_error =
        packet[9] == PROTO_ICMP && packet.get(ihl).is_none_or(|t| ICMP_ERROR_TYPES.contains(t));
    node.network.contains(be32(packet, 16)) && frag_offset == 0 && !icmp_error
}

/// ICMP types that are error messages: destination unreachable, source quench,
/// redirect, time exceeded, parameter problem.
const ICMP_ERROR_TYPES: [u8; 5] = [3, 4, 5, 11, 12];

/// Append to `out` an ICMP net-unreachable for `packet` from `from`, carrying the
/// original header and the first 8 bytes of its payload (RFC 792). Returns its length.
///
/// `packet` may be just the start of the packet (at least its header and 8 bytes, the
/// part quoted); its header length is read from its first byte.
pub fn push_unreachable(out: &mut Vec<u8>, packet: &[u8], from: u32) -> usize {
    let ihl = packet
        .first()
        .map_or(IPV4_MIN_HEADER, |b| usize::from(b & 0x0f) * 4)
        .max(IPV4_MIN_HEADER);
    let quoted = packet.len().min(ihl + 8);
    let total = IPV4_MIN_HEADER + 8 + quoted;
    let start = out.len();
    let dst = be32(packet, 12);
    // IPv4 header.
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&(total as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, ICMP_TTL, PROTO_ICMP, 0, 0]);
    out.extend_from_slice(&from.to_be_bytes());
    out.extend_from_slice(&dst.to_be_bytes());
    let ip_sum = checksum(&out[start..start + IPV4_MIN_HEADER]);
    out[start + 10..start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    // ICMP header and the quoted original.
    let icmp = out.len();
    out.extend_from_slice(&[ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&packet[..quoted]);
    let icmp_sum = checksum(&out[icmp..]);
    out[icmp + 2..icmp + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_be_bytes([a, b, c, d])
    }

    fn node() -> Node {
        Node {
            network: Prefix {
                addr: ip(10, 244, 0, 0),
                len: 16,
            },
            own: Prefix {
                addr: ip(10, 244, 1, 0),
                len: 24,
            },
        }
    }

    fn peers() -> Peers {
        let mut p = Peers::default();
        p.insert(
            Prefix {
                addr: ip(10, 244, 2, 0),
                len: 24,
            },
            ip(192, 168, 0, 2),
        );
        p
    }

    /// A UDP packet `src → dst` with a valid header checksum.
    fn packet(src: u32, dst: u32, ttl: u8, proto: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0x12, 0x34, 0x40, 0, ttl, proto, 0, 0];
        p.extend_from_slice(&src.to_be_bytes());
        p.extend_from_slice(&dst.to_be_bytes());
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, b'h', b'i', b'!', b'!']);
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid() {
        for ttl in [2u8, 64, 128, 255] {
            let mut p = packet(ip(10, 244, 1, 2), ip(10, 244, 2, 2), ttl, 17);
            assert!(decrement_ttl(&mut p));
            assert_eq!(p[8], ttl - 1);
            assert_eq!(checksum(&p[..20]), 0, "header checksum after TTL {ttl}");
        }
        let mut p = packet(ip(10, 244, 1, 2), ip(10, 244, 2, 2), 1, 17);
        assert!(!decrement_ttl(&mut p));
        assert_eq!(p[8], 1);
    }

    #[test]
    fn encap_picks_the_peer_holding_the_destination() {
        let mut p = packet(ip(10, 244, 1, 2), ip(10, 244, 2, 7), 64, 17);
        assert_eq!(
            encap_verdict(&mut p, &node(), &peers()),
            Verdict::ToPeer(ip(192, 168, 0, 2))
        );
        assert_eq!(p[8], 63);
        let mut p = packet(ip(10, 244, 1, 2), ip(10, 244, 9, 7), 64, 17);
        assert_eq!(
            encap_verdict(&mut p, &node(), &peers()),
            Verdict::Drop(Drop::NoRoute)
        );
        assert!(wants_unreachable(&p, &node()));
        let mut p = packet(ip(10, 244, 1, 2), ip(10, 244, 2, 7), 1, 17);
        assert_eq!(
            encap_verdict(&mut p, &node(), &peers()),
            Verdict::Drop(Drop::TtlExpired)
        );
        let mut junk = vec![0x60, 0, 0, 0];
        assert_eq!(
            encap_verdict(&mut junk, &node(), &peers()),
            Verdict::Drop(Drop::Malformed)
        );
    }

    #[test]
    fn decap_checks_the_sender_and_the_inner_source() {
        let n = node();
        let mut p = packet(ip(10, 244, 2, 7), ip(10, 244, 1, 2), 64, 17);
        assert_eq!(
            decap_verdict(&mut p, ip(192, 168, 0, 2), &n, &peers()),
            Verdict::ToTun
        );
        let mut p = packet(ip(10, 244, 2, 7), ip(10, 244, 1, 2), 64, 17);
        assert_eq!(
            decap_verdict(&mut p, ip(192, 168, 0, 9), &n, &peers()),
            Verdict::Drop(Drop::UnknownPeer)
        );
        let mut p = packet(ip(10, 244, 3, 7), ip(10, 244, 1, 2), 64, 17);
        assert_eq!(
            decap_verdict(&mut p, ip(192, 168, 0, 2), &n, &peers()),
            Verdict::Drop(Drop::SpoofedSource)
        );
        let mut junk = b"hello".to_vec();
        assert_eq!(
            decap_verdict(&mut junk, ip(192, 168, 0, 2), &n, &peers()),
            Verdict::Drop(Drop::Malformed)
        );
    }

    #[test]
    fn unreachable_quotes_the_original_with_valid_checksums() {
        let p = packet(ip(10, 244, 1, 2), ip(10, 244, 9, 7), 64, 17);
        let mut out = vec![0xaa; 3];
        let len = push_unreachable(&mut out, &p, ip(10, 244, 1, 0));
        let reply = &out[3..];
        assert_eq!(reply.len(), len);
        assert_eq!(len, 20 + 8 + 28);
        assert_eq!(checksum(&reply[..20]), 0);
        assert_eq!(checksum(&reply[20..]), 0);
        assert_eq!(reply[9], PROTO_ICMP);
        assert_eq!((reply[20], reply[21]), (3, 0));
        assert_eq!(be32(reply, 12), ip(10, 244, 1, 0));
        assert_eq!(be32(reply, 16), ip(10, 244, 1, 2));
        assert_eq!(&reply[28..], &p[..28]);
        // A header with options is quoted whole, with 8 bytes after it, even from a
        // prefix of the packet.
        let mut opts = packet(ip(10, 244, 1, 2), ip(10, 244, 9, 7), 64, 17);
        opts[0] = 0x46;
        opts.splice(20..20, [1, 1, 1, 0]);
        let mut out = Vec::new();
        let len = push_unreachable(&mut out, &opts, ip(10, 244, 0, 0));
        assert_eq!(len, 20 + 8 + 24 + 8);
        assert_eq!(&out[28..], &opts[..32]);
        // An echo request is answered; an ICMP error (type 3 here) never is.
        let mut icmp = packet(ip(10, 244, 1, 2), ip(10, 244, 9, 7), 64, PROTO_ICMP);
        icmp[20] = 8;
        assert!(wants_unreachable(&icmp, &node()));
        icmp[20] = 3;
        assert!(!wants_unreachable(&icmp, &node()));
        // Not the first fragment.
        let mut frag = packet(ip(10, 244, 1, 2), ip(10, 244, 9, 7), 64, 17);
        frag[7] = 8;
        assert!(!wants_unreachable(&frag, &node()));
        // Outside the network.
        let away = packet(ip(10, 244, 1, 2), ip(172, 16, 0, 1), 64, 17);
        assert!(!wants_unreachable(&away, &node()));
    }

    #[test]
    fn peers_follow_lease_changes() {
        let mut p = peers();
        let s2 = Prefix {
            addr: ip(10, 244, 2, 0),
            len: 24,
        };
        // The same subnet moves to another public IP.
        p.insert(s2, ip(192, 168, 0, 3));
        assert_eq!(p.next_hop(ip(10, 244, 2, 1)), Some(ip(192, 168, 0, 3)));
        assert_eq!(p.subnet_of(ip(192, 168, 0, 2)), None);
        p.remove(s2);
        assert!(p.is_empty());
        assert_eq!(p.next_hop(ip(10, 244, 2, 1)), None);
    }

    /// A small deterministic generator (xorshift64*), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    /// One input: a valid packet between addresses near the network, then mutated
    /// (bytes flipped, cut, lengthened, header length or total length changed), or
    /// plain noise.
    fn mutated(rng: &mut Rng) -> Vec<u8> {
        let addrs = [
            ip(10, 244, 1, 2),
            ip(10, 244, 2, 7),
            ip(10, 244, 3, 7),
            ip(10, 244, 9, 1),
            ip(172, 16, 0, 1),
            ip(10, 244, 1, 0),
        ];
        if rng.below(10) == 0 {
            return (0..rng.below(80)).map(|_| rng.next() as u8).collect();
        }
        let src = addrs[rng.below(addrs.len())];
        let dst = addrs[rng.below(addrs.len())];
        let ttl = [0u8, 1, 2, 64, 255][rng.below(5)];
        let mut p = packet(src, dst, ttl, [1u8, 6, 17][rng.below(3)]);
        for _ in 0..rng.below(4) {
            match rng.below(5) {
                0 if !p.is_empty() => {
                    let at = rng.below(p.len());
                    p[at] ^= 1 << rng.below(8);
                }
                1 => p.truncate(rng.below(p.len() + 1)),
                2 => p.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                3 if !p.is_empty() => p[0] = 0x40 | (rng.next() as u8 & 0x0f),
                _ if p.len() > 3 => {
                    let total = rng.below(p.len() + 20) as u16;
                    p[2..4].copy_from_slice(&total.to_be_bytes());
                }
                _ => {}
            }
        }
        p
    }

    /// The udp decapsulation and encapsulation over 20,000 mutated and random inputs
    /// (a bounded fuzz run in every CI): nothing panics, and whatever passes keeps
    /// the confinement: into the TUN only from a known peer, with an inner source in
    /// that peer's subnet and a destination in ours; to a peer only the one holding the
    /// destination; a TTL one lower and a header checksum as valid as before.
    #[test]
    fn decap_and_encap_hold_their_rules_for_mutated_and_random_packets() {
        let n = node();
        let peers = peers();
        let peer_subnet = Prefix {
            addr: ip(10, 244, 2, 0),
            len: 24,
        };
        let senders = [ip(192, 168, 0, 2), ip(192, 168, 0, 9), ip(10, 244, 2, 7)];
        let mut rng = Rng(0x7769_6c6c_2d75_6470);
        let (mut to_tun, mut to_peer) = (0, 0);
        for _ in 0..20_000 {
            let input = mutated(&mut rng);
            let sender = senders[rng.below(senders.len())];

            let mut p = input.clone();
            let verdict = decap_verdict(&mut p, sender, &n, &peers);
            if verdict == Verdict::ToTun {
                to_tun += 1;
                assert_eq!(sender, ip(192, 168, 0, 2), "only a peer's datagram passes");
                let ihl = header_len_within(&p, p.len()).expect("a passed packet parses");
                assert!(
                    peer_subnet.contains(be32(&p, 12)),
                    "inner source in the sender's subnet"
                );
                assert!(n.own.contains(be32(&p, 16)), "destination in our subnet");
                assert_eq!(p[8], input[8] - 1, "TTL one lower");
                assert_eq!(
                    checksum(&p[..ihl]) == 0,
                    checksum(&input[..ihl]) == 0,
                    "the header checksum stays as valid as it was"
                );
            } else {
                assert_eq!(p, input, "a dropped packet is left as it was");
            }

            let mut p = input.clone();
            if let Verdict::ToPeer(to) = encap_verdict(&mut p, &n, &peers) {
                to_peer += 1;
                let dst = be32(&p, 16);
                assert_eq!(Some(to), peers.next_hop(dst));
                assert!(!n.own.contains(dst));
                assert_eq!(p[8], input[8] - 1);
            }
            if wants_unreachable(&input, &n) {
                let mut out = Vec::new();
                let len = push_unreachable(&mut out, &input, n.own.addr);
                assert_eq!(out.len(), len);
                assert!(
                    len <= 20 + 8 + 60 + 8,
                    "an ICMP error quotes at most 68 bytes"
                );
                assert_eq!(checksum(&out[..20]), 0);
            }
        }
        // The generator reaches both sides of every rule.
        assert!(
            to_tun > 50 && to_peer > 100,
            "passed: {to_tun} in, {to_peer} out"
        );
    }
}
