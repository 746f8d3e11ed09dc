//! `/metrics` and `/healthz` of the registry. Read-only.

use std::sync::Arc;

use async_nats::connection::State;
use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::RegistryMetrics;

#[derive(Clone)]
struct HttpState {
    metrics: Arc<RegistryMetrics>,
    client: async_nats::Client,
}

/// The router: `/metrics` (classic text, or OpenMetrics when asked) and `/healthz` (200 while
/// connected to NATS and storing its records, 503 otherwise).
pub fn router(metrics: Arc<RegistryMetrics>, client: async_nats::Client) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(HttpState { metrics, client })
}

async fn metrics_handler(
    AxumState(state): AxumState<HttpState>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = ocs_service::exposition::render(&state.metrics.families, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn healthz(AxumState(state): AxumState<HttpState>) -> impl IntoResponse {
    if state.client.connection_state() != State::Connected {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS\n")
    } else if state.metrics.store_failing() {
        // Degraded: it tracks agents, but a restart now would forget changes.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: agent records cannot be written to JetStream KV (retrying)\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}
