//! The monitor's metrics: the fleet (encoded from [`Fleet`] at scrape time, so
//! series of forgotten agents and removed operations simply vanish) and the
//! monitor's own health.

use std::sync::Arc;

use ocs_protocol::OpCode;
use ocs_service::exposition::encode_gauges as gauge;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry as MetricFamilies;

use ocs_fleet::{FeedMetrics, SharedFleet};

/// Which series of the fleet `/metrics` exports: each costs Prometheus
/// about one series per line (a few KiB of memory each in its head block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeriesDetail {
    /// Everything: `ocs_operation_code` for every operation of every agent
    /// (agents x operations series), the per-agent gauges and the totals.
    PerOperation,
    /// The per-agent gauges (expired, conflict, flapping, unverified, last
    /// heartbeat, info, incarnations) and the totals, but no
    /// `ocs_operation_code`: about 7 series per agent. `OcsOperationFailed`
    /// and `OcsProcessNotRunning` cannot fire.
    PerAgent,
    /// Only the totals `ocs_agents` (by state) and `ocs_operations` (by op
    /// code): 11 series whatever the fleet. No per-agent alert can fire.
    Aggregate,
}

#[derive(Debug)]
struct FleetCollector {
    fleet: SharedFleet,
    detail: SeriesDetail,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fleet = self.fleet.lock();
        let agent_labels = |address: &str, class: &str| {
            vec![
                ("agent", address.to_owned()),
                ("agent_class", class.to_owned()),
            ]
        };
        if self.detail == SeriesDetail::PerOperation {
            gauge(
                &mut encoder,
                "ocs_operation_code",
                "OpCode of each operation: 1 none, 2 starting, 3 running, 4 stopping, 5 succeeded, 6 failed, 7 expired, 8 degraded",
                fleet.agents().flat_map(|agent| {
                    agent.operations.iter().map(move |op| {
                        let mut labels = agent_labels(&agent.address, &agent.agent_class);
                        labels.push(("operation", op.name.clone()));
                        labels.push(("op_type", op.op_type.to_owned()));
                        (labels, i64::from(op.code.value()))
                    })
                }),
            )?;
        }
        if self.detail != SeriesDetail::Aggregate {
            gauge(
                &mut encoder,
                "ocs_agent_expired",
                "1 while the registry counts the agent expired (no heartbeat within the timeout, or departed), else 0",
                fleet.agents().map(|agent| {
                    (
                        agent_labels(&agent.address, &agent.agent_class),
                        i64::from(agent.expired()),
                    )
                }),
            )?;
            gauge(
                &mut encoder,
                "ocs_agent_conflict",
                "1 while two incarnations heartbeat at the agent's address (the instance runs twice), else 0",
                fleet.agents().map(|agent| {
                    (
                        agent_labels(&agent.address, &agent.agent_class),
                        i64::from(agent.conflict),
                    )
                }),
            )?;
            gauge(
                &mut encoder,
                "ocs_agent_flapping",
                "1 while the agent keeps expiring and returning (3 expiries in 10 minutes; cleared after 10 minutes without one), else 0",
                fleet.agents().map(|agent| {
                    (
                        agent_labels(&agent.address, &agent.agent_class),
                        i64::from(agent.flapping),
                    )
                }),
            )?;
            gauge(
                &mut encoder,
                "ocs_agent_unverified",
                "1 while the agent is alive only by assumption (past its deadline while the registry holds expiries, or restored after a registry restart and not heard since), else 0",
                fleet.agents().map(|agent| {
                    (
                        agent_labels(&agent.address, &agent.agent_class),
                        i64::from(agent.unverified),
                    )
                }),
            )?;
            gauge(
                &mut encoder,
                "ocs_agent_last_heartbeat_timestamp_seconds",
                "Registry time of the agent's last accepted heartbeat, unix seconds",
                fleet.agents().map(|agent| {
                    (
                        agent_labels(&agent.address, &agent.agent_class),
                        agent.last_heartbeat_seconds,
                    )
                }),
            )?;
            gauge(
                &mut encoder,
                "ocs_agent_info",
                "Identity of each agent's current incarnation; always 1",
                fleet.agents().map(|agent| {
                    let mut labels = agent_labels(&agent.address, &agent.agent_class);
                    labels.extend([
                        ("host", agent.host.clone()),
                        ("version", agent.version.clone()),
                        ("incarnation", agent.incarnation.clone()),
                    ]);
                    (labels, 1i64)
                }),
            )?;
            let mut incarnations = encoder.encode_descriptor(
                "ocs_agent_incarnations",
                "Distinct incarnations (process starts) of the agent the registry has seen",
                None,
                MetricType::Counter,
            )?;
            for agent in fleet.agents() {
                let labels = agent_labels(&agent.address, &agent.agent_class);
                ConstCounter::new(agent.incarnations_seen)
                    .encode(incarnations.encode_family(&labels)?)?;
            }
        }
        let mut by_state = [("alive", 0i64), ("expired", 0), ("left", 0)];
        let mut by_code = [0i64; 8];
        for agent in fleet.agents() {
            if let Some(slot) = by_state.iter_mut().find(|(state, _)| *state == agent.state) {
                slot.1 += 1;
            }
            for op in &agent.operations {
                by_code[(op.code.value() - 1) as usize] += 1;
            }
        }
        gauge(
            &mut encoder,
            "ocs_agents",
            "Agents by state",
            by_state
                .iter()
                .map(|(state, count)| (vec![("state", (*state).to_owned())], *count)),
        )?;
        gauge(
            &mut encoder,
            "ocs_operations",
            "Operations by op code",
            OpCode::ALL.iter().zip(by_code).map(|(code, count)| {
                (
                    vec![
                        ("op_code", code.value().to_string()),
                        ("state", code.name().to_lowercase()),
                    ],
                    count,
                )
            }),
        )?;
        Ok(())
    }
}

/// The monitor's metric families (the fleet's and its own counters).
pub struct MonitorMetrics {
    families: MetricFamilies,
    feed: Arc<FeedMetrics>,
}

impl MonitorMetrics {
    /// Registers the fleet collector (exporting `detail`) and the monitor's own metrics.
    pub fn new(fleet: SharedFleet, detail: SeriesDetail) -> Self {
        let mut families = MetricFamilies::default();
        families.register_collector(Box::new(FleetCollector { fleet, detail }));
        let feed = Arc::new(FeedMetrics::register("ocs_monitor", &mut families));
        MonitorMetrics { families, feed }
    }

    /// What the feed loop reports.
    pub fn feed(&self) -> Arc<FeedMetrics> {
        self.feed.clone()
    }

    /// Every family, for rendering.
    pub fn families(&self) -> &MetricFamilies {
        &self.families
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use ocs_protocol::proto;
    use parking_lot::Mutex;

    use super::*;

    /// `/metrics` of a fleet of one agent with two operations, at `detail`.
    fn exposition(detail: SeriesDetail) -> String {
        let (registry, fleet) = ocs_fleet::fleet::small_fleet();
        let fleet: SharedFleet = Arc::new(Mutex::new(fleet));
        let operation = |name: &str, code: i32| proto::OperationCode {
            op_name: name.into(),
            op_code: code,
            op_type: "task".into(),
        };
        let message = proto::AgentOperations {
            protocol_version: 1,
            registry_address: registry.to_string(),
            agents: vec![proto::AgentRecord {
                agent_address: "observatory.faker1".into(),
                agent_class: "FakeDataAgent".into(),
                state: proto::AgentState::Alive.into(),
                op_codes: vec![operation("acq", 3), operation("count", 6)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(fleet.lock().apply(&message, Instant::now()).is_empty());
        let metrics = MonitorMetrics::new(fleet, detail);
        ocs_service::exposition::render(metrics.families(), None).1
    }

    fn series(text: &str, family: &str) -> usize {
        text.lines()
            .filter(|line| line.starts_with(family) && !line.starts_with('#'))
            .count()
    }

    #[test]
    fn each_series_detail_exports_what_it_promises() {
        let all = exposition(SeriesDetail::PerOperation);
        assert_eq!(series(&all, "ocs_operation_code{"), 2);
        assert_eq!(series(&all, "ocs_agent_expired{"), 1);
        assert_eq!(series(&all, "ocs_operations{"), 8);

        let per_agent = exposition(SeriesDetail::PerAgent);
        assert_eq!(series(&per_agent, "ocs_operation_code"), 0);
        assert_eq!(series(&per_agent, "ocs_agent_expired{"), 1);
        assert!(
            per_agent.contains("ocs_operations{op_code=\"6\",state=\"failed\"} 1"),
            "{per_agent}"
        );

        let aggregate = exposition(SeriesDetail::Aggregate);
        assert_eq!(series(&aggregate, "ocs_operation_code"), 0);
        assert_eq!(series(&aggregate, "ocs_agent_"), 0);
        assert!(
            aggregate.contains("ocs_agents{state=\"alive\"} 1"),
            "{aggregate}"
        );
        assert_eq!(
            series(&aggregate, "ocs_agents{") + series(&aggregate, "ocs_operations{"),
            11
        );
    }
}
