//! The out thread: TUN → plugin (`encap`) → UDP.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use twill_core::lease::LeaseEvent;
use twill_net::datapath::{SendBatch, wait_readable};
use twill_plugin_host::{Datapath, Packet};

use crate::counters::count_plugin_drops;
use crate::gso::{Group, group_datagrams};
use crate::heads::Way;
use crate::offload::{self, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};
use crate::{Answer, BATCH, Direction, DropReason, IDLE_WAIT, PumpError, Shared, heads, io_err};

/// One read from the TUN device: its `virtio_net_hdr` and a packet of up to 64 KiB
/// (a TCP super-packet when the device does TSO).
const READ_BUF: usize = 65_536 + VNET_HDR_LEN;
/// Bytes read from the TUN device per batch.
const OUT_ARENA: usize = 512 * 1024;

impl Shared {
    pub(crate) fn run_out(
        &self,
        mut dp: Datapath,
        rx: mpsc::Receiver<Vec<LeaseEvent>>,
    ) -> Result<(), PumpError> {
        let mut warned = false;
        let mut scratch = vec![0u8; READ_BUF];
        let mut arena: Vec<u8> = Vec::with_capacity(OUT_ARENA + READ_BUF);
        let mut packets: Vec<Packet> = Vec::with_capacity(BATCH * 4);
        let mut groups: Vec<Group> = Vec::with_capacity(BATCH);
        let mut send = SendBatch::new();
        let mut heads = heads::Scratch::default();
        let fd = self.tun.as_raw_fd();
        while !self.stopped() {
            self.drain_updates(&mut dp, &rx)?;
            let malformed = self.read_batch(&mut scratch, &mut arena, &mut packets)?;
            self.counters.dropped(DropReason::Malformed, malformed);
            if packets.is_empty() {
                wait_readable(&[fd], IDLE_WAIT).map_err(io_err("wait for the TUN device"))?;
                continue;
            }
            if let Some(out) = self.through_heads(
                &mut dp,
                Way::Out,
                &mut arena,
                &packets,
                &mut heads,
                &mut warned,
            )? {
                let kept = Answer {
                    arena: &arena,
                    packets: &heads.kept,
                };
                for answer in [kept, Answer::extra(&out)] {
                    self.forward_out(answer, &dp, &mut groups, &mut send, &mut warned)?;
                }
                continue;
            }
            let out = dp.encap(&arena, &packets)?;
            count_plugin_drops(&*self.counters, &out.drops);
            self.denied(
                dp.take_excess(),
                "answer more packets than two per packet given",
                &mut warned,
            );
            self.forward_out(Answer::of(&out), &dp, &mut groups, &mut send, &mut warned)?;
        }
        Ok(())
    }

    /// An encap answer's datagrams to their peers (grouped for UDP GSO) and its
    /// packets for the TUN device (ICMP replies), each checked by the confinement.
    fn forward_out(
        &self,
        out: Answer<'_>,
        dp: &Datapath,
        groups: &mut Vec<Group>,
        send: &mut SendBatch,
        warned: &mut bool,
    ) -> Result<(), PumpError> {
        let confinement = dp.confinement();
        let gso = self.gso.load(Ordering::Relaxed);
        let refused = group_datagrams(out, groups, gso, |ep| confinement.to_peer_allowed(ep));
        self.denied(refused, "send to an address that is no peer", warned);
        self.send_groups(out, groups, send)?;
        self.write_to_tun(out, confinement, None, None, warned);
        Ok(())
    }

    /// Read packets from the TUN device into `arena` until the batch is full or none
    /// is waiting; super-packets are cut into wire packets, partial checksums finished.
    /// How many packets were malformed.
    fn read_batch(
        &self,
        scratch: &mut [u8],
        arena: &mut Vec<u8>,
        packets: &mut Vec<Packet>,
    ) -> Result<u64, PumpError> {
        packets.clear();
        arena.clear();
        let mut malformed = 0;
        while packets.len() < BATCH * 4 && arena.len() + READ_BUF <= OUT_ARENA {
            let n = match self.tun.read(scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(format!("read from {}", self.tun.name()))(e)),
            };
            let Some(hdr) = VnetHdr::parse(&scratch[..n]) else {
                continue;
            };
            let packet = &mut scratch[VNET_HDR_LEN..n];
            if hdr.gso_type == GSO_TCPV4 {
                // A TCP super-packet: cut it into the MSS-sized packets the wire
                // carries (one per datagram).
                let cut = offload::segment(packet, usize::from(hdr.gso_size), arena, |o, l| {
                    packets.push(Packet {
                        offset: o as u32,
                        len: l as u32,
                        peer: 0,
                    })
                });
                malformed += u64::from(!cut);
                continue;
            }
            if hdr.gso_type != GSO_NONE {
                malformed += 1;
                continue;
            }
            if hdr.flags & F_NEEDS_CSUM != 0
                && !offload::complete_checksum(
                    packet,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                malformed += 1;
                continue;
            }
            packets.push(Packet {
                offset: arena.len() as u32,
                len: packet.len() as u32,
                peer: 0,
            });
            arena.extend_from_slice(packet);
        }
        Ok(malformed)
    }

    /// Send a batch's groups; a GSO send the kernel refuses is sent again one datagram
    /// at a time, and GSO stays off from then on (e.g. a device without tx
    /// checksumming answers EIO on older kernels).
    fn send_groups(
        &self,
        out: Answer<'_>,
        groups: &[Group],
        send: &mut SendBatch,
    ) -> Result<(), PumpError> {
        send.send_segmented(
            &self.socket,
            groups.iter().map(|g| {
                let segment = if g.count > 1 { g.segment } else { 0 };
                (&out.arena[g.start..g.end], g.dst, segment)
            }),
        )
        .map_err(io_err("send on the udp socket"))?;
        let mut failed = 0u64;
        let mut retry: Vec<(&[u8], SocketAddrV4)> = Vec::new();
        for &i in send.refused() {
            let g = &groups[i];
            if g.count > 1 {
                if self.gso.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "the kernel refused a UDP GSO send to {}; one datagram per message from now on",
                        g.dst
                    );
                }
                let bytes = &out.arena[g.start..g.end];
                retry.extend(bytes.chunks(usize::from(g.segment)).map(|d| (d, g.dst)));
            } else {
                failed += 1;
            }
        }
        if !retry.is_empty() {
            send.send(&self.socket, retry.into_iter())
                .map_err(io_err("send on the udp socket"))?;
            failed += send.refused().len() as u64;
        }
        let (count, bytes) = groups.iter().fold((0u64, 0u64), |(c, b), g| {
            (c + g.count, b + (g.end - g.start) as u64)
        });
        self.counters
            .packets(Direction::Out, count.saturating_sub(failed), bytes);
        self.counters.dropped(DropReason::SendFailed, failed);
        Ok(())
    }
}
