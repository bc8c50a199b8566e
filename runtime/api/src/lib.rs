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
use std::time::Duration;

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
pub use state::{ApiState, NodeInfo, NotReady, ProbeResult};

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

/// How many connections one listener serves at once; more are closed at accept
/// (security review M-5: idle sockets must not exhaust the daemon's file descriptors).
pub const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send a request's head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives (keep-alive included); clients reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The largest request body accepted (every endpoint is a GET).
pub const BODY_LIMIT: usize = 16 * 1024;

/// Serve `router` on `listener` until `shutdown` completes: at most
/// [`MAX_CONNECTIONS`] connections, each with [`HEADER_READ_TIMEOUT`] for a request's
/// head and [`CONNECTION_LIFETIME`] in all, bodies up to [`BODY_LIMIT`]. On a loopback
/// listener, a `Host` header that names neither an address nor `localhost` is refused
/// (421), so a web page cannot read the API through DNS rebinding.
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    let mut router = router.layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT));
    if addr.ip().is_loopback() {
        router = router.layer(axum::middleware::from_fn(loopback_host_only));
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_logged = false;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors or a connection reset before accept: wait a little.
                Err(e) => {
                    tracing::debug!(%addr, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(%addr, %peer, "{MAX_CONNECTIONS} connections open; closing new ones until some end");
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A connection past its lifetime is simply dropped (closed).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                tracing::debug!(%peer, "HTTP connection: {e}");
            }
            drop(slot);
        });
    }
}

/// Refuse (421) a request whose `Host` is a name other than `localhost`.
async fn loopback_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if host_is_local(host) {
        next.run(request).await
    } else {
        (
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            Json(model::ErrorBody {
                error: format!(
                    "Host {host:?} is not this node's loopback API (use 127.0.0.1 or localhost)"
                ),
            }),
        )
            .into_response()
    }
}

/// Whether a `Host` header value names an IP address or `localhost` (with any port).
fn host_is_local(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split(']')
            .next()
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(
            host,
            |(h, port)| {
                if port.parse::<u16>().is_ok() { h } else { host }
            },
        )
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// [`bind`] `addr`, then [`serve_on`] it.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_on(bind(addr).await?, router, shutdown).await
}
