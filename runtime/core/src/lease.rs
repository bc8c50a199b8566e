//! Leases as flannel stores them in etcd: key `<prefix>/subnets/10.244.1.0-24`, value
//! `{"PublicIP":"…","PublicIPv6":null,"BackendType":"vxlan","BackendData":{…}}`
//! (`pkg/lease/lease.go`: `PublicIPv6` has no omitempty, the others do).

use std::net::Ipv4Addr;
use std::time::SystemTime;

use serde_json::Value;

use crate::json::field;
use crate::subnet::Subnet;

/// The attributes a node publishes with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// The node's public (underlay) IPv4 address.
    pub public_ip: Ipv4Addr,
    /// The backend type; empty for flannel's udp backend, which sets none.
    pub backend_type: String,
    /// The backend's own data as compact JSON text, e.g. `{"VNI":1,"VtepMAC":"…"}`.
    pub backend_data: Option<String>,
}

/// A lease value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Not a JSON object.
    #[error("lease value is not a JSON object: {0}")]
    Json(String),
    /// `PublicIP` is absent or not an IPv4 address.
    #[error("lease value has no valid PublicIP: {0}")]
    PublicIp(String),
    /// `BackendType` is not a string.
    #[error("lease value BackendType is not a string")]
    BackendType,
    /// The backend data given to [`LeaseAttrs::new`] is not JSON.
    #[error("backend data is not JSON: {0}")]
    BackendData(String),
}

impl LeaseAttrs {
    /// Attributes with backend data given as JSON text (validated and made compact).
    pub fn new(
        public_ip: Ipv4Addr,
        backend_type: &str,
        backend_data: Option<&str>,
    ) -> Result<Self, LeaseError> {
        let backend_data = backend_data
            .map(|text| {
                serde_json::from_str::<Value>(text)
                    .map(|v| v.to_string())
                    .map_err(|e| LeaseError::BackendData(e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            public_ip,
            backend_type: backend_type.to_owned(),
            backend_data,
        })
    }

    /// The value flannel writes: field order and null/omitempty behaviour as Go's
    /// `json.Marshal(LeaseAttrs)`.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"PublicIP\":\"{}\",\"PublicIPv6\":null", self.public_ip);
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        if let Some(data) = &self.backend_data {
            out.push_str(",\"BackendData\":");
            out.push_str(data);
        }
        out.push('}');
        out
    }

    /// Parse a lease value, accepting any key case as Go does.
    pub fn from_json(text: &str) -> Result<Self, LeaseError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| LeaseError::Json(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(LeaseError::Json(format!("expected an object, got {value}")));
        };
        let public_ip = match field(&obj, "PublicIP") {
            Some(Value::String(s)) => s
                .parse::<Ipv4Addr>()
                .map_err(|_| LeaseError::PublicIp(format!("{s:?}")))?,
            other => return Err(LeaseError::PublicIp(format!("{other:?}"))),
        };
        let backend_type = match field(&obj, "BackendType") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(LeaseError::BackendType),
        };
        let backend_data = match field(&obj, "BackendData") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.to_string()),
        };
        Ok(Self {
            public_ip,
            backend_type,
            backend_data,
        })
    }
}

/// One node's lease on one subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased subnet.
    pub subnet: Subnet,
    /// What the node published.
    pub attrs: LeaseAttrs,
    /// When the lease runs out.
    pub expires: Expiry,
}

/// When a lease runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At this time, unless renewed first.
    At(SystemTime),
    /// Never: a reservation (a key with no etcd lease, no TTL).
    Never,
    /// The lease has a TTL the store has not read yet. etcd answers a lease's expiry
    /// only one `TimeToLive` request per lease, so a node's first listing leaves them
    /// unread and the watch delivers them later ([`LeaseEvent`]s stay in order).
    Unread,
}

impl Expiry {
    /// The time, if it is known and there is one.
    pub fn at(self) -> Option<SystemTime> {
        match self {
            Expiry::At(t) => Some(t),
            Expiry::Never | Expiry::Unread => None,
        }
    }
}

impl From<Option<SystemTime>> for Expiry {
    /// `None` is a reservation.
    fn from(t: Option<SystemTime>) -> Self {
        t.map_or(Expiry::Never, Expiry::At)
    }
}

/// A change in the set of leases, as the watch and the peer set report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease appeared or its attributes changed.
    Added(Lease),
    /// A lease went away (deleted or expired). The peer set's events carry its last
    /// known attributes; a store's watch may carry the subnet alone (etcd's sends no
    /// deleted value; the attributes are then a placeholder).
    Removed(Lease),
}

impl LeaseEvent {
    /// The lease the event is about.
    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_flannels_exact_json() {
        let a = LeaseAttrs::new(
            Ipv4Addr::new(192, 168, 64, 3),
            "vxlan",
            Some(r#"{"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}"#),
        )
        .expect("valid");
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let udp = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1), "", None).expect("valid");
        assert_eq!(
            udp.to_json(),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#
        );
    }

    #[test]
    fn round_trips_and_reads_any_case() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let a = LeaseAttrs::from_json(text).expect("parses");
        assert_eq!(a.to_json(), text);
        let lower = LeaseAttrs::from_json(r#"{"publicip":"10.1.2.3","backendtype":"host-gw"}"#)
            .expect("parses");
        assert_eq!(lower.public_ip, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(lower.backend_type, "host-gw");
        assert_eq!(lower.backend_data, None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            LeaseAttrs::from_json("nope"),
            Err(LeaseError::Json(_))
        ));
        assert!(matches!(
            LeaseAttrs::from_json("[1]"),
            Err(LeaseError::Json(_))
        ));
        assert!(matches!(
            LeaseAttrs::from_json("{}"),
            Err(LeaseError::PublicIp(_))
        ));
        assert!(matches!(
            LeaseAttrs::from_json(r#"{"PublicIP":"300.1.1.1"}"#),
            Err(LeaseError::PublicIp(_))
        ));
        assert!(matches!(
            LeaseAttrs::from_json(r#"{"PublicIP":"1.1.1.1","BackendType":3}"#),
            Err(LeaseError::BackendType)
        ));
        assert!(LeaseAttrs::new(Ipv4Addr::LOCALHOST, "x", Some("{")).is_err());
    }
}
