//! The network config flannel reads from etcd `<prefix>/config` (net-conf.json), with
//! flannel's defaults and validation rules (`pkg/subnet/config.go`). Field names match
//! case-insensitively, as Go's encoding/json does.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};

use crate::json::field;
use crate::subnet::Subnet;

/// A validated network config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The cluster network every node's subnet comes from.
    pub network: Subnet,
    /// The prefix length of each node's subnet.
    pub subnet_len: u8,
    /// The lowest subnet address a node may lease.
    pub subnet_min: Ipv4Addr,
    /// The highest subnet address a node may lease.
    pub subnet_max: Ipv4Addr,
    /// The `Backend` object.
    pub backend: BackendConfig,
}

/// The `Backend` object of the config: its lower-cased `Type` and the whole object,
/// which the backend plugin reads for its own keys (`VNI`, `Port`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// The backend type, lower-cased (flannel lower-cases it too).
    pub kind: String,
    /// The `Backend` object as JSON text (`{}` when the config had none).
    pub json: String,
}

impl BackendConfig {
    /// The `Port` the `Backend` object gives (any spelling of the key, as flannel's
    /// JSON decoding), if it is a port; flannel's 0 means "the default", so `None`.
    pub fn port(&self) -> Option<u16> {
        let value: serde_json::Value = serde_json::from_str(&self.json).ok()?;
        let port = value
            .as_object()?
            .iter()
            .find_map(|(k, v)| k.eq_ignore_ascii_case("port").then(|| v.as_u64())?)?;
        u16::try_from(port).ok().filter(|p| *p != 0)
    }
}

/// A config that flannel would reject, or that twill cannot run. Each names its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not a JSON object.
    #[error("network config is not a JSON object: {0}")]
    Json(String),
    /// A field has the wrong JSON type or an unparsable value.
    #[error("network config field {field}: {reason}")]
    Field {
        /// The field's name as flannel spells it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A required field is absent.
    #[error("network config field {0} is missing")]
    Missing(&'static str),
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        reason: reason.into(),
    }
}

fn get_bool(
    obj: &Map<String, Value>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(name, format!("expected true or false, got {other}"))),
    }
}

fn get_str<'a>(
    obj: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(name, format!("expected a string, got {other}"))),
    }
}

fn get_ip(obj: &Map<String, Value>, name: &'static str) -> Result<Option<Ipv4Addr>, ConfigError> {
    get_str(obj, name)?
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| bad(name, format!("{s:?} is not an IPv4 address")))
        })
        .transpose()
}

fn get_subnet_len(obj: &Map<String, Value>) -> Result<u8, ConfigError> {
    const NAME: &str = "SubnetLen";
    match field(obj, NAME) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| bad(NAME, format!("{n} is not a prefix length"))),
        Some(other) => Err(bad(NAME, format!("expected a number, got {other}"))),
    }
}

impl Config {
    /// Parse and validate config text exactly as flannel's `ParseConfig` plus
    /// `CheckNetworkConfig` would, filling flannel's defaults.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(ConfigError::Json(format!(
                "expected an object, got {value}"
            )));
        };
        if !get_bool(&obj, "EnableIPv4", true)? {
            return Err(bad("EnableIPv4", "twill needs IPv4 (EnableIPv4 is false)"));
        }
        if get_bool(&obj, "EnableIPv6", false)? {
            return Err(bad(
                "EnableIPv6",
                "IPv6 networks are not supported by twill yet",
            ));
        }
        let network = parse_network(&obj)?;
        let subnet_len = check_subnet_len(network, get_subnet_len(&obj)?)?;
        let size = 1u32 << (32 - u32::from(subnet_len));
        // flannel treats 0.0.0.0 (Go's zero value) as "not set".
        let unset = |ip: Option<Ipv4Addr>| ip.filter(|ip| !ip.is_unspecified());
        let subnet_min = match unset(get_ip(&obj, "SubnetMin")?) {
            None => Ipv4Addr::from(u32::from(network.addr()) + size),
            Some(ip) => check_bound(network, subnet_len, "SubnetMin", ip)?,
        };
        let subnet_max = match unset(get_ip(&obj, "SubnetMax")?) {
            // Network.Next().IP - subnetSize: the last subnet of the network.
            None => Ipv4Addr::from(u32::from(network.last()) - (size - 1)),
            Some(ip) => check_bound(network, subnet_len, "SubnetMax", ip)?,
        };
        if subnet_min > subnet_max {
            return Err(bad(
                "SubnetMin",
                format!("{subnet_min} is above SubnetMax {subnet_max}"),
            ));
        }
        let backend = parse_backend(&obj)?;
        Ok(Config {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// What in config `text` is accepted but does nothing, for a person: flannel's keys
    /// twill does not support (the IPv6 ones, `EnableNFTables`), and keys neither knows
    /// (a typo: flannel ignores them too). Empty for text that is no JSON object.
    pub fn notices(text: &str) -> Vec<String> {
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        const USED: [&str; 7] = [
            "network",
            "subnetlen",
            "subnetmin",
            "subnetmax",
            "backend",
            "enableipv4",
            "enableipv6",
        ];
        const FLANNELS: [&str; 5] = [
            "ipv6network",
            "ipv6subnetlen",
            "ipv6subnetmin",
            "ipv6subnetmax",
            "enablenftables",
        ];
        obj.keys()
            .filter_map(|key| {
                let lower = key.to_ascii_lowercase();
                if USED.contains(&lower.as_str()) {
                    None
                } else if FLANNELS.contains(&lower.as_str()) {
                    Some(format!(
                        "{key} is flannel's but not supported by twill: ignored"
                    ))
                } else {
                    Some(format!("unknown key {key:?}: ignored (a typo?)"))
                }
            })
            .collect()
    }

    /// Whether `subnet` is a lease key of this network at all ([`Subnet::is_lease_of`]).
    pub fn is_lease(&self, subnet: &Subnet) -> bool {
        subnet.is_lease_of(&self.network, self.subnet_len)
    }

    /// Whether `subnet` is one this config lets a node lease: inside the network,
    /// of SubnetLen, and between SubnetMin and SubnetMax.
    pub fn fits(&self, subnet: &Subnet) -> bool {
        self.is_lease(subnet)
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }
}

fn parse_network(obj: &Map<String, Value>) -> Result<Subnet, ConfigError> {
    let text = get_str(obj, "Network")?.ok_or(ConfigError::Missing("Network"))?;
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| bad("Network", format!("{text:?} is not an IPv4 CIDR")))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| bad("Network", format!("{text:?} is not an IPv4 CIDR")))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| bad("Network", format!("{text:?} is not an IPv4 CIDR")))?;
    // Go's net.ParseCIDR masks the host bits; flannel accepts 10.244.1.5/16 as 10.244.0.0/16.
    let network = Subnet::containing(addr, prefix).map_err(|e| bad("Network", e.to_string()))?;
    // Every address, or a network holding loopback, multicast or the reserved range:
    // peers' routes would take over the host's own traffic (security review M-1).
    let forbidden = [
        (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
        (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
        (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
        (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    ];
    for (addr, len, what) in forbidden {
        let range = Subnet::containing(addr, len).map_err(|e| bad("Network", e.to_string()))?;
        if network.overlaps(&range) {
            return Err(bad(
                "Network",
                format!(
                    "{network} overlaps the {what} range {range}: the cluster network must be a range of ordinary unicast addresses"
                ),
            ));
        }
    }
    Ok(network)
}

fn check_subnet_len(network: Subnet, len: u8) -> Result<u8, ConfigError> {
    let prefix = network.prefix();
    if len == 0 {
        if prefix > 28 {
            return Err(bad(
                "Network",
                format!("{network} is too small; the minimum useful network prefix is /28"),
            ));
        }
        return Ok(if prefix <= 22 { 24 } else { prefix + 2 });
    }
    if len > 30 {
        return Err(bad("SubnetLen", format!("/{len} must be less than /31")));
    }
    if len < prefix + 2 {
        return Err(bad(
            "SubnetLen",
            format!(
                "/{len} is too large: Network {network} must be able to accommodate at least four subnets"
            ),
        ));
    }
    Ok(len)
}

fn check_bound(
    network: Subnet,
    len: u8,
    name: &'static str,
    ip: Ipv4Addr,
) -> Result<Ipv4Addr, ConfigError> {
    if !network.contains(ip) {
        return Err(bad(
            name,
            format!("{ip} is not in the range of the Network {network}"),
        ));
    }
    let aligned = Subnet::containing(ip, len).map_err(|e| bad(name, e.to_string()))?;
    if aligned.addr() != ip {
        return Err(bad(
            name,
            format!("{ip} is not on a SubnetLen (/{len}) boundary"),
        ));
    }
    Ok(ip)
}

fn parse_backend(obj: &Map<String, Value>) -> Result<BackendConfig, ConfigError> {
    match field(obj, "Backend") {
        // flannel's parseBackendType answers "udp" when Backend is absent (its docs say vxlan).
        None | Some(Value::Null) => Ok(BackendConfig {
            kind: "udp".to_owned(),
            json: "{}".to_owned(),
        }),
        Some(Value::Object(backend)) => {
            let kind = get_str(backend, "Type")
                .map_err(|e| match e {
                    ConfigError::Field { reason, .. } => bad("Backend.Type", reason),
                    other => other,
                })?
                .ok_or(ConfigError::Missing("Backend.Type"))?;
            Ok(BackendConfig {
                kind: kind.to_ascii_lowercase(),
                json: Value::Object(backend.clone()).to_string(),
            })
        }
        Some(other) => Err(bad("Backend", format!("expected an object, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        Config::parse(text).expect("config should be valid")
    }

    fn err(text: &str) -> String {
        Config::parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn flannel_defaults() {
        let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"VXLAN"}}"#);
        assert_eq!(c.network.to_string(), "10.244.0.0/16");
        assert_eq!(c.subnet_len, 24);
        assert_eq!(
            c.subnet_min,
            Ipv4Addr::new(10, 244, 1, 0),
            "first subnet is skipped"
        );
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.backend.kind, "vxlan");
        let small = ok(r#"{"Network":"10.5.0.0/26"}"#);
        assert_eq!(small.subnet_len, 28, "prefix+2 above /22");
        assert_eq!(small.subnet_min, Ipv4Addr::new(10, 5, 0, 16));
        assert_eq!(small.subnet_max, Ipv4Addr::new(10, 5, 0, 48));
        assert_eq!(
            small.backend.kind, "udp",
            "flannel's default when Backend is absent"
        );
    }

    #[test]
    fn keys_match_case_insensitively() {
        let c =
            ok(r#"{"network":"10.1.0.0/16","subnetlen":20,"backend":{"type":"vxlan","vni":4}}"#);
        assert_eq!(c.subnet_len, 20);
        assert!(c.backend.json.contains("\"vni\":4"));
    }

    #[test]
    fn explicit_bounds() {
        let c = ok(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.240.0","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 10, 0, 0));
        assert!(c.fits(&"10.10.16.0/20".parse().expect("subnet")));
        assert!(!c.fits(&"10.9.240.0/20".parse().expect("subnet")));
        assert!(!c.fits(&"10.10.0.0/24".parse().expect("subnet")));
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        assert!(err("{").contains("not a JSON object"));
        assert!(err("[]").contains("not a JSON object"));
        assert!(err(r#"{"Backend":{"Type":"vxlan"}}"#).contains("Network is missing"));
        assert!(err(r#"{"Network":"10.0.0.0"}"#).contains("Network"));
        assert!(err(r#"{"Network":"10.0.0.0/29"}"#).contains("too small"));
        assert!(err(r#"{"Network":"0.0.0.0/0"}"#).contains("overlaps the loopback range"));
        assert!(err(r#"{"Network":"224.0.0.0/16"}"#).contains("overlaps the multicast range"));
        assert!(err(r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#).contains("SubnetLen"));
        assert!(
            err(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#).contains("at least four subnets")
        );
        assert!(
            err(r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#)
                .contains("SubnetLen: expected a number")
        );
        assert!(
            err(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#)
                .contains("SubnetMin: 10.1.0.0 is not in the range")
        );
        assert!(
            err(r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.5"}"#)
                .contains("SubnetMax: 10.0.3.5 is not on a SubnetLen")
        );
        assert!(
            err(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#)
                .contains("above SubnetMax")
        );
        assert!(
            err(r#"{"Network":"10.0.0.0/16","Backend":{}}"#).contains("Backend.Type is missing")
        );
        assert!(err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":7}}"#).contains("Backend.Type"));
        assert!(
            err(r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#)
                .contains("Backend: expected an object")
        );
        assert!(err(r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#).contains("EnableIPv6"));
    }

    #[test]
    fn the_backend_port_is_read_in_any_spelling_and_zero_is_none() {
        let port = |json: &str| {
            BackendConfig {
                kind: "vxlan".into(),
                json: json.into(),
            }
            .port()
        };
        assert_eq!(port(r#"{"Type":"vxlan","Port":4789}"#), Some(4789));
        assert_eq!(port(r#"{"type":"vxlan","port":8285}"#), Some(8285));
        assert_eq!(port(r#"{"Type":"vxlan","Port":0}"#), None);
        assert_eq!(port(r#"{"Type":"vxlan","Port":70000}"#), None);
        assert_eq!(port(r#"{"Type":"vxlan"}"#), None);
    }

    #[test]
    fn keys_that_do_nothing_are_named() {
        let notices = Config::notices(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"IPv6Network":"fc00::/48","Netwrok":"x","backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(notices.len(), 3, "{notices:?}");
        assert!(
            notices
                .iter()
                .any(|n| n.starts_with("EnableNFTables is flannel's"))
        );
        assert!(
            notices
                .iter()
                .any(|n| n.starts_with("IPv6Network is flannel's"))
        );
        assert!(
            notices
                .iter()
                .any(|n| n.contains("unknown key \"Netwrok\""))
        );
        assert!(Config::notices(r#"{"Network":"10.244.0.0/16"}"#).is_empty());
        assert!(Config::notices("not json").is_empty());
    }
}
