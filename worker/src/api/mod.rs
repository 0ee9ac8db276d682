//! The HTTP API, served by `carepath run --listen ADDR` beside the worker.
//!
//! - [`inbound`]: gateways' webhooks: a family's "STOP" SMS opts their number out;
//! - [`problem`]: errors as `application/problem+json` (RFC 9457);
//! - `GET /healthz`: the process answers and its database is reachable.
//!
//! Request bodies are limited ([`BODY_LIMIT`]) and requests time out ([`TIMEOUT`]); the
//! server stops accepting on SIGINT/SIGTERM and finishes the requests in hand.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::runtime::Runtime;
use crate::store::{OutboxFilter, Storage};
use crate::worker::Wake;

pub mod inbound;
pub mod problem;

pub use problem::Problem;

/// The largest request body accepted: a family's enrolment is a few kilobytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a request may take before it is answered 408.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct Api<S: Storage> {
    /// The runtime: store, pathways and clock.
    pub runtime: Arc<Runtime<S>>,
    /// The secret that signs GatewayAPI's inbound SMS webhooks, when configured.
    pub gatewayapi_secret: Option<String>,
}

impl<S: Storage> Clone for Api<S> {
    fn clone(&self) -> Self {
        Api {
            runtime: self.runtime.clone(),
            gatewayapi_secret: self.gatewayapi_secret.clone(),
        }
    }
}

/// The routes.
pub fn router<S: Storage + 'static>(api: Api<S>) -> Router {
    Router::new()
        .route("/healthz", get(healthz::<S>))
        .route("/v1/inbound/sms/gatewayapi", post(inbound::gatewayapi::<S>))
        .fallback(|| async { Problem::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            TIMEOUT,
        ))
        .with_state(api)
}

/// Serves `router` on `listener` until `wake` is told to stop.
pub async fn serve(listener: TcpListener, router: Router, wake: Wake) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { wake.stopped().await })
        .await
}

async fn healthz<S: Storage>(State(api): State<Api<S>>) -> Result<&'static str, Problem> {
    api.runtime
        .store()
        .outbox(&OutboxFilter {
            limit: Some(1),
            ..OutboxFilter::default()
        })
        .await
        .map_err(|e| Problem::unavailable(&format!("the database does not answer: {e}")))?;
    Ok("ok\n")
}
