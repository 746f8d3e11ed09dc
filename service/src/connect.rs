//! Connecting to NATS: long-lived services that retry for ever, and the
//! short-lived client that tries once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Messages a subscription buffers for a service before its client drops
/// them (a slow consumer): async-nats's default, 0.65 s of 100,000 agents'
/// heartbeats. Larger is not better for the registry: a heartbeat queued
/// for longer than the registry's own takes to come back (2.5 s) makes it
/// believe it is cut off, and one queued past its agent's deadline is read
/// too late. Drops are counted instead.
pub const SERVICE_SUBSCRIPTION_CAPACITY: usize = 1 << 16;

/// What a connection's client reported going wrong, for a service's metrics.
#[derive(Debug)]
pub struct BusEvents {
    slow_consumer_drops: AtomicU64,
    disconnects: AtomicU64,
    /// Milliseconds after `since` of the last slow-consumer warning.
    last_warning_ms: AtomicU64,
    since: Instant,
}

impl Default for BusEvents {
    fn default() -> Self {
        BusEvents {
            slow_consumer_drops: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            since: Instant::now(),
        }
    }
}

impl BusEvents {
    /// Messages the client dropped because a subscription's buffer was full.
    /// A lower bound: the client reports each drop on a bounded channel of
    /// its own, which may overflow too.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.slow_consumer_drops.load(Ordering::Relaxed)
    }

    /// Times the connection was lost (the server also closes the connection
    /// of a client it finds too slow to read).
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// Counts a drop; warns on the first and then at most once a minute.
    fn slow_consumer(&self, subscription: u64) {
        let dropped = self.slow_consumer_drops.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        let due = dropped == 1 || now_ms.saturating_sub(last) >= 60_000;
        if due
            && self
                .last_warning_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                subscription,
                dropped_so_far = dropped,
                "slow consumer: the NATS client dropped messages this service did not take in time (warned at most once a minute)"
            );
        }
    }
}

/// [`connect_service`] with credentials and TLS settings.
pub async fn connect_service_as(
    nats_url: &str,
    name: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    connect_service_with(
        nats_url,
        name,
        auth,
        SERVICE_SUBSCRIPTION_CAPACITY,
        Arc::default(),
    )
    .await
}

/// [`connect_service_as`] with each subscription buffering `capacity`
/// messages, counting what goes wrong in `events`.
pub async fn connect_service_with(
    nats_url: &str,
    name: &str,
    auth: &NatsAuth,
    capacity: usize,
    events: Arc<BusEvents>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = auth.options().await?;
    options
        .name(name)
        .subscription_capacity(capacity.max(1))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(SERVICE_PING_INTERVAL)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    Event::Connected => info!("connected to NATS"),
                    Event::Disconnected => {
                        events.disconnects.fetch_add(1, Ordering::Relaxed);
                        warn!("disconnected from NATS; reconnecting")
                    }
                    Event::SlowConsumer(sid) => events.slow_consumer(sid),
                    Event::ServerError(err) => warn!(error = %err, "NATS server error"),
                    Event::LameDuckMode => warn!("NATS server entering lame duck mode"),
                    Event::ClientError(_) | Event::Draining | Event::Closed => {}
                }
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
/// The server's refusals of its publishes and subscriptions come back on
/// the [`Refusals`], so that a call the user may not make fails at once
/// instead of waiting out its timeout.
pub async fn connect_client(
    nats_url: &str,
    auth: &NatsAuth,
) -> Result<(async_nats::Client, Refusals), async_nats::ConnectError> {
    let options = auth.options().await?;
    let refusals = Refusals::default();
    let sender = refusals.clone();
    let client = options
        .name("ocs-cli")
        .connection_timeout(Duration::from_secs(3))
        .event_callback(move |event| {
            let sender = sender.clone();
            async move {
                if let Event::ServerError(err) = event {
                    match Refusal::from_server_error(&err.to_string()) {
                        Some(refusal) => sender.note(refusal),
                        None => warn!(error = %err, "NATS server error"),
                    }
                }
            }
        })
        .connect(server_urls(nats_url).as_slice())
        .await?;
    Ok((client, refusals))
}

/// Something the server's permissions refused a client, as its
/// "Permissions Violation" error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A publish (a request is one) to this subject.
    Publish(String),
    /// A subscription to this subject (for a client's own replies, its inboxes).
    Subscription(String),
}

impl Refusal {
    /// Reads a server error such as `Permissions Violation for Publish to
    /// "observatory.faker1.ops.start.acq"`; `None` for any other error.
    pub fn from_server_error(error: &str) -> Option<Refusal> {
        let lower = error.to_ascii_lowercase();
        if !lower.contains("permissions violation") {
            return None;
        }
        let quoted = |after: &str| -> Option<String> {
            let start = lower.find(after)? + after.len();
            let rest = &error[start..];
            Some(rest[..rest.find('"')?].to_owned())
        };
        quoted("publish to \"")
            .map(Refusal::Publish)
            .or_else(|| quoted("subscription to \"").map(Refusal::Subscription))
    }
}

/// The refusals the server sends one client, to whoever waits on them.
#[derive(Debug, Clone)]
pub struct Refusals(tokio::sync::broadcast::Sender<Refusal>);

impl Default for Refusals {
    fn default() -> Self {
        // A client makes one call at a time; a few refusals in flight is plenty.
        Refusals(tokio::sync::broadcast::channel(16).0)
    }
}

impl Refusals {
    /// The first refusal from now on that `pick` picks, as `pick` makes it;
    /// pending forever if none comes. It listens from the call, not from
    /// the first poll, so call it before sending what may be refused.
    pub fn first<T, P>(&self, mut pick: P) -> impl Future<Output = T> + use<T, P>
    where
        P: FnMut(Refusal) -> Option<T>,
    {
        use tokio::sync::broadcast::error::RecvError;
        let mut refusals = self.0.subscribe();
        async move {
            loop {
                match refusals.recv().await {
                    Ok(refusal) => {
                        if let Some(picked) = pick(refusal) {
                            return picked;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        }
    }

    /// Passes a refusal to every waiter (none waiting: nothing to do).
    pub fn note(&self, refusal: Refusal) {
        let _ = self.0.send(refusal);
    }
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

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn a_permissions_violation_names_what_was_refused() {
        assert_eq!(
            Refusal::from_server_error(
                "Permissions Violation for Publish to \"observatory.faker1.ops.start.acq\""
            ),
            Some(Refusal::Publish("observatory.faker1.ops.start.acq".into()))
        );
        assert_eq!(
            Refusal::from_server_error(
                "permissions violation for subscription to \"_INBOX.viewer.abc.*\""
            ),
            Some(Refusal::Subscription("_INBOX.viewer.abc.*".into()))
        );
        assert_eq!(Refusal::from_server_error("Authorization Violation"), None);
        assert_eq!(
            Refusal::from_server_error("Permissions Violation for Publish to \"unterminated"),
            None
        );
    }
}
