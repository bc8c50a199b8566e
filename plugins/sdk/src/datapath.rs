//! Data-path backends (feature `datapath`): backends whose packets pass through the
//! plugin, as flannel's `udp` does. Such a component targets the world
//! `overlay-datapath-backend`: the control plane of an ordinary backend ([`Backend`](crate::Backend))
//! plus a [`Datapath`] the host calls once per batch of packets.
//!
//! The host owns the TUN device and the UDP socket. The control instance asks for them
//! in its `init` ([`host::open_tun`], [`host::bind_udp`]); the host then runs further
//! instances of the same component, one per data-path thread, each of which is
//! `attach`ed to the node and gets every lease change ([`Datapath::update`]) before
//! its batches. A batch is one byte arena with `{offset, len, peer}` descriptors; the
//! answer is an output arena (the input, changed in place, plus appended packets such
//! as ICMP replies), one action per packet to keep, and drop counts by reason. A
//! backend that decides from a packet's first bytes alone (its headers) also
//! implements [`Datapath::encap_heads`] and [`Datapath::decap_heads`]: the host then
//! hands only each packet's first 128 bytes and its length and writes the changed
//! heads back itself, which spares copying every payload into the plugin and back
//! (udp does; the default answers `None`, and the host calls `encap`/`decap`). Whatever
//! the answer says, the host sends only to a current peer on the bound port and writes
//! into the TUN device only packets from the network to the node's own subnet.
//!
//! ```text
//! [dependencies]
//! twill-plugin-sdk = { version = "0.1", features = ["datapath"] }
//!
//! impl Backend for Control { … }       // init asks for the TUN device and socket
//! impl Datapath for Path { … }         // attach, update, encap, decap
//! twill_plugin_sdk::export_datapath_backend!(Control, Path);
//! ```
//!
//! `plugins/udp` in twill's repository is a complete one.

use std::cell::RefCell;

pub use crate::bindings::exports::twill::backend::datapath::{
    Action, BatchOut, Drops, Endpoint, OutPacket, Packet,
};
pub use crate::bindings::exports::twill::backend::datapath_heads::{Fate, Head, HeadsOut};
use crate::{Error, LeaseEvent, Node, Subnet};

/// The host interface of a data-path backend: its TUN device and UDP socket.
pub mod host {
    pub use crate::bindings::twill::backend::datapath_host::*;
}

/// A data-path instance. Implement it and call [`crate::export_datapath_backend!`]
/// once, with the control plane's [`Backend`](crate::Backend).
pub trait Datapath: 'static {
    /// Set this instance up for the node: the `Backend` config object (JSON), the node,
    /// and its own subnet.
    fn attach(config: &str, node: &Node, own: Subnet) -> Result<Self, Error>
    where
        Self: Sized;

    /// Peer lease changes, in order (the events `on-leases` gets).
    fn update(&mut self, events: Vec<LeaseEvent>);

    /// Packets read from the TUN device, to be sent to peers.
    fn encap(&mut self, arena: Vec<u8>, packets: Vec<Packet>) -> BatchOut;

    /// Datagrams received from peers (`peer` is each one's sender), to be written into
    /// the TUN device.
    fn decap(&mut self, arena: Vec<u8>, packets: Vec<Packet>) -> BatchOut;

    /// Like [`Datapath::encap`], from each packet's first bytes alone ([`Head`]: at most
    /// 128, the IPv4 header and what follows; `total` is the whole length): one
    /// [`Fate`] per head, heads changed in place (the host writes them back over their
    /// packets), packets of your own (ICMP errors) in `extra`. The payload never
    /// crosses into the plugin, which makes the data path cheaper. The default,
    /// `None`, says the backend needs whole packets: the host then calls `encap`.
    fn encap_heads(&mut self, _arena: Vec<u8>, _heads: Vec<Head>) -> Option<HeadsOut> {
        None
    }

    /// Like [`Datapath::decap`], from heads; see [`Datapath::encap_heads`].
    fn decap_heads(&mut self, _arena: Vec<u8>, _heads: Vec<Head>) -> Option<HeadsOut> {
        None
    }
}

thread_local! {
    static PATH: RefCell<Option<Box<dyn Datapath>>> = RefCell::new(None);
}

/// No drops.
pub fn no_drops() -> Drops {
    Drops {
        unknown_peer: 0,
        spoofed_source: 0,
        no_route: 0,
        ttl_expired: 0,
        malformed: 0,
    }
}

/// Glue used by [`crate::export_datapath_backend!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn attach<D: Datapath>(config: String, node: Node, own: Subnet) -> Result<(), Error> {
        crate::__private::panics_to_the_log();
        let path = D::attach(&config, &node, own)?;
        PATH.with(|cell| *cell.borrow_mut() = Some(Box::new(path)));
        Ok(())
    }

    pub fn update(events: Vec<LeaseEvent>) {
        PATH.with(|cell| {
            if let Some(p) = cell.borrow_mut().as_mut() {
                p.update(events);
            }
        });
    }

    /// Before `attach` every packet is dropped, as `no_route` out and `unknown_peer` in
    /// (the host always attaches first).
    pub fn encap(arena: Vec<u8>, packets: Vec<Packet>) -> BatchOut {
        PATH.with(|cell| match cell.borrow_mut().as_mut() {
            Some(p) => p.encap(arena, packets),
            None => unattached(arena, &packets, |d, n| d.no_route = n),
        })
    }

    pub fn decap(arena: Vec<u8>, packets: Vec<Packet>) -> BatchOut {
        PATH.with(|cell| match cell.borrow_mut().as_mut() {
            Some(p) => p.decap(arena, packets),
            None => unattached(arena, &packets, |d, n| d.unknown_peer = n),
        })
    }

    /// Before `attach`: every head dropped, as in [`encap`].
    pub fn encap_heads(arena: Vec<u8>, heads: Vec<Head>) -> Option<HeadsOut> {
        PATH.with(|cell| match cell.borrow_mut().as_mut() {
            Some(p) => p.encap_heads(arena, heads),
            None => Some(unattached_heads(arena, &heads, |d, n| d.no_route = n)),
        })
    }

    pub fn decap_heads(arena: Vec<u8>, heads: Vec<Head>) -> Option<HeadsOut> {
        PATH.with(|cell| match cell.borrow_mut().as_mut() {
            Some(p) => p.decap_heads(arena, heads),
            None => Some(unattached_heads(arena, &heads, |d, n| d.unknown_peer = n)),
        })
    }

    fn unattached_heads(
        arena: Vec<u8>,
        heads: &[Head],
        count: impl Fn(&mut Drops, u32),
    ) -> HeadsOut {
        let mut drops = no_drops();
        count(&mut drops, u32::try_from(heads.len()).unwrap_or(u32::MAX));
        HeadsOut {
            arena,
            fates: vec![Fate::Dropped; heads.len()],
            extra: Vec::new(),
            extra_packets: Vec::new(),
            drops,
        }
    }

    fn unattached(arena: Vec<u8>, packets: &[Packet], count: impl Fn(&mut Drops, u32)) -> BatchOut {
        let mut drops = no_drops();
        count(&mut drops, u32::try_from(packets.len()).unwrap_or(u32::MAX));
        BatchOut {
            arena,
            packets: Vec::new(),
            drops,
        }
    }
}

/// Export `$control` (a [`Backend`](crate::Backend)) as this component's `twill:backend/backend` and
/// `$path` (a [`Datapath`]) as its `twill:backend/datapath` and
/// `twill:backend/datapath-heads`.
///
/// The exports exist only when building for WebAssembly; a native build of the same
/// crate (for its unit tests) compiles both without them.
#[macro_export]
macro_rules! export_datapath_backend {
    ($control:ty, $path:ty) => {
        $crate::__backend_guest!(__TwillDatapathBackendExport, $control);
        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::twill::backend::datapath::Guest
            for __TwillDatapathBackendExport
        {
            fn attach(
                config: ::std::string::String,
                node: $crate::Node,
                own: $crate::Subnet,
            ) -> ::std::result::Result<(), $crate::Error> {
                $crate::datapath::__private::attach::<$path>(config, node, own)
            }
            fn update(events: ::std::vec::Vec<$crate::LeaseEvent>) {
                $crate::datapath::__private::update(events)
            }
            fn encap(
                arena: ::std::vec::Vec<u8>,
                packets: ::std::vec::Vec<$crate::datapath::Packet>,
            ) -> $crate::datapath::BatchOut {
                $crate::datapath::__private::encap(arena, packets)
            }
            fn decap(
                arena: ::std::vec::Vec<u8>,
                packets: ::std::vec::Vec<$crate::datapath::Packet>,
            ) -> $crate::datapath::BatchOut {
                $crate::datapath::__private::decap(arena, packets)
            }
        }
        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::twill::backend::datapath_heads::Guest
            for __TwillDatapathBackendExport
        {
            fn encap_heads(
                arena: ::std::vec::Vec<u8>,
                heads: ::std::vec::Vec<$crate::datapath::Head>,
            ) -> ::std::option::Option<$crate::datapath::HeadsOut> {
                $crate::datapath::__private::encap_heads(arena, heads)
            }
            fn decap_heads(
                arena: ::std::vec::Vec<u8>,
                heads: ::std::vec::Vec<$crate::datapath::Head>,
            ) -> ::std::option::Option<$crate::datapath::HeadsOut> {
                $crate::datapath::__private::decap_heads(arena, heads)
            }
        }
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_world!(
            __TwillDatapathBackendExport with_types_in $crate::bindings
        );
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$path as $crate::datapath::Datapath>::attach;
        };
    };
}
