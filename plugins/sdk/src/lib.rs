//! Write a twill backend.
//!
//! twill is a node daemon for container clusters that does what
//! [flannel](https://github.com/flannel-io/flannel) does: every node leases one subnet of
//! a cluster network (`10.244.1.0/24` of `10.244.0.0/16`, say) from a shared store, and
//! pods on different nodes reach each other by IP without NAT. *How* a packet for another
//! node's subnet gets there — through a VXLAN tunnel, a plain route via that node, an
//! IP-in-IP tunnel — is the job of a **backend**.
//!
//! A backend is a WebAssembly component: a Rust `cdylib` built for `wasm32-wasip2` that
//! targets the WIT world `overlay-backend` of the package `twill:backend@0.1.0`
//! (`wit/backend.wit` in twill's repository). It runs sandboxed inside the daemon. It
//! cannot touch the kernel and has no clock, randomness, files or sockets. Instead it
//! *asks* the host through the interfaces in [`host`] ("make sure this device exists",
//! "route this subnet via that address"). The host checks every request against what a
//! backend may touch (see [below](#capabilities-and-their-limits)) and only then carries
//! it out over netlink. Everything else belongs to the daemon: the lease store, the
//! node's own lease, `subnet.env` and the HTTP API.
//!
//! This crate is the guest SDK. It contains the generated bindings ([`bindings`]), the
//! [`Backend`] trait and the [`export_backend!`] macro. You implement the trait, export
//! your type once, and build. A backend whose packets pass through it (as flannel's
//! `udp`) also implements `datapath::Datapath`, with the crate feature `datapath`.
//!
//! # A complete backend
//!
//! This is the smallest useful backend: flannel's host-gw without its checks. Each
//! peer's subnet is routed via the peer's public IP on the node's external interface,
//! and the route is deleted when the peer's lease goes away.
//!
//! ```no_run
//! use twill_plugin_sdk::host::routes;
//! use twill_plugin_sdk::{
//!     Backend, Error, Info, Lease, LeaseEvent, Node, Registration, Subnet, export_backend, ip,
//! };
//!
//! struct Gateway {
//!     /// The node's external interface: the device of every route.
//!     external: u32,
//! }
//!
//! impl Gateway {
//!     fn route(&self, peer: &Lease) -> routes::Route {
//!         routes::Route {
//!             dst: peer.subnet,
//!             gateway: Some(peer.public_ip),
//!             dev: self.external,
//!             onlink: false,
//!         }
//!     }
//! }
//!
//! impl Backend for Gateway {
//!     fn describe() -> Info {
//!         Info {
//!             // The daemon picks the backend whose name is the config's `Backend.Type`.
//!             name: "gateway".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             config_hint: r#"{"Type":"gateway"}"#.into(),
//!         }
//!     }
//!
//!     fn init(
//!         _config: &str,
//!         node: &Node,
//!         _previous: Option<&str>,
//!     ) -> Result<(Self, Registration), Error> {
//!         let backend = Gateway { external: node.iface.index };
//!         let registration = Registration {
//!             backend_type: "gateway".into(), // `BackendType` in this node's lease
//!             backend_data: String::new(),    // no `BackendData`
//!             mtu: node.iface.mtu,            // `FLANNEL_MTU`: nothing is encapsulated
//!         };
//!         Ok((backend, registration))
//!     }
//!
//!     fn start(&mut self, _own: Subnet) -> Result<(), Error> {
//!         Ok(()) // no device, so nothing needs the node's subnet
//!     }
//!
//!     fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
//!         match event {
//!             LeaseEvent::Added(peer) => {
//!                 routes::replace(self.route(peer))?; // `ip route replace`: idempotent
//!                 Ok(format!("route via {}", ip(peer.public_ip)))
//!             }
//!             LeaseEvent::Removed(peer) => {
//!                 routes::delete(self.route(peer))?; // a route already gone is no error
//!                 Ok("removed".into())
//!             }
//!         }
//!     }
//! }
//!
//! export_backend!(Gateway);
//! ```
//!
//! `twill plugin new NAME` writes a crate like this one, with this SDK and the WIT
//! inside it (the very files the `twill` binary was built with), so it builds without
//! twill's repository; `twill plugin test FILE` then runs the component through a
//! node's life on a recording kernel and prints every kernel change it asks for
//! (docs/plugins.md in twill's repository).
//!
//! A complete out-of-tree backend is `examples/ipip` in twill's repository. It is
//! flannel's ipip backend as a crate of its own (its own cargo workspace, depending on
//! this crate by path), with a `DirectRouting` option and unit tests.
//! `tests/tests/ipip.rs` builds it and drives the `.wasm` through the plugin host.
//!
//! # Lifecycle
//!
//! The daemon makes one call at a time, always from the same thread:
//!
//! 1. **`describe`** ([`Backend::describe`]) says who you are. It runs when the
//!    component is loaded, in a throwaway instance, and must not call the host.
//! 2. **`init(config, node, previous-data)`** ([`Backend::init`]). `config` is the
//!    `Backend` object of the network config as JSON text, e.g.
//!    `{"Type":"ipip","DirectRouting":true}`. Read keys with [`config_field`], which
//!    ignores case as flannel does. `node` holds the node's public IP, its external
//!    interface (name, index, MTU, IPv4 address) and the cluster network. `previous` is
//!    the `BackendData` this node published in its last lease, whatever its type, so that
//!    an identifier such as a VTEP MAC can survive a restart. Create your devices here
//!    and return a [`Registration`]: the `BackendType` and `BackendData` (JSON, or empty
//!    for none) to publish, and the MTU pods should use (`FLANNEL_MTU` in
//!    `subnet.env`). If `init` fails at startup, the daemon exits.
//! 3. The daemon acquires the node's lease and publishes your registration in it.
//! 4. **`start(own-subnet)`** ([`Backend::start`]): the node now holds `own`. Finish
//!    whatever needs it, such as the device's `/32` address and setting it up. The host
//!    denies addresses and routes until this call.
//! 5. **`on-leases(batch)`** ([`Backend::on_leases`]) is called for every batch of peer
//!    changes. `Added` means a lease appeared or changed. `Removed` means it was deleted
//!    or expired, and carries its last attributes. Return one [`PeerOutcome`] per event,
//!    in order: either a short text saying what is programmed for that peer, or that
//!    peer's error. The API shows each peer's outcome, so one bad peer never hides the
//!    others. The default implementation calls [`Backend::on_lease`] once per event.
//!    The node's own lease is never sent, and neither is a lease that is not a subnet of
//!    the configured size inside the network.
//! 6. **Every 60 s the daemon resyncs.** It calls `init` again (with the node's current
//!    `BackendData` as `previous`), then `start`, then `on-leases` with every known peer
//!    as `Added`. This repairs kernel state that someone removed. Each `init` returns a
//!    fresh value of your type, which replaces the previous one. A failed `init` or
//!    `start` during a resync is logged and tried again at the next one. Because of
//!    this, **every step must be idempotent**: make sure things exist instead of
//!    creating them, and replace instead of adding.
//! 7. **`shutdown`** ([`Backend::shutdown`]) means the daemon is stopping. Leave kernel
//!    state in place. At the next start the same sequence runs against the devices and
//!    routes that already exist, so traffic keeps flowing across a restart.
//!
//! # Capabilities and their limits
//!
//! Each host interface is one WIT interface. A component imports only the ones it calls,
//! so its imports are its capability request, and the daemon lists them for each plugin.
//!
//! | interface | in this crate | what | limits |
//! |---|---|---|---|
//! | `links` | [`host::links`] | `ensure-vxlan`, `ensure-ipip`, `set-up`, `set-mtu`, `delete` | names must start with `flannel` (flannel's own names, so a flannel node's devices are adopted and no other software's are touched), be valid Linux names of at most 15 bytes, and never be the external interface or `lo`. An existing device with the same attributes is kept (so a restart cuts no traffic), one with other attributes is recreated, and a device of another kind, or one another plugin owns, is denied. vxlan: `local` must be the node's public IP. ipip: `local` must be the external interface's address. Both: `underlay` must be the external interface. `set-up`, `set-mtu` (68–65535) and `delete` work only on the plugin's own devices |
//! | `addresses` | [`host::addresses`] | `ensure(dev, addr)` | a /32 only, inside the node's own subnet, on the plugin's own devices; other addresses inside the cluster network on that device are removed |
//! | `routes` | [`host::routes`] | `replace`, `delete` | the destination must lie inside the cluster network and must not overlap the node's own subnet. The device must be one of the plugin's own, or the external interface, which is allowed only with a gateway (a route via a peer). One exception: a route to the whole network on one of the plugin's own devices, without a gateway (flannel's udp) |
//! | `neighbours` | [`host::neighbours`] | permanent ARP entries | on the plugin's own devices, for addresses inside the cluster network |
//! | `fdb` | [`host::fdb`] | VXLAN forwarding entries | on the plugin's own devices, to unicast addresses |
//! | `route-lookup` | [`host::route_lookup`] | `ip route get` | read-only, unrestricted |
//! | `log` | [`host::log`], [`host::info`] and friends | a line in the daemon's log, tagged with the plugin's name | lines longer than 4096 bytes are cut |
//! | `datapath-host` | — | `open-tun`, `bind-udp`: the TUN device and the UDP socket of a backend whose packets pass through the plugin (world `overlay-datapath-backend`, flannel's udp) | the TUN device's name must start with `flannel`, and there is one per plugin; the socket is bound on the external interface's address |
//!
//! A refused request comes back as [`Error::Denied`] with the reason. The host logs it
//! with the plugin's name and counts it per interface (the daemon's metric
//! `twill_plugin_denied_host_calls_total`). It never reaches the kernel, and it is never
//! reported as a success. The other errors are `NotFound`, `Exists`, `Kernel` (with the
//! kernel's message), `Invalid` (a malformed request) and `Unsupported`.
//!
//! The host refuses to load a component that imports anything outside
//! `twill:backend@0.1.*`, except `wasi:*` interfaces. Rust's standard library brings
//! those along, and the host links them to traps. So `println!`, `std::time`,
//! `std::fs`, `std::env` and `HashMap::new()` (whose hasher seeds itself from
//! `wasi:random`) all trap. Use [`host::debug`] … [`host::error`] for output, and
//! `BTreeMap` for maps.
//!
//! # Resource limits
//!
//! Each instance gets 64 MiB of linear memory (a failed grow traps) and 30 s per call,
//! including the host calls it makes; past the deadline the call traps. A trap (a
//! panic, the deadline, the memory limit) poisons the instance: it refuses every later
//! call. The daemon goes on: it starts a fresh instance (1 s after the first trap,
//! doubling to 30 s while it keeps trapping), calls `init` with the node's published
//! `BackendData` and `start`, and hands it every current lease again. Kernel state the
//! plugin made stays meanwhile. A panic's message goes to the daemon's log (at error
//! level, with the plugin's name) before the trap: the SDK installs a panic hook in
//! `init` and in a data path's `attach`.
//!
//! # Building
//!
//! Install the target once with `rustup target add wasm32-wasip2`, then run:
//!
//! ```text
//! cargo build --target wasm32-wasip2 --release
//! ```
//!
//! The component is `target/wasm32-wasip2/release/<crate name, '-' as '_'>.wasm` (under
//! `$CARGO_TARGET_DIR` if that is set). It needs no post-processing, since this target
//! produces components directly. The daemon loads it with
//! `twill_plugin_host::PluginHost::load`.
//!
//! A plain `cargo test` builds the same crate natively for unit tests. Natively,
//! [`export_backend!`] exports nothing and every host call panics, so keep the logic
//! you want to test (config parsing, MTU arithmetic) in functions that do not call the
//! host, as `examples/ipip` does.
#![deny(unsafe_code)]

/// The generated WIT bindings (`twill:backend@0.1.0`, world `overlay-backend`; with the
/// feature `datapath`, world `overlay-datapath-backend`, which includes it).
#[allow(
    missing_docs,
    clippy::all,
    unsafe_code,
    reason = "code generated by wit-bindgen"
)]
pub mod bindings {
    #[cfg(not(feature = "datapath"))]
    wit_bindgen::generate!({
        world: "overlay-backend",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "twill_plugin_sdk::bindings",
    });
    #[cfg(feature = "datapath")]
    wit_bindgen::generate!({
        world: "overlay-datapath-backend",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "twill_plugin_sdk::bindings",
    });
}

#[cfg(feature = "datapath")]
pub mod datapath;

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

    /// Send a panic's message to the host's log, where the operator sees it next to
    /// the trap. std's own hook would first read the environment (`RUST_BACKTRACE`),
    /// which no plugin is granted: it traps there, and the message is lost.
    pub fn panics_to_the_log() {
        std::panic::set_hook(Box::new(|info| {
            host::error(&format!("plugin {info}"));
        }));
    }

    pub fn init<B: Backend>(
        config: String,
        node: Node,
        previous: Option<String>,
    ) -> Result<Registration, Error> {
        panics_to_the_log();
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
        $crate::__backend_guest!(__TwillBackendExport, $ty);
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_world!(__TwillBackendExport with_types_in $crate::bindings);
    };
}

/// The `backend` export of `$ty` on the struct `$export`; used by [`export_backend!`]
/// and `export_datapath_backend!`, not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_guest {
    ($export:ident, $ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        struct $export;
        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::twill::backend::backend::Guest for $export {
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
