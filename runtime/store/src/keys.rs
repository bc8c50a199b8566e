//! What every store shares: flannel's key layout (`<prefix>/config`,
//! `<prefix>/subnets/10.244.1.0-24`) and reading lease keys and values, skipping with a
//! warning whatever does not parse.

use std::net::Ipv4Addr;

use tracing::warn;
use twill_core::lease::LeaseAttrs;
use twill_core::subnet::Subnet;

/// flannel's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    /// `<prefix>/subnets/`
    pub(crate) subnets: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/').to_owned();
        let subnets = format!("{prefix}/subnets/");
        Self { prefix, subnets }
    }

    /// `<prefix>/config`
    pub(crate) fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/subnets/10.244.1.0-24`
    pub(crate) fn lease(&self, subnet: Subnet) -> String {
        format!("{}{}", self.subnets, subnet.key())
    }

    /// The first key after every key under `<prefix>/subnets/` in byte order
    /// (`<prefix>/subnets0`), so `subnets <= key < subnets_end()` selects them all.
    pub(crate) fn subnets_end(&self) -> String {
        // `subnets` ends with '/' (0x2f); '0' (0x30) is the next byte.
        format!("{}0", self.subnets.trim_end_matches('/'))
    }
}

/// The attributes a delete event carries when the deleted value is not known.
pub(crate) fn placeholder_attrs() -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        backend_type: String::new(),
        backend_data: None,
    }
}

/// The subnet a lease key names, or `None` (with a warning) if it names none.
pub(crate) fn parse_key(keys: &Keys, key: &[u8]) -> Option<Subnet> {
    let text = String::from_utf8_lossy(key);
    let Some(suffix) = text.strip_prefix(keys.subnets.as_str()) else {
        warn!(key = %text, "skipping store key outside the subnets prefix");
        return None;
    };
    match Subnet::from_key(suffix) {
        Ok(subnet) => Some(subnet),
        Err(e) => {
            warn!(key = %text, error = %e, "skipping lease key that is not a subnet");
            None
        }
    }
}

/// The subnet and attributes of a lease key and value, or `None` (with a warning).
pub(crate) fn parse_lease(keys: &Keys, key: &[u8], value: &[u8]) -> Option<(Subnet, LeaseAttrs)> {
    let subnet = parse_key(keys, key)?;
    let parsed = match std::str::from_utf8(value) {
        Ok(text) => LeaseAttrs::from_json(text).map_err(|e| e.to_string()),
        Err(e) => Err(format!("value is not UTF-8: {e}")),
    };
    match parsed {
        Ok(attrs) => Some((subnet, attrs)),
        Err(e) => {
            warn!(
                key = %String::from_utf8_lossy(key),
                error = %e,
                "skipping lease whose value does not parse"
            );
            None
        }
    }
}

/// The attributes a deleted value held, or the placeholder if they do not parse.
pub(crate) fn removed_attrs(value: Option<&[u8]>) -> LeaseAttrs {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|text| LeaseAttrs::from_json(text).ok())
        .unwrap_or_else(placeholder_attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_matches_flannel() {
        let keys = Keys::new("/coreos.com/network/");
        let subnet: Subnet = "10.244.1.0/24".parse().expect("subnet");
        assert_eq!(keys.config(), "/coreos.com/network/config");
        assert_eq!(
            keys.lease(subnet),
            "/coreos.com/network/subnets/10.244.1.0-24"
        );
        assert_eq!(keys.subnets_end(), "/coreos.com/network/subnets0");
        assert!(keys.lease(subnet) < keys.subnets_end());
        assert!(keys.config() < keys.subnets);
        assert_eq!(
            parse_key(&keys, b"/coreos.com/network/subnets/10.244.1.0-24"),
            Some(subnet)
        );
        assert_eq!(
            parse_key(
                &keys,
                b"/coreos.com/network/subnets/10.244.1.0-24&fc00::-64"
            ),
            Some(subnet)
        );
        assert_eq!(parse_key(&keys, b"/coreos.com/network/subnets/junk"), None);
        assert_eq!(parse_key(&keys, b"/elsewhere/10.244.1.0-24"), None);
    }

    #[test]
    fn removed_attrs_fall_back_to_the_placeholder() {
        let text = r#"{"PublicIP":"10.0.0.1"}"#;
        assert_eq!(
            removed_attrs(Some(text.as_bytes())).public_ip,
            Ipv4Addr::new(10, 0, 0, 1)
        );
        assert_eq!(removed_attrs(Some(b"garbage")), placeholder_attrs());
        assert_eq!(removed_attrs(None), placeholder_attrs());
    }
}
