//! The data path of a backend that exports `twill:backend/datapath` (udp): two OS
//! threads, each with its own instance of the plugin.
//!
//! - out: read from the TUN device (a `virtio_net_hdr` before each packet; TCP
//!   super-packets of up to 64 KiB when the device does TSO) until 256 packets or
//!   512 KiB; super-packets are cut into the MSS-sized packets the wire carries
//!   ([`offload::segment`]); one `encap` call; runs of datagrams to one peer leave as
//!   UDP GSO messages, all in one `sendmmsg`; ICMP replies go back into the TUN device.
//! - in: `recvmmsg` with UDP GRO (a message may hold many datagrams of one sender),
//!   packed back to back; one `decap` call; runs of one TCP flow are merged into one
//!   GSO super-packet ([`Coalescer`]) and written with one `writev`.
//!
//! Lease changes reach both instances through a channel, drained between batches.
//! Buffers are allocated once per thread. A trap in either instance stops the data
//! path and is reported to the daemon, which restarts the backend and the data path
//! with backoff (as for a control-plane trap).

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow};
use twill_api::{Direction, Metrics};
use twill_core::Subnet;
use twill_core::lease::LeaseEvent;
use twill_net::datapath::{RecvBatch, SendBatch, Tun, wait_readable};
use twill_net::offload::{
    self, Coalescer, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, Merge, VNET_HDR_LEN, VnetHdr,
};
use twill_plugin_host::{
    Action, BatchOut, Datapath, DatapathResources, Drops, Endpoint, Grant, Packet, Plugin,
    PluginHost, PluginStats,
};

/// Packets per batch (and per plugin call), before segmentation.
pub const BATCH: usize = 64;
/// One read from the TUN device: its `virtio_net_hdr` and a packet of up to 64 KiB
/// (a TCP super-packet when the device does TSO).
const READ_BUF: usize = 65_536 + VNET_HDR_LEN;
/// Bytes read from the TUN device per batch.
const OUT_ARENA: usize = 512 * 1024;
/// Messages per `recvmmsg`; each may hold many datagrams (UDP GRO).
const RECV_MESSAGES: usize = 16;
/// Bytes per received message.
const RECV_SLOT: usize = 65_536;
/// The `virtio_net_hdr` of a plain packet: no offload.
const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// How long a thread waits for traffic before it looks at its channel again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The running data path.
pub struct DataPath {
    updates: Vec<mpsc::Sender<Vec<LeaseEvent>>>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What the data path needs from the daemon to start.
pub struct Setup<'a> {
    pub host: &'a PluginHost,
    pub plugin: &'a Plugin,
    pub grant: Grant,
    pub stats: Arc<PluginStats>,
    pub config: &'a str,
    pub own: Subnet,
    pub metrics: Arc<Metrics>,
}

impl DataPath {
    /// Start both threads on the TUN device and socket the plugin had the host open;
    /// both instances know `peers` before the first packet.
    pub fn start(
        setup: Setup<'_>,
        resources: DatapathResources,
        peers: &[LeaseEvent],
    ) -> anyhow::Result<DataPath> {
        let plugin = &setup.plugin.name;
        let tun = resources
            .tun
            .and_then(|t| t.tun)
            .ok_or_else(|| anyhow!("backend {plugin} exports a data path but opened no TUN device (datapath-host.open-tun)"))?;
        let (bound, socket) = resources
            .udp
            .and_then(|(addr, s)| Some((addr, s?)))
            .ok_or_else(|| anyhow!("backend {plugin} exports a data path but bound no UDP socket (datapath-host.bind-udp)"))?;
        let instance = || {
            setup
                .host
                .datapath(
                    setup.plugin,
                    setup.grant.clone(),
                    setup.stats.clone(),
                    setup.config,
                    setup.own,
                )
                .with_context(|| format!("start the data path of {plugin}"))
        };
        let (mut out_dp, mut in_dp) = (instance()?, instance()?);
        out_dp.update(peers)?;
        in_dp.update(peers)?;
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let (out_tx, out_rx) = mpsc::channel();
        let (in_tx, in_rx) = mpsc::channel();
        let gso = twill_net::datapath::udp_gso_supported(&socket);
        let common = Common {
            tun,
            socket,
            metrics: setup.metrics.clone(),
            stop: stop.clone(),
            failed: failed.clone(),
            limits: Limits {
                plugin: plugin.clone(),
                network: setup.grant.network,
                own: setup.own,
                port: bound.port(),
            },
            gso: Arc::new(AtomicBool::new(gso)),
        };
        let out = {
            let common = common.clone();
            let peers = peer_ips(peers);
            thread::Builder::new()
                .name("udp-out".into())
                .spawn(move || common.guard("out", || common.run_out(out_dp, out_rx, peers)))?
        };
        let inbound = {
            let common = common.clone();
            let peers = peer_ips(peers);
            thread::Builder::new()
                .name("udp-in".into())
                .spawn(move || common.guard("in", || common.run_in(in_dp, in_rx, peers)))
        };
        let inbound = match inbound {
            Ok(t) => t,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = out.join();
                return Err(anyhow!("spawn the udp-in thread: {e}"));
            }
        };
        tracing::info!(
            plugin = %plugin, batch = BATCH, tso = common.tun.tso(), gso,
            "udp data path running"
        );
        Ok(DataPath {
            updates: vec![out_tx, in_tx],
            stop,
            failed,
            threads: vec![out, inbound],
        })
    }

    /// Hand lease changes to both instances.
    pub fn update(&self, events: &[LeaseEvent]) {
        if events.is_empty() {
            return;
        }
        for tx in &self.updates {
            let _ = tx.send(events.to_vec());
        }
    }

    /// Why the data path stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        failed.or_else(|| {
            self.threads
                .iter()
                .any(|t| t.is_finished())
                .then(|| "a udp data-path thread ended".to_owned())
        })
    }

    /// Stop both threads and wait for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Common {
    tun: Arc<Tun>,
    socket: Arc<UdpSocket>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    limits: Limits,
    /// Whether UDP GSO sends work (probed at start, turned off if the kernel refuses).
    gso: Arc<AtomicBool>,
}

/// What the host lets a data-path plugin do with a packet, whatever it answers: send
/// only to a current peer's public IP on the bound port, and pass to the TUN device
/// only IPv4 packets from inside the network to the node's own subnet.
#[derive(Clone)]
struct Limits {
    plugin: String,
    network: Subnet,
    own: Subnet,
    port: u16,
}

impl Limits {
    fn to_peer_allowed(&self, peers: &HashSet<u32>, ep: &Endpoint) -> bool {
        ep.port == self.port && peers.contains(&ep.ip)
    }

    fn to_tun_allowed(&self, packet: &[u8]) -> bool {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return false;
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        self.network.contains(src) && self.own.contains(dst)
    }
}

/// The public IPs of the peers added by `events`.
fn peer_ips(events: &[LeaseEvent]) -> HashSet<u32> {
    let mut ips = HashSet::new();
    apply_peer_ips(&mut ips, events);
    ips
}

/// Follow lease events in a set of peer public IPs.
fn apply_peer_ips(ips: &mut HashSet<u32>, events: &[LeaseEvent]) {
    for e in events {
        match e {
            LeaseEvent::Added(l) => {
                ips.insert(u32::from(l.attrs.public_ip));
            }
            LeaseEvent::Removed(l) => {
                ips.remove(&u32::from(l.attrs.public_ip));
            }
        }
    }
}

impl Common {
    /// Run a thread body; an error is logged and recorded as the data path's failure.
    fn guard(&self, direction: &str, body: impl FnOnce() -> anyhow::Result<()>) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
            .unwrap_or_else(|_| Err(anyhow!("the thread panicked")));
        if let Err(e) = result {
            let message = format!("udp data path ({direction}) stopped: {e:#}");
            tracing::error!("{message}");
            self.failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(message);
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn drain_updates(
        &self,
        dp: &mut Datapath,
        rx: &mpsc::Receiver<Vec<LeaseEvent>>,
        peers: &mut HashSet<u32>,
    ) -> anyhow::Result<()> {
        while let Ok(events) = rx.try_recv() {
            apply_peer_ips(peers, &events);
            dp.update(&events)?;
        }
        Ok(())
    }

    /// Count a batch's packets the host refused to act on, and say so once.
    fn denied(&self, n: u64, what: &str, warned: &mut bool) {
        if n == 0 {
            return;
        }
        self.metrics.udp_drops_by("denied", n);
        if !*warned {
            *warned = true;
            tracing::warn!(
                plugin = %self.limits.plugin,
                "denied: the data path asked to {what}; dropped (counted as reason=denied)"
            );
        }
    }

    /// TUN → plugin (`encap`) → UDP.
    fn run_out(
        &self,
        mut dp: Datapath,
        rx: mpsc::Receiver<Vec<LeaseEvent>>,
        mut peers: HashSet<u32>,
    ) -> anyhow::Result<()> {
        let mut warned = false;
        let mut scratch = vec![0u8; READ_BUF];
        let mut arena: Vec<u8> = Vec::with_capacity(OUT_ARENA + READ_BUF);
        let mut packets: Vec<Packet> = Vec::with_capacity(BATCH * 4);
        let mut groups: Vec<Group> = Vec::with_capacity(BATCH);
        let mut send = SendBatch::new();
        let fd = self.tun.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            self.drain_updates(&mut dp, &rx, &mut peers)?;
            packets.clear();
            arena.clear();
            let mut malformed = 0;
            while packets.len() < BATCH * 4 && arena.len() + READ_BUF <= OUT_ARENA {
                let n = match self.tun.read(&mut scratch) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(anyhow!("read from {}: {e}", self.tun.name())),
                };
                let Some(hdr) = VnetHdr::parse(&scratch[..n]) else {
                    continue;
                };
                let packet = &mut scratch[VNET_HDR_LEN..n];
                if hdr.gso_type == GSO_TCPV4 {
                    // A TCP super-packet: cut it into the MSS-sized packets the wire
                    // carries (one per datagram).
                    let cut =
                        offload::segment(packet, usize::from(hdr.gso_size), &mut arena, |o, l| {
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
            self.metrics.udp_drops_by("malformed", malformed);
            if packets.is_empty() {
                wait_readable(&[fd], IDLE_WAIT)?;
                continue;
            }
            let out = dp.encap(&arena, &packets)?;
            self.count_drops(&out.drops);
            let gso = self.gso.load(Ordering::Relaxed);
            let refused = group_datagrams(&out, &mut groups, gso, |ep| {
                self.limits.to_peer_allowed(&peers, ep)
            });
            self.denied(refused, "send to an address that is no peer", &mut warned);
            self.send_groups(&out, &groups, &mut send)?;
            self.write_to_tun(&out, None, &mut warned);
        }
        Ok(())
    }

    /// UDP → plugin (`decap`) → TUN.
    fn run_in(
        &self,
        mut dp: Datapath,
        rx: mpsc::Receiver<Vec<LeaseEvent>>,
        mut peers: HashSet<u32>,
    ) -> anyhow::Result<()> {
        let mut warned = false;
        let mut batch = RecvBatch::new(RECV_MESSAGES, RECV_SLOT);
        let mut packets: Vec<Packet> = Vec::with_capacity(BATCH * 4);
        let fd = self.socket.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            self.drain_updates(&mut dp, &rx, &mut peers)?;
            let n = batch.recv(&self.socket)?;
            if n == 0 {
                wait_readable(&[fd], IDLE_WAIT)?;
                continue;
            }
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
                // Pack the messages back to back: the plugin gets no gaps to copy.
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
            self.metrics.udp_drops_by("oversize", oversize);
            let out = dp.decap(&batch.arena()[..used], &packets)?;
            self.count_drops(&out.drops);
            self.write_to_tun(&out, Some(Direction::In), &mut warned);
        }
        Ok(())
    }

    /// Write every `to-tun` packet of a batch; runs of one TCP flow go as one GSO
    /// super-packet. Counted as `direction` if given.
    fn write_to_tun(&self, out: &BatchOut, direction: Option<Direction>, warned: &mut bool) {
        let mut tally = Tally::default();
        let mut denied = 0;
        let mut coalescer = Coalescer::default();
        let mut run: Vec<&[u8]> = Vec::new();
        for p in &out.packets {
            if !matches!(p.action, Action::ToTun) {
                continue;
            }
            let Some(packet) = slice(out, p.offset, p.len) else {
                tally.failed += 1;
                continue;
            };
            if !self.limits.to_tun_allowed(packet) {
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
            "write a packet into the TUN device that is not from the network to this node's subnet",
            warned,
        );
        if let Some(direction) = direction {
            self.metrics
                .udp_packets(direction, tally.packets, tally.bytes);
        }
        self.metrics.udp_drops_by("tun_write_failed", tally.failed);
    }

    /// Send a batch's groups; a GSO send the kernel refuses is sent again one datagram
    /// at a time, and GSO stays off from then on (e.g. a device without tx
    /// checksumming answers EIO on older kernels).
    fn send_groups(
        &self,
        out: &BatchOut,
        groups: &[Group],
        send: &mut SendBatch,
    ) -> anyhow::Result<()> {
        send.send_segmented(
            &self.socket,
            groups.iter().map(|g| {
                let segment = if g.count > 1 { g.segment } else { 0 };
                (&out.arena[g.start..g.end], g.dst, segment)
            }),
        )?;
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
            send.send(&self.socket, retry.into_iter())?;
            failed += send.refused().len() as u64;
        }
        let (count, bytes) = groups.iter().fold((0u64, 0u64), |(c, b), g| {
            (c + g.count, b + (g.end - g.start) as u64)
        });
        self.metrics
            .udp_packets(Direction::Out, count.saturating_sub(failed), bytes);
        self.metrics.udp_drops_by("send_failed", failed);
        Ok(())
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

    fn count_drops(&self, d: &Drops) {
        for (reason, n) in [
            ("unknown_peer", d.unknown_peer),
            ("spoofed_source", d.spoofed_source),
            ("no_route", d.no_route),
            ("ttl_expired", d.ttl_expired),
            ("malformed", d.malformed),
        ] {
            self.metrics.udp_drops_by(reason, u64::from(n));
        }
    }
}

/// Packets written to the TUN device and their bytes, and those that failed.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    failed: u64,
}

/// Datagrams for one destination sent with one `sendmmsg` entry: back to back in the
/// output arena, all `segment` bytes long but the last (UDP GSO cuts them apart).
struct Group {
    start: usize,
    end: usize,
    dst: SocketAddrV4,
    segment: u16,
    count: u64,
    closed: bool,
}

/// Most datagrams per GSO send (the kernel allows 64; their sum must also fit 64 KiB).
const GSO_SEGMENTS: u64 = 40;

/// Most bytes per GSO send: the UDP payload limit.
const GSO_BYTES: usize = 65_507;

/// Group the `to-peer` packets of a batch into sends (GSO sends if `gso`), leaving out
/// those `allowed` refuses; returns how many were refused.
fn group_datagrams(
    out: &BatchOut,
    groups: &mut Vec<Group>,
    gso: bool,
    allowed: impl Fn(&Endpoint) -> bool,
) -> u64 {
    groups.clear();
    let mut refused = 0;
    for p in &out.packets {
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
fn slice(out: &BatchOut, offset: u32, len: u32) -> Option<&[u8]> {
    let start = offset as usize;
    out.arena.get(start..start.checked_add(len as usize)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_of(sizes: &[(usize, [u8; 4])]) -> BatchOut {
        let mut arena = Vec::new();
        let mut packets = Vec::new();
        for (len, ip) in sizes {
            packets.push(twill_plugin_host::OutPacket {
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
            drops: Drops {
                unknown_peer: 0,
                spoofed_source: 0,
                no_route: 0,
                ttl_expired: 0,
                malformed: 0,
            },
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
        assert_eq!(group_datagrams(&out, &mut groups, true, |_| true), 0);
        assert_eq!(shapes(&groups), [(3, 1472), (1, 1472), (2, 1472), (1, 200)]);
        // Jumbo frames: no GSO send beyond the UDP payload limit.
        let out = out_of(&[(8973, a); 20]);
        group_datagrams(&out, &mut groups, true, |_| true);
        assert!(groups.iter().all(|g| (g.end - g.start) <= GSO_BYTES));
        assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 20);
        assert_eq!(groups[0].count, 7);
        // Without GSO every datagram is its own message; refused peers are left out.
        let out = out_of(&[(1472, a), (1472, a), (1472, b)]);
        let refused = group_datagrams(&out, &mut groups, false, |ep| {
            ep.ip == u32::from(Ipv4Addr::from(a))
        });
        assert_eq!(refused, 1);
        assert_eq!(shapes(&groups), [(1, 1472), (1, 1472)]);
    }

    #[test]
    fn the_host_confines_what_a_data_path_may_do() {
        let limits = Limits {
            plugin: "udp".into(),
            network: "10.244.0.0/16".parse().expect("net"),
            own: "10.244.1.0/24".parse().expect("own"),
            port: 8285,
        };
        let peers: HashSet<u32> = [u32::from(Ipv4Addr::new(192, 168, 0, 2))].into();
        let to = |ip: [u8; 4], port| Endpoint {
            ip: u32::from(Ipv4Addr::from(ip)),
            port,
        };
        assert!(limits.to_peer_allowed(&peers, &to([192, 168, 0, 2], 8285)));
        assert!(!limits.to_peer_allowed(&peers, &to([192, 168, 0, 2], 53)));
        assert!(!limits.to_peer_allowed(&peers, &to([8, 8, 8, 8], 8285)));
        let packet = |src: [u8; 4], dst: [u8; 4]| {
            let mut p = vec![0x45u8; 20];
            p[12..16].copy_from_slice(&src);
            p[16..20].copy_from_slice(&dst);
            p
        };
        assert!(limits.to_tun_allowed(&packet([10, 244, 2, 2], [10, 244, 1, 2])));
        assert!(!limits.to_tun_allowed(&packet([172, 16, 0, 1], [10, 244, 1, 2])));
        assert!(!limits.to_tun_allowed(&packet([10, 244, 2, 2], [10, 244, 3, 2])));
        assert!(!limits.to_tun_allowed(&[0x60; 40]));
    }
}
