//! Errors: [`ApiError`], the one way a handler fails (a JSON body with a status code,
//! never internals), and [`ServeError`], why the server could not run.

use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::model::ErrorBody;
use crate::state::NotReady;

/// An error answer. Its body is `{"error": "..."}`; an internal error is logged here
/// and answered with a fixed text.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No endpoint at this path (404).
    #[error("no such endpoint: {path}")]
    NotFound {
        /// The request path.
        path: String,
    },
    /// The endpoint exists but not for this method (405).
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// `/readyz` while the node is not ready (503).
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// The metrics registry could not be encoded (500).
    #[error("encode metrics")]
    EncodeMetrics(#[source] std::fmt::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::EncodeMetrics(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error = if status.is_server_error() && !matches!(self, ApiError::NotReady(_)) {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "api request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

/// Why the API server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket has no local address.
    #[error("read the listening socket's address")]
    LocalAddr(#[source] std::io::Error),
    /// The server stopped with an I/O error.
    #[error("serve HTTP on {addr}")]
    Serve {
        /// The address served.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    #[tokio::test]
    async fn an_internal_error_does_not_leak() {
        let response = ApiError::EncodeMetrics(std::fmt::Error).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = to_bytes(response.into_body(), 1024).await.expect("body");
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    }
}
