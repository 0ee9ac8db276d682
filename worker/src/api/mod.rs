//! The HTTP API, served by `carepath run --listen ADDR` beside (or apart from) the worker.
//!
//! - [`auth`]: bearer tokens from the configuration, stored hashed, with scopes and an
//!   optional restriction to pathways;
//! - [`audit`]: every write a token makes, a line of the append-only audit log;
//! - [`families`]: a family by its reference: erasure at its request; many families at once;
//!   running families onto a corrected pathway version;
//! - [`instances`]: enrol a family, report events, read, list, hold and resume;
//! - [`pathways`]: the loaded pathways and their graphs;
//! - [`outbox`]: the outbox, and families' opt-outs;
//! - [`inbound`]: gateways' webhooks: a family's "STOP" SMS opts their number out;
//! - [`receipts`]: the SMS gateways' delivery receipts, on each notice's provenance;
//! - [`ingest`]: group commit: events reported together share one durable commit;
//! - [`idempotency`]: a POST repeated with its `Idempotency-Key` gets the first answer;
//! - [`problem`]: errors as `application/problem+json` (RFC 9457);
//! - [`openapi`]: the OpenAPI document, generated from these handlers;
//! - `GET /healthz`, `GET /metrics` (Prometheus).
//!
//! Request bodies are limited ([`BODY_LIMIT`]) and requests time out ([`TIMEOUT`]); the
//! server stops accepting on SIGINT/SIGTERM and finishes the requests in hand. Each request is
//! logged with its route template (never its path or query), status, time and the token's
//! name: no family's data reaches the access log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::runtime::Runtime;
use crate::store::Storage;
use crate::worker::Wake;

pub mod audit;
pub mod auth;
pub mod families;
pub mod idempotency;
pub mod inbound;
pub mod ingest;
pub mod instances;
pub mod openapi;
pub mod outbox;
pub mod pathways;
pub mod problem;
pub mod receipts;

pub use auth::{ApiConfig, Caller, Scope, Tokens};
pub use problem::{Problem, parse_body};

/// The largest request body accepted: a family's enrolment is a few kilobytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a request may take before it is answered 408.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct Api<S: Storage> {
    /// The runtime: store, pathways and clock.
    pub runtime: Arc<Runtime<S>>,
    /// The configured tokens.
    pub tokens: Arc<Tokens>,
    /// The secret shared with the SMS gateway, when configured: GatewayAPI signs its webhooks
    /// (inbound SMS, delivery receipts) with it, and carepath signs CPSMS's receipt URLs.
    pub gateway_secret: Option<String>,
    /// The event committer.
    pub ingest: ingest::Ingest,
    /// Called after a change that may have scheduled work: wakes the worker.
    pub committed: Arc<dyn Fn() + Send + Sync>,
    /// Idempotency keys in use by a request now: a repeat waits for the first answer.
    pub reservations: Arc<idempotency::Reservations>,
    /// The keyword inbound SMS start with on a shared short code, taken off before reading.
    pub inbound_keyword: Option<String>,
}

impl<S: Storage> Clone for Api<S> {
    fn clone(&self) -> Self {
        Api {
            runtime: self.runtime.clone(),
            tokens: self.tokens.clone(),
            gateway_secret: self.gateway_secret.clone(),
            ingest: self.ingest.clone(),
            committed: self.committed.clone(),
            reservations: self.reservations.clone(),
            inbound_keyword: self.inbound_keyword.clone(),
        }
    }
}

impl<S: Storage> Api<S> {
    /// The API over `runtime`, starting its event committer on the current tokio runtime.
    /// `committed` is called when a change may have scheduled work (to wake the worker).
    pub fn new(
        runtime: Arc<Runtime<S>>,
        tokens: Tokens,
        gateway_secret: Option<String>,
        committed: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Api {
            ingest: ingest::Ingest::start(runtime.clone(), committed.clone()),
            runtime,
            tokens: Arc::new(tokens),
            gateway_secret,
            committed,
            reservations: Arc::default(),
            inbound_keyword: None,
        }
    }

    /// Takes `keyword` off the start of inbound SMS (a shared short code's service keyword).
    pub fn with_inbound_keyword(mut self, keyword: Option<String>) -> Self {
        self.inbound_keyword = keyword;
        self
    }

    /// A fresh idempotency key, for an event sent without one.
    fn fresh_key(&self) -> String {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // No entropy: time is unique enough for a key nobody will repeat.
            return format!("gen-{}", jiff::Timestamp::now().as_nanosecond());
        }
        format!("gen-{}", auth::hex(&bytes))
    }
}

/// Wakes the worker of this process and, through its socket, a worker in another process
/// on the same database.
pub fn waker(wake: Wake, db: Option<std::path::PathBuf>) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        wake.notify();
        if let Some(db) = &db {
            crate::worker::wake_other(db);
        }
    })
}

/// The routes.
pub fn router<S: Storage + 'static>(api: Api<S>) -> Router {
    let idempotent = middleware::from_fn_with_state(api.clone(), idempotency::replay::<S>);
    // POSTs whose answer is kept under their Idempotency-Key. Events are not among them: the
    // runtime records each event under its key in the same transaction that applies it.
    let kept = Router::new()
        .route("/v1/instances", post(instances::enrol::<S>))
        .route("/v1/instances/{id}/hold", post(instances::hold::<S>))
        .route("/v1/instances/{id}/resume", post(instances::resume::<S>))
        .route("/v1/opt-outs", post(outbox::opt_out::<S>))
        .route_layer(idempotent);
    // Operators' writes, each a line of the audit log.
    let writes = Router::new()
        .merge(kept)
        .route("/v1/instances/{id}/events", post(instances::event::<S>))
        .route("/v1/families/{ref}/erase", post(families::erase::<S>))
        .route("/v1/families/{ref}/contacts", post(families::assign::<S>))
        .route("/v1/directory", put(families::replace_directory::<S>))
        .route("/v1/bulk", post(families::bulk::<S>))
        .route("/v1/migrations", post(families::migrate::<S>))
        .route_layer(middleware::from_fn_with_state(
            api.clone(),
            audit::record::<S>,
        ));
    Router::new()
        .merge(writes)
        .route("/v1/instances", get(instances::list::<S>))
        .route("/v1/instances/{id}", get(instances::show::<S>))
        .route("/v1/audit", get(audit::log::<S>))
        .route("/v1/directory", get(families::directory::<S>))
        .route("/v1/families/{ref}", get(families::family::<S>))
        .route("/v1/pathways", get(pathways::list::<S>))
        .route("/v1/pathways/{id}", get(pathways::show::<S>))
        .route("/v1/outbox", get(outbox::outbox::<S>))
        .route("/v1/inbound/sms/gatewayapi", post(inbound::gatewayapi::<S>))
        .route(
            "/v1/receipts/sms/gatewayapi",
            post(receipts::gatewayapi::<S>),
        )
        .route(
            "/v1/receipts/sms/cpsms",
            get(receipts::cpsms::<S>).post(receipts::cpsms::<S>),
        )
        .route("/healthz", get(healthz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/openapi.json", get(openapi_json))
        .fallback(|| async { Problem::not_found("no such endpoint: see /openapi.json") })
        .layer(middleware::from_fn_with_state(api.clone(), access_log::<S>))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            TIMEOUT,
        ))
        .layer(middleware::from_fn(problem::shape_refusals))
        .with_state(api)
}

/// Serves `router` on `listener` until `wake` is told to stop.
pub async fn serve(listener: TcpListener, router: Router, wake: Wake) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { wake.stopped().await })
        .await
}

/// A request body, refused as a problem document when it is over [`BODY_LIMIT`].
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|r| body_problem(r.status(), &r.body_text()))
    }
}

fn body_problem(status: StatusCode, text: &str) -> Problem {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            status,
            "body-too-large",
            &format!("the body is over {} KiB", BODY_LIMIT / 1024),
        )
    } else {
        Problem::new(status, "bad-body", text)
    }
}

/// Query parameters, refused as a problem document when they do not fit.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| Problem::bad_query(&e.body_text()))
    }
}

/// Path parameters, refused as a problem document when they do not fit (`/v1/instances/abc`).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad-path", &e.body_text()))
    }
}

/// Logs each request without personal data, and counts it.
pub(crate) async fn access_log<S: Storage>(
    State(api): State<Api<S>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(none)".to_string(), |m| m.as_str().to_string());
    let caller = api.tokens.caller(req.headers()).ok();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    api.runtime.metrics().request(&route, status);
    tracing::info!(
        target: "carepath::access",
        method = %method,
        route = %route,
        status,
        ms = start.elapsed().as_secs_f64() * 1000.0,
        caller = %caller.as_ref().map_or("-", |c| c.name.as_str()),
        "request"
    );
    response
}

/// The process answers and its database takes writes: a small row is written and committed.
#[utoipa::path(
    get, path = "/healthz", operation_id = "health", tag = "operations",
    responses(
        (status = 200, description = "ok", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer or cannot take a write (a full disk)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn healthz<S: Storage>(State(api): State<Api<S>>) -> Result<&'static str, Problem> {
    // A write, not a read: a full disk leaves reads working while nothing can be saved.
    api.runtime
        .store()
        .check_writes(api.runtime.clock().now())
        .await
        .map_err(Problem::store)?;
    Ok("ok\n")
}

/// Metrics in the Prometheus text format: transitions, events, timer lateness, deliveries by
/// channel and result, requests; instances, outbox by status and waiting timers.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn metrics<S: Storage>(
    State(api): State<Api<S>>,
    caller: Arc<Caller>,
) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    let now = api.runtime.clock().now();
    let stats = api
        .runtime
        .store()
        .stats(now)
        .await
        .map_err(Problem::store)?;
    let text = api.runtime.metrics().render(&stats, now);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The OpenAPI document of this API.
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}
