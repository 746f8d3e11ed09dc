//! The feed loop: registry feed in, [`Fleet`](crate::Fleet) updated, change
//! announced, registry probed. Only moves messages.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_nats::connection::State;
use futures::StreamExt;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::{AgentAddress, proto, subject};
use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricFamilies;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::fleet::{Fleet, FleetLimits, Rejection};

/// The fleet, shared between the loop that follows the feed and its readers.
pub type SharedFleet = Arc<Mutex<Fleet>>;

/// An empty shared fleet following the registry at `registry`.
pub fn shared_fleet(registry: &AgentAddress, limits: FleetLimits) -> SharedFleet {
    Arc::new(Mutex::new(Fleet::new(registry, limits)))
}

/// Why a feed message or record was not taken.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    /// Not a protobuf `AgentOperations`, or an unknown version.
    undecodable,
    /// A record with an invalid address, operation name or op code.
    invalid_record,
    /// A new agent while the fleet is at its most agents.
    fleet_full,
    /// More operations than the fleet keeps per agent.
    too_many_operations,
    /// From another registry than the one followed.
    wrong_registry,
    /// From a deposed leader among the registry's replicas.
    deposed_leader,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: RejectReason,
}

/// What the loop reports of the feed and the registry, registered under
/// each service's own prefix.
#[derive(Debug, Default)]
pub struct FeedMetrics {
    messages: Counter,
    rejected: Family<ReasonLabel, Counter>,
    last_feed_message: Gauge<f64, AtomicU64>,
    last_snapshot: Gauge<f64, AtomicU64>,
    registry_reachable: Gauge,
    nats_connected: Gauge,
}

impl FeedMetrics {
    /// The metrics, registered in `families` as `{prefix}_feed_messages_received`
    /// and so on.
    pub fn register(prefix: &str, families: &mut MetricFamilies) -> Self {
        let metrics = FeedMetrics::default();
        families.register(
            format!("{prefix}_feed_messages_received"),
            "agent_operations feed messages received",
            metrics.messages.clone(),
        );
        families.register(
            format!("{prefix}_feed_rejected"),
            "Feed messages (undecodable, wrong_registry, deposed_leader) and records (the rest) not taken, by reason",
            metrics.rejected.clone(),
        );
        families.register(
            format!("{prefix}_last_feed_message_timestamp_seconds"),
            "Unix time of the last feed message taken; 0 before the first",
            metrics.last_feed_message.clone(),
        );
        families.register(
            format!("{prefix}_last_snapshot_timestamp_seconds"),
            "Unix time of the last complete snapshot taken; 0 before the first",
            metrics.last_snapshot.clone(),
        );
        families.register(
            format!("{prefix}_registry_reachable"),
            "1 if the registry answered the last probe, else 0",
            metrics.registry_reachable.clone(),
        );
        families.register(
            format!("{prefix}_nats_connected"),
            "1 while connected to NATS",
            metrics.nats_connected.clone(),
        );
        for reason in [
            RejectReason::undecodable,
            RejectReason::invalid_record,
            RejectReason::fleet_full,
            RejectReason::too_many_operations,
            RejectReason::wrong_registry,
            RejectReason::deposed_leader,
        ] {
            let _ = metrics.rejected.get_or_create(&ReasonLabel { reason });
        }
        metrics
    }

    fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Whether the registry answered the last probe.
    pub fn registry_reachable(&self) -> bool {
        self.registry_reachable.get() == 1
    }

    /// Whether the connection to NATS is up.
    pub fn nats_connected(&self) -> bool {
        self.nats_connected.get() == 1
    }
}

/// What the loop needs.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// The registry whose feed is followed.
    pub registry: AgentAddress,
    /// How often the registry is pinged.
    pub probe_interval: Duration,
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

/// Follows the feed into `fleet` until `shutdown`; after each message that
/// changed the fleet, sends its revision on `changes`.
pub async fn follow(
    settings: FollowSettings,
    client: async_nats::Client,
    fleet: SharedFleet,
    metrics: Arc<FeedMetrics>,
    changes: watch::Sender<u64>,
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
                metrics.messages.inc();
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
                let (rejections, last_snapshot, revision) = {
                    let mut fleet = fleet.lock();
                    let before = fleet.last_snapshot();
                    let rejections = fleet.apply(&decoded, Instant::now());
                    (rejections, (fleet.last_snapshot() != before).then_some(()), fleet.revision())
                };
                changes.send_if_modified(|seen| std::mem::replace(seen, revision) != revision);
                for rejection in rejections {
                    metrics.reject(match rejection {
                        Rejection::InvalidRecord => RejectReason::invalid_record,
                        Rejection::FleetFull => RejectReason::fleet_full,
                        Rejection::TooManyOperations => RejectReason::too_many_operations,
                        Rejection::WrongRegistry => RejectReason::wrong_registry,
                        Rejection::DeposedLeader => RejectReason::deposed_leader,
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
