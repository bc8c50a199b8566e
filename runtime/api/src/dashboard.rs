//! The dashboard: the static files of `web/`, compiled into the binary (no CDN, no
//! build step; cluster nodes often have no internet) and served at `/` and
//! `/assets/...`. The page reads the JSON endpoints itself; nothing here knows the
//! node's state.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page itself.
const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../../web/index.html"),
};

/// What the page loads.
const ASSETS: [Asset; 2] = [
    Asset {
        path: "/assets/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../../web/assets/dashboard.css"),
    },
    Asset {
        path: "/assets/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/assets/dashboard.js"),
    },
];

/// Only our own files and the JSON endpoints of the same origin: no inline script, no
/// third-party anything, and no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The page's route.
pub(crate) fn index_route<S: Clone + Send + Sync + 'static>() -> (&'static str, MethodRouter<S>) {
    route(&INDEX)
}

/// The routes of the page's assets.
pub(crate) fn asset_routes<S: Clone + Send + Sync + 'static>()
-> impl Iterator<Item = (&'static str, MethodRouter<S>)> {
    ASSETS.iter().map(route)
}

/// The paths of the page's assets.
pub(crate) fn asset_paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

fn route<S: Clone + Send + Sync + 'static>(
    asset: &'static Asset,
) -> (&'static str, MethodRouter<S>) {
    (asset.path, get(move || async move { respond(asset) }))
}

fn respond(asset: &Asset) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            // Small files; a new twill must never run an old page.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(CSP),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.body,
    )
        .into_response()
}
