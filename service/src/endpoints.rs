//! Serving a service's read-only HTTP endpoints (`/metrics`, `/healthz`):
//! bounded in time and in concurrency, so a slow or greedy scraper cannot
//! pile up work in a service whose job is elsewhere.

use std::time::Duration;

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::timeout::TimeoutLayer;

/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once; more wait their turn.
pub const MAX_CONCURRENT_REQUESTS: usize = 16;

/// The endpoints of a service with no state of its own to report (an
/// agent): `/healthz` is 200 while connected to NATS and 503 otherwise;
/// `/metrics` has the connection's state and traffic.
pub fn connection_router(client: async_nats::Client) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(client): State<async_nats::Client>| async move {
                if client.connection_state() == async_nats::connection::State::Connected {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(
                |State(client): State<async_nats::Client>, headers: HeaderMap| async move {
                    let accept = headers
                        .get(header::ACCEPT)
                        .and_then(|value| value.to_str().ok());
                    let (content_type, body) =
                        crate::exposition::render(&connection_metrics(&client), accept);
                    ([(header::CONTENT_TYPE, content_type)], body)
                },
            ),
        )
        .with_state(client)
}

/// The connection's metrics, read at scrape time.
fn connection_metrics(client: &async_nats::Client) -> Registry {
    let stats = client.statistics();
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    let mut registry = Registry::default();
    registry.register(
        "ocs_nats_connected",
        "1 while connected to NATS",
        ConstGauge::new(i64::from(connected)),
    );
    for (name, help, value) in [
        (
            "ocs_nats_connects",
            "Connections established, the first and every reconnect",
            &stats.connects,
        ),
        (
            "ocs_nats_messages_sent",
            "Messages published",
            &stats.out_messages,
        ),
        (
            "ocs_nats_messages_received",
            "Messages received",
            &stats.in_messages,
        ),
        (
            "ocs_nats_bytes_sent",
            "Payload bytes published",
            &stats.out_bytes,
        ),
        (
            "ocs_nats_bytes_received",
            "Payload bytes received",
            &stats.in_bytes,
        ),
    ] {
        registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
    }
    registry
}

/// Serves `router` on `listener` until `shutdown`, with the limits above.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Compressed for scrapers that accept gzip (Prometheus does): the
    // monitor's /metrics for 100,000 agents is over 100 MiB of text, and
    // the fastest level already shrinks it about tenfold.
    let router = router
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .quality(CompressionLevel::Fastest),
        )
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_request_that_takes_too_long_is_answered_408() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(REQUEST_TIMEOUT * 6).await;
                "late"
            }),
        );
        tokio::spawn(serve(listener, router, CancellationToken::new()));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    }

    #[tokio::test]
    async fn a_scraper_that_accepts_gzip_gets_it_and_others_plain_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let body = "ocs_operation_code 3\n".repeat(1000);
        let router = Router::new().route("/metrics", get(move || async move { body }));
        tokio::spawn(serve(listener, router, CancellationToken::new()));
        let get = |accept_encoding: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!(
                "GET /metrics HTTP/1.1\r\nHost: test\r\n{accept_encoding}Connection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            response
        };
        let gzipped = get("Accept-Encoding: gzip\r\n").await;
        let head = String::from_utf8_lossy(&gzipped[..gzipped.len().min(400)]).to_lowercase();
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(
            gzipped.len() < 2000,
            "{} bytes for 21,000 of text",
            gzipped.len()
        );
        let plain = String::from_utf8(get("").await).unwrap();
        assert!(!plain.to_lowercase().contains("content-encoding"));
        assert!(plain.contains("ocs_operation_code 3"));
    }
}
