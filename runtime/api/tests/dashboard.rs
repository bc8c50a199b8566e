//! The dashboard through the router, without a socket: `/` is the page, every asset it
//! links loads with the right type, the page stays on this origin (no CDN), and the
//! endpoints its script polls exist.

mod common;

use axum::http::{Method, StatusCode};
use twill_api::{asset_paths, paths};

use common::{get, populated_router, request};

/// Every `href="/..."` and `src="/..."` in `html`.
fn links(html: &str) -> Vec<&str> {
    ["href=\"", "src=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|link| link.starts_with('/'))
        .collect()
}

#[tokio::test]
async fn the_root_is_the_dashboard_page() {
    let answer = get(&populated_router(), "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "text/html; charset=utf-8");
    assert!(
        answer.body.starts_with("<!doctype html>"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("<title>twill</title>"));
    let csp = answer.headers["content-security-policy"]
        .to_str()
        .expect("ASCII");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(answer.headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn every_asset_the_page_links_loads_with_its_type() {
    let router = populated_router();
    let page = get(&router, "/").await.body;
    let linked: Vec<&str> = links(&page)
        .into_iter()
        .filter(|l| l.starts_with("/assets/"))
        .collect();
    let mut served = asset_paths();
    served.sort_unstable();
    let mut wanted = linked.clone();
    wanted.sort_unstable();
    assert_eq!(wanted, served, "the page links exactly the served assets");

    for path in linked {
        let answer = get(&router, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        let expected = match path.rsplit_once('.').map(|(_, ext)| ext) {
            Some("css") => "text/css; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            other => panic!("{path}: no expected type for {other:?}"),
        };
        assert_eq!(answer.content_type(), expected, "{path}");
        assert!(answer.body.len() > 100, "{path} is nearly empty");
    }
}

#[tokio::test]
async fn the_page_stays_on_this_origin() {
    // Cluster nodes often have no internet: nothing may come from elsewhere.
    let router = populated_router();
    for path in ["/"].into_iter().chain(asset_paths()) {
        // The SVG namespace is a name, not a fetch.
        let body = get(&router, path)
            .await
            .body
            .replace("\"http://www.w3.org/2000/svg\"", "");
        for foreign in ["http://", "https://", "//cdn", "@import"] {
            assert!(!body.contains(foreign), "{path} refers to {foreign}");
        }
    }
    let page = get(&router, "/").await.body;
    for link in links(&page) {
        let served = paths().contains(&link) || asset_paths().contains(&link);
        assert!(served || link.starts_with("data:"), "{link} is not served");
    }
}

#[tokio::test]
async fn the_script_polls_endpoints_that_exist() {
    let router = populated_router();
    let script = get(&router, "/assets/dashboard.js").await.body;
    let polled: Vec<&str> = script
        .split('"')
        .filter(|s| s.starts_with("/v1/"))
        .collect();
    assert_eq!(
        polled,
        ["/v1/status", "/v1/leases", "/v1/peers", "/v1/plugins"]
    );
    for path in polled {
        assert_eq!(get(&router, path).await.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn the_dashboard_answers_head_and_refuses_other_methods() {
    let router = populated_router();
    for path in ["/"].into_iter().chain(asset_paths()) {
        let head = request(&router, Method::HEAD, path).await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        let post = request(&router, Method::POST, path).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED, "POST {path}");
        assert!(post.json()["error"].is_string());
    }
    assert_eq!(
        get(&router, "/assets/nope.js").await.status,
        StatusCode::NOT_FOUND
    );
}
