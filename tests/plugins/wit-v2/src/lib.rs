//! A backend built against `twill:backend@0.2.0`. It calls itself `vxlan`, so a host that
//! wrongly accepted it would let it replace the built-in vxlan; twill's host (0.1) must
//! skip it instead. It does nothing.

#[allow(missing_docs, clippy::all, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({ world: "overlay-backend", path: "wit" });
}

use bindings::exports::twill::backend::backend::{Guest, Info, PeerOutcome, Registration};
use bindings::twill::backend::types::{Error, LeaseEvent, Node, Subnet};

struct WitV2;

impl Guest for WitV2 {
    fn describe() -> Info {
        Info {
            name: "vxlan".into(),
            version: "2.0.0".into(),
            config_hint: String::new(),
        }
    }

    fn init(
        _config: String,
        _node: Node,
        _previous: Option<String>,
    ) -> Result<Registration, Error> {
        Err(Error::Unsupported("a test plugin".into()))
    }

    fn start(_own: Subnet) -> Result<(), Error> {
        Err(Error::Unsupported("a test plugin".into()))
    }

    fn on_leases(_events: Vec<LeaseEvent>) -> Vec<PeerOutcome> {
        Vec::new()
    }

    fn shutdown() {}
}

bindings::export!(WitV2 with_types_in bindings);
