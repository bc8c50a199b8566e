//! The single `bindgen!` for `twill:backend@0.1.0`. Every import is trappable: the outer
//! `wasmtime::Result` is a trap (a host bug), the inner `Result<_, Error>` goes to the
//! guest.

wasmtime::component::bindgen!({
    world: "overlay-backend",
    path: "../../wit",
    imports: { default: trappable },
});

pub use exports::twill::backend::backend::{Info, PeerOutcome};
pub use twill::backend::types::{Error, Iface, Lease, LeaseEvent, Node, Subnet};
