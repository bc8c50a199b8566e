//! What the data path counts, through a trait the daemon implements on its metrics:
//! this crate does not know the API crate, and the drop reasons are a fixed set, so a
//! metric label can only take one of them.

use twill_plugin_host::Drops;

/// Which way packets went, seen from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the underlay (written into the TUN device).
    In,
    /// Sent to the underlay.
    Out,
}

/// Why a packet was dropped: the plugin's reasons, then the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The plugin: a datagram from an address that is no peer.
    UnknownPeer,
    /// The plugin: an inner source outside the sender's subnet.
    SpoofedSource,
    /// The plugin: no peer leases the destination.
    NoRoute,
    /// The plugin: TTL ran out.
    TtlExpired,
    /// The plugin or the host: not a packet it can read (or a super-packet that cannot
    /// be cut).
    Malformed,
    /// The host: a datagram larger than a receive slot.
    Oversize,
    /// The host: the kernel refused the send.
    SendFailed,
    /// The host: the kernel refused the write into the TUN device.
    TunWriteFailed,
    /// The host: the plugin asked for something its confinement forbids.
    Denied,
}

impl DropReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoRoute => "no_route",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::Malformed => "malformed",
            DropReason::Oversize => "oversize",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::Denied => "denied",
        }
    }
}

/// Where the data path reports; called from its threads, once per batch.
pub trait Counters: Send + Sync {
    /// `packets` packets of `bytes` bytes went `direction`.
    fn packets(&self, direction: Direction, packets: u64, bytes: u64);
    /// `n` packets were dropped for `reason` (`n` may be 0).
    fn dropped(&self, reason: DropReason, n: u64);
}

/// Count the drops a plugin's answer reports, by its reasons.
pub(crate) fn count_plugin_drops(counters: &dyn Counters, d: &Drops) {
    for (reason, n) in [
        (DropReason::UnknownPeer, d.unknown_peer),
        (DropReason::SpoofedSource, d.spoofed_source),
        (DropReason::NoRoute, d.no_route),
        (DropReason::TtlExpired, d.ttl_expired),
        (DropReason::Malformed, d.malformed),
    ] {
        counters.dropped(reason, u64::from(n));
    }
}
