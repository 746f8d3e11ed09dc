//! [`Fleet`]: every agent as the registry's feed shows it. No I/O; callers
//! pass the monotonic `now`.
//!
//! Consumers build metric labels and web pages from this state, so its
//! bounds are their bounds: at most `max_agents` agents and `max_operations`
//! operations each, every name checked to be a token and every free-text
//! value truncated.
//!
//! Every change of an agent's view takes the next fleet revision, and
//! removals are logged with theirs, so a consumer that remembers the
//! revision it last showed asks only for what changed since
//! ([`Fleet::changes_since`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ocs_protocol::address::{AgentAddress, validate_token};
use ocs_protocol::{OpCode, proto};
use tokio::time::Instant;

/// Longest free-text label value (class, host, version) kept.
pub const MAX_LABEL_CHARS: usize = 128;

/// Removals remembered for [`Fleet::changes_since`]; a consumer further
/// behind starts over from the whole fleet.
pub const REMOVALS_KEPT: usize = 10_000;

/// Bounds of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct FleetLimits {
    /// Most agents held; records of further new agents are rejected.
    pub max_agents: usize,
    /// Most operations kept per agent; the rest are rejected.
    pub max_operations: usize,
}

/// Why a record or message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The record's address, an operation name or an op code is invalid.
    InvalidRecord,
    /// A new agent while the fleet is full.
    FleetFull,
    /// More operations than allowed; the excess is dropped.
    TooManyOperations,
    /// The message came from another registry than the one followed.
    WrongRegistry,
    /// The message came from a deposed leader: a replica whose lease term is
    /// older than one heard recently.
    DeposedLeader,
}

/// How long a larger lease term keeps smaller ones out. Past it, a smaller
/// term is taken as a new history (a lease bucket recreated after JetStream
/// lost it numbers its revisions from 1 again), not as a deposed leader.
pub const DEPOSED_LEADER_WINDOW: Duration = Duration::from_secs(10);

/// One operation of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The operation name.
    pub name: String,
    /// "task", "process" or "" when unknown.
    pub op_type: &'static str,
    /// The op code.
    pub code: OpCode,
}

/// One agent as the monitor shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// `{root}.{instance_id}`.
    pub address: String,
    /// Agent class, truncated.
    pub agent_class: String,
    /// alive, expired or left.
    pub state: &'static str,
    /// Registry wall clock of the last heartbeat, unix seconds.
    pub last_heartbeat_seconds: f64,
    /// Host, truncated.
    pub host: String,
    /// Agent software version, truncated.
    pub version: String,
    /// Incarnation UUID, truncated.
    pub incarnation: String,
    /// Distinct incarnations the registry has seen.
    pub incarnations_seen: u64,
    /// A second incarnation heartbeats at the address too.
    pub conflict: bool,
    /// Expires and returns repeatedly (see the registry's hysteresis).
    pub flapping: bool,
    /// Alive only by assumption (held past its deadline, or restored and not heard since).
    pub unverified: bool,
    /// Operations in the agent's order.
    pub operations: Vec<Operation>,
    /// The fleet revision at which this view last changed.
    pub revision: u64,
}

impl AgentView {
    /// Whether the registry counts the agent as expired (including departed).
    pub fn expired(&self) -> bool {
        self.state != "alive"
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(MAX_LABEL_CHARS).collect()
}

struct PendingSnapshot {
    registry_incarnation: String,
    snapshot_id: u64,
    parts: u32,
    seen: BTreeSet<u32>,
    listed: BTreeSet<String>,
}

/// Every agent the followed registry reports.
pub struct Fleet {
    registry_address: String,
    limits: FleetLimits,
    agents: BTreeMap<String, AgentView>,
    pending: Option<PendingSnapshot>,
    last_message: Option<Instant>,
    last_snapshot: Option<Instant>,
    revision: u64,
    /// `(revision, address)` of recent removals, oldest first.
    removals: VecDeque<(u64, String)>,
    /// Changes since a revision below this one may include forgotten removals.
    removals_complete_after: u64,
    /// The largest lease term heard recently, and when it was last heard.
    term: Option<(u64, Instant)>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("agents", &self.len())
            .field("revision", &self.revision)
            .finish()
    }
}

/// What changed in a fleet after some revision.
#[derive(Debug)]
pub struct FleetChanges<'a> {
    /// The fleet's revision now: ask for changes since this one next.
    pub revision: u64,
    /// Agents added or changed, by address.
    pub changed: Vec<&'a AgentView>,
    /// Addresses of agents removed (forgotten, or missing from a complete snapshot).
    pub removed: Vec<&'a str>,
}

impl Fleet {
    /// An empty fleet following the registry at `registry_address`.
    pub fn new(registry_address: &AgentAddress, limits: FleetLimits) -> Self {
        Fleet {
            registry_address: registry_address.to_string(),
            limits,
            agents: BTreeMap::new(),
            pending: None,
            last_message: None,
            last_snapshot: None,
            revision: 0,
            removals: VecDeque::new(),
            removals_complete_after: 0,
            term: None,
        }
    }

    /// The revision of the last change; 0 for a fleet that never changed.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// What changed after revision `since`, or `None` when removals that old
    /// are no longer remembered and the consumer must start over from
    /// [`Fleet::agents`].
    pub fn changes_since(&self, since: u64) -> Option<FleetChanges<'_>> {
        if since < self.removals_complete_after {
            return None;
        }
        Some(FleetChanges {
            revision: self.revision,
            changed: self
                .agents
                .values()
                .filter(|agent| agent.revision > since)
                .collect(),
            removed: self
                .removals
                .iter()
                .filter(|(revision, _)| *revision > since)
                .map(|(_, address)| address.as_str())
                .collect(),
        })
    }

    /// The agent at `address`.
    pub fn agent(&self, address: &str) -> Option<&AgentView> {
        self.agents.get(address)
    }

    fn note_removal(&mut self, address: String) {
        self.revision += 1;
        self.removals.push_back((self.revision, address));
        if self.removals.len() > REMOVALS_KEPT {
            let (revision, _) = self.removals.pop_front().expect("not empty");
            self.removals_complete_after = revision;
        }
    }

    /// The agents, by address.
    pub fn agents(&self) -> impl Iterator<Item = &AgentView> {
        self.agents.values()
    }

    /// Number of agents held.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is held.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// When the last feed message was taken.
    pub fn last_message(&self) -> Option<Instant> {
        self.last_message
    }

    /// Whether the feed is fresh at `now`: a message was taken within
    /// `stale_after`. `Err` says why not, as `/healthz` reports it.
    pub fn freshness(&self, now: Instant, stale_after: Duration) -> Result<(), String> {
        match self.last_message {
            Some(at) if now.duration_since(at) <= stale_after => Ok(()),
            Some(at) => Err(format!(
                "stale: no feed message for {:.0} s",
                now.duration_since(at).as_secs_f64()
            )),
            None => Err("no feed message yet".to_owned()),
        }
    }

    /// When the last complete snapshot was taken.
    pub fn last_snapshot(&self) -> Option<Instant> {
        self.last_snapshot
    }

    /// Applies one feed message; returns the rejections of its records.
    pub fn apply(&mut self, message: &proto::AgentOperations, now: Instant) -> Vec<Rejection> {
        if message.registry_address != self.registry_address {
            return vec![Rejection::WrongRegistry];
        }
        if !self.heed_term(message.lease_term, now) {
            return vec![Rejection::DeposedLeader];
        }
        self.last_message = Some(now);
        let mut rejections = Vec::new();
        for address in &message.forgotten {
            if self.agents.remove(address).is_some() {
                self.note_removal(address.clone());
            }
        }
        for record in &message.agents {
            if let Err(rejection) = self.upsert(record) {
                rejections.push(rejection);
            }
        }
        if message.snapshot {
            self.note_snapshot_part(message, now);
        }
        rejections
    }

    /// Whether a message under lease `term` (0: no replicas) is to be taken.
    fn heed_term(&mut self, term: u64, now: Instant) -> bool {
        if term == 0 {
            return true;
        }
        let deposed = self.term.is_some_and(|(latest, heard)| {
            term < latest && now.duration_since(heard) < DEPOSED_LEADER_WINDOW
        });
        if !deposed {
            self.term = Some((term, now));
        }
        !deposed
    }

    fn note_snapshot_part(&mut self, message: &proto::AgentOperations, now: Instant) {
        let parts = message.snapshot_parts.max(1);
        let same = self.pending.as_ref().is_some_and(|pending| {
            pending.snapshot_id == message.snapshot_id
                && pending.registry_incarnation == message.registry_incarnation
        });
        if !same {
            self.pending = Some(PendingSnapshot {
                registry_incarnation: message.registry_incarnation.clone(),
                snapshot_id: message.snapshot_id,
                parts,
                seen: BTreeSet::new(),
                listed: BTreeSet::new(),
            });
        }
        let pending = self.pending.as_mut().expect("set above");
        pending.seen.insert(message.snapshot_part);
        pending.listed.extend(
            message
                .agents
                .iter()
                .map(|record| record.agent_address.clone()),
        );
        if pending.seen.len() as u32 >= pending.parts {
            let listed = std::mem::take(&mut pending.listed);
            self.pending = None;
            // A complete snapshot is the truth: whatever it does not list is gone.
            let gone: Vec<String> = self
                .agents
                .keys()
                .filter(|address| !listed.contains(*address))
                .cloned()
                .collect();
            for address in gone {
                self.agents.remove(&address);
                self.note_removal(address);
            }
            self.last_snapshot = Some(now);
        }
    }

    fn upsert(&mut self, record: &proto::AgentRecord) -> Result<(), Rejection> {
        AgentAddress::parse(&record.agent_address).map_err(|_| Rejection::InvalidRecord)?;
        if !self.agents.contains_key(&record.agent_address)
            && self.agents.len() >= self.limits.max_agents
        {
            return Err(Rejection::FleetFull);
        }
        let mut operations =
            Vec::with_capacity(record.op_codes.len().min(self.limits.max_operations));
        for op in &record.op_codes {
            validate_token("operation name", &op.op_name).map_err(|_| Rejection::InvalidRecord)?;
            let code = OpCode::from_value(op.op_code).ok_or(Rejection::InvalidRecord)?;
            let op_type = match op.op_type.as_str() {
                "task" => "task",
                "process" => "process",
                _ => "",
            };
            operations.push(Operation {
                name: op.op_name.clone(),
                op_type,
                code,
            });
        }
        let too_many = operations.len() > self.limits.max_operations;
        operations.truncate(self.limits.max_operations);
        let state = match proto::AgentState::try_from(record.state) {
            Ok(proto::AgentState::Alive) => "alive",
            Ok(proto::AgentState::Left) => "left",
            _ if record.expired => "expired",
            _ => "alive",
        };
        let mut view = AgentView {
            address: record.agent_address.clone(),
            agent_class: truncated(&record.agent_class),
            state,
            last_heartbeat_seconds: record.last_updated_unix_ms as f64 / 1000.0,
            host: truncated(&record.host),
            version: truncated(&record.agent_version),
            incarnation: truncated(&record.incarnation),
            incarnations_seen: record.incarnations_seen,
            conflict: record.conflict.is_some(),
            flapping: record.flapping,
            unverified: record.unverified,
            operations,
            revision: 0,
        };
        // Snapshots repeat every record: only a real change takes a revision,
        // so consumers of changes are not sent the whole fleet each time.
        match self.agents.get_mut(&record.agent_address) {
            Some(existing) => {
                view.revision = existing.revision;
                if *existing != view {
                    self.revision += 1;
                    view.revision = self.revision;
                    *existing = view;
                }
            }
            None => {
                self.revision += 1;
                view.revision = self.revision;
                self.agents.insert(record.agent_address.clone(), view);
            }
        }
        if too_many {
            Err(Rejection::TooManyOperations)
        } else {
            Ok(())
        }
    }
}

/// A fleet following the default registry, for ten agents of ten
/// operations, as consumers' tests need one: `(registry, fleet)`.
pub fn small_fleet() -> (AgentAddress, Fleet) {
    let registry = AgentAddress::new(
        &ocs_protocol::AddressRoot::default(),
        &ocs_protocol::InstanceId::new("registry").unwrap(),
    );
    let limits = FleetLimits {
        max_agents: 10,
        max_operations: 10,
    };
    let fleet = Fleet::new(&registry, limits);
    (registry, fleet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocs_protocol::{AddressRoot, InstanceId};

    fn registry() -> AgentAddress {
        AgentAddress::new(
            &AddressRoot::default(),
            &InstanceId::new("registry").unwrap(),
        )
    }

    fn fleet() -> Fleet {
        Fleet::new(
            &registry(),
            FleetLimits {
                max_agents: 3,
                max_operations: 2,
            },
        )
    }

    fn record(address: &str, ops: &[(&str, i32)]) -> proto::AgentRecord {
        proto::AgentRecord {
            agent_address: address.into(),
            agent_class: "FakeDataAgent".into(),
            state: proto::AgentState::Alive as i32,
            op_codes: ops
                .iter()
                .map(|(name, code)| proto::OperationCode {
                    op_name: (*name).into(),
                    op_code: *code,
                    op_type: "process".into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn message(agents: Vec<proto::AgentRecord>, forgotten: &[&str]) -> proto::AgentOperations {
        proto::AgentOperations {
            protocol_version: 1,
            registry_address: registry().to_string(),
            agents,
            forgotten: forgotten.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn snapshot(
        agents: Vec<proto::AgentRecord>,
        id: u64,
        part: u32,
        parts: u32,
    ) -> proto::AgentOperations {
        proto::AgentOperations {
            snapshot: true,
            snapshot_id: id,
            snapshot_part: part,
            snapshot_parts: parts,
            ..message(agents, &[])
        }
    }

    #[test]
    fn changes_replace_records_and_forgotten_agents_disappear() {
        let mut fleet = fleet();
        let now = Instant::now();
        fleet.apply(
            &message(
                vec![record("observatory.a", &[("acq", 3), ("old", 1)])],
                &[],
            ),
            now,
        );
        fleet.apply(
            &message(vec![record("observatory.a", &[("acq", 6)])], &[]),
            now,
        );
        let agent = fleet.agents().next().unwrap();
        assert_eq!(
            agent.operations,
            [Operation {
                name: "acq".into(),
                op_type: "process",
                code: OpCode::Failed
            }]
        );
        fleet.apply(&message(vec![], &["observatory.a"]), now);
        assert!(fleet.is_empty());
    }

    #[test]
    fn a_complete_snapshot_drops_unlisted_agents_only_when_all_parts_arrived() {
        let mut fleet = fleet();
        let now = Instant::now();
        fleet.apply(
            &message(
                vec![
                    record("observatory.a", &[]),
                    record("observatory.gone", &[]),
                ],
                &[],
            ),
            now,
        );
        fleet.apply(&snapshot(vec![record("observatory.a", &[])], 10, 0, 2), now);
        assert_eq!(fleet.len(), 2, "incomplete snapshot drops nothing");
        assert_eq!(fleet.last_snapshot(), None);
        fleet.apply(&snapshot(vec![record("observatory.b", &[])], 10, 1, 2), now);
        let addresses: Vec<&str> = fleet.agents().map(|a| a.address.as_str()).collect();
        assert_eq!(addresses, ["observatory.a", "observatory.b"]);
        assert_eq!(fleet.last_snapshot(), Some(now));
    }

    #[test]
    fn changes_since_a_revision_list_what_changed_and_what_went() {
        let mut fleet = fleet();
        let now = Instant::now();
        assert_eq!(fleet.revision(), 0);
        fleet.apply(
            &message(
                vec![
                    record("observatory.a", &[("acq", 3)]),
                    record("observatory.b", &[]),
                ],
                &[],
            ),
            now,
        );
        let seen = fleet.revision();
        assert_eq!(seen, 2);
        // A snapshot repeating a record unchanged is no change.
        fleet.apply(
            &message(vec![record("observatory.a", &[("acq", 3)])], &[]),
            now,
        );
        assert_eq!(fleet.revision(), seen);
        fleet.apply(
            &message(vec![record("observatory.a", &[("acq", 6)])], &[]),
            now,
        );
        fleet.apply(
            &message(vec![], &["observatory.b", "observatory.never"]),
            now,
        );
        let changes = fleet.changes_since(seen).unwrap();
        assert_eq!(changes.revision, 4);
        let changed: Vec<&str> = changes.changed.iter().map(|a| a.address.as_str()).collect();
        assert_eq!(changed, ["observatory.a"]);
        assert_eq!(changes.removed, ["observatory.b"]);
        let nothing = fleet.changes_since(changes.revision).unwrap();
        assert!(nothing.changed.is_empty() && nothing.removed.is_empty());
        // A complete snapshot's removals are changes too.
        fleet.apply(&snapshot(vec![], 1, 0, 1), now);
        assert_eq!(fleet.changes_since(4).unwrap().removed, ["observatory.a"]);
    }

    #[test]
    fn the_feed_is_fresh_while_a_message_came_within_the_limit() {
        let mut fleet = fleet();
        let now = Instant::now();
        let limit = Duration::from_secs(90);
        assert_eq!(
            fleet.freshness(now, limit),
            Err("no feed message yet".into())
        );
        fleet.apply(&message(vec![], &[]), now);
        assert_eq!(fleet.freshness(now + limit, limit), Ok(()));
        assert_eq!(
            fleet.freshness(now + Duration::from_secs(91), limit),
            Err("stale: no feed message for 91 s".into())
        );
    }

    #[test]
    fn a_consumer_behind_the_removal_log_starts_over() {
        let mut fleet = Fleet::new(
            &registry(),
            FleetLimits {
                max_agents: REMOVALS_KEPT + 10,
                max_operations: 1,
            },
        );
        let now = Instant::now();
        for i in 0..=REMOVALS_KEPT {
            let address = format!("observatory.a{i}");
            fleet.apply(&message(vec![record(&address, &[])], &[]), now);
            fleet.apply(&message(vec![], &[address.as_str()]), now);
        }
        assert!(
            fleet.changes_since(0).is_none(),
            "the oldest removal is forgotten"
        );
        let recent = fleet.revision() - 2;
        assert_eq!(fleet.changes_since(recent).unwrap().removed.len(), 1);
    }

    #[test]
    fn bogus_input_is_bounded_and_rejected() {
        let mut fleet = fleet();
        let now = Instant::now();
        let mut bad_code = record("observatory.x", &[("acq", 42)]);
        bad_code.agent_class = "y".repeat(10_000);
        let rejections = fleet.apply(
            &message(
                vec![
                    bad_code,
                    record("not an address", &[]),
                    record("observatory.a", &[("o1", 1), ("o2", 1), ("o3", 1)]),
                    record("observatory.b", &[]),
                    record("observatory.c", &[]),
                    record("observatory.d", &[]),
                ],
                &[],
            ),
            now,
        );
        assert_eq!(
            rejections,
            [
                Rejection::InvalidRecord,
                Rejection::InvalidRecord,
                Rejection::TooManyOperations,
                Rejection::FleetFull
            ]
        );
        assert_eq!(fleet.len(), 3);
        assert_eq!(fleet.agents().next().unwrap().operations.len(), 2);
        let mut foreign = message(vec![record("observatory.e", &[])], &[]);
        foreign.registry_address = "observatory.other".into();
        assert_eq!(fleet.apply(&foreign, now), [Rejection::WrongRegistry]);
        let mut long = record("observatory.a", &[]);
        long.host = "h".repeat(1000);
        fleet.apply(&message(vec![long], &[]), now);
        assert_eq!(fleet.agents().next().unwrap().host.len(), MAX_LABEL_CHARS);
    }

    #[test]
    fn a_deposed_leader_is_ignored_until_the_new_one_falls_silent() {
        let now = Instant::now();
        let mut fleet = fleet();
        let under = |term: u64, agents: Vec<proto::AgentRecord>| {
            let mut message = message(agents, &[]);
            message.lease_term = term;
            message
        };
        assert!(
            fleet
                .apply(&under(5, vec![record("observatory.a", &[])]), now)
                .is_empty()
        );
        assert!(
            fleet
                .apply(&under(9, vec![record("observatory.b", &[])]), now)
                .is_empty()
        );
        let stale = under(5, vec![record("observatory.c", &[])]);
        assert_eq!(
            fleet.apply(&stale, now + Duration::from_secs(1)),
            [Rejection::DeposedLeader]
        );
        assert_eq!(fleet.len(), 2);
        // No replicas at all: no term to compare.
        assert!(
            fleet
                .apply(&under(0, vec![]), now + Duration::from_secs(2))
                .is_empty()
        );
        // Term 9 silent for the window: a smaller term is a new history.
        let later = now + Duration::from_secs(1) + DEPOSED_LEADER_WINDOW;
        assert!(fleet.apply(&stale, later).is_empty());
        assert_eq!(fleet.len(), 3);
    }
}
