//! A data-path instance of a backend that exports `twill:backend/datapath` (udp): its
//! own Store and memory, called synchronously by the one thread that owns it (a
//! daemon data-path thread), one call per batch of packets. Limits are the same as for
//! the control instance: the epoch deadline on every call, the memory limit, and a
//! trap poisons the instance.

use std::sync::Arc;

use twill_core::Subnet;
use twill_core::lease::LeaseEvent;

pub use crate::bindings::exports::twill::backend::datapath::{
    Action, BatchOut, Drops, Endpoint, OutPacket, Packet,
};
pub use crate::bindings::exports::twill::backend::datapath_heads::{Fate, Head, HeadsOut};
use crate::bindings::{self as wit, DatapathGuest, HeadsGuest};
use crate::confine::Confinement;
use crate::convert::{event_to_wit, node_to_wit, subnet_to_wit};
use crate::instance::{BackendError, CallError, Guarded};
use crate::state::PluginStats;
use crate::{Grant, Plugin, PluginHost};

/// One data-path instance. Not `Sync`: it belongs to one thread.
pub struct Datapath {
    plugin: String,
    /// `datapath`, and `datapath-heads` while the plugin takes heads.
    guest: Guarded<(DatapathGuest, Option<HeadsGuest>)>,
    confinement: Confinement,
    /// Answer descriptors cut off by [`cap_answer`] and not yet taken.
    excess: u64,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Instantiate `plugin`'s data path in a fresh Store and `attach` it to the node
    /// (its `Backend` config and own subnet). Calls are counted into `stats`.
    pub fn datapath(
        &self,
        plugin: &Plugin,
        mut grant: Grant,
        stats: Arc<PluginStats>,
        config: &str,
        own: Subnet,
    ) -> Result<Datapath, CallError> {
        let trap = |function, e: wasmtime::Error| CallError::Trap {
            plugin: plugin.name.clone(),
            function,
            message: format!("{e:#}"),
        };
        let Some((indices, heads)) = &plugin.datapath else {
            return Err(CallError::Backend {
                plugin: plugin.name.clone(),
                function: "attach",
                error: BackendError {
                    kind: crate::ErrorKind::Unsupported,
                    message: "the plugin does not export twill:backend/datapath".into(),
                },
            });
        };
        grant.own_subnet = Some(own);
        let node = node_to_wit(&grant);
        // The port the plugin bound (through datapath-host) in its `init`; none, and
        // no datagram may leave.
        let port = self
            .datapath_resources(&plugin.name)
            .and_then(|r| r.udp)
            .map_or(0, |(addr, _)| addr.port());
        let confinement = Confinement::new(grant.network, own, port);
        let mut store = self.store(&plugin.name, grant, stats);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| trap("instantiate", e))?;
        let guest = indices
            .load(&mut store, &instance)
            .map_err(|e| trap("instantiate", e))?;
        let heads = match heads {
            Some(h) => Some(
                h.load(&mut store, &instance)
                    .map_err(|e| trap("instantiate", e))?,
            ),
            None => None,
        };
        let mut datapath = Datapath {
            plugin: plugin.name.clone(),
            guest: Guarded::new(&plugin.name, store, (guest, heads), self.deadline_ticks()),
            confinement,
            excess: 0,
        };
        datapath.guest.call("attach", |g, s| {
            g.0.call_attach(s, config, &node, subnet_to_wit(own))
        })?;
        Ok(datapath)
    }
}

impl Datapath {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// What the host lets this instance's answers do; its peers are those
    /// [`Datapath::update`] was given.
    pub fn confinement(&self) -> &Confinement {
        &self.confinement
    }

    /// Peer lease changes, in order: to the plugin and to the host's confinement.
    pub fn update(&mut self, events: &[LeaseEvent]) -> Result<(), CallError> {
        if events.is_empty() {
            return Ok(());
        }
        self.confinement.apply(events);
        let events: Vec<wit::LeaseEvent> = events.iter().map(event_to_wit).collect();
        self.guest
            .call("update", |g, s| g.0.call_update(s, &events).map(Ok))
    }

    /// A batch read from the TUN device (its answer capped, see [`cap_answer`]).
    pub fn encap(&mut self, arena: &[u8], packets: &[Packet]) -> Result<BatchOut, CallError> {
        let mut out = self
            .guest
            .call("encap", |g, s| g.0.call_encap(s, arena, packets).map(Ok))?;
        self.excess += cap_answer(&mut out, packets.len());
        Ok(out)
    }

    /// A batch received on the UDP socket (its answer capped, see [`cap_answer`]).
    pub fn decap(&mut self, arena: &[u8], packets: &[Packet]) -> Result<BatchOut, CallError> {
        let mut out = self
            .guest
            .call("decap", |g, s| g.0.call_decap(s, arena, packets).map(Ok))?;
        self.excess += cap_answer(&mut out, packets.len());
        Ok(out)
    }

    /// Whether the plugin takes packet heads (`datapath-heads`): it exports them and has
    /// not answered `none`.
    pub fn takes_heads(&self) -> bool {
        self.guest.guest().1.is_some()
    }

    /// The heads of a batch read from the TUN device; `None` when the plugin wants whole
    /// packets (then [`Datapath::encap`], from now on). Its answer is capped: one fate
    /// per head, extra packets as [`cap_answer`] allows.
    pub fn encap_heads(
        &mut self,
        arena: &[u8],
        heads: &[Head],
    ) -> Result<Option<HeadsOut>, CallError> {
        self.heads_call("encap-heads", arena, heads, true)
    }

    /// The heads of a batch received on the UDP socket; as [`Datapath::encap_heads`].
    pub fn decap_heads(
        &mut self,
        arena: &[u8],
        heads: &[Head],
    ) -> Result<Option<HeadsOut>, CallError> {
        self.heads_call("decap-heads", arena, heads, false)
    }

    fn heads_call(
        &mut self,
        function: &'static str,
        arena: &[u8],
        heads: &[Head],
        encap: bool,
    ) -> Result<Option<HeadsOut>, CallError> {
        if !self.takes_heads() {
            return Ok(None);
        }
        let answer = self.guest.call(function, |g, s| {
            let Some(h) = &g.1 else { return Ok(Ok(None)) };
            let answer = if encap {
                h.call_encap_heads(s, arena, heads)
            } else {
                h.call_decap_heads(s, arena, heads)
            };
            answer.map(Ok)
        })?;
        let Some(mut out) = answer else {
            self.guest.guest_mut().1 = None;
            return Ok(None);
        };
        let fates = out.fates.len().saturating_sub(heads.len());
        out.fates.truncate(heads.len());
        let extra = out
            .extra_packets
            .len()
            .saturating_sub(heads.len() + ANSWER_SLACK);
        out.extra_packets.truncate(heads.len() + ANSWER_SLACK);
        self.excess += u64::try_from(fates + extra).unwrap_or(u64::MAX);
        Ok(Some(out))
    }

    /// How many answer descriptors were cut off since the last call (to be counted as
    /// denied by the caller).
    pub fn take_excess(&mut self) -> u64 {
        std::mem::take(&mut self.excess)
    }
}

/// A batch's answer may hold at most two packets per packet given (an ICMP error and
/// the packet, or one cut in two) plus [`ANSWER_SLACK`]: descriptors may all alias one
/// slice, and each costs the host memory when it is grouped and sent (security review
/// H-2). Returns how many were cut off.
pub fn cap_answer(out: &mut BatchOut, given: usize) -> u64 {
    let cap = 2 * given + ANSWER_SLACK;
    let excess = out.packets.len().saturating_sub(cap);
    out.packets.truncate(cap);
    u64::try_from(excess).unwrap_or(u64::MAX)
}

/// No drops (every counter 0).
pub fn no_drops() -> Drops {
    Drops {
        unknown_peer: 0,
        spoofed_source: 0,
        no_route: 0,
        ttl_expired: 0,
        malformed: 0,
    }
}

/// Extra answer descriptors a batch may hold beyond two per packet.
pub const ANSWER_SLACK: usize = 64;

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn an_answer_beyond_two_per_packet_plus_slack_is_cut() {
        let descriptor = OutPacket {
            offset: 0,
            len: 20,
            action: Action::ToTun,
        };
        let mut out = BatchOut {
            arena: vec![0; 20],
            packets: vec![descriptor; 10_000],
            drops: no_drops(),
        };
        assert_eq!(cap_answer(&mut out, 8), 10_000 - (16 + ANSWER_SLACK) as u64);
        assert_eq!(out.packets.len(), 16 + ANSWER_SLACK);
        assert_eq!(
            cap_answer(&mut out, 100),
            0,
            "within the cap nothing is cut"
        );
    }
}
