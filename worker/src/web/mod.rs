//! The web view: the pages coordinators and professionals read the running system by, served
//! by `carepath run --listen` under `/` beside the API.
//!
//! - [`session`]: sign-in with an API token, a session cookie (HttpOnly, SameSite=Strict,
//!   Secure behind TLS), a CSRF token on every form; the token's scopes and pathways apply;
//! - [`layout`]: the page shell, Danish and English words, times and the style sheet;
//! - [`overview`]: *Overblik*, every handoff and activity past its deadline, oldest first;
//! - [`families`]: *Familier* and *Familie*, the search and one family's whole record, with
//!   hold, resume and assigning a contact;
//! - [`outbox`]: *Udbakke*, dead and held notices, with retry;
//! - [`pathways`]: *Forløb*, each pathway drawn, with its catalogue entry;
//! - [`capacity`]: *Kapacitet*, the coming weeks' notices per role (see [`crate::forecast`]).
//!
//! Server-rendered HTML (maud), no script the pages need, every asset served from here.
//! Sensitive fields are never shown; addresses are masked for viewers who cannot change them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::api::Api;
use crate::store::{AuditEntry, Storage};

pub mod capacity;
pub mod families;
pub mod layout;
pub mod outbox;
pub mod overview;
pub mod pathways;
pub mod session;

pub use session::{Sessions, Viewer};

/// What the pages share: the API's runtime and tokens, the sessions, the capacity forecast.
pub struct Web<S: Storage> {
    /// The API's state: runtime, tokens, the worker's wake-up.
    pub api: Api<S>,
    /// Signed-in viewers.
    pub sessions: Arc<Sessions>,
    /// The last forecast per pathway restriction.
    pub capacity: Arc<capacity::Cache>,
}

impl<S: Storage> Clone for Web<S> {
    fn clone(&self) -> Self {
        Web {
            api: self.api.clone(),
            sessions: self.sessions.clone(),
            capacity: self.capacity.clone(),
        }
    }
}

impl<S: Storage> Web<S> {
    /// Writes a line of the audit log as `actor` (`web NAME`); a failure to write it is
    /// logged, not shown: what was done is done.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        reference: Option<&str>,
        instance_id: Option<i64>,
        detail: Option<String>,
    ) {
        let entry = AuditEntry {
            at: self.api.runtime.clock().now(),
            actor: actor.to_string(),
            action: action.into(),
            reference: reference.map(str::to_string),
            instance_id,
            detail,
            outcome: "ok".into(),
        };
        if let Err(e) = self.api.runtime.store().append_audit(&entry).await {
            tracing::error!(error = %e, action, "the audit log did not take a web action");
        }
    }
}

/// The pages, to merge into the API's router.
pub fn router<S: Storage + 'static>(api: Api<S>) -> Router {
    // The API's access log: the route template, never the path (a family's reference).
    let logged = axum::middleware::from_fn_with_state(api.clone(), crate::api::access_log::<S>);
    let web = Web {
        api,
        sessions: Arc::default(),
        capacity: Arc::default(),
    };
    capacity::warm(&web);
    Router::new()
        .route("/", get(overview::page::<S>))
        .route(
            "/login",
            get(session::login_page::<S>).post(session::login::<S>),
        )
        .route("/logout", post(session::logout::<S>))
        .route("/familier", get(families::search::<S>))
        .route("/familier/{ref}", get(families::family::<S>))
        .route("/familier/{ref}/hold", post(families::hold::<S>))
        .route("/familier/{ref}/resume", post(families::resume::<S>))
        .route("/familier/{ref}/kontakt", post(families::assign::<S>))
        .route("/udbakke", get(outbox::page::<S>))
        .route("/udbakke/{id}/retry", post(outbox::retry::<S>))
        .route("/forloeb", get(pathways::list::<S>))
        .route("/forloeb/{id}", get(pathways::show::<S>))
        .route("/forloeb/{id}/graf.svg", get(pathways::svg::<S>))
        .route(
            "/kapacitet",
            get(capacity::page::<S>).post(capacity::recompute::<S>),
        )
        .route("/static/carepath.css", get(style))
        .layer(axum::middleware::map_response(guarded))
        .layer(logged)
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .with_state(web)
}

/// What the browser is told about every page: carepath's own resources only, never in a
/// frame (no clickjacking of the hold button), no address sent on to another site, the type as
/// given; and, for the pages (which hold families' data), kept in no cache, so the next person
/// at a shared computer cannot go back to them after signing out. Inline styles are allowed:
/// the chart's legend colours its swatches with them; scripts are not, and there are none.
async fn guarded(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    response
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        layout::STYLE,
    )
}
