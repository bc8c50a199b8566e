//! twill's domain core: the network config as flannel reads it from etcd, IPv4 subnet
//! math and allocation, the lease model with flannel's JSON, the set of remote peers
//! and subnet.env. Everything here is pure — no sockets, no kernel, no clock reads
//! except where a caller passes the time in — so most of twill's tests live here.
#![forbid(unsafe_code)]

pub mod acquire;
pub mod config;
mod json;
pub mod lease;
pub mod mac;
pub mod peers;
pub mod subnet;
pub mod subnet_env;

pub use config::{BackendConfig, Config, ConfigError};
pub use lease::{Expiry, Lease, LeaseAttrs, LeaseError, LeaseEvent};
pub use mac::MacAddr;
pub use peers::{Changes, MAX_BACKEND_DATA, PeerSet, Skip};
pub use subnet::{Subnet, SubnetError};

/// An error and its sources, `outer: inner: …`, for one log line (every crate that
/// logs an error it will not return uses this).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
