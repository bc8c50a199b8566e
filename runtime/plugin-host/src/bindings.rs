//! The single `bindgen!` for `twill:backend@0.1.0`, over the widest world
//! (`overlay-datapath-backend`, which includes `overlay-backend`). Its imports serve every
//! plugin; exports are looked up per interface (`backend` always, `datapath` when the
//! component has it), so a control-plane-only component loads too. Every import is
//! trappable: the outer `wasmtime::Result` is a trap (a host bug), the inner
//! `Result<_, Error>` goes to the guest.

wasmtime::component::bindgen!({
    world: "overlay-datapath-backend",
    path: "../../wit",
    imports: { default: trappable },
});

pub use exports::twill::backend::backend::{Info, PeerOutcome};
pub use twill::backend::types::{Error, Iface, Lease, LeaseEvent, Node, Subnet};

/// The exported control-plane interface.
pub use exports::twill::backend::backend::{Guest as BackendGuest, GuestIndices as BackendIndices};
/// The exported data-path interface.
pub use exports::twill::backend::datapath::{
    Guest as DatapathGuest, GuestIndices as DatapathIndices,
};
/// The exported data-path interface that works on packet heads.
pub use exports::twill::backend::datapath_heads::{
    Guest as HeadsGuest, GuestIndices as HeadsIndices,
};
