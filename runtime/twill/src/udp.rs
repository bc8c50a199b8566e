//! The data path of a backend that exports `twill:backend/datapath` (udp): two OS
//! threads, each with its own instance of the plugin.
//!
//! - out: read up to [`BATCH`] packets from the TUN device (one `read` each: a TUN
//!   device hands out one packet per call), packed back to back in one arena; one
//!   `encap` call; the datagrams leave with as few `sendmmsg` calls as the kernel
//!   allows; ICMP replies go back into the TUN device.
//! - in: `recvmmsg` up to [`BATCH`] datagrams into fixed slots of one arena; one
//!   `decap` call; each accepted packet is written to the TUN device.
//!
//! Lease changes reach both instances through a channel, drained between batches.
//! Buffers are allocated once per thread. A trap in either instance stops the data
//! path and is reported to the daemon, which restarts the backend and the data path
//! with backoff (as for a control-plane trap).

use std::io;
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
use twill_plugin_host::{
    Action, BatchOut, Datapath, DatapathResources, Drops, Grant, Packet, Plugin, PluginHost,
    PluginStats,
};

/// Packets per batch (and per plugin call).
pub const BATCH: usize = 64;
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
    /// Start both threads on the TUN device and socket the plugin had the host open.
    pub fn start(setup: Setup<'_>, resources: DatapathResources) -> anyhow::Result<DataPath> {
        let plugin = &setup.plugin.name;
        let tun = resources
            .tun
            .and_then(|t| t.tun)
            .ok_or_else(|| anyhow!("backend {plugin} exports a data path but opened no TUN device (datapath-host.open-tun)"))?;
        let socket = resources
            .udp
            .and_then(|(_, s)| s)
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
        let (out_dp, in_dp) = (instance()?, instance()?);
        let mtu = setup.grant.external.mtu as usize;
        // Room for a full-size packet of this interface, rounded up to a cache line.
        let slot = mtu.max(1500).div_ceil(64) * 64;
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let (out_tx, out_rx) = mpsc::channel();
        let (in_tx, in_rx) = mpsc::channel();
        let common = Common {
            tun,
            socket,
            metrics: setup.metrics.clone(),
            stop: stop.clone(),
            failed: failed.clone(),
        };
        let out = {
            let common = common.clone();
            thread::Builder::new()
                .name("udp-out".into())
                .spawn(move || common.guard("out", || common.run_out(out_dp, out_rx, slot)))?
        };
        let inbound = {
            let common = common.clone();
            thread::Builder::new()
                .name("udp-in".into())
                .spawn(move || common.guard("in", || common.run_in(in_dp, in_rx, slot)))?
        };
        tracing::info!(plugin = %plugin, batch = BATCH, slot, "udp data path running");
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
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
}

impl Common {
    /// Run a thread body; an error is logged and recorded as the data path's failure.
    fn guard(&self, direction: &str, body: impl FnOnce() -> anyhow::Result<()>) {
        if let Err(e) = body() {
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
    ) -> anyhow::Result<()> {
        while let Ok(events) = rx.try_recv() {
            dp.update(&events)?;
        }
        Ok(())
    }

    /// TUN → plugin (`encap`) → UDP.
    fn run_out(
        &self,
        mut dp: Datapath,
        rx: mpsc::Receiver<Vec<LeaseEvent>>,
        slot: usize,
    ) -> anyhow::Result<()> {
        let mut arena = vec![0u8; BATCH * slot];
        let mut packets: Vec<Packet> = Vec::with_capacity(BATCH);
        let mut send = SendBatch::new();
        let fd = self.tun.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            self.drain_updates(&mut dp, &rx)?;
            packets.clear();
            let mut used = 0;
            while packets.len() < BATCH {
                match self.tun.read(&mut arena[used..used + slot]) {
                    Ok(0) => break,
                    Ok(n) => {
                        packets.push(Packet {
                            offset: used as u32,
                            len: n as u32,
                            peer: 0,
                        });
                        used += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(anyhow!("read from {}: {e}", self.tun.name())),
                }
            }
            if packets.is_empty() {
                wait_readable(&[fd], IDLE_WAIT)?;
                continue;
            }
            let out = dp.encap(&arena[..used], &packets)?;
            self.count_drops(&out.drops);
            let (mut count, mut bytes) = (0u64, 0u64);
            let datagrams = out.packets.iter().filter_map(|p| match p.action {
                Action::ToPeer(ep) => {
                    let payload = slice(&out, p.offset, p.len)?;
                    count += 1;
                    bytes += payload.len() as u64;
                    Some((payload, SocketAddrV4::new(Ipv4Addr::from(ep.ip), ep.port)))
                }
                Action::ToTun => None,
            });
            let sent = send.send(&self.socket, datagrams)? as u64;
            self.metrics.udp_packets(Direction::Out, sent, bytes);
            self.metrics.udp_drops_by("send_failed", count - sent);
            self.write_to_tun(&out, None);
        }
        Ok(())
    }

    /// UDP → plugin (`decap`) → TUN.
    fn run_in(
        &self,
        mut dp: Datapath,
        rx: mpsc::Receiver<Vec<LeaseEvent>>,
        slot: usize,
    ) -> anyhow::Result<()> {
        let mut batch = RecvBatch::new(BATCH, slot);
        let mut packets: Vec<Packet> = Vec::with_capacity(BATCH);
        let fd = self.socket.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            self.drain_updates(&mut dp, &rx)?;
            let n = batch.recv(&self.socket)?;
            if n == 0 {
                wait_readable(&[fd], IDLE_WAIT)?;
                continue;
            }
            packets.clear();
            let mut oversize = 0;
            for i in 0..n {
                if batch.truncated(i) {
                    oversize += 1;
                    continue;
                }
                packets.push(Packet {
                    offset: (i * slot) as u32,
                    len: batch.datagram_len(i) as u32,
                    peer: u32::from(*batch.from(i).ip()),
                });
            }
            self.metrics.udp_drops_by("oversize", oversize);
            let end = n * slot;
            let out = dp.decap(&batch.arena()[..end], &packets)?;
            self.count_drops(&out.drops);
            self.write_to_tun(&out, Some(Direction::In));
        }
        Ok(())
    }

    /// Write every `to-tun` packet of a batch; count them as `direction` if given.
    fn write_to_tun(&self, out: &BatchOut, direction: Option<Direction>) {
        let (mut count, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        for p in &out.packets {
            if !matches!(p.action, Action::ToTun) {
                continue;
            }
            let Some(packet) = slice(out, p.offset, p.len) else {
                failed += 1;
                continue;
            };
            match self.tun.write(packet) {
                Ok(_) => {
                    count += 1;
                    bytes += packet.len() as u64;
                }
                Err(e) => {
                    tracing::debug!("write to {}: {e}", self.tun.name());
                    failed += 1;
                }
            }
        }
        if let Some(direction) = direction {
            self.metrics.udp_packets(direction, count, bytes);
        }
        self.metrics.udp_drops_by("tun_write_failed", failed);
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

/// The bytes of an output descriptor, if it lies inside the output arena (a plugin
/// cannot make the host read outside it).
fn slice(out: &BatchOut, offset: u32, len: u32) -> Option<&[u8]> {
    let start = offset as usize;
    out.arena.get(start..start.checked_add(len as usize)?)
}
