//! Signing in: an API token, once, for a session cookie.
//!
//! The token is checked against the API's configured tokens; the session carries that
//! token's caller, so the pages see and change exactly what the token may through the API.
//! Sessions live in this process (8 hours; behind a load balancer, keep a viewer on one
//! process). The cookie is HttpOnly and SameSite=Strict, and Secure when the request came over
//! TLS (`X-Forwarded-Proto: https` from the proxy in front). Every form carries the session's
//! CSRF token, and the sign-in form a token of its own cookie.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Web;
use super::layout::{Lang, bare_page, enc};
use crate::api::{Caller, Scope};
use crate::store::{Storage, StoreError};

/// How long a session lasts.
const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The session cookie's name.
const COOKIE: &str = "carepath_session";

/// The sign-in form's own CSRF cookie.
const LOGIN_COOKIE: &str = "carepath_login";

/// Who a caller is in the audit log when it acts through the pages: `web NAME`.
fn actor(caller: &Caller) -> String {
    format!("web {}", caller.name)
}

/// A refusal page, boxed: a response is large, and most calls are not refused.
pub struct Refusal(Box<Response>);

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        *r.0
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// One signed-in viewer.
#[derive(Clone)]
struct Session {
    caller: Arc<Caller>,
    csrf: String,
    lang: Lang,
    expires: Instant,
}

/// The signed-in viewers of this process.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.get(id).cloned()
    }

    fn insert(&self, id: String, session: Session) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, session);
    }

    fn set_lang(&self, id: &str, lang: Lang) {
        if let Some(s) = self
            .by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            s.lang = lang;
        }
    }

    fn remove(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// A signed-in viewer, as a page handler receives it.
pub struct Viewer {
    /// The token's caller: its scopes and pathways.
    pub caller: Arc<Caller>,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The language of the pages.
    pub lang: Lang,
}

impl Viewer {
    /// Whether the viewer may change families (hold, resume, assign, retry).
    pub fn may_write(&self) -> bool {
        self.caller.has(Scope::InstancesWrite)
    }

    /// Whether addresses are shown whole: only to those who may change them.
    pub fn sees_addresses(&self) -> bool {
        self.may_write()
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, given: &str) -> Result<(), Refusal> {
        if constant_time_eq(given.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal(Box::new(refused(
                self.lang,
                StatusCode::FORBIDDEN,
                self.lang.t(
                    "Formularen er udløbet. Gå tilbage, genindlæs siden og prøv igen.",
                    "The form has expired. Go back, reload the page and try again.",
                ),
            ))))
        }
    }

    /// The actor of the audit log's lines.
    pub fn actor(&self) -> String {
        actor(&self.caller)
    }
}

/// A page that says why something was refused.
pub fn refused(lang: Lang, status: StatusCode, why: &str) -> Response {
    let title = lang.t("Ikke muligt", "Not possible");
    (
        status,
        bare_page(
            lang,
            title,
            html! {
                h1 { (title) }
                p role="alert" { (why) }
                p { a href="/" { (lang.t("Til overblikket", "To the overview")) } }
            },
        ),
    )
        .into_response()
}

/// The page shown when the database failed.
pub fn store_failed(lang: Lang, e: &StoreError) -> Response {
    tracing::error!(error = %e, "web view: the database failed");
    refused(
        lang,
        StatusCode::SERVICE_UNAVAILABLE,
        lang.t(
            "Databasen svarer ikke lige nu. Prøv igen om lidt.",
            "The database does not answer just now. Try again shortly.",
        ),
    )
}

impl<S: Storage> FromRequestParts<Web<S>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web<S>) -> Result<Self, Response> {
        let id = cookie(&parts.headers, COOKIE);
        let Some((id, session)) = id.and_then(|id| web.sessions.get(&id).map(|s| (id, s))) else {
            // Back to the page after signing in; a form posted without a session goes back to
            // the overview, since its address answers only a POST.
            let next = if parts.method == axum::http::Method::GET {
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            } else {
                "/"
            }
            .to_string();
            let to = format!(
                "/login?next={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            );
            return Err(Redirect::to(&to).into_response());
        };
        // `?lang=en` or `?lang=da` on any page switches the session's language.
        let asked = parts.uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "lang")
                .and_then(|(_, v)| Lang::parse(&v))
        });
        let lang = match asked {
            Some(l) => {
                web.sessions.set_lang(&id, l);
                l
            }
            None => session.lang,
        };
        Ok(Viewer {
            caller: session.caller,
            csrf: session.csrf,
            lang,
        })
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the request reached the proxy in front over TLS.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn random_token() -> Result<String, Refusal> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| {
        Refusal(Box::new(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no randomness for a session: try again",
            )
                .into_response(),
        ))
    })?;
    Ok(crate::api::auth::hex(&bytes))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where to go after signing in: a path on this site, never another site.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

/// The query of the sign-in page.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    lang: Option<String>,
}

/// `GET /login`: the sign-in form.
pub async fn login_page<S: Storage>(
    State(web): State<Web<S>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Result<Response, Refusal> {
    let lang = q.lang.as_deref().and_then(Lang::parse).unwrap_or_default();
    let nonce = random_token()?;
    Ok(login_form(
        lang,
        &nonce,
        &local_path(q.next.as_deref()),
        None,
        over_tls(&headers),
        web.api.tokens.has_users(),
    ))
}

fn login_form(
    lang: Lang,
    nonce: &str,
    next: &str,
    error: Option<&str>,
    secure: bool,
    users: bool,
) -> Response {
    let title = lang.t("Log ind", "Sign in");
    let hidden = html! {
        input type="hidden" name="_csrf" value=(nonce);
        input type="hidden" name="next" value=(next);
        input type="hidden" name="lang" value=(lang.code());
    };
    let page = bare_page(
        lang,
        title,
        html! {
            h1 { "carepath — " (title) }
            @if let Some(e) = error {
                p.error role="alert" id="login-error" { (e) }
            }
            @if users {
                section aria-labelledby="with-password" {
                    h2 id="with-password" { (lang.t("Med brugernavn og adgangskode", "With a user name and password")) }
                    form.stack method="post" action="/login" {
                        (hidden)
                        p { label for="user" { (lang.t("Brugernavn", "User name")) }
                            input id="user" name="user" required autocomplete="username"; }
                        p { label for="password" { (lang.t("Adgangskode", "Password")) }
                            input type="password" id="password" name="password" required autocomplete="current-password"; }
                        p { button type="submit" id="sign-in-password" { (title) } }
                    }
                }
            }
            section aria-labelledby="with-token" {
                h2 id="with-token" { (lang.t("Med adgangsnøgle", "With an access token")) }
                form.stack method="post" action="/login" {
                    (hidden)
                    p {
                        label for="token" { (lang.t("Adgangsnøgle", "Access token")) }
                        input type="password" id="token" name="token" required autocomplete="off"
                            aria-describedby="token-help" size="50";
                    }
                    p id="token-help" {
                        (lang.t(
                            "Nøglen fra `carepath token new`. Den giver de samme rettigheder og forløb som i API'et.",
                            "The token from `carepath token new`. It gives the same rights and pathways as in the API.",
                        ))
                    }
                    p { button type="submit" id="sign-in-token" { (title) } }
                }
            }
            p {
                @if lang == Lang::Da { a href={"/login?lang=en&next=" (enc(next))} lang="en" { "English" } }
                @else { a href={"/login?lang=da&next=" (enc(next))} lang="da" { "Dansk" } }
            }
        },
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, nonce, "/login", 3600, secure),
        )],
        page,
    )
        .into_response()
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(rename = "_csrf")]
    csrf: String,
    next: Option<String>,
    lang: Option<String>,
}

/// `POST /login`: a known token, or a user's right password, with the read scope starts a
/// session.
pub async fn login<S: Storage>(
    State(web): State<Web<S>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Refusal> {
    let lang = form
        .lang
        .as_deref()
        .and_then(Lang::parse)
        .unwrap_or_default();
    let secure = over_tls(&headers);
    let users = web.api.tokens.has_users();
    let next = local_path(form.next.as_deref());
    let again = |why: &str| -> Result<Response, Refusal> {
        Ok(login_form(
            lang,
            &random_token()?,
            &next,
            Some(why),
            secure,
            users,
        ))
    };
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
        return again(lang.t(
            "Formularen er udløbet: prøv igen.",
            "The form has expired: try again.",
        ));
    }
    let caller = if form.user.is_empty() {
        web.api.tokens.recognise(&form.token)
    } else {
        // Argon2id is slow on purpose: off the async threads.
        let tokens = web.api.tokens.clone();
        let (user, password) = (form.user.clone(), form.password.clone());
        tokio::task::spawn_blocking(move || tokens.sign_in(&user, &password))
            .await
            .ok()
            .flatten()
    };
    let Some(caller) = caller.filter(|c| c.has(Scope::Read)) else {
        tracing::info!(target: "carepath::web", "sign-in refused");
        return again(if form.user.is_empty() {
            lang.t(
                "Adgangsnøglen kendes ikke, eller den må ikke læse. Spørg den, der driver carepath, om en ny.",
                "The token is not known, or may not read. Ask whoever runs carepath for a new one.",
            )
        } else {
            lang.t(
                "Brugernavnet eller adgangskoden er forkert.",
                "The user name or the password is wrong.",
            )
        });
    };
    let id = random_token()?;
    let csrf = random_token()?;
    tracing::info!(target: "carepath::web", caller = %caller.name, "signed in");
    let actor = actor(&caller);
    web.sessions.insert(
        id.clone(),
        Session {
            caller,
            csrf,
            lang,
            expires: Instant::now() + LIFETIME,
        },
    );
    web.audit(&actor, "sign-in", None, None, None).await;
    let mut response = Redirect::to(&next).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(COOKIE, &id, "/", LIFETIME.as_secs(), secure),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", "/login", 0, secure),
    );
    Ok(response)
}

/// A form that carries only the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    #[serde(rename = "_csrf")]
    pub csrf: String,
}

/// `POST /logout`: the session ends.
pub async fn logout<S: Storage>(
    State(web): State<Web<S>>,
    headers: HeaderMap,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    viewer.check_csrf(&form.csrf)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        web.sessions.remove(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(COOKIE, "", "/", 0, over_tls(&headers)),
    );
    Ok(response)
}
