//! Connecting to NATS: long-lived services that retry for ever, and the
//! short-lived client that tries once.

use std::time::Duration;

use async_nats::Event;
use tracing::{info, warn};

use crate::args::NatsAuth;

/// Ping interval of long-running connections: a frozen or partitioned server
/// is noticed within about three intervals instead of minutes.
pub const SERVICE_PING_INTERVAL: Duration = Duration::from_secs(2);

/// Connects a long-running service or agent: retries the first connection and
/// every reconnect forever, notices dead servers within seconds, and logs
/// connection changes (never one line per failed attempt).
pub async fn connect_service(
    nats_url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    connect_service_as(nats_url, name, &NatsAuth::default()).await
}

/// [`connect_service`] with credentials and TLS settings.
pub async fn connect_service_as(
    nats_url: &str,
    name: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = auth.options().await?;
    options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(SERVICE_PING_INTERVAL)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(|event| async move {
            match event {
                Event::Connected => info!("connected to NATS"),
                Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                Event::SlowConsumer(sid) => {
                    warn!(subscription = sid, "slow consumer: messages dropped")
                }
                Event::ServerError(err) => warn!(error = %err, "NATS server error"),
                Event::LameDuckMode => warn!("NATS server entering lame duck mode"),
                Event::ClientError(_) | Event::Draining | Event::Closed => {}
            }
        })
        .connect(server_urls(nats_url).as_slice())
        .await
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`):
/// async-nats reads a single string as one server, so a cluster's URLs are
/// split here and the client fails over between them.
fn server_urls(nats_url: &str) -> Vec<&str> {
    nats_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Connects a short-lived client (the CLI): one attempt, bounded in time.
pub async fn connect_client(
    nats_url: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = auth.options().await?;
    options
        .name("ocs-cli")
        .connection_timeout(Duration::from_secs(3))
        .connect(server_urls(nats_url).as_slice())
        .await
}

/// The largest message the connected server takes (its `max_payload`),
/// which bounds every reply and every message a client accepts; NATS's
/// default before the server has said.
pub fn max_payload(client: &async_nats::Client) -> usize {
    match client.server_info().max_payload {
        0 => ocs_protocol::codec::MAX_MESSAGE_BYTES,
        bytes => bytes,
    }
}

/// Drains the connection (flushing buffered publishes), bounded in time.
pub async fn drain(client: &async_nats::Client) {
    if tokio::time::timeout(Duration::from_secs(3), client.drain())
        .await
        .is_err()
    {
        warn!("draining NATS timed out");
    }
}
