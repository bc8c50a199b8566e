//! Grouping a batch's datagrams into sends: runs to one peer, back to back and of one
//! size, leave as one UDP GSO message (`UDP_SEGMENT`), within the kernel's limits.

use std::net::{Ipv4Addr, SocketAddrV4};

use twill_plugin_host::{Action, Endpoint};

use crate::Answer;

/// Datagrams for one destination sent with one `sendmmsg` entry: back to back in the
/// output arena, all `segment` bytes long but the last (UDP GSO cuts them apart).
pub(crate) struct Group {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) dst: SocketAddrV4,
    pub(crate) segment: u16,
    pub(crate) count: u64,
    closed: bool,
}

/// Most datagrams per GSO send (the kernel allows 64; their sum must also fit 64 KiB).
const GSO_SEGMENTS: u64 = 40;

/// Most bytes per GSO send: the UDP payload limit.
const GSO_BYTES: usize = 65_507;

/// Group the `to-peer` packets of a batch into sends (GSO sends if `gso`), leaving out
/// those `allowed` refuses; returns how many were refused.
pub(crate) fn group_datagrams(
    out: Answer<'_>,
    groups: &mut Vec<Group>,
    gso: bool,
    allowed: impl Fn(&Endpoint) -> bool,
) -> u64 {
    groups.clear();
    let mut refused = 0;
    for p in out.packets {
        let Action::ToPeer(ep) = p.action else {
            continue;
        };
        let (start, len) = (p.offset as usize, p.len as usize);
        if slice(out, p.offset, p.len).is_none() {
            continue;
        }
        if !allowed(&ep) {
            refused += 1;
            continue;
        }
        let dst = SocketAddrV4::new(Ipv4Addr::from(ep.ip), ep.port);
        if let Some(g) = groups.last_mut() {
            let joins = gso
                && !g.closed
                && g.end - g.start + len <= GSO_BYTES
                && g.dst == dst
                && g.end == start
                && g.count < GSO_SEGMENTS
                && len <= usize::from(g.segment)
                && len > 0;
            if joins {
                g.end += len;
                g.count += 1;
                // A shorter datagram can only be the last of a GSO send.
                g.closed = len < usize::from(g.segment);
                continue;
            }
        }
        groups.push(Group {
            start,
            end: start + len,
            dst,
            segment: u16::try_from(len).unwrap_or(u16::MAX),
            count: 1,
            closed: len > usize::from(u16::MAX),
        });
    }
    refused
}

/// The bytes of an output descriptor, if it lies inside the output arena (a plugin
/// cannot make the host read outside it).
pub(crate) fn slice(out: Answer<'_>, offset: u32, len: u32) -> Option<&[u8]> {
    let start = offset as usize;
    out.arena.get(start..start.checked_add(len as usize)?)
}

#[cfg(test)]
mod tests {
    use twill_plugin_host::{BatchOut, OutPacket};

    use super::*;

    fn out_of(sizes: &[(usize, [u8; 4])]) -> BatchOut {
        let mut arena = Vec::new();
        let mut packets = Vec::new();
        for (len, ip) in sizes {
            packets.push(OutPacket {
                offset: arena.len() as u32,
                len: *len as u32,
                action: Action::ToPeer(Endpoint {
                    ip: u32::from(Ipv4Addr::from(*ip)),
                    port: 8285,
                }),
            });
            arena.resize(arena.len() + len, 0);
        }
        BatchOut {
            arena,
            packets,
            drops: twill_plugin_host::no_drops(),
        }
    }

    fn shapes(groups: &[Group]) -> Vec<(u64, u16)> {
        groups.iter().map(|g| (g.count, g.segment)).collect()
    }

    #[test]
    fn datagrams_group_into_gso_sends_within_the_kernels_limits() {
        let a = [192, 168, 0, 2];
        let b = [192, 168, 0, 3];
        let mut groups = Vec::new();
        // Equal sizes to one peer join; a shorter one closes the group; another peer
        // or a longer datagram starts a new one.
        let out = out_of(&[
            (1472, a),
            (1472, a),
            (900, a),
            (1472, a),
            (1472, b),
            (100, b),
            (200, b),
        ]);
        assert_eq!(
            group_datagrams(Answer::of(&out), &mut groups, true, |_| true),
            0
        );
        assert_eq!(shapes(&groups), [(3, 1472), (1, 1472), (2, 1472), (1, 200)]);
        // Jumbo frames: no GSO send beyond the UDP payload limit.
        let out = out_of(&[(8973, a); 20]);
        group_datagrams(Answer::of(&out), &mut groups, true, |_| true);
        assert!(groups.iter().all(|g| (g.end - g.start) <= GSO_BYTES));
        assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 20);
        assert_eq!(groups[0].count, 7);
        // Without GSO every datagram is its own message; refused peers are left out.
        let out = out_of(&[(1472, a), (1472, a), (1472, b)]);
        let refused = group_datagrams(Answer::of(&out), &mut groups, false, |ep| {
            ep.ip == u32::from(Ipv4Addr::from(a))
        });
        assert_eq!(refused, 1);
        assert_eq!(shapes(&groups), [(1, 1472), (1, 1472)]);
    }
}
