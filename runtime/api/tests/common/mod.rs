//! Shared by the integration tests: a node state with something in every field, and
//! one request through the router without a socket.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use twill_api::{
    ApiState, Direction, LeaseEventKind, Metrics, NodeInfo, Plugin, StoreState, router,
};
use twill_core::{Lease, LeaseAttrs, LeaseEvent, Subnet};

pub fn subnet(text: &str) -> Subnet {
    text.parse().expect("subnet")
}

pub fn lease(text: &str, ip: [u8; 4], ttl: Option<Duration>) -> Lease {
    Lease {
        subnet: subnet(text),
        attrs: LeaseAttrs::new(
            Ipv4Addr::from(ip),
            "vxlan",
            Some(r#"{"VNI":1,"VtepMAC":"0e:2a:5b:11:22:33"}"#),
        )
        .expect("attrs"),
        expires: ttl.map(|ttl| SystemTime::now() + ttl).into(),
    }
}

/// A ready node (10.244.1.0/24) with three peers — one programmed, one in error, one
/// pending — a reservation among the leases, a plugin with calls, a denial, an error,
/// a trap and a restart, and a few of every metric.
pub fn populated() -> (ApiState, Arc<Metrics>) {
    let state = ApiState::new();
    let day = Duration::from_secs(24 * 3600);
    state.set_node(NodeInfo {
        node_name: "node-a".into(),
        public_ip: Some(Ipv4Addr::new(192, 168, 1, 1)),
        interface: "eth0".into(),
        backend_type: "vxlan".into(),
        plugin: "vxlan".into(),
        store_endpoints: vec!["http://127.0.0.1:2379".into()],
    });
    let own = lease("10.244.1.0/24", [192, 168, 1, 1], Some(day));
    let programmed = lease("10.244.2.0/24", [192, 168, 1, 2], Some(day));
    let failing = lease("10.244.3.0/24", [192, 168, 1, 3], Some(day));
    let reserved = lease("10.244.4.0/24", [192, 168, 1, 4], None);
    state.set_subnet(own.subnet);
    state.set_mtu(1450);
    state.set_own_lease_expiry(own.expires.at());
    state.set_store_state(StoreState::Connected);
    state.set_leases([&own, &programmed, &failing]);
    state.apply_lease_event(&LeaseEvent::Added(reserved.clone()));
    for peer in [&programmed, &failing, &reserved] {
        state.peer_pending(peer);
    }
    state.peer_programmed(
        programmed.subnet,
        "route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink",
    );
    state.peer_error(failing.subnet, "neighbour 10.244.3.0: permission denied");
    state.set_plugin(Plugin {
        name: "vxlan".into(),
        version: "0.1.0".into(),
        wit_version: "0.1.0".into(),
        sha256: "0".repeat(64),
        source: "builtin".into(),
        capabilities: vec!["links".into(), "routes".into()],
        ..Plugin::default()
    });
    state.plugin_call("vxlan", "init");
    state.plugin_call("vxlan", "on-leases");
    state.plugin_denied("vxlan", "routes");
    state.plugin_error("vxlan", "on-leases: route 10.0.0.0/8 denied");
    state.plugin_trap("vxlan", "wasm trap: unreachable");
    state.plugin_restart("vxlan");
    state.set_lease_held(true);
    state.set_backend_initialised(true);
    state.set_subnet_env_written(true);

    let metrics = Arc::new(Metrics::new());
    metrics.lease_event(LeaseEventKind::Added);
    metrics.lease_event(LeaseEventKind::Removed);
    metrics.plugin_call("vxlan", "init", Duration::from_millis(3));
    metrics.plugin_call("vxlan", "on-leases", Duration::from_micros(700));
    metrics.denied_host_call("routes");
    metrics.plugin_trap("vxlan");
    metrics.plugin_restart("vxlan");
    metrics.netlink_operation("replace_route", false);
    metrics.netlink_operation("replace_neighbour", true);
    metrics.etcd_watch_connect();
    metrics.lease_reclaimed();
    metrics.udp_packets(Direction::In, 1, 1400);
    metrics.udp_drops_by("no_route", 1);
    (state, metrics)
}

/// The answer to one request: status, headers and body text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn request(router: &Router, method: Method, path: &str) -> Answer {
    let response = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

pub async fn get(router: &Router, path: &str) -> Answer {
    request(router, Method::GET, path).await
}

pub fn populated_router() -> Router {
    let (state, metrics) = populated();
    router(state, metrics)
}
