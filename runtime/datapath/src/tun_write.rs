//! Writing a batch's `to-tun` packets into the TUN device: runs of one TCP flow are
//! merged into one GSO super-packet ([`offload::Coalescer`]), anything else goes alone.

use std::io::IoSlice;

use twill_plugin_host::{Action, Confinement, Packet};

use crate::Answer;
use crate::gso::slice;
use crate::offload::{self, Coalescer, Merge, VNET_HDR_LEN};
use crate::{Direction, DropReason, Shared};

/// The `virtio_net_hdr` of a plain packet: no offload.
const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Packets written to the TUN device and their bytes, and those that failed.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    failed: u64,
}

impl Shared {
    /// Write every `to-tun` packet of a batch that `confinement` allows. Counted as
    /// `direction` if given. `senders`, for a decapsulated batch: the input's
    /// descriptors, so that only a packet in place of a datagram (at its offset) from a
    /// current peer, with a source in that peer's subnet, is written.
    pub(crate) fn write_to_tun(
        &self,
        out: Answer<'_>,
        confinement: &Confinement,
        senders: Option<&[Packet]>,
        direction: Option<Direction>,
        warned: &mut bool,
    ) {
        let mut tally = Tally::default();
        let mut denied = 0;
        let mut coalescer = Coalescer::default();
        let mut run: Vec<&[u8]> = Vec::new();
        for p in out.packets {
            if !matches!(p.action, Action::ToTun) {
                continue;
            }
            let Some(packet) = slice(out, p.offset, p.len) else {
                tally.failed += 1;
                continue;
            };
            let allowed = match senders {
                None => confinement.to_tun_allowed(packet),
                // The input's descriptors are in arena order (`unpack`).
                Some(given) => given
                    .binary_search_by_key(&p.offset, |g| g.offset)
                    .ok()
                    .is_some_and(|i| confinement.from_peer_allowed(given[i].peer, packet)),
            };
            if !allowed {
                denied += 1;
                continue;
            }
            match coalescer.push(packet, run.first().copied()) {
                Merge::Start => {
                    self.flush(&mut run, &mut tally);
                    run.push(packet);
                }
                Merge::Append => run.push(packet),
                Merge::AppendLast => {
                    run.push(packet);
                    self.flush(&mut run, &mut tally);
                }
                Merge::Alone => {
                    self.flush(&mut run, &mut tally);
                    run.push(packet);
                    self.flush(&mut run, &mut tally);
                }
            }
        }
        self.flush(&mut run, &mut tally);
        self.denied(
            denied,
            "write a packet into the TUN device that is not from the network to this node's \
             subnet, or not in place of a datagram from the peer whose subnet holds its source",
            warned,
        );
        if let Some(direction) = direction {
            self.counters.packets(direction, tally.packets, tally.bytes);
        }
        self.counters
            .dropped(DropReason::TunWriteFailed, tally.failed);
    }

    /// Write a run: one packet as it is, several as one merged super-packet.
    fn flush(&self, run: &mut Vec<&[u8]>, tally: &mut Tally) {
        let Some(first) = run.first().copied() else {
            return;
        };
        let result = if run.len() == 1 {
            self.tun
                .writev(&[IoSlice::new(&PLAIN), IoSlice::new(first)])
        } else {
            let hdrs = 20 + usize::from(first[32] >> 4) * 4;
            let payload: usize = run.iter().map(|p| p.len() - hdrs).sum();
            let psh = run.last().is_some_and(|p| p[33] & 0x08 != 0);
            let (headers, vnet) = offload::merged_headers(first, payload, psh);
            let vnet = vnet.to_bytes();
            let mut parts = Vec::with_capacity(run.len() + 2);
            parts.push(IoSlice::new(&vnet));
            parts.push(IoSlice::new(&headers));
            parts.extend(run.iter().map(|p| IoSlice::new(&p[hdrs..])));
            self.tun.writev(&parts)
        };
        let packets = run.len() as u64;
        match result {
            Ok(_) => {
                tally.packets += packets;
                tally.bytes += run.iter().map(|p| p.len() as u64).sum::<u64>();
            }
            Err(e) => {
                tracing::debug!("write to {}: {e}", self.tun.name());
                tally.failed += packets;
            }
        }
        run.clear();
    }
}
