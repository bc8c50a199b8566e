//! Packet heads (`twill:backend/datapath-heads`): the plugin gets each packet's first
//! [`HEAD_BYTES`] instead of the whole packet; its answer (a fate per head, heads
//! changed in place) is applied to the host's own buffer, so no payload is copied into
//! the plugin's memory and back. The host's checks are the same as for whole packets:
//! the answer becomes output descriptors into the host's buffer, which then go through
//! the same confinement, grouping and writes.

use twill_plugin_host::{Action, Datapath, Fate, Head, HeadsOut, OutPacket, Packet};

use crate::counters::count_plugin_drops;
use crate::{PumpError, Shared};

/// The most of a packet the plugin gets: the IPv4 header (up to 60 bytes) and what
/// follows it (the transport header, the start of an ICMP error's quote).
pub const HEAD_BYTES: usize = 128;

/// A plugin's answer as the host forwards it: output descriptors into an arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer<'a> {
    pub arena: &'a [u8],
    pub packets: &'a [OutPacket],
}

impl<'a> Answer<'a> {
    pub(crate) fn of(out: &'a twill_plugin_host::BatchOut) -> Self {
        Answer {
            arena: &out.arena,
            packets: &out.packets,
        }
    }

    /// The packets a heads answer makes of its own (ICMP errors).
    pub(crate) fn extra(out: &'a HeadsOut) -> Self {
        Answer {
            arena: &out.extra,
            packets: &out.extra_packets,
        }
    }
}

/// The heads path's buffers, allocated once per data-path thread.
#[derive(Default)]
pub(crate) struct Scratch {
    arena: Vec<u8>,
    heads: Vec<Head>,
    /// The packets the last answer keeps, at their places in the batch's arena.
    pub kept: Vec<OutPacket>,
}

/// Which way a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// Read from the TUN device (`encap-heads`).
    Out,
    /// Received on the UDP socket (`decap-heads`).
    In,
}

impl Shared {
    /// Hand the plugin the heads of `packets` (which lie in `arena`) and apply its
    /// answer to `arena`: its drops counted, the packets it keeps in `scratch.kept`,
    /// what it answered beyond its heads counted as denied. `None` when the plugin
    /// takes whole packets (then the caller calls `encap`/`decap`). The answer is
    /// returned for its extra packets (`Answer::extra`).
    pub(crate) fn through_heads(
        &self,
        dp: &mut Datapath,
        way: Way,
        arena: &mut [u8],
        packets: &[Packet],
        scratch: &mut Scratch,
        warned: &mut bool,
    ) -> Result<Option<HeadsOut>, PumpError> {
        if !dp.takes_heads() {
            return Ok(None);
        }
        heads_of(arena, packets, &mut scratch.arena, &mut scratch.heads);
        let answer = match way {
            Way::Out => dp.encap_heads(&scratch.arena, &scratch.heads)?,
            Way::In => dp.decap_heads(&scratch.arena, &scratch.heads)?,
        };
        let Some(out) = answer else { return Ok(None) };
        count_plugin_drops(&*self.counters, &out.drops);
        let bad = apply(arena, packets, &scratch.heads, &out, &mut scratch.kept);
        self.denied(
            bad + dp.take_excess(),
            "answer heads it was not given, or more than one fate per head",
            warned,
        );
        Ok(Some(out))
    }
}

/// The heads of `packets` (which lie in `arena`), copied into `heads_arena`.
fn heads_of(arena: &[u8], packets: &[Packet], heads_arena: &mut Vec<u8>, heads: &mut Vec<Head>) {
    heads_arena.clear();
    heads.clear();
    for p in packets {
        let start = p.offset as usize;
        let len = (p.len as usize).min(HEAD_BYTES);
        let Some(bytes) = arena.get(start..start + len) else {
            continue;
        };
        heads.push(Head {
            offset: heads_arena.len() as u32,
            len: len as u32,
            total: p.len,
            peer: p.peer,
        });
        heads_arena.extend_from_slice(bytes);
    }
}

/// Apply `out` to the batch: every kept packet's head written back over it in `arena`,
/// its descriptor (at the packet's own place) pushed to `kept`. Returns how many
/// fates could not be applied (a head the answer no longer holds, or a fate missing):
/// those packets are dropped, and the caller counts them as denied.
fn apply(
    arena: &mut [u8],
    packets: &[Packet],
    heads: &[Head],
    out: &HeadsOut,
    kept: &mut Vec<OutPacket>,
) -> u64 {
    kept.clear();
    let mut bad = u64::try_from(heads.len().saturating_sub(out.fates.len())).unwrap_or(0);
    for ((p, h), fate) in packets.iter().zip(heads).zip(&out.fates) {
        let action = match *fate {
            Fate::ToPeer(ep) => Action::ToPeer(ep),
            Fate::ToTun => Action::ToTun,
            Fate::Dropped => continue,
        };
        let (from, to) = (h.offset as usize, p.offset as usize);
        let len = h.len as usize;
        let (Some(head), Some(packet)) =
            (out.arena.get(from..from + len), arena.get_mut(to..to + len))
        else {
            bad += 1;
            continue;
        };
        packet.copy_from_slice(head);
        kept.push(OutPacket {
            offset: p.offset,
            len: p.len,
            action,
        });
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_plugin_host::{Drops, Endpoint};

    fn packet(offset: u32, len: u32) -> Packet {
        Packet {
            offset,
            len,
            peer: 7,
        }
    }

    #[test]
    fn heads_are_cut_and_changed_heads_written_back_in_place() {
        // Two packets: 300 bytes of 1s, 40 bytes of 2s.
        let mut arena = vec![1u8; 300];
        arena.extend([2u8; 40]);
        let packets = [packet(0, 300), packet(300, 40)];
        let (mut head_arena, mut heads) = (Vec::new(), Vec::new());
        heads_of(&arena, &packets, &mut head_arena, &mut heads);
        assert_eq!(head_arena.len(), HEAD_BYTES + 40, "only the heads");
        assert_eq!((heads[0].len, heads[0].total), (128, 300));
        assert_eq!(
            (heads[1].offset, heads[1].len, heads[1].total),
            (128, 40, 40)
        );
        assert_eq!(heads[1].peer, 7);

        // The plugin decrements a "TTL" in both heads, sends the first to a peer and
        // drops the second.
        let mut changed = head_arena.clone();
        changed[8] = 9;
        changed[128 + 8] = 9;
        let ep = Endpoint {
            ip: 0x0a00_0001,
            port: 8285,
        };
        let out = HeadsOut {
            arena: changed,
            fates: vec![Fate::ToPeer(ep), Fate::Dropped],
            extra: Vec::new(),
            extra_packets: Vec::new(),
            drops: Drops {
                no_route: 1,
                ..twill_plugin_host::no_drops()
            },
        };
        let mut kept = Vec::new();
        assert_eq!(apply(&mut arena, &packets, &heads, &out, &mut kept), 0);
        assert_eq!(arena[8], 9, "the kept packet's head was written back");
        assert_eq!(arena[300 + 8], 2, "the dropped packet is untouched");
        assert!(arena[128..300].iter().all(|b| *b == 1), "the payload stays");
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].offset, kept[0].len), (0, 300));
        assert!(matches!(kept[0].action, Action::ToPeer(e) if e.port == 8285));
    }

    #[test]
    fn an_answer_that_lost_a_head_or_a_fate_drops_those_packets() {
        let mut arena = vec![0u8; 200];
        let packets = [packet(0, 100), packet(100, 100)];
        let (mut head_arena, mut heads) = (Vec::new(), Vec::new());
        heads_of(&arena, &packets, &mut head_arena, &mut heads);
        let out = HeadsOut {
            // The arena cut short: the first head is no longer in it.
            arena: Vec::new(),
            fates: vec![Fate::ToTun],
            extra: Vec::new(),
            extra_packets: Vec::new(),
            drops: twill_plugin_host::no_drops(),
        };
        let mut kept = Vec::new();
        assert_eq!(apply(&mut arena, &packets, &heads, &out, &mut kept), 2);
        assert!(kept.is_empty());
    }
}
