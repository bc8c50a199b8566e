//! Case-insensitive field lookup, because flannel (Go's encoding/json) matches JSON keys
//! without regard to case: `"network"` and `"Network"` are the same field to flannel.

use serde_json::{Map, Value};

/// The value of `field` in `obj`, matched case-insensitively; an exact match wins.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, v)| v)
    })
}
