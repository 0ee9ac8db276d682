//! The real server on loopback, for the benchmarks that measure it over HTTP.

use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinHandle;

use carepath_worker::api::auth::{TokenConfig, hash_hex};
use carepath_worker::api::{self, ApiConfig, Scope, Tokens};
use carepath_worker::runtime::Runtime;
use carepath_worker::store::SqliteStore;
use carepath_worker::worker::Wake;

/// A server listening on 127.0.0.1.
pub struct Serving {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Stops it.
    pub wake: Wake,
    /// Ends when it has stopped.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Serves `runtime` with one token, `token` named `name` with `scope`; the web view's pages
/// too when `web`.
pub async fn serve(
    runtime: Arc<Runtime<SqliteStore>>,
    name: &str,
    token: &str,
    scope: Scope,
    web: bool,
) -> Result<Serving> {
    let tokens = Tokens::new(
        &ApiConfig {
            users: Vec::new(),
            tokens: vec![TokenConfig {
                name: name.into(),
                sha256: hash_hex(token),
                scopes: [scope].into(),
                pathways: None,
            }],
        },
        &runtime.catalog().pathway_ids(),
    )?;
    let wake = Wake::new();
    let server = api::Api::new(runtime, tokens, None, api::waker(wake.clone(), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let routes = if web {
        api::router(server.clone()).merge(carepath_worker::web::router(server))
    } else {
        api::router(server)
    };
    let task = tokio::spawn(api::serve(listener, routes, wake.clone()));
    Ok(Serving { base, wake, task })
}
