//! `/metrics` and `/healthz` of the monitor. Read-only.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use ocs_fleet::SharedFleet;

use crate::metrics::MonitorMetrics;

#[derive(Clone)]
struct HttpState {
    metrics: Arc<MonitorMetrics>,
    fleet: SharedFleet,
    stale_after: Duration,
}

/// `/metrics` (classic text, or OpenMetrics when asked) and `/healthz`: 200
/// while a feed message arrived within `stale_after`, 503 otherwise, so a
/// silent registry fails the probe instead of serving stale data as fresh.
pub fn router(metrics: Arc<MonitorMetrics>, fleet: SharedFleet, stale_after: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(HttpState {
            metrics,
            fleet,
            stale_after,
        })
}

async fn metrics_handler(State(state): State<HttpState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = ocs_service::exposition::render(state.metrics.families(), accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let freshness = state
        .fleet
        .lock()
        .freshness(tokio::time::Instant::now(), state.stale_after);
    match freshness {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SeriesDetail;
    use ocs_protocol::proto;
    use parking_lot::Mutex;
    use tokio::time::Instant;

    async fn status(router: &Router) -> StatusCode {
        use tower_service::Service;
        let request = axum::http::Request::get("/healthz")
            .body(axum::body::Body::empty())
            .unwrap();
        router.clone().call(request).await.unwrap().status()
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_follows_feed_freshness() {
        let (registry, fleet) = ocs_fleet::fleet::small_fleet();
        let fleet: SharedFleet = Arc::new(Mutex::new(fleet));
        let metrics = Arc::new(MonitorMetrics::new(
            fleet.clone(),
            SeriesDetail::PerOperation,
        ));
        let router = router(metrics, fleet.clone(), Duration::from_secs(90));
        assert_eq!(status(&router).await, StatusCode::SERVICE_UNAVAILABLE);
        let message = proto::AgentOperations {
            protocol_version: 1,
            registry_address: registry.to_string(),
            ..Default::default()
        };
        fleet.lock().apply(&message, Instant::now());
        assert_eq!(status(&router).await, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(91)).await;
        assert_eq!(status(&router).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
