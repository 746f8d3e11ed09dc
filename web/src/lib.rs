//! The web board: follows the registry's `agent_operations` feed (through
//! `ocs-fleet`, as the operation monitor does) and serves every agent live
//! to browsers, with control of operations for operators.
//!
//! - [`users`]: the users file (Argon2id hashes, roles), sans-I/O;
//! - [`sessions`]: logged-in browsers and their CSRF tokens, sans-I/O;
//! - [`board`]: the rows and the changes a page is sent, sans-I/O;
//! - [`access`]: the shared state and who a request comes from;
//! - `pages`, `events`, `control`: the HTTP handlers (pages and login,
//!   server-sent events, an agent's data and its operations);
//! - [`metrics`], [`config`].
//!
//! The pages are plain HTML, CSS and JavaScript in `assets/`, built into the
//! binary: no build step.

pub mod access;
pub mod board;
pub mod config;
mod control;
mod events;
pub mod metrics;
mod pages;
pub mod sessions;
pub mod users;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderName;
use axum::routing::{get, post};
use ocs_agent::OcsClient;
use ocs_fleet::{FleetLimits, FollowSettings};
use ocs_protocol::AgentAddress;
use ocs_service::skeleton::Started;
use parking_lot::Mutex;

pub use config::Config;

use crate::access::{AccessSettings, WebState};
use crate::metrics::WebMetrics;
use crate::sessions::Sessions;
use crate::users::{Users, UsersError};

/// Most sessions open at once; the oldest go first.
pub const MAX_SESSIONS: usize = 10_000;

/// Why the board stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The users file is unusable.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The trusted header's name is not a header name.
    #[error("--trusted-user-header {0:?} is not a valid header name")]
    Header(String),
    /// The feed subscription failed.
    #[error("cannot subscribe to the feed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}

/// The board's routes over `state`.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(pages::board))
        .route("/agent/{instance_id}", get(pages::agent))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/static/{name}", get(pages::asset))
        .route("/api/me", get(pages::me))
        .route("/api/events", get(events::events))
        .route("/api/agents/{instance_id}", get(control::api))
        .route("/api/agents/{instance_id}/ping", get(control::ping))
        .route(
            "/api/agents/{instance_id}/ops/{op_name}/{action}",
            post(control::operation),
        )
        .route("/healthz", get(pages::healthz))
        .route("/metrics", get(pages::metrics))
        .with_state(state)
}

/// Runs the board until the started service's shutdown.
pub async fn run(config: Config, started: Started) -> Result<(), WebError> {
    let Started {
        client,
        shutdown,
        listener,
        ..
    } = started;
    let users = Users::load(&config.users)?;
    tracing::info!(users = users.len(), file = %config.users.display(), "users loaded");
    let trusted_user_header = config
        .trusted_user_header
        .as_deref()
        .map(|name| HeaderName::try_from(name).map_err(|_| WebError::Header(name.to_owned())))
        .transpose()?;
    let registry = AgentAddress::new(&config.common.address_root, &config.registry);
    let fleet = ocs_fleet::shared_fleet(
        &registry,
        FleetLimits {
            max_agents: config.max_agents,
            max_operations: config.max_operations,
        },
    );
    let metrics = Arc::new(WebMetrics::new());
    let (changes_tx, changes) = tokio::sync::watch::channel(0);
    let state = WebState {
        fleet: fleet.clone(),
        changes,
        client: OcsClient::new(client.clone(), config.common.address_root.clone()),
        users: Arc::new(users),
        sessions: Arc::new(Mutex::new(Sessions::new(
            config.session_lifetime,
            MAX_SESSIONS,
        ))),
        metrics: metrics.clone(),
        settings: Arc::new(AccessSettings {
            trusted_user_header,
            secure_cookies: !config.insecure_cookies,
            session_lifetime: config.session_lifetime,
            stale_after: config.stale_after,
            max_viewers: config.max_viewers,
        }),
        shutdown: shutdown.clone(),
    };
    let http = listener.map(|listener| {
        let router = router(state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    });
    let settings = FollowSettings {
        registry,
        probe_interval: config.probe_interval,
    };
    let followed = ocs_fleet::follow(
        settings,
        client,
        fleet,
        metrics.feed(),
        changes_tx,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Some(http) = http
        && let Ok(served) = http.await
    {
        served?;
    }
    followed?;
    Ok(())
}
