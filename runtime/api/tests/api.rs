//! Every endpoint through the router, without a socket: status codes, JSON shapes, the
//! readiness reasons, the JSON errors, and the metrics families.

mod common;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use twill_api::{ApiState, Metrics, health_router, router};

use common::{get, populated, populated_router, request};

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn healthz_answers_200_even_when_not_ready() {
    let router = router(ApiState::new(), Default::default());
    let answer = get(&router, "/healthz").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.content_type().starts_with("application/json"));
    assert_eq!(answer.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_names_every_missing_condition_until_ready() {
    let state = ApiState::new();
    let router = router(state.clone(), Default::default());

    let answer = get(&router, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.json(),
        json!({"error": "not ready: no lease held, backend not initialised, subnet.env not written"})
    );

    state.set_lease_held(true);
    state.set_backend_initialised(true);
    let answer = get(&router, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.json(),
        json!({"error": "not ready: subnet.env not written"})
    );

    state.set_subnet_env_written(true);
    let answer = get(&router, "/readyz").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"status": "ready"}));

    // A lost lease makes the node unready again.
    state.set_lease_held(false);
    assert_eq!(
        get(&router, "/readyz").await.json(),
        json!({"error": "not ready: no lease held"})
    );

    // So does a move to another subnet, and /v1/status says what moved.
    state.set_lease_held(true);
    state.set_subnet_moved(
        "10.244.1.0/24".parse().expect("subnet"),
        "10.244.7.0/24".parse().expect("subnet"),
        "192.168.1.3".parse().expect("ip"),
    );
    let answer = get(&router, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let error = answer.json()["error"]
        .as_str()
        .expect("error text")
        .to_owned();
    assert!(
        error.starts_with("not ready: subnet moved from 10.244.1.0/24 to 10.244.7.0/24 at "),
        "{error}"
    );
    assert!(error.ends_with("(192.168.1.3 took it): the node's containers need addresses in 10.244.7.0/24; restart twill once they have them"), "{error}");
    let status = get(&router, "/v1/status").await.json();
    assert_eq!(status["subnet"], "10.244.7.0/24");
    assert_eq!(status["subnet_moved"]["from"], "10.244.1.0/24");
    assert_eq!(status["subnet_moved"]["taken_by"], "192.168.1.3");
}

#[tokio::test]
async fn status_shows_the_node() {
    let answer = get(&populated_router(), "/v1/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    let status = answer.json();
    assert_eq!(
        keys(&status),
        [
            "backend_type",
            "interface",
            "lease_expires_at",
            "lease_expires_in_seconds",
            "mtu",
            "node_name",
            "not_ready_reason",
            "peer_health",
            "plugin",
            "public_ip",
            "ready",
            "started_at",
            "store",
            "subnet",
            "subnet_moved",
            "uptime_seconds",
            "version",
        ]
    );
    assert_eq!(status["subnet_moved"], serde_json::Value::Null);
    assert_eq!(status["node_name"], "node-a");
    assert_eq!(status["public_ip"], "192.168.1.1");
    assert_eq!(status["interface"], "eth0");
    assert_eq!(status["subnet"], "10.244.1.0/24");
    assert_eq!(status["mtu"], 1450);
    assert_eq!(status["backend_type"], "vxlan");
    assert_eq!(status["plugin"], "vxlan");
    assert_eq!(status["ready"], true);
    assert_eq!(status["not_ready_reason"], Value::Null);
    assert_eq!(status["store"]["state"], "connected");
    assert_eq!(
        status["store"]["endpoints"],
        json!(["http://127.0.0.1:2379"])
    );
    let ttl = status["lease_expires_in_seconds"].as_i64().expect("a TTL");
    assert!((86_000..=86_400).contains(&ttl), "lease expires in {ttl} s");
    assert!(status["uptime_seconds"].as_u64().is_some());
    let started = status["started_at"].as_str().expect("started_at");
    assert!(started.len() == 20 && started.ends_with('Z'), "{started}");
}

#[tokio::test]
async fn status_of_a_fresh_node_is_mostly_null() {
    let status = get(&router(ApiState::new(), Default::default()), "/v1/status")
        .await
        .json();
    for field in [
        "public_ip",
        "subnet",
        "mtu",
        "lease_expires_at",
        "lease_expires_in_seconds",
    ] {
        assert_eq!(status[field], Value::Null, "{field}");
    }
    assert_eq!(status["ready"], false);
    assert_eq!(status["store"]["state"], "connecting");
    assert_eq!(
        status["not_ready_reason"],
        "not ready: no lease held, backend not initialised, subnet.env not written"
    );
}

#[tokio::test]
async fn leases_are_listed_by_subnet_with_the_own_one_marked() {
    let answer = get(&populated_router(), "/v1/leases").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let leases = body["leases"].as_array().expect("leases");
    let subnets: Vec<&str> = leases
        .iter()
        .map(|l| l["subnet"].as_str().expect("subnet"))
        .collect();
    assert_eq!(
        subnets,
        [
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.3.0/24",
            "10.244.4.0/24"
        ]
    );
    let own: Vec<bool> = leases.iter().map(|l| l["own"] == true).collect();
    assert_eq!(own, [true, false, false, false]);
    assert_eq!(
        keys(&leases[0]),
        [
            "backend_data",
            "backend_type",
            "expires_at",
            "invalid",
            "own",
            "public_ip",
            "subnet"
        ]
    );
    assert!(leases.iter().all(|l| l["invalid"].is_null()));
    assert_eq!(
        leases[1]["backend_data"],
        json!({"VNI": 1, "VtepMAC": "0e:2a:5b:11:22:33"})
    );
    assert_eq!(leases[1]["public_ip"], "192.168.1.2");
    assert!(leases[1]["expires_at"].is_string());
    assert_eq!(leases[3]["expires_at"], Value::Null, "a reservation");
}

#[tokio::test]
async fn peers_show_state_programming_and_errors() {
    let answer = get(&populated_router(), "/v1/peers").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let peers = body["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 3);
    assert_eq!(
        keys(&peers[0]),
        [
            "backend_data",
            "backend_type",
            "health",
            "last_error",
            "programmed",
            "public_ip",
            "state",
            "state_since",
            "subnet",
        ]
    );
    let states: Vec<&str> = peers
        .iter()
        .map(|p| p["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["programmed", "error", "pending"]);
    assert_eq!(
        peers[0]["programmed"],
        "route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    );
    assert_eq!(peers[0]["last_error"], Value::Null);
    assert_eq!(
        peers[1]["last_error"]["message"],
        "neighbour 10.244.3.0: permission denied"
    );
    assert!(peers[1]["last_error"]["since"].is_string());
    assert_eq!(peers[2]["programmed"], "");
}

#[tokio::test]
async fn plugins_show_identity_and_counts() {
    let answer = get(&populated_router(), "/v1/plugins").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    let plugin = &body["plugins"][0];
    assert_eq!(
        keys(plugin),
        [
            "calls",
            "capabilities",
            "denied",
            "last_error",
            "name",
            "restarts",
            "sha256",
            "source",
            "traps",
            "version",
            "wit_version",
        ]
    );
    assert_eq!(plugin["name"], "vxlan");
    assert_eq!(plugin["capabilities"], json!(["links", "routes"]));
    assert_eq!(plugin["calls"], json!({"init": 1, "on-leases": 1}));
    assert_eq!(plugin["denied"], json!({"routes": 1}));
    assert_eq!(plugin["traps"], 1);
    assert_eq!(plugin["restarts"], 1);
    assert_eq!(plugin["last_error"]["message"], "wasm trap: unreachable");
}

#[tokio::test]
async fn empty_lists_are_empty_arrays() {
    let router = router(ApiState::new(), Default::default());
    assert_eq!(
        get(&router, "/v1/leases").await.json(),
        json!({"leases": []})
    );
    assert_eq!(get(&router, "/v1/peers").await.json(), json!({"peers": []}));
    assert_eq!(
        get(&router, "/v1/plugins").await.json(),
        json!({"plugins": []})
    );
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let router = populated_router();
    for path in [
        "/index.html",
        "/assets/",
        "/v1",
        "/v2/status",
        "/v1/status/",
        "/v1/peers/10.244.2.0-24",
    ] {
        let answer = get(&router, path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.content_type().starts_with("application/json"));
        assert_eq!(
            answer.json(),
            json!({"error": format!("no such endpoint: {path}")})
        );
    }
}

#[tokio::test]
async fn other_methods_get_a_json_405_with_allow() {
    let router = populated_router();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        for path in twill_api::paths() {
            let answer = request(&router, method.clone(), path).await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                answer.json(),
                json!({"error": format!("method {method} not allowed on {path}")})
            );
            let allow = answer.headers.get("allow").expect("an Allow header");
            assert_eq!(allow, "GET,HEAD", "{method} {path}");
        }
    }
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let answer = request(&populated_router(), Method::HEAD, "/v1/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.is_empty());
}

#[tokio::test]
async fn a_query_string_is_ignored() {
    let answer = get(&populated_router(), "/v1/peers?state=error").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["peers"].as_array().map(Vec::len), Some(3));
}

/// Every family the issue asks for, with its type, as the text format names it.
const FAMILIES: [(&str, &str); 22] = [
    ("twill_leases_known", "gauge"),
    ("twill_peers", "gauge"),
    ("twill_lease_events_total", "counter"),
    ("twill_plugin_calls_total", "counter"),
    ("twill_plugin_call_duration_seconds", "histogram"),
    ("twill_plugin_denied_host_calls_total", "counter"),
    ("twill_plugin_traps_total", "counter"),
    ("twill_plugin_restarts_total", "counter"),
    ("twill_netlink_operations_total", "counter"),
    ("twill_netlink_errors_total", "counter"),
    ("twill_etcd_watch_connects_total", "counter"),
    ("twill_lease_reclaims_total", "counter"),
    ("twill_subnet_moves_total", "counter"),
    ("twill_own_lease_expiry_timestamp_seconds", "gauge"),
    ("twill_store_unreachable_seconds", "gauge"),
    ("twill_udp_packets_total", "counter"),
    ("twill_udp_bytes_total", "counter"),
    ("twill_udp_dropped_packets_total", "counter"),
    ("twill_peer_reachable", "gauge"),
    ("twill_peer_rtt_seconds", "gauge"),
    ("twill_peers_unreachable", "gauge"),
    ("twill_peer_probes_total", "counter"),
];

#[tokio::test]
async fn metrics_has_every_family_in_the_text_format() {
    // The per-peer health families have series (and so appear) once a probe decided.
    let (state, metrics) = populated();
    state.peer_probed(
        "10.244.2.0/24".parse().expect("subnet"),
        twill_api::ProbeResult::Answered(std::time::Duration::from_millis(1)),
    );
    let answer = get(&router(state, metrics), "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = &answer.body;
    for (name, kind) in FAMILIES {
        let type_line = format!("# TYPE {name} {kind}\n");
        assert!(
            text.contains(&type_line),
            "missing {type_line:?} in\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    let type_lines = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(type_lines, FAMILIES.len(), "unexpected families in\n{text}");
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn metrics_follow_state_and_records() {
    let (state, metrics) = populated();
    let text = metrics.encode(&state).expect("encode");
    assert_eq!(sample(&text, "twill_leases_known"), 4.0);
    assert_eq!(sample(&text, r#"twill_peers{state="pending"}"#), 1.0);
    assert_eq!(sample(&text, r#"twill_peers{state="programmed"}"#), 1.0);
    assert_eq!(sample(&text, r#"twill_peers{state="error"}"#), 1.0);
    assert_eq!(
        sample(&text, r#"twill_lease_events_total{kind="added"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_plugin_calls_total{plugin="vxlan",function="init"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_plugin_call_duration_seconds_bucket{function="init",le="0.005"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_plugin_call_duration_seconds_count{function="on-leases"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_plugin_denied_host_calls_total{capability="routes"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"twill_plugin_traps_total{plugin="vxlan"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"twill_plugin_restarts_total{plugin="vxlan"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_netlink_operations_total{kind="replace_neighbour"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_netlink_errors_total{kind="replace_neighbour"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, "twill_etcd_watch_connects_total"), 1.0);
    assert_eq!(sample(&text, "twill_lease_reclaims_total"), 1.0);
    assert_eq!(
        sample(&text, r#"twill_udp_packets_total{direction="in"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"twill_udp_bytes_total{direction="in"}"#),
        1400.0
    );
    assert_eq!(
        sample(&text, r#"twill_udp_packets_total{direction="out"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            r#"twill_udp_dropped_packets_total{reason="no_route"}"#
        ),
        1.0
    );
    let expiry = sample(&text, "twill_own_lease_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        (expiry - now - 86_400.0).abs() < 60.0,
        "expiry {expiry}, now {now}"
    );

    // The gauges follow the state at every scrape.
    state.peer_removed(common::subnet("10.244.3.0/24"));
    state.set_own_lease_expiry(None);
    let text = metrics.encode(&state).expect("encode");
    assert_eq!(sample(&text, r#"twill_peers{state="error"}"#), 0.0);
    assert_eq!(
        sample(&text, "twill_own_lease_expiry_timestamp_seconds"),
        0.0
    );
}

#[tokio::test]
async fn fresh_metrics_have_the_fixed_series_at_zero() {
    let text = Metrics::new().encode(&ApiState::new()).expect("encode");
    for series in [
        "twill_leases_known",
        r#"twill_peers{state="pending"}"#,
        r#"twill_lease_events_total{kind="removed"}"#,
        "twill_etcd_watch_connects_total",
        "twill_lease_reclaims_total",
        r#"twill_udp_bytes_total{direction="out"}"#,
        "twill_own_lease_expiry_timestamp_seconds",
    ] {
        assert_eq!(sample(&text, series), 0.0, "{series}");
    }
}

#[tokio::test]
async fn the_health_router_serves_only_health() {
    let (state, _) = populated();
    let router = health_router(state);
    assert_eq!(get(&router, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&router, "/readyz").await.status, StatusCode::OK);
    for path in ["/v1/status", "/metrics"] {
        let answer = get(&router, path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.json()["error"].is_string());
    }
    let answer = request(&router, Method::POST, "/healthz").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_lease_the_node_does_not_program_says_why_and_is_counted() {
    let (state, metrics) = common::populated();
    state.lease_invalid(common::subnet("10.244.3.0/24"), "public_ip");
    state.lease_invalid(common::subnet("10.244.4.0/24"), "public_ip");
    // Unknown subnets are ignored.
    state.lease_invalid(common::subnet("10.244.99.0/24"), "vtep_mac");
    let router = twill_api::router(state.clone(), metrics.clone());
    let body = get(&router, "/v1/leases").await.json();
    let invalid: Vec<Value> = body["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["invalid"].clone())
        .collect();
    assert_eq!(
        invalid,
        [
            Value::Null,
            Value::Null,
            json!("public_ip"),
            json!("public_ip")
        ]
    );
    let text = metrics.encode(&state).expect("encode");
    assert_eq!(
        sample(&text, r#"twill_leases_invalid{reason="public_ip"}"#),
        2.0
    );
    // A later event for the subnet starts it over as valid; the gauge follows.
    state.apply_lease_event(&twill_core::lease::LeaseEvent::Added(common::lease(
        "10.244.3.0/24",
        [192, 168, 1, 3],
        None,
    )));
    state.apply_lease_event(&twill_core::lease::LeaseEvent::Removed(common::lease(
        "10.244.4.0/24",
        [192, 168, 1, 4],
        None,
    )));
    let text = metrics.encode(&state).expect("encode");
    assert!(
        !text.contains("twill_leases_invalid{"),
        "no reason has a lease any more:\n{text}"
    );
}

#[tokio::test]
async fn peer_health_follows_the_probes() {
    use std::time::Duration;
    use twill_api::ProbeResult;
    let (state, metrics) = populated();
    let router = router(state.clone(), metrics.clone());
    let two: twill_core::Subnet = "10.244.2.0/24".parse().expect("subnet");
    let three: twill_core::Subnet = "10.244.3.0/24".parse().expect("subnet");
    let health = |body: &Value, i: usize| body["peers"][i]["health"].clone();

    // Undecided: no health, no series, counted as unchecked.
    let peers = get(&router, "/v1/peers").await.json();
    assert_eq!(health(&peers, 0), Value::Null);
    let status = get(&router, "/v1/status").await.json();
    assert_eq!(
        status["peer_health"],
        json!({"reachable": 0, "unreachable": 0, "unchecked": 3})
    );

    // An answer decides at once.
    assert_eq!(
        state.peer_probed(two, ProbeResult::Answered(Duration::from_micros(1500))),
        Some(true)
    );
    let peers = get(&router, "/v1/peers").await.json();
    let h = health(&peers, 0);
    assert_eq!(h["reachable"], true);
    assert_eq!(h["rtt_ms"], 1.5);
    assert_eq!(h["lost_in_a_row"], 0);
    let since = h["since"].clone();

    // Two losses keep it reachable (with the last RTT); the third makes it unreachable.
    assert_eq!(state.peer_probed(two, ProbeResult::Lost), None);
    assert_eq!(state.peer_probed(two, ProbeResult::Lost), None);
    let h = health(&get(&router, "/v1/peers").await.json(), 0);
    assert_eq!(
        (h["reachable"].clone(), h["lost_in_a_row"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(h["since"], since, "since stays while reachability does");
    assert_eq!(state.peer_probed(two, ProbeResult::Lost), Some(false));
    let h = health(&get(&router, "/v1/peers").await.json(), 0);
    assert_eq!(h["reachable"], false);
    assert_eq!(h["rtt_ms"], Value::Null);

    // A new peer that never answers is decided only after three losses.
    assert_eq!(state.peer_probed(three, ProbeResult::Lost), None);
    assert_eq!(state.peer_probed(three, ProbeResult::Lost), None);
    assert_eq!(
        health(&get(&router, "/v1/peers").await.json(), 1),
        Value::Null
    );
    assert_eq!(state.peer_probed(three, ProbeResult::Lost), Some(false));

    let text = metrics.encode(&state).expect("encode");
    assert_eq!(
        sample(&text, r#"twill_peer_reachable{subnet="10.244.2.0/24"}"#),
        0.0
    );
    assert_eq!(sample(&text, "twill_peers_unreachable"), 2.0);
    assert!(
        !text.contains("twill_peer_rtt_seconds{"),
        "no RTT while unreachable"
    );

    // Answers again; a removed peer takes its series with it.
    assert_eq!(
        state.peer_probed(two, ProbeResult::Answered(Duration::from_millis(2))),
        Some(true)
    );
    state.peer_removed(three);
    let text = metrics.encode(&state).expect("encode");
    assert_eq!(
        sample(&text, r#"twill_peer_reachable{subnet="10.244.2.0/24"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"twill_peer_rtt_seconds{subnet="10.244.2.0/24"}"#),
        0.002
    );
    assert!(!text.contains("10.244.3.0/24"), "{text}");
    assert_eq!(sample(&text, "twill_peers_unreachable"), 0.0);
    let status = get(&router, "/v1/status").await.json();
    assert_eq!(
        status["peer_health"],
        json!({"reachable": 1, "unreachable": 0, "unchecked": 1})
    );
    // The resync's re-handing of a peer keeps its health.
    let peers = get(&router, "/v1/peers").await.json();
    assert_eq!(health(&peers, 0)["reachable"], true);
}
