//! Probes of the data path to every peer, through the overlay: an ICMP echo from our
//! subnet's address (`<subnet>.0`) to each peer's, so it takes the route, device and
//! encapsulation a pod's packet takes (not the underlay), and the peer's kernel
//! answers it (no twill needed there: a flannel peer answers too).
//!
//! vxlan, directrouting and udp put the subnet's address on their device. A backend
//! that does not (host-gw) gets it here as a `/32` on `lo`, so that peers can probe
//! us and our probes leave from an address inside the network; it is removed from
//! `lo` once a device of the backend holds it (a switch to vxlan) or our subnet moves.
//!
//! Load: the peers are probed in rounds, each in a new random order, one probe every
//! `interval / peers` with ±50 % jitter, but never more than `rate` probes a second:
//! a round takes `max(interval, peers / rate)`. One probe is 84 bytes each way (plus
//! the overlay's header). Results go to the API state (`/v1/peers` `health`,
//! `/v1/status`), the metrics, and one log line when a peer's reachability changes.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use twill_api::{ApiState, Metrics, ProbeResult};
use twill_core::Subnet;
use twill_net::{AddrInfo, Kernel};

/// How long a probe may go unanswered before it counts as lost.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often lost probes are looked for.
const SWEEP: Duration = Duration::from_millis(250);
/// The echo's payload: says who sent it to anyone capturing the traffic.
const PAYLOAD: &[u8; 16] = b"twill peer probe";

/// What `--peer-probe-interval` and `--peer-probe-rate` say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeSettings {
    /// How often each peer is probed (at most); zero turns the probes off.
    pub(crate) interval: Duration,
    /// At most this many probes a second, whatever the number of peers.
    pub(crate) rate: u32,
}

/// A probe on its way.
struct Outstanding {
    subnet: Subnet,
    target: Ipv4Addr,
    sent: Instant,
}

/// The raw ICMP socket, bound to our subnet's address.
struct Bound {
    subnet: Subnet,
    /// A raw ICMP socket in tokio's `UdpSocket` clothes: tokio registers any datagram
    /// socket's descriptor, and `recv`/`send_to` are the same system calls on a raw
    /// socket (the port is ignored; a read starts with the IPv4 header).
    socket: Arc<tokio::net::UdpSocket>,
}

/// Probe every peer until the task is aborted.
pub(crate) async fn run(
    api: ApiState,
    metrics: Arc<Metrics>,
    kernel: Arc<dyn Kernel>,
    network: Subnet,
    settings: ProbeSettings,
) {
    let mut prober = Prober {
        api,
        metrics,
        kernel,
        network,
        settings,
        bound: None,
        queue: VecDeque::new(),
        spacing: settings.interval,
        outstanding: HashMap::new(),
        // The echo identifier tells our answers from other pings to the same address.
        ident: u16::try_from(std::process::id() & 0xffff).unwrap_or_default(),
        seq: 0,
        last_error: None,
    };
    let mut next_send = tokio::time::Instant::now();
    let mut sweep = tokio::time::interval(SWEEP);
    let mut buf = vec![0u8; 1500];
    loop {
        let socket = prober.bound.as_ref().map(|b| b.socket.clone());
        let received = async {
            match &socket {
                Some(socket) => socket.recv(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = received => {
                if let Ok(n) = received
                    && let Some((from, ident, seq)) = parse_echo_reply(&buf[..n])
                {
                    prober.answer(from, ident, seq);
                }
            }
            () = tokio::time::sleep_until(next_send) => {
                let wait = prober.send_next().await;
                next_send = tokio::time::Instant::now() + wait;
            }
            _ = sweep.tick() => prober.sweep(),
        }
    }
}

struct Prober {
    api: ApiState,
    metrics: Arc<Metrics>,
    kernel: Arc<dyn Kernel>,
    network: Subnet,
    settings: ProbeSettings,
    bound: Option<Bound>,
    /// This round's peers still to probe.
    queue: VecDeque<Subnet>,
    /// The time between two probes this round.
    spacing: Duration,
    outstanding: HashMap<u16, Outstanding>,
    ident: u16,
    seq: u16,
    /// The last setup error, logged once until it changes.
    last_error: Option<String>,
}

impl Prober {
    /// Probe the next peer of the round (starting a new round when it is done);
    /// returns how long to wait before the next one.
    async fn send_next(&mut self) -> Duration {
        if self.queue.is_empty() && !self.new_round().await {
            return self.settings.interval;
        }
        let jitter = rand::random_range(0.5..1.5);
        let wait = self.spacing.mul_f64(jitter);
        let Some(subnet) = self.queue.pop_front() else {
            return wait;
        };
        let Some(bound) = &self.bound else {
            return wait;
        };
        let target = subnet.addr();
        self.seq = self.seq.wrapping_add(1);
        let packet = echo_request(self.ident, self.seq);
        match bound
            .socket
            .try_send_to(&packet, SocketAddrV4::new(target, 0).into())
        {
            Ok(_) => {
                self.outstanding.insert(
                    self.seq,
                    Outstanding {
                        subnet,
                        target,
                        sent: Instant::now(),
                    },
                );
            }
            Err(e) => {
                // No route, the address gone for a moment (a device re-created): the
                // probe is lost, and the socket bound again next round (a full send
                // buffer only loses the probe).
                tracing::debug!(%subnet, "peer probe not sent: {e}");
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    self.bound = None;
                }
                self.result(subnet, ProbeResult::Lost);
            }
        }
        wait
    }

    /// Fill the queue with every peer, in a new random order, and make sure the
    /// socket is bound to our subnet's address. False when there is nothing to probe
    /// or no socket.
    async fn new_round(&mut self) -> bool {
        let (own, mut peers) = self.api.probe_targets();
        let Some(own) = own else { return false };
        // Our address is checked once a round (a device re-created, the subnet moved);
        // the socket is bound again when it changed, or on the round after a failure.
        let placed = self.place_address(own).await;
        let stale = self.bound.as_ref().map(|b| b.subnet) != Some(own);
        if stale || !matches!(placed, Ok(false)) {
            self.bound = match placed.and_then(|_| self.bind(own)) {
                Ok(bound) => {
                    if self.last_error.take().is_some() {
                        tracing::info!(address = %own.addr(), "peer probes running again");
                    }
                    Some(bound)
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if self.last_error.as_ref() != Some(&message) {
                        tracing::warn!("peer probes cannot run: {message}; trying again");
                        self.last_error = Some(message);
                    }
                    None
                }
            };
        }
        if self.bound.is_none() || peers.is_empty() {
            return false;
        }
        peers.shuffle(&mut rand::rng());
        let per_peer = self.settings.interval / u32::try_from(peers.len()).unwrap_or(u32::MAX);
        let floor = Duration::from_secs(1) / self.settings.rate.max(1);
        self.spacing = per_peer.max(floor);
        self.queue = peers.into();
        true
    }

    /// Make sure our subnet's address is local ([`ensure_probe_address`]); whether
    /// anything changed.
    async fn place_address(&self, own: Subnet) -> anyhow::Result<bool> {
        use anyhow::Context;
        let (kernel, network) = (self.kernel.clone(), self.network);
        tokio::task::spawn_blocking(move || ensure_probe_address(kernel.as_ref(), network, own))
            .await?
            .with_context(|| format!("place {} on lo", own.addr()))
    }

    fn bind(&self, own: Subnet) -> anyhow::Result<Bound> {
        use anyhow::Context;
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("open a raw ICMP socket (needs CAP_NET_RAW)")?;
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(own.addr(), 0)))
            .with_context(|| format!("bind the probe socket to {}", own.addr()))?;
        socket.set_nonblocking(true)?;
        tracing::info!(
            address = %own.addr(),
            interval_s = self.settings.interval.as_secs_f64(),
            rate = self.settings.rate,
            "probing peers through the overlay"
        );
        Ok(Bound {
            subnet: own,
            socket: Arc::new(tokio::net::UdpSocket::from_std(socket.into())?),
        })
    }

    /// An echo reply arrived from `from`.
    fn answer(&mut self, from: Ipv4Addr, ident: u16, seq: u16) {
        if ident != self.ident {
            return;
        }
        let Some(probe) = self.outstanding.get(&seq) else {
            return;
        };
        if probe.target != from {
            return;
        }
        let Some(probe) = self.outstanding.remove(&seq) else {
            return;
        };
        self.result(probe.subnet, ProbeResult::Answered(probe.sent.elapsed()));
    }

    /// Give up on the probes older than [`PROBE_TIMEOUT`].
    fn sweep(&mut self) {
        let now = Instant::now();
        let lost: Vec<u16> = self
            .outstanding
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) > PROBE_TIMEOUT)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in lost {
            if let Some(probe) = self.outstanding.remove(&seq) {
                self.result(probe.subnet, ProbeResult::Lost);
            }
        }
    }

    fn result(&self, subnet: Subnet, result: ProbeResult) {
        self.metrics
            .peer_probe(matches!(result, ProbeResult::Answered(_)));
        match self.api.peer_probed(subnet, result) {
            Some(true) => tracing::info!(%subnet, "peer reachable through the overlay"),
            Some(false) => tracing::warn!(
                %subnet,
                lost = twill_api::model::PROBE_LOSSES_UNREACHABLE,
                "peer unreachable through the overlay: probes to {} unanswered \
                 (see `twill doctor`)",
                subnet.addr()
            ),
            None => {}
        }
    }
}

/// Make sure our subnet's address is local: a device of the backend holds it, or else
/// it is placed on `lo` as a /32. Addresses inside the network that we placed on `lo`
/// before (another subnet, or one a device now holds) are removed. Returns whether
/// anything changed.
pub(crate) fn ensure_probe_address(
    kernel: &dyn Kernel,
    network: Subnet,
    own: Subnet,
) -> Result<bool, twill_net::NetError> {
    let lo = kernel.link_by_name("lo")?.map(|l| l.index).ok_or_else(|| {
        twill_net::NetError::Request {
            op: "find",
            object: "lo".into(),
            message: "no such device".into(),
            errno: None,
        }
    })?;
    let addrs = kernel.addrs()?;
    let held_elsewhere = addrs.iter().any(|a| a.addr == own.addr() && a.index != lo);
    let mut changed = false;
    for a in addrs
        .iter()
        .filter(|a| a.index == lo && a.prefix == 32 && network.contains(a.addr))
    {
        if a.addr != own.addr() || held_elsewhere {
            kernel.del_addr(*a)?;
            changed = true;
        }
    }
    let on_lo = addrs.iter().any(|a| a.index == lo && a.addr == own.addr());
    if !held_elsewhere && !on_lo {
        kernel.add_addr(AddrInfo {
            index: lo,
            addr: own.addr(),
            prefix: 32,
        })?;
        changed = true;
    }
    Ok(changed)
}

/// An ICMP echo request with our identifier and sequence number.
fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + PAYLOAD.len());
    packet.extend_from_slice(&[8, 0, 0, 0]);
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The sender, identifier and sequence number of an ICMP echo reply (IPv4 header
/// first, as a raw socket reads it); `None` for anything else.
fn parse_echo_reply(packet: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    let icmp = packet.get(header..)?;
    let from = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    if icmp.len() < 8 || icmp[0] != 0 || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    Some((from, ident, seq))
}

/// The Internet checksum (RFC 1071, the data path's summing); 0 over data that carries
/// a correct one.
fn checksum(data: &[u8]) -> u16 {
    !twill_datapath::offload::fold(twill_datapath::offload::sum16(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_carries_a_checksum_that_verifies() {
        let packet = echo_request(0x1234, 7);
        assert_eq!(packet[0], 8);
        assert_eq!(checksum(&packet), 0);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }

    fn reply(from: [u8; 4], icmp_type: u8, ident: u16, seq: u16) -> Vec<u8> {
        let mut icmp = echo_request(ident, seq);
        icmp[0] = icmp_type;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        packet.extend_from_slice(&from);
        packet.extend_from_slice(&[10, 244, 1, 0]);
        packet.extend_from_slice(&icmp);
        packet
    }

    #[test]
    fn only_a_whole_echo_reply_is_an_answer() {
        let good = reply([10, 244, 2, 0], 0, 9, 3);
        assert_eq!(
            parse_echo_reply(&good),
            Some((Ipv4Addr::new(10, 244, 2, 0), 9, 3))
        );
        // An echo request (another node probing us) is not an answer.
        assert_eq!(parse_echo_reply(&reply([10, 244, 2, 0], 8, 9, 3)), None);
        // Nor a reply with a bad checksum, nor a cut one.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse_echo_reply(&bad), None);
        assert_eq!(parse_echo_reply(&good[..24]), None);
        assert_eq!(parse_echo_reply(&[]), None);
    }

    #[test]
    fn the_probe_address_goes_on_lo_only_while_no_device_holds_it() {
        let kernel = twill_net::fake::FakeKernel::new();
        let network: Subnet = "10.244.0.0/16".parse().expect("subnet");
        let own: Subnet = "10.244.1.0/24".parse().expect("subnet");
        let lo = kernel.link_by_name("lo").expect("links").expect("lo").index;
        assert!(ensure_probe_address(&kernel, network, own).expect("ensure"));
        let on_lo = |k: &twill_net::fake::FakeKernel| {
            k.addrs()
                .into_iter()
                .filter(|a| a.index == lo && network.contains(a.addr))
                .map(|a| a.addr)
                .collect::<Vec<_>>()
        };
        assert_eq!(on_lo(&kernel), vec![own.addr()]);
        // Unchanged the second time.
        assert!(!ensure_probe_address(&kernel, network, own).expect("ensure"));
        // The subnet moved: the old address goes, the new one comes.
        let moved: Subnet = "10.244.9.0/24".parse().expect("subnet");
        assert!(ensure_probe_address(&kernel, network, moved).expect("ensure"));
        assert_eq!(on_lo(&kernel), vec![moved.addr()]);
        // A device of the backend takes the address (a switch to vxlan): lo lets go.
        kernel.add_link("flannel.1", 1450, moved.addr(), 32);
        assert!(ensure_probe_address(&kernel, network, moved).expect("ensure"));
        assert_eq!(on_lo(&kernel), Vec::<Ipv4Addr>::new());
        assert!(!ensure_probe_address(&kernel, network, moved).expect("ensure"));
    }
}
