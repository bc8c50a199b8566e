//! twill's HTTP API: the axum [`router`] with the read-only JSON endpoints
//! (`/v1/status`, `/v1/leases`, `/v1/peers`, `/v1/plugins`), the health checks
//! (`/healthz`, `/readyz`), `/metrics` in the Prometheus text format and the dashboard
//! (`/`, the files of `web/` compiled in), plus [`serve`] to run it. The daemon owns the truth and pushes it in through [`ApiState`] and
//! [`Metrics`]; nothing here reads the store, the kernel or a plugin, and no request
//! can change anything. The wire format is [`model`], documented in `docs/api.md` and
//! `docs/openapi.json` (a test keeps the two in step with the router).
#![forbid(unsafe_code)]

mod dashboard;
mod error;
mod metrics;
pub mod model;
mod state;
mod time;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use tokio::net::TcpListener;

pub use error::{ApiError, ServeError};
pub use metrics::{Direction, LeaseEventKind, Metrics};
pub use model::{PeerState, Plugin, StoreState};
pub use state::{ApiState, NodeInfo, NotReady};

/// What every handler of the full router can reach.
#[derive(Clone)]
struct Shared {
    state: ApiState,
    metrics: Arc<Metrics>,
}

impl FromRef<Shared> for ApiState {
    fn from_ref(shared: &Shared) -> Self {
        shared.state.clone()
    }
}

/// The full API: health checks, the JSON endpoints, `/metrics` and the dashboard with
/// its assets. Unknown paths answer 404 and known paths with another method than GET
/// (or HEAD) 405, both as JSON.
pub fn router(state: ApiState, metrics: Arc<Metrics>) -> Router {
    with_fallbacks(
        health_routes()
            .into_iter()
            .chain(api_routes())
            .chain([dashboard::index_route()])
            .chain(dashboard::asset_routes())
            .fold(Router::new(), |r, (path, route)| r.route(path, route)),
    )
    .with_state(Shared { state, metrics })
}

/// Only `/healthz` and `/readyz`, for a separate health address (flannel's
/// `--healthz-ip` / `--healthz-port`).
pub fn health_router(state: ApiState) -> Router {
    with_fallbacks(
        health_routes()
            .into_iter()
            .fold(Router::new(), |r, (path, route)| r.route(path, route)),
    )
    .with_state(state)
}

/// Every path of the API that [`router`] serves: what `docs/openapi.json` documents,
/// the dashboard page `/` included. Its assets are [`asset_paths`].
pub fn paths() -> Vec<&'static str> {
    health_routes::<ApiState>()
        .into_iter()
        .map(|(path, _)| path)
        .chain(api_routes().into_iter().map(|(path, _)| path))
        .chain([dashboard::index_route::<ApiState>().0])
        .collect()
}

/// The dashboard's static files (`/assets/...`), which [`router`] serves too. They are
/// the page's internals, not part of the API: `docs/openapi.json` leaves them out.
pub fn asset_paths() -> Vec<&'static str> {
    dashboard::asset_paths().collect()
}

fn health_routes<S>() -> [(&'static str, MethodRouter<S>); 2]
where
    ApiState: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    [("/healthz", get(healthz)), ("/readyz", get(readyz))]
}

fn api_routes() -> [(&'static str, MethodRouter<Shared>); 5] {
    [
        ("/v1/status", get(status)),
        ("/v1/leases", get(leases)),
        ("/v1/peers", get(peers)),
        ("/v1/plugins", get(plugins)),
        ("/metrics", get(metrics)),
    ]
}

fn with_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn healthz() -> Json<model::Health> {
    Json(model::Health {
        status: "ok".to_owned(),
    })
}

async fn readyz(State(state): State<ApiState>) -> Result<Json<model::Health>, ApiError> {
    state.readiness()?;
    Ok(Json(model::Health {
        status: "ready".to_owned(),
    }))
}

async fn status(State(state): State<ApiState>) -> Json<model::Status> {
    Json(state.status())
}

async fn leases(State(state): State<ApiState>) -> Json<model::Leases> {
    Json(model::Leases {
        leases: state.leases(),
    })
}

async fn peers(State(state): State<ApiState>) -> Json<model::Peers> {
    Json(model::Peers {
        peers: state.peers(),
    })
}

async fn plugins(State(state): State<ApiState>) -> Json<model::Plugins> {
    Json(model::Plugins {
        plugins: state.plugins(),
    })
}

async fn metrics(State(shared): State<Shared>) -> Result<Response, ApiError> {
    let body = shared
        .metrics
        .encode(&shared.state)
        .map_err(ApiError::EncodeMetrics)?;
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

/// Open the listening socket, so that a bad address fails before anything is spawned.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serve `router` on `listener` until `shutdown` completes; requests in flight then
/// finish.
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}

/// [`bind`] `addr`, then [`serve_on`] it.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_on(bind(addr).await?, router, shutdown).await
}
