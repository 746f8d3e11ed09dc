//! What the board's page is sent: every agent as a row, then only what
//! changed. No I/O.

use ocs_fleet::{AgentView, Fleet};
use serde::Serialize;

/// One agent's row.
#[derive(Debug, Serialize, PartialEq)]
pub struct AgentRow<'a> {
    /// `{root}.{instance_id}`.
    pub address: &'a str,
    /// The instance id, for the agent's page and its operations.
    pub instance_id: &'a str,
    /// Agent class.
    pub agent_class: &'a str,
    /// What an operator must see first: `left`, `expired`, `conflict`,
    /// `flapping` or `alive`, in that order of precedence.
    pub state: &'static str,
    /// Alive only by assumption: held past its deadline, or restored and not heard since.
    pub unverified: bool,
    /// The registry's wall clock of the last heartbeat, unix seconds.
    pub last_heartbeat: f64,
    /// Host.
    pub host: &'a str,
    /// Agent software version.
    pub version: &'a str,
    /// Incarnation.
    pub incarnation: &'a str,
    /// Operations in the agent's order.
    pub operations: Vec<OperationCell<'a>>,
}

/// One operation in a row.
#[derive(Debug, Serialize, PartialEq)]
pub struct OperationCell<'a> {
    /// Name.
    pub name: &'a str,
    /// `task`, `process` or empty.
    pub op_type: &'static str,
    /// The op code's number (1–8).
    pub code: i32,
}

impl<'a> AgentRow<'a> {
    /// The row of `agent`.
    pub fn of(agent: &'a AgentView) -> Self {
        let state = if agent.state == "left" {
            "left"
        } else if agent.expired() {
            "expired"
        } else if agent.conflict {
            "conflict"
        } else if agent.flapping {
            "flapping"
        } else {
            "alive"
        };
        AgentRow {
            address: &agent.address,
            instance_id: agent
                .address
                .split_once('.')
                .map_or(agent.address.as_str(), |(_, instance)| instance),
            agent_class: &agent.agent_class,
            state,
            unverified: agent.unverified,
            last_heartbeat: agent.last_heartbeat_seconds,
            host: &agent.host,
            version: &agent.version,
            incarnation: &agent.incarnation,
            operations: agent
                .operations
                .iter()
                .map(|op| OperationCell {
                    name: &op.name,
                    op_type: op.op_type,
                    code: op.code.value(),
                })
                .collect(),
        }
    }
}

/// One message to the page.
#[derive(Debug, Serialize)]
pub struct BoardUpdate<'a> {
    /// The fleet revision this brings the page to.
    pub revision: u64,
    /// The page must drop what it has first: `agents` is the whole fleet.
    pub reset: bool,
    /// Rows added or changed.
    pub agents: Vec<AgentRow<'a>>,
    /// Addresses of rows to remove.
    pub removed: Vec<&'a str>,
}

impl<'a> BoardUpdate<'a> {
    /// What a page that has seen revision `seen` needs (`None`: nothing yet),
    /// or `None` when nothing changed.
    pub fn since(fleet: &'a Fleet, seen: Option<u64>) -> Option<Self> {
        let changes = seen.and_then(|seen| fleet.changes_since(seen));
        match changes {
            Some(changes) if changes.changed.is_empty() && changes.removed.is_empty() => None,
            Some(changes) => Some(BoardUpdate {
                revision: changes.revision,
                reset: false,
                agents: changes.changed.into_iter().map(AgentRow::of).collect(),
                removed: changes.removed,
            }),
            None => Some(BoardUpdate {
                revision: fleet.revision(),
                reset: true,
                agents: fleet.agents().map(AgentRow::of).collect(),
                removed: Vec::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use ocs_protocol::proto;
    use tokio::time::Instant;

    use super::*;

    fn record(address: &str, state: proto::AgentState, code: i32) -> proto::AgentRecord {
        proto::AgentRecord {
            agent_address: address.into(),
            agent_class: "FakeDataAgent".into(),
            state: state.into(),
            expired: state != proto::AgentState::Alive,
            last_updated_unix_ms: 1_700_000_000_500,
            host: "h1".into(),
            op_codes: vec![proto::OperationCode {
                op_name: "acq".into(),
                op_code: code,
                op_type: "process".into(),
            }],
            ..Default::default()
        }
    }

    fn apply(
        fleet: &mut Fleet,
        registry: &str,
        agents: Vec<proto::AgentRecord>,
        forgotten: &[&str],
    ) {
        let message = proto::AgentOperations {
            protocol_version: 1,
            registry_address: registry.into(),
            agents,
            forgotten: forgotten.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        };
        assert!(fleet.apply(&message, Instant::now()).is_empty());
    }

    #[test]
    fn a_new_page_gets_everything_then_only_changes() {
        let (registry, mut fleet) = ocs_fleet::fleet::small_fleet();
        let registry = registry.to_string();
        apply(
            &mut fleet,
            &registry,
            vec![
                record("observatory.faker1", proto::AgentState::Alive, 3),
                record("observatory.faker2", proto::AgentState::Alive, 1),
            ],
            &[],
        );
        let first = BoardUpdate::since(&fleet, None).unwrap();
        assert!(first.reset);
        assert_eq!(first.agents.len(), 2);
        assert_eq!(
            first.agents[0],
            AgentRow {
                address: "observatory.faker1",
                instance_id: "faker1",
                agent_class: "FakeDataAgent",
                state: "alive",
                unverified: false,
                last_heartbeat: 1_700_000_000.5,
                host: "h1",
                version: "",
                incarnation: "",
                operations: vec![OperationCell {
                    name: "acq",
                    op_type: "process",
                    code: 3
                }],
            }
        );
        let seen = first.revision;
        assert!(BoardUpdate::since(&fleet, Some(seen)).is_none());
        apply(
            &mut fleet,
            &registry,
            vec![record("observatory.faker1", proto::AgentState::Expired, 7)],
            &["observatory.faker2"],
        );
        let next = BoardUpdate::since(&fleet, Some(seen)).unwrap();
        assert!(!next.reset);
        assert_eq!(next.agents.len(), 1);
        assert_eq!(next.agents[0].state, "expired");
        assert_eq!(next.agents[0].operations[0].code, 7);
        assert_eq!(next.removed, ["observatory.faker2"]);
    }

    #[test]
    fn left_outranks_expired_and_expired_outranks_conflict() {
        let (registry, mut fleet) = ocs_fleet::fleet::small_fleet();
        let mut conflicting = record("observatory.a", proto::AgentState::Alive, 3);
        conflicting.conflict = Some(proto::Conflict::default());
        let mut expired_conflicting = record("observatory.b", proto::AgentState::Expired, 3);
        expired_conflicting.conflict = Some(proto::Conflict::default());
        let mut flapping = record("observatory.c", proto::AgentState::Alive, 3);
        flapping.flapping = true;
        apply(
            &mut fleet,
            &registry.to_string(),
            vec![
                conflicting,
                expired_conflicting,
                flapping,
                record("observatory.d", proto::AgentState::Left, 3),
            ],
            &[],
        );
        let update = BoardUpdate::since(&fleet, None).unwrap();
        let states: Vec<&str> = update.agents.iter().map(|row| row.state).collect();
        assert_eq!(states, ["conflict", "expired", "flapping", "left"]);
    }
}
