//! The feed loop: registry feed in, [`Fleet`](crate::fleet::Fleet) updated,
//! registry probed. Only moves messages.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use futures::StreamExt;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::{AgentAddress, proto, subject};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::fleet::Rejection;
use crate::metrics::{MonitorMetrics, RejectReason, SharedFleet};

/// What the loop needs.
pub(crate) struct FeedSettings {
    pub(crate) registry: AgentAddress,
    pub(crate) probe_interval: Duration,
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Asks the registry to publish a snapshot now; true if it answered.
async fn request_snapshot(client: &async_nats::Client, registry: &AgentAddress) -> bool {
    let request = async_nats::client::Request::new().timeout(Some(Duration::from_secs(2)));
    client
        .send_request(subject::snapshot_request(registry), request)
        .await
        .is_ok()
}

/// Follows the feed until `shutdown`.
pub(crate) async fn follow(
    settings: FeedSettings,
    client: async_nats::Client,
    fleet: SharedFleet,
    metrics: Arc<MonitorMetrics>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut feed = client
        .subscribe(subject::agent_operations(&settings.registry))
        .await?;
    let mut probes = tokio::time::interval(settings.probe_interval);
    probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut connection = tokio::time::interval(Duration::from_millis(500));
    let mut caught_up = false;
    let mut logged_decode_error = false;
    let mut was_connected = false;
    info!(registry = %settings.registry, "following the agent_operations feed");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            message = feed.next() => {
                let Some(message) = message else { break };
                metrics.feed_messages.inc();
                let decoded: proto::AgentOperations = match codec::decode(&message.payload, MAX_MESSAGE_BYTES) {
                    Ok(decoded) => decoded,
                    Err(err) => {
                        metrics.reject(RejectReason::undecodable);
                        if !logged_decode_error {
                            warn!(error = %err, subject = %message.subject, "dropping undecodable feed message (further ones are only counted)");
                            logged_decode_error = true;
                        }
                        continue;
                    }
                };
                let (rejections, last_snapshot) = {
                    let mut fleet = fleet.lock();
                    let before = fleet.last_snapshot();
                    let rejections = fleet.apply(&decoded, Instant::now());
                    (rejections, (fleet.last_snapshot() != before).then_some(()))
                };
                for rejection in rejections {
                    metrics.reject(match rejection {
                        Rejection::InvalidRecord => RejectReason::invalid_record,
                        Rejection::FleetFull => RejectReason::fleet_full,
                        Rejection::TooManyOperations => RejectReason::too_many_operations,
                        Rejection::WrongRegistry => RejectReason::wrong_registry,
                    });
                }
                metrics.last_feed_message.set(unix_now());
                if last_snapshot.is_some() {
                    metrics.last_snapshot.set(unix_now());
                    caught_up = true;
                }
            }
            _ = probes.tick() => {
                // `ping` answers in a few bytes whatever the fleet's size; `api`
                // carries the main session's data (every record), which past a
                // few thousand agents exceeds NATS's payload limit and would
                // report a healthy registry as unreachable.
                let reachable = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request(subject::ping(&settings.registry), bytes::Bytes::new()),
                )
                .await
                .is_ok_and(|reply| reply.is_ok());
                metrics.registry_reachable.set(i64::from(reachable));
                if reachable && !caught_up && request_snapshot(&client, &settings.registry).await {
                    info!("asked the registry for a snapshot to catch up");
                }
            }
            _ = connection.tick() => {
                let connected = client.connection_state() == State::Connected;
                metrics.nats_connected.set(i64::from(connected));
                if connected && !was_connected {
                    // After a (re)connect, changes may have been missed: catch up at once.
                    caught_up = false;
                    if request_snapshot(&client, &settings.registry).await {
                        info!("asked the registry for a snapshot after connecting");
                    }
                }
                was_connected = connected;
            }
        }
    }
    Ok(())
}
