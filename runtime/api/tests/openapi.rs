//! `docs/openapi.json` against the router: every served path is documented, every
//! documented path answers, and every answer matches its documented schema — field
//! names exactly (no undocumented field, no documented field missing), types, enums,
//! nullability — for a fresh node (mostly nulls) and a busy one (every field filled).

mod common;

use std::collections::BTreeSet;

use axum::Router;
use axum::http::Method;
use serde_json::{Map, Value};
use twill_api::{ApiState, router};

use common::{get, populated_router, request};

fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn documented_paths(doc: &Value) -> BTreeSet<String> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect()
}

/// Follows `$ref`s (`#/components/...`) to the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {reference}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
            resolve(doc, target)
        }
        None => schema,
    }
}

/// Checks `value` against the subset of OpenAPI 3.0 schemas the document uses; each
/// mismatch is pushed to `errors` with its JSON path.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{at}: null, but the schema is not nullable"));
        }
        return;
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(doc, part, value, at, errors);
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let Some(kind) = schema.get("type").and_then(Value::as_str) else {
        return; // any value
    };
    let ok = match kind {
        "object" => check_object(doc, schema, value, at, errors),
        "array" => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(doc, &schema["items"], item, &format!("{at}[{i}]"), errors);
                }
                true
            }
            None => false,
        },
        "string" => value.as_str().is_some_and(|s| check_format(schema, s)),
        "integer" => match (value.as_i64(), value.as_u64()) {
            (Some(i), _) => schema["minimum"].as_i64().is_none_or(|min| i >= min),
            (None, Some(_)) => true, // above i64::MAX, so above any minimum
            (None, None) => false,
        },
        "number" => value
            .as_f64()
            .is_some_and(|n| schema["minimum"].as_f64().is_none_or(|min| n >= min)),
        "boolean" => value.is_boolean(),
        other => panic!("{at}: schema type {other} not handled by this check"),
    };
    if !ok {
        errors.push(format!("{at}: {value} does not match {schema}"));
    }
}

fn check_format(schema: &Value, s: &str) -> bool {
    match schema.get("format").and_then(Value::as_str) {
        Some("date-time") => {
            // RFC 3339 as the API writes it: 2026-11-26T15:58:37Z
            let b = s.as_bytes();
            b.len() == 20
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':'
                && b[19] == b'Z'
        }
        Some("ipv4") => s.parse::<std::net::Ipv4Addr>().is_ok(),
        _ => true,
    }
}

fn check_object(
    doc: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    errors: &mut Vec<String>,
) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        let returned: BTreeSet<&String> = object.keys().collect();
        let documented: BTreeSet<&String> = properties.keys().collect();
        for extra in returned.difference(&documented) {
            errors.push(format!("{at}.{extra}: returned but not documented"));
        }
        for missing in documented.difference(&returned) {
            errors.push(format!("{at}.{missing}: documented but not returned"));
        }
        for (name, property) in properties {
            if let Some(v) = object.get(name) {
                check(doc, property, v, &format!("{at}.{name}"), errors);
            }
        }
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        for (name, v) in object {
            check(doc, values, v, &format!("{at}.{name}"), errors);
        }
    }
    true
}

/// The schema documented for `path`, `status` and `media`, if any.
fn response_schema<'a>(doc: &'a Value, path: &str, status: u16, media: &str) -> Option<&'a Value> {
    let responses = &doc["paths"][path]["get"]["responses"];
    let response = resolve(doc, responses.get(status.to_string())?);
    response["content"].get(media).map(|c| &c["schema"])
}

/// Requests every documented GET path and checks the answer against its schema.
async fn check_every_path(router: &Router, doc: &Value) {
    let mut errors = Vec::new();
    for path in documented_paths(doc) {
        let answer = get(router, &path).await;
        let status = answer.status.as_u16();
        let media = answer
            .content_type()
            .split(';')
            .next()
            .unwrap_or("")
            .to_owned();
        let Some(schema) = response_schema(doc, &path, status, &media) else {
            errors.push(format!(
                "GET {path}: answered {status} {media}, which is not documented"
            ));
            continue;
        };
        if media == "application/json" {
            check(
                doc,
                schema,
                &answer.json(),
                &format!("GET {path}"),
                &mut errors,
            );
        }
    }
    assert!(
        errors.is_empty(),
        "answers differ from docs/openapi.json:\n{}",
        errors.join("\n")
    );
}

#[test]
fn every_served_path_is_documented_and_nothing_more() {
    let doc = openapi();
    let served: BTreeSet<String> = twill_api::paths().into_iter().map(str::to_owned).collect();
    assert_eq!(served, documented_paths(&doc));
}

#[tokio::test]
async fn the_dashboard_assets_are_served_but_left_out_on_purpose() {
    // The page's files are its internals, not API: the document names them only as a
    // prefix. Anything else the router serves must be documented (the test above).
    let doc = openapi();
    let documented = documented_paths(&doc);
    let router = populated_router();
    assert!(documented.contains("/"), "the dashboard page is documented");
    for path in twill_api::asset_paths() {
        assert!(path.starts_with("/assets/"), "{path} is not under /assets/");
        assert!(!documented.contains(path), "{path} is documented");
        assert_eq!(get(&router, path).await.status.as_u16(), 200, "{path}");
    }
    let description = doc["info"]["description"].as_str().expect("description");
    assert!(description.contains("`/assets/`"), "{description}");
}

#[test]
fn every_documented_operation_is_a_get() {
    let doc = openapi();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let methods: Vec<&String> = item.as_object().expect("path item").keys().collect();
        assert_eq!(methods, ["get"], "{path}");
    }
}

#[test]
fn every_documented_property_is_required() {
    // The API always writes every field (absent values are null), so the document must
    // say so: `required` lists exactly the properties.
    let doc = openapi();
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            continue;
        };
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no required list"))
            .iter()
            .map(|v| v.as_str().expect("a name"))
            .collect();
        let props: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        assert_eq!(required, props, "{name}");
    }
}

#[tokio::test]
async fn a_busy_node_answers_as_documented() {
    check_every_path(&populated_router(), &openapi()).await;
    // With probe results: one peer reachable, one unreachable.
    let (state, metrics) = common::populated();
    let (two, three) = (
        "10.244.2.0/24".parse().expect("subnet"),
        "10.244.3.0/24".parse().expect("subnet"),
    );
    let rtt = std::time::Duration::from_millis(3);
    state.peer_probed(two, twill_api::ProbeResult::Answered(rtt));
    for _ in 0..3 {
        state.peer_probed(three, twill_api::ProbeResult::Lost);
    }
    check_every_path(&router(state, metrics), &openapi()).await;
}

#[tokio::test]
async fn a_fresh_node_answers_as_documented() {
    // Not ready: /readyz answers 503, which must be documented too.
    check_every_path(&router(ApiState::new(), Default::default()), &openapi()).await;
}

#[tokio::test]
async fn errors_answer_as_documented() {
    let doc = openapi();
    let router = populated_router();
    let mut errors = Vec::new();

    let answer = get(&router, "/no/such/path").await;
    assert_eq!(answer.status.as_u16(), 404);
    let not_found =
        &doc["components"]["responses"]["NotFound"]["content"]["application/json"]["schema"];
    check(
        &doc,
        not_found,
        &answer.json(),
        "GET /no/such/path",
        &mut errors,
    );

    for path in documented_paths(&doc) {
        let answer = request(&router, Method::POST, &path).await;
        assert_eq!(answer.status.as_u16(), 405, "POST {path}");
        let schema = response_schema(&doc, &path, 405, "application/json")
            .unwrap_or_else(|| panic!("405 is not documented for {path}"));
        check(
            &doc,
            schema,
            &answer.json(),
            &format!("POST {path}"),
            &mut errors,
        );
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_checker_catches_mismatches() {
    // The checks above are only as good as `check`: make sure it reports an undocumented
    // field, a missing one, a wrong type, a bad enum value and an unexpected null.
    let doc = openapi();
    let schema = &doc["components"]["schemas"]["Peer"];
    let mut good: Map<String, Value> = serde_json::from_value(serde_json::json!({
        "subnet": "10.244.2.0/24", "public_ip": "192.168.1.2", "backend_type": "vxlan",
        "backend_data": null, "programmed": "", "state": "pending",
        "state_since": "2026-01-01T00:00:00Z", "last_error": null, "health": null
    }))
    .expect("object");
    let mut errors = Vec::new();
    check(
        &doc,
        schema,
        &Value::Object(good.clone()),
        "peer",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");

    good.insert("surprise".into(), Value::Bool(true));
    good.remove("programmed");
    good.insert("state".into(), "lost".into());
    good.insert("public_ip".into(), "not an ip".into());
    good.insert("subnet".into(), Value::Null);
    check(&doc, schema, &Value::Object(good), "peer", &mut errors);
    assert_eq!(errors.len(), 5, "{errors:#?}");
}
