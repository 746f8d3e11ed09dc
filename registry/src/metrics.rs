//! The registry's own Prometheus metrics, in an explicit `prometheus_client` registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as MetricFamilies;

/// Why a heartbeat was dropped.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// Larger than `--max-heartbeat-bytes`.
    oversized,
    /// Not a protobuf heartbeat.
    undecodable,
    /// A protocol version this registry does not read.
    unsupported_version,
    /// A field out of its domain (address, incarnation, op code...).
    invalid,
    /// The payload's address differs from the subject's.
    address_mismatch,
    /// Not newer than the last accepted heartbeat of the incarnation.
    stale,
    /// `seq` further ahead of the last accepted heartbeat than an agent can count.
    seq_jump,
    /// A new address while the table is full.
    table_full,
    /// Faster than `--max-heartbeat-rate` from one address.
    rate_limited,
    /// Discarded by the registry's NATS client because the registry did not
    /// take them in time (its `--heartbeat-buffer` was full): the registry
    /// falls behind. Counted from the client's reports, a lower bound.
    slow_consumer,
}

impl DropReason {
    /// Every reason, to pre-create the series.
    pub const ALL: [DropReason; 10] = [
        DropReason::oversized,
        DropReason::undecodable,
        DropReason::unsupported_version,
        DropReason::invalid,
        DropReason::address_mismatch,
        DropReason::stale,
        DropReason::seq_jump,
        DropReason::table_full,
        DropReason::rate_limited,
        DropReason::slow_consumer,
    ];
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: DropReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

/// Bucket bounds of the expiry lateness histogram, in seconds: fine below
/// 20 ms, where a healthy registry publishes, coarse up to the seconds a
/// starved one takes.
const EXPIRY_LATENESS_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters and gauges the service updates.
pub struct RegistryMetrics {
    /// Every family, for exposition.
    pub(crate) families: MetricFamilies,
    pub(crate) heartbeats_received: Counter,
    pub(crate) heartbeats_dropped: Family<ReasonLabel, Counter>,
    pub(crate) agents: Family<StateLabel, Gauge>,
    pub(crate) expiries: Counter,
    pub(crate) expiry_lateness: Histogram,
    pub(crate) forgotten: Counter,
    pub(crate) feed_messages: Family<KindLabel, Counter>,
    pub(crate) feed_failures: Counter,
    pub(crate) nats_connected: Gauge,
    pub(crate) conflicts: Gauge,
    pub(crate) conflicting_heartbeats: Counter,
    pub(crate) self_preservation: Gauge,
    pub(crate) leader: Gauge,
    pub(crate) store_writes: Counter,
    pub(crate) store_failures: Counter,
    pub(crate) store_failing: Gauge,
    pub(crate) restored: Counter,
    pub(crate) stalls: Counter,
    pub(crate) cut_off: Gauge,
    pub(crate) flapping: Gauge,
    pub(crate) unverified: Gauge,
    pub(crate) holds_exhausted: Counter,
    pub(crate) seq_resyncs: Counter,
    pub(crate) nats_disconnects: Counter,
}

impl RegistryMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut families = MetricFamilies::with_prefix("ocs_registry");
        let metrics = RegistryMetrics {
            heartbeats_received: Counter::default(),
            heartbeats_dropped: Family::default(),
            agents: Family::default(),
            expiries: Counter::default(),
            expiry_lateness: Histogram::new(EXPIRY_LATENESS_BUCKETS),
            forgotten: Counter::default(),
            feed_messages: Family::default(),
            feed_failures: Counter::default(),
            nats_connected: Gauge::default(),
            conflicts: Gauge::default(),
            conflicting_heartbeats: Counter::default(),
            self_preservation: Gauge::default(),
            leader: Gauge::default(),
            store_writes: Counter::default(),
            store_failures: Counter::default(),
            store_failing: Gauge::default(),
            restored: Counter::default(),
            stalls: Counter::default(),
            cut_off: Gauge::default(),
            flapping: Gauge::default(),
            unverified: Gauge::default(),
            holds_exhausted: Counter::default(),
            seq_resyncs: Counter::default(),
            nats_disconnects: Counter::default(),
            families: MetricFamilies::default(),
        };
        families.register(
            "heartbeats_received",
            "Heartbeats received, before validation",
            metrics.heartbeats_received.clone(),
        );
        families.register(
            "heartbeats_dropped",
            "Heartbeats dropped, by reason",
            metrics.heartbeats_dropped.clone(),
        );
        families.register(
            "agents",
            "Agents tracked, by state (alive, expired, left)",
            metrics.agents.clone(),
        );
        families.register(
            "expiries",
            "Agents marked expired after missing heartbeats",
            metrics.expiries.clone(),
        );
        families.register_with_unit(
            "expiry_lateness",
            "How long after an agent's deadline (its last heartbeat as received plus its timeout, on this process's monotonic clock) its expiry was published on the feed",
            prometheus_client::registry::Unit::Seconds,
            metrics.expiry_lateness.clone(),
        );
        families.register(
            "forgotten_agents",
            "Agents forgotten after --forget-after",
            metrics.forgotten.clone(),
        );
        families.register(
            "feed_messages_published",
            "agent_operations feed messages published, by kind",
            metrics.feed_messages.clone(),
        );
        families.register(
            "feed_publish_failures",
            "agent_operations feed messages that could not be published",
            metrics.feed_failures.clone(),
        );
        families.register(
            "nats_connected",
            "1 while connected to NATS",
            metrics.nats_connected.clone(),
        );
        families.register(
            "address_conflicts",
            "Addresses where two incarnations heartbeat at once (one instance run twice)",
            metrics.conflicts.clone(),
        );
        families.register(
            "conflicting_heartbeats",
            "Heartbeats from a displaced incarnation that still runs",
            metrics.conflicting_heartbeats.clone(),
        );
        families.register(
            "self_preservation",
            "1 while expiries are held because most agents fell silent at once (the registry is likely cut off from them)",
            metrics.self_preservation.clone(),
        );
        families.register(
            "leader",
            "1 while this replica holds the lease and publishes the feed (always 1 without --ha)",
            metrics.leader.clone(),
        );
        families.register(
            "store_writes",
            "Agent records written to or deleted from the JetStream KV bucket",
            metrics.store_writes.clone(),
        );
        families.register(
            "store_failures",
            "Agent record writes to the JetStream KV bucket that failed (retried)",
            metrics.store_failures.clone(),
        );
        families.register(
            "store_failing",
            "1 while agent records cannot be written to the JetStream KV bucket (they are kept and retried)",
            metrics.store_failing.clone(),
        );
        families.register(
            "restored_agents",
            "Agent records taken back from the JetStream KV bucket at start",
            metrics.restored.clone(),
        );
        families.register(
            "stalls",
            "Times this process did not run for over a second (stopped or starved) and gave every agent a fresh timeout",
            metrics.stalls.clone(),
        );
        families.register(
            "cut_off",
            "1 while the registry cannot hear the bus (disconnected, or its own heartbeat does not come back) and holds expiries",
            metrics.cut_off.clone(),
        );
        families.register(
            "flapping_agents",
            "Agents that keep expiring and returning (3 expiries in 10 minutes; cleared after 10 quiet minutes)",
            metrics.flapping.clone(),
        );
        families.register(
            "unverified_agents",
            "Agents alive only by assumption, not proven by a heartbeat: past their deadline during self-preservation, or restored after a restart and not heard since",
            metrics.unverified.clone(),
        );
        families.register(
            "holds_exhausted",
            "Self-preservation holds that reached --max-hold, after which the silent agents expired",
            metrics.holds_exhausted.clone(),
        );
        families.register(
            "seq_resyncs",
            "Heartbeats accepted with an out-of-range seq because their incarnation had been silent (a forged or corrupt seq was overruled)",
            metrics.seq_resyncs.clone(),
        );
        families.register(
            "nats_disconnects",
            "Times the registry lost its NATS connection (nats-server also closes the connection of a client too slow to read)",
            metrics.nats_disconnects.clone(),
        );
        for reason in DropReason::ALL {
            let _ = metrics
                .heartbeats_dropped
                .get_or_create(&ReasonLabel { reason });
        }
        for kind in ["change", "snapshot"] {
            let _ = metrics.feed_messages.get_or_create(&KindLabel { kind });
        }
        RegistryMetrics {
            families,
            ..metrics
        }
    }

    /// Counts one dropped heartbeat.
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.heartbeats_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Brings the counters of what the NATS client reported up to its totals.
    pub(crate) fn sync_bus_events(&self, events: &ocs_service::connect::BusEvents) {
        let slow = self.heartbeats_dropped.get_or_create(&ReasonLabel {
            reason: DropReason::slow_consumer,
        });
        slow.inc_by(events.slow_consumer_drops().saturating_sub(slow.get()));
        let disconnects = &self.nats_disconnects;
        disconnects.inc_by(events.disconnects().saturating_sub(disconnects.get()));
    }

    /// Sets the agents-by-state gauges and the conflicts gauge.
    pub(crate) fn set_agent_counts(
        &self,
        (alive, expired, left): (usize, usize, usize),
        conflicts: usize,
    ) {
        self.conflicts.set(conflicts as i64);
        for (state, count) in [("alive", alive), ("expired", expired), ("left", left)] {
            self.agents
                .get_or_create(&StateLabel { state })
                .set(count as i64);
        }
    }

    /// The classic text exposition.
    pub fn encode(&self) -> String {
        ocs_service::exposition::render(&self.families, None).1
    }

    /// Whether agent records cannot be stored right now.
    pub fn store_failing(&self) -> bool {
        self.store_failing.get() != 0
    }

    /// A counter value, for tests and benchmarks.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.heartbeats_dropped
            .get_or_create(&ReasonLabel { reason })
            .get()
    }
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new()
    }
}
