//! Write a twill backend.
//!
//! A twill backend is a WebAssembly component that programs the kernel for one overlay
//! type (vxlan, host-gw, …). The twill daemon owns everything privileged; your backend
//! only *asks*, through the host interfaces in [`host`], and every request is checked
//! against what a backend may touch: devices it created, routes whose destination lies
//! inside the cluster network (never the node's own subnet), and the node's external
//! interface only as the device of a route via a peer. A refused request comes back as
//! [`Error::Denied`]; it is never silently ignored.
//!
//! # A complete backend
//!
//! ```ignore
//! use twill_plugin_sdk::{export_backend, host, Backend, Error, Info, LeaseEvent, Node, Registration, Subnet};
//!
//! struct Static;
//!
//! impl Backend for Static {
//!     fn describe() -> Info {
//!         Info { name: "static".into(), version: env!("CARGO_PKG_VERSION").into(), config_hint: "{}".into() }
//!     }
//!     fn init(_config: &str, node: &Node, _previous: Option<&str>) -> Result<(Self, Registration), Error> {
//!         Ok((Static, Registration { backend_type: "static".into(), backend_data: String::new(), mtu: node.iface.mtu }))
//!     }
//!     fn start(&mut self, _own: Subnet) -> Result<(), Error> { Ok(()) }
//!     fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
//!         host::info(&format!("lease event {event:?}"));
//!         Ok("nothing to program".into())
//!     }
//! }
//!
//! export_backend!(Static);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` (crate type `cdylib`);
//! the `.wasm` in `target/wasm32-wasip2/release/` is the component.
//!
//! # Lifecycle
//!
//! The host calls, one at a time: [`Backend::describe`], [`Backend::init`] (read the
//! `Backend` config, create devices, say what to publish in the lease),
//! [`Backend::start`] (the node now holds its subnet), [`Backend::on_leases`] for every
//! batch of peer changes, and [`Backend::shutdown`]. After a restart the same sequence
//! runs against kernel state that may already exist: every step must be idempotent.
//! Kernel state is left in place on shutdown so traffic keeps flowing across a restart.
//!
//! A panic is a trap: the call fails and the host discards the instance.
#![deny(unsafe_code)]

/// The generated WIT bindings (`twill:backend@0.1.0`, world `overlay-backend`).
#[allow(missing_docs, clippy::all, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "overlay-backend",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_overlay_backend",
        default_bindings_module: "twill_plugin_sdk::bindings",
    });
}

use std::cell::RefCell;
use std::net::Ipv4Addr;

pub use bindings::exports::twill::backend::backend::{Info, PeerOutcome, Registration};
pub use bindings::twill::backend::types::{Error, Iface, Lease, LeaseEvent, Node, Subnet};

/// The host interfaces a backend may call; each is a capability the host checks.
pub mod host {
    pub use crate::bindings::twill::backend::addresses;
    pub use crate::bindings::twill::backend::fdb;
    pub use crate::bindings::twill::backend::links;
    pub use crate::bindings::twill::backend::log;
    pub use crate::bindings::twill::backend::neighbours;
    pub use crate::bindings::twill::backend::route_lookup;
    pub use crate::bindings::twill::backend::routes;

    /// Log at debug level.
    pub fn debug(message: &str) {
        log::write(log::Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log::write(log::Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log::write(log::Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log::write(log::Level::Error, message);
    }
}

/// A backend. Implement it and call [`export_backend!`] once.
pub trait Backend: 'static {
    /// Who the backend is. Must not call the host.
    fn describe() -> Info
    where
        Self: Sized;

    /// Read the `Backend` config object (JSON text), prepare devices, and say what to
    /// publish in the lease. `previous` is this node's `BackendData` from its last
    /// lease, to keep identifiers (such as a VTEP MAC) stable across restarts.
    fn init(
        config: &str,
        node: &Node,
        previous: Option<&str>,
    ) -> Result<(Self, Registration), Error>
    where
        Self: Sized;

    /// The node holds `own`: finish what needs the subnet (addresses, link up).
    fn start(&mut self, own: Subnet) -> Result<(), Error>;

    /// Apply one peer lease change; must be idempotent. `Ok` says what is now
    /// programmed for the peer (`removed` for a removal), `Err` is this peer's error.
    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error>;

    /// Apply a batch of peer lease changes in order: one outcome per event. The default
    /// calls [`Backend::on_lease`] for each; override it to program a batch at once.
    fn on_leases(&mut self, events: Vec<LeaseEvent>) -> Vec<PeerOutcome> {
        events
            .iter()
            .map(|event| PeerOutcome {
                subnet: event_subnet(event),
                outcome: self.on_lease(event),
            })
            .collect()
    }

    /// The daemon is stopping; leave kernel state in place.
    fn shutdown(&mut self) {}
}

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Backend>>> = RefCell::new(None);
}

fn not_initialised() -> Error {
    Error::Invalid("the backend was called before init".to_owned())
}

/// Glue used by [`export_backend!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn init<B: Backend>(
        config: String,
        node: Node,
        previous: Option<String>,
    ) -> Result<Registration, Error> {
        let (backend, registration) = B::init(&config, &node, previous.as_deref())?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(backend)));
        Ok(registration)
    }

    pub fn start(own: Subnet) -> Result<(), Error> {
        INSTANCE.with(|cell| match cell.borrow_mut().as_mut() {
            Some(b) => b.start(own),
            None => Err(not_initialised()),
        })
    }

    pub fn on_leases(events: Vec<LeaseEvent>) -> Vec<PeerOutcome> {
        INSTANCE.with(|cell| match cell.borrow_mut().as_mut() {
            Some(b) => b.on_leases(events),
            None => events
                .iter()
                .map(|e| PeerOutcome {
                    subnet: event_subnet(e),
                    outcome: Err(not_initialised()),
                })
                .collect(),
        })
    }

    pub fn shutdown() {
        INSTANCE.with(|cell| {
            if let Some(b) = cell.borrow_mut().as_mut() {
                b.shutdown();
            }
        });
    }
}

/// Export `$ty` (a [`Backend`]) as this component's `twill:backend/backend`.
///
/// The export exists only when building for WebAssembly; a native build of the same
/// crate (for its unit tests) compiles the backend without it.
#[macro_export]
macro_rules! export_backend {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        struct __TwillBackendExport;
        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::twill::backend::backend::Guest for __TwillBackendExport {
            fn describe() -> $crate::Info {
                <$ty as $crate::Backend>::describe()
            }
            fn init(
                config: ::std::string::String,
                node: $crate::Node,
                previous_data: ::std::option::Option<::std::string::String>,
            ) -> ::std::result::Result<$crate::Registration, $crate::Error> {
                $crate::__private::init::<$ty>(config, node, previous_data)
            }
            fn start(own: $crate::Subnet) -> ::std::result::Result<(), $crate::Error> {
                $crate::__private::start(own)
            }
            fn on_leases(
                events: ::std::vec::Vec<$crate::LeaseEvent>,
            ) -> ::std::vec::Vec<$crate::PeerOutcome> {
                $crate::__private::on_leases(events)
            }
            fn shutdown() {
                $crate::__private::shutdown()
            }
        }
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_overlay_backend!(__TwillBackendExport with_types_in $crate::bindings);
        // Natively nothing exports the backend; keep it reachable so its code is
        // checked and tested without dead-code noise.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$ty as $crate::Backend>::init;
            let _ = <$ty as $crate::Backend>::describe;
        };
    };
}

/// The subnet a lease event is about.
pub fn event_subnet(event: &LeaseEvent) -> Subnet {
    match event {
        LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l.subnet,
    }
}

/// An IPv4 address from the WIT form (host byte order).
pub fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v)
}

/// The WIT form of an IPv4 address.
pub fn ip_u32(v: Ipv4Addr) -> u32 {
    u32::from(v)
}

/// A MAC in the WIT form, from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<bindings::twill::backend::types::Mac> {
    let mut b = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut b {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((b[0], b[1], b[2], b[3], b[4], b[5]))
}

/// `aa:bb:cc:dd:ee:ff` for a MAC in the WIT form.
pub fn format_mac(m: bindings::twill::backend::types::Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m.0, m.1, m.2, m.3, m.4, m.5
    )
}

/// The value of `key` in a JSON object, matched case-insensitively (as flannel's Go
/// config parsing does).
pub fn config_field<'a>(obj: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let map = obj.as_object()?;
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", ip(self.addr), self.prefix)
    }
}
