//! twill's udp backend, as flannel's (`pkg/backend/udp`): the host opens the TUN device
//! `flannel0` (MTU = interface MTU − 28) and a UDP socket on the interface address and
//! `Port` (8285); the TUN gets `<subnet>.0/32` and one route for the whole network. The
//! UDP payload is the raw inner IP packet, so a flannel udp node can join.
//!
//! Unlike the kernel backends, every packet passes through this plugin: the host reads
//! batches from the TUN device and the socket and calls `datapath.encap` / `decap` once
//! per batch, on instances of its own (one per data-path thread). The decisions are in
//! [`packet`]: next hop by the destination's lease, TTL decrement with the checksum fix,
//! ICMP net-unreachable for a destination inside the network that no lease covers, and
//! on receive, datagrams from addresses that hold no lease or whose inner source lies
//! outside the sender's subnet are dropped and counted by reason.
//!
//! The lease is published without `BackendType`, as flannel's udp backend does.

pub mod packet;

mod component;

/// flannel's default UDP port for this backend.
pub const DEFAULT_PORT: u16 = 8285;
/// IPv4 (20) + UDP (8) header bytes the encapsulation adds.
pub const OVERHEAD: u32 = 28;
/// The TUN device's name, as flannel's (`flannel%d` gives `flannel0`).
pub const DEVICE: &str = "flannel0";

/// The `Port` of the `Backend` config object (case-insensitive key), default 8285.
pub fn port_from_config(config: &str) -> Result<u16, String> {
    let value: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("Backend is not JSON: {e}"))?;
    match twill_plugin_sdk::config_field(&value, "Port") {
        None | Some(serde_json::Value::Null) => Ok(DEFAULT_PORT),
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("Backend.Port {v} is not a UDP port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_defaults_and_is_checked() {
        assert_eq!(port_from_config(r#"{"Type":"udp"}"#), Ok(8285));
        assert_eq!(port_from_config(r#"{"Type":"udp","port":9000}"#), Ok(9000));
        assert!(port_from_config(r#"{"Port":0}"#).is_err());
        assert!(port_from_config(r#"{"Port":70000}"#).is_err());
        assert!(port_from_config(r#"{"Port":"x"}"#).is_err());
    }
}
