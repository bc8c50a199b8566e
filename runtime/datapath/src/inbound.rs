//! The in thread: UDP → plugin (`decap`) → TUN.

use std::os::fd::AsRawFd;
use std::sync::mpsc;

use twill_core::lease::LeaseEvent;
use twill_net::datapath::{RecvBatch, wait_readable};
use twill_plugin_host::{Datapath, Packet};

use crate::counters::count_plugin_drops;
use crate::heads::Way;
use crate::{Answer, BATCH, Direction, DropReason, IDLE_WAIT, PumpError, Shared, heads, io_err};

/// Messages per `recvmmsg`; each may hold many datagrams (UDP GRO).
const RECV_MESSAGES: usize = 16;
/// Bytes per received message.
const RECV_SLOT: usize = 65_536;

impl Shared {
    pub(crate) fn run_in(
        &self,
        mut dp: Datapath,
        rx: mpsc::Receiver<Vec<LeaseEvent>>,
    ) -> Result<(), PumpError> {
        let mut warned = false;
        let mut batch = RecvBatch::new(RECV_MESSAGES, RECV_SLOT);
        let mut packets: Vec<Packet> = Vec::with_capacity(BATCH * 4);
        let mut heads = heads::Scratch::default();
        let fd = self.socket.as_raw_fd();
        while !self.stopped() {
            self.drain_updates(&mut dp, &rx)?;
            let n = batch
                .recv(&self.socket)
                .map_err(io_err("receive on the udp socket"))?;
            if n == 0 {
                wait_readable(&[fd], IDLE_WAIT).map_err(io_err("wait for the udp socket"))?;
                continue;
            }
            let (used, oversize) = unpack(&mut batch, n, &mut packets);
            self.counters.dropped(DropReason::Oversize, oversize);
            let arena = &mut batch.arena_mut()[..used];
            if let Some(out) =
                self.through_heads(&mut dp, Way::In, arena, &packets, &mut heads, &mut warned)?
            {
                let kept = Answer {
                    arena: &batch.arena()[..used],
                    packets: &heads.kept,
                };
                for answer in [kept, Answer::extra(&out)] {
                    let confinement = dp.confinement();
                    let direction = Some(Direction::In);
                    self.write_to_tun(answer, confinement, Some(&packets), direction, &mut warned);
                }
                continue;
            }
            let out = dp.decap(&batch.arena()[..used], &packets)?;
            count_plugin_drops(&*self.counters, &out.drops);
            self.denied(
                dp.take_excess(),
                "answer more packets than two per packet given",
                &mut warned,
            );
            self.write_to_tun(
                Answer::of(&out),
                dp.confinement(),
                Some(&packets),
                Some(Direction::In),
                &mut warned,
            );
        }
        Ok(())
    }
}

/// Pack the `n` received messages back to back at the arena's start (the plugin gets
/// no gaps to copy) and describe each datagram, a GRO message cut at its segment size;
/// (bytes used, messages too large for a slot).
fn unpack(batch: &mut RecvBatch, n: usize, packets: &mut Vec<Packet>) -> (usize, u64) {
    packets.clear();
    let mut oversize = 0;
    let mut used = 0;
    for i in 0..n {
        if batch.truncated(i) {
            oversize += 1;
            continue;
        }
        let len = batch.datagram_len(i);
        let start = i * batch.slot();
        batch.arena_mut().copy_within(start..start + len, used);
        // With UDP GRO one message holds several datagrams of one sender.
        let size = batch.segment_size(i).unwrap_or(len).max(1);
        let peer = u32::from(*batch.from(i).ip());
        let mut at = 0;
        while at < len {
            let take = size.min(len - at);
            packets.push(Packet {
                offset: (used + at) as u32,
                len: take as u32,
                peer,
            });
            at += take;
        }
        used += len;
    }
    (used, oversize)
}
