//! The admin API: an axum router on its own listener (`admin.listen`), for the privacy team
//! and the systems that collect consent. It records consent events, reads a subject's state
//! and history, imports and exports the record of consent, and carries out data subject
//! requests (access, erasure); it serves its OpenAPI document.
//!
//! - [`routes`]: the handlers and the one table of routes.
//! - [`model`]: request and response bodies, with their schemas.
//! - [`problem`]: RFC 9457 errors with a stable reason, the field and the line.
//! - [`auth`]: bearer tokens checked against configured SHA-256 digests.
//! - [`limit`]: a token bucket per admin token.
//! - [`openapi`]: the document, served and checked into `docs/openapi.json`.
//!
//! It owns the HTTP shape of these operations and nothing else: every one of them goes
//! through [`ConsentRecords`], exactly as the `consentry consent` commands do. It must never
//! be reachable through the proxy listener, never accept a proxy caller's API key, never log a
//! token or a subject id, and never write to a store by any other way than `ConsentRecords`.

pub mod auth;
pub mod limit;
pub mod model;
pub mod openapi;
pub mod problem;
pub mod routes;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::config::{AdminConfig, Config};
use crate::consent::requests::ConsentRecords;
use crate::proxy::Gateway;

use self::auth::TokenSet;
use self::limit::RateLimiter;
use self::problem::Problem;

/// Most concurrent connections to the admin listener: a few operators and sync jobs.
pub const MAX_CONNECTIONS: usize = 64;

/// The shared state of the admin API.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Arc<Gateway>,
    tokens: TokenSet,
    limiter: RateLimiter,
    max_body_bytes: u64,
    /// The OpenAPI document, rendered once.
    openapi: Arc<str>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("tokens", &self.inner.tokens)
            .finish_non_exhaustive()
    }
}

/// The admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The settings cannot work.
    #[error("admin API: {0}")]
    Config(String),
}

impl Admin {
    /// The admin API over `gateway`'s record of consent and running policy. Fails without a
    /// token: an admin API nobody can call is a mistake, not a default.
    pub fn new(gateway: Arc<Gateway>, config: &AdminConfig) -> Result<Self, AdminError> {
        config
            .validate()
            .map_err(|e| AdminError::Config(e.to_string()))?;
        let tokens = TokenSet::new(&config.tokens).map_err(AdminError::Config)?;
        if tokens.is_empty() {
            return Err(AdminError::Config(
                "no admin token is configured: add admin.tokens or set CONSENTRY_ADMIN_TOKEN"
                    .to_owned(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                gateway,
                tokens,
                limiter: RateLimiter::new(config.rate_per_second, config.burst),
                max_body_bytes: config.max_body_bytes,
                openapi: openapi::document().into(),
            }),
        })
    }

    /// The record of consent, shared with the request path (its writes invalidate the
    /// request path's cache).
    pub fn records(&self) -> &ConsentRecords {
        &self.inner.gateway.records
    }
}

/// The router: every route of [`routes::table`], each behind [`routes::guard`]; problem+json
/// for unknown routes and methods.
pub fn router(admin: Admin) -> Router {
    let mut router = Router::new();
    for route in routes::table() {
        let state = admin.clone();
        let operation = route.operation.clone();
        let access = route.access;
        let guard = axum::middleware::from_fn(move |req, next| {
            routes::guard(state.clone(), operation.clone(), access, req, next)
        });
        router = router.route(&route.path, route.handler.layer(guard));
    }
    router
        .method_not_allowed_fallback(|| async { Problem::MethodNotAllowed })
        .fallback(|| async { Problem::NotFound })
        .with_state(admin)
}

/// Serves the admin API on `listener` until `shutdown` resolves, then drains it like the
/// proxy listener (same header timeout and grace period; see [`crate::server::serve_http`]).
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let router = router(admin);
    let service = move |_peer| {
        let router = router.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            use tower::ServiceExt;
            router.clone().oneshot(req)
        })
    };
    crate::server::serve_http(listener, config, MAX_CONNECTIONS, None, service, shutdown).await;
}
