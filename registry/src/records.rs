//! Records queries (`{registry}.records`): the registry's table filtered by
//! state, class and address pattern, in pages under the server's
//! `max_payload`, with counts by state and class. Sans I/O: the service
//! hands a query and the table in, and sends the page that comes out.

use std::collections::HashMap;

use ocs_protocol::{codec, json, proto};
use prost::Message;
use serde_json::Value;
use wildmatch::WildMatch;

use crate::table::{AgentState, AgentTable, Facets};

/// The names a query may filter on, as the summary counts them.
pub const STATE_NAMES: [&str; 6] = [
    "alive",
    "expired",
    "left",
    "conflict",
    "flapping",
    "unverified",
];

/// Room for everything in a page except its records.
const PAGE_OVERHEAD: usize = 1024;
/// The smallest page a caller may ask for: room for a record with dozens of operations.
pub const MIN_PAGE_BYTES: usize = 16 * 1024;

/// A query, checked.
#[derive(Debug)]
pub struct RecordsFilter {
    summary_only: bool,
    states: Vec<&'static str>,
    classes: Vec<String>,
    pattern: Option<WildMatch>,
    after: String,
    max_bytes: usize,
}

impl RecordsFilter {
    /// Checks `query`; `limit` is the largest reply the bus carries.
    pub fn parse(query: &proto::RecordsQuery, limit: usize) -> Result<Self, String> {
        let states = query
            .states
            .iter()
            .map(|wanted| {
                STATE_NAMES
                    .iter()
                    .find(|name| **name == wanted.as_str())
                    .copied()
                    .ok_or_else(|| {
                        format!(
                            "unknown state {wanted:?}: use one of {}",
                            STATE_NAMES.join(", ")
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let asked = match query.max_bytes {
            0 => limit,
            bytes => (bytes as usize).min(limit),
        };
        Ok(RecordsFilter {
            summary_only: query.summary_only,
            states,
            classes: query.classes.clone(),
            pattern: (!query.agent_pattern.is_empty())
                .then(|| WildMatch::new(&query.agent_pattern)),
            after: query.after.clone(),
            max_bytes: asked.max(MIN_PAGE_BYTES),
        })
    }

    fn keeps(&self, agent: &Facets<'_>) -> bool {
        let in_state =
            self.states.is_empty() || states_of(agent).any(|state| self.states.contains(&state));
        in_state
            && (self.classes.is_empty() || self.classes.iter().any(|c| c == agent.agent_class))
            && self
                .pattern
                .as_ref()
                .is_none_or(|pattern| pattern.matches(agent.address))
    }

    /// Whether the query selects every agent.
    fn unfiltered(&self) -> bool {
        self.states.is_empty() && self.classes.is_empty() && self.pattern.is_none()
    }

    /// The page this query asks for; an unfiltered summary comes from
    /// `index`, which counts the whole table as it changes.
    pub fn page(&self, table: &AgentTable, index: &SummaryIndex) -> proto::RecordsPage {
        let first_page = self.after.is_empty();
        let from_index = self.unfiltered();
        let mut summary = (first_page && !from_index).then(Summary::default);
        let mut addresses = Vec::new();
        if summary.is_some() || !self.summary_only {
            for agent in table.facets().filter(|agent| self.keeps(agent)) {
                if let Some(summary) = summary.as_mut() {
                    summary.count(&agent);
                }
                if !self.summary_only && agent.address > self.after.as_str() {
                    addresses.push(agent.address);
                }
            }
        }
        addresses.sort_unstable();
        let mut page = proto::RecordsPage {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            summary: if first_page && from_index {
                Some(index.summary())
            } else {
                summary.map(Summary::into_proto)
            },
            ..Default::default()
        };
        let mut budget = self
            .max_bytes
            .saturating_sub(PAGE_OVERHEAD + page.encoded_len());
        for (index, address) in addresses.iter().enumerate() {
            let Some(record) = table.record(address) else {
                continue;
            };
            let cost = 1 + prost::length_delimiter_len(record.encoded_len()) + record.encoded_len();
            if cost > budget && !page.records.is_empty() {
                page.next_after = addresses[index - 1].to_owned();
                break;
            }
            budget = budget.saturating_sub(cost);
            page.records.push(record);
        }
        page
    }
}

/// What `registry main status` shows, taken from the table under its lock:
/// copies of the records while they may fit in one reply, else only their
/// summary. Building the OCS-shaped data happens after, outside the lock,
/// so a status call never holds up heartbeats for long.
pub enum StatusView {
    /// Every record, in address order.
    Records(Vec<proto::AgentRecord>),
    /// Too many to try: the summary of all of them.
    Summary(proto::RecordsSummary),
}

impl StatusView {
    /// Takes the view of `table` (counted in `index`) for a server that
    /// carries `max_payload` bytes.
    pub fn of(table: &AgentTable, index: &SummaryIndex, max_payload: usize) -> StatusView {
        // No record is smaller than this; larger fleets need not be tried.
        const SMALLEST_RECORD: usize = 128;
        if table.len() <= status_budget(max_payload) / SMALLEST_RECORD {
            StatusView::Records(table.records())
        } else {
            StatusView::Summary(index.summary())
        }
    }

    /// The `main` session's `data`, as MessagePack: every record keyed by
    /// address, OCS's shape, while they fit in half of `max_payload` (the
    /// session's messages and the envelope need the rest); beyond that the
    /// summary and where to read the records in pages, so that the reply
    /// always fits.
    pub fn data(self, max_payload: usize, records_subject: &str) -> Vec<u8> {
        let budget = status_budget(max_payload);
        let (agents, summary) = match self {
            StatusView::Records(records) => {
                // The protobuf form is smaller than the MessagePack one: past
                // the budget there, the data cannot fit either.
                let wire: usize = records.iter().map(Message::encoded_len).sum();
                if wire <= budget {
                    let data = codec::to_msgpack(&json::AgentRecords(&records)).ok();
                    if let Some(data) = data.filter(|data| data.len() <= budget) {
                        return data;
                    }
                }
                let facets: Vec<Facets<'_>> = records.iter().map(Facets::of_record).collect();
                (records.len() as u64, summarise(facets.into_iter()))
            }
            StatusView::Summary(summary) => (summary.agents, summary),
        };
        let mut data = serde_json::Map::new();
        data.insert(
            json::RECORDS_IN_PAGES.to_owned(),
            serde_json::json!({
                "subject": records_subject,
                "agents": agents,
                "why": format!(
                    "{agents} records do not fit in one message under the server's max_payload of {max_payload} bytes; ocs and OcsClient read them in pages"
                ),
            }),
        );
        data.insert("summary".to_owned(), json::records_summary(&summary));
        codec::to_msgpack(&Value::Object(data)).expect("a summary always encodes")
    }
}

/// The share of `max_payload` the status data may take.
fn status_budget(max_payload: usize) -> usize {
    max_payload / 2
}

/// Counts of `agents` by state and class.
fn summarise<'a>(agents: impl Iterator<Item = Facets<'a>>) -> proto::RecordsSummary {
    let mut summary = Summary::default();
    for agent in agents {
        summary.count(&agent);
    }
    summary.into_proto()
}

/// The counts of the whole table by state and class, kept up to date as
/// the main loop publishes changes (and rebuilt with every snapshot), so an
/// unfiltered summary costs the same at any fleet size.
#[derive(Debug, Default)]
pub struct SummaryIndex {
    /// What each agent was counted as.
    counted: HashMap<String, Counted>,
    by_state: [u64; STATE_NAMES.len()],
    by_class: HashMap<String, u64>,
}

#[derive(Debug)]
struct Counted {
    agent_class: String,
    states: [bool; STATE_NAMES.len()],
}

impl Counted {
    fn of(agent: &Facets<'_>) -> Self {
        let mut states = [false; STATE_NAMES.len()];
        for state in states_of(agent) {
            if let Some(slot) = STATE_NAMES.iter().position(|name| *name == state) {
                states[slot] = true;
            }
        }
        Counted {
            agent_class: agent.agent_class.to_owned(),
            states,
        }
    }
}

impl SummaryIndex {
    /// Counts `address` as `table` now holds it: once more if it is new,
    /// anew if it changed, not at all if it was forgotten.
    pub fn update(&mut self, table: &AgentTable, address: &str) {
        let key = match self.counted.remove_entry(address) {
            Some((key, old)) => {
                self.tally(&old, false);
                key
            }
            None => address.to_owned(),
        };
        if let Some(agent) = table.facets_of(address) {
            let counted = Counted::of(&agent);
            self.tally(&counted, true);
            self.counted.insert(key, counted);
        }
    }

    /// Counts the whole table afresh.
    pub fn rebuild(&mut self, table: &AgentTable) {
        *self = SummaryIndex::default();
        for agent in table.facets() {
            let counted = Counted::of(&agent);
            self.tally(&counted, true);
            self.counted.insert(agent.address.to_owned(), counted);
        }
    }

    fn tally(&mut self, counted: &Counted, add: bool) {
        let step = |count: &mut u64| {
            *count = if add {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
        };
        for (slot, set) in counted.states.iter().enumerate() {
            if *set {
                step(&mut self.by_state[slot]);
            }
        }
        let class = self
            .by_class
            .entry(counted.agent_class.clone())
            .or_default();
        step(class);
        if *class == 0 {
            self.by_class.remove(&counted.agent_class);
        }
    }

    /// The summary of every agent.
    pub fn summary(&self) -> proto::RecordsSummary {
        proto::RecordsSummary {
            agents: self.counted.len() as u64,
            by_state: STATE_NAMES
                .iter()
                .zip(self.by_state)
                .filter(|(_, count)| *count > 0)
                .map(|(state, count)| ((*state).to_owned(), count))
                .collect(),
            by_class: self.by_class.clone(),
        }
    }
}

/// The state names an agent counts under.
fn states_of(agent: &Facets<'_>) -> impl Iterator<Item = &'static str> {
    let liveness = match agent.state {
        AgentState::Alive => "alive",
        AgentState::Expired => "expired",
        AgentState::Left => "left",
    };
    [
        Some(liveness),
        agent.conflict.then_some("conflict"),
        agent.flapping.then_some("flapping"),
        agent.unverified.then_some("unverified"),
    ]
    .into_iter()
    .flatten()
}

#[derive(Default)]
struct Summary<'a> {
    agents: u64,
    by_state: HashMap<&'static str, u64>,
    by_class: HashMap<&'a str, u64>,
}

impl<'a> Summary<'a> {
    fn count(&mut self, agent: &Facets<'a>) {
        self.agents += 1;
        for state in states_of(agent) {
            *self.by_state.entry(state).or_default() += 1;
        }
        *self.by_class.entry(agent.agent_class).or_default() += 1;
    }

    fn into_proto(self) -> proto::RecordsSummary {
        proto::RecordsSummary {
            agents: self.agents,
            by_state: self
                .by_state
                .into_iter()
                .map(|(state, count)| (state.to_owned(), count))
                .collect(),
            by_class: self
                .by_class
                .into_iter()
                .map(|(class, count)| (class.to_owned(), count))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::table::TableConfig;
    use ocs_protocol::heartbeat::HeartbeatRef;

    fn table(agents: usize) -> (AgentTable, Instant) {
        let mut table = AgentTable::new(TableConfig {
            agent_timeout: Duration::from_secs(5),
            forget_after: Duration::from_secs(600),
            max_agents: 1_000_000,
            hold_fraction: 0.5,
            hold_min_agents: 0,
            max_hold: Duration::from_secs(60),
            max_heartbeat_rate: 10.0,
        });
        let now = Instant::now();
        for index in 0..agents {
            let mut beat = heartbeat(&format!("observatory.agent{index:05}"));
            if index % 10 == 0 {
                beat.agent_class = "Lakeshore372Agent".into();
            }
            table.observe(&HeartbeatRef::of(&beat), now, 1_795_000_000_000);
        }
        (table, now)
    }

    fn heartbeat(address: &str) -> proto::Heartbeat {
        proto::Heartbeat {
            protocol_version: 1,
            agent_address: address.into(),
            agent_class: "FakeDataAgent".into(),
            incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
            seq: 1,
            interval_ms: 1000,
            host: "daq1".into(),
            pid: 4242,
            op_codes: vec![proto::OperationCode {
                op_name: "acq".into(),
                op_code: 3,
                op_type: "process".into(),
            }],
            ..Default::default()
        }
    }

    /// The summary index of `table`, counted from scratch.
    fn counted(table: &AgentTable) -> SummaryIndex {
        let mut index = SummaryIndex::default();
        index.rebuild(table);
        index
    }

    #[test]
    fn the_summary_index_follows_new_changed_and_forgotten_agents() {
        let (mut table, now) = table(30);
        let mut index = counted(&table);
        let everything = |table: &AgentTable| summarise(table.facets());
        assert_eq!(index.summary(), everything(&table));
        // Ten expire, one more arrives, and the index hears of each.
        let expired = table
            .expire_due(now + Duration::from_secs(6), 1_795_000_006_000)
            .expired;
        assert_eq!(expired.len(), 30);
        let mut late = heartbeat("observatory.late");
        late.agent_class = "NewAgent".into();
        table.observe(
            &HeartbeatRef::of(&late),
            now + Duration::from_secs(6),
            1_795_000_006_000,
        );
        for address in expired
            .iter()
            .map(String::as_str)
            .chain(["observatory.late"])
        {
            index.update(&table, address);
        }
        assert_eq!(index.summary(), everything(&table));
        assert_eq!(index.summary().by_state.get("expired"), Some(&30));
        assert_eq!(index.summary().by_class.get("NewAgent"), Some(&1));
        // Forgotten: counted no more, and a class with no agent left goes.
        let forgotten = table.forget_due(now + Duration::from_secs(3600));
        assert_eq!(forgotten.len(), 30);
        for address in &forgotten {
            index.update(&table, address);
        }
        assert_eq!(index.summary(), everything(&table));
        assert_eq!(index.summary().agents, 1);
        assert!(!index.summary().by_class.contains_key("Lakeshore372Agent"));
    }

    fn query(edit: impl FnOnce(&mut proto::RecordsQuery)) -> proto::RecordsQuery {
        let mut query = proto::RecordsQuery {
            protocol_version: 1,
            ..Default::default()
        };
        edit(&mut query);
        query
    }

    /// Every page of `query`, as a client reads them.
    fn pages(table: &AgentTable, mut query: proto::RecordsQuery) -> Vec<proto::RecordsPage> {
        let mut pages = Vec::new();
        loop {
            let page = RecordsFilter::parse(&query, 1024 * 1024)
                .unwrap()
                .page(table, &counted(table));
            let next = page.next_after.clone();
            assert!(page.encoded_len() <= query.max_bytes.max(MIN_PAGE_BYTES as u32) as usize);
            pages.push(page);
            if next.is_empty() {
                return pages;
            }
            query.after = next;
        }
    }

    #[test]
    fn pages_cover_every_record_once_in_address_order_and_each_fits() {
        let (table, _) = table(2_000);
        let pages = pages(&table, query(|q| q.max_bytes = 32 * 1024));
        assert!(pages.len() > 5, "{} pages", pages.len());
        let addresses: Vec<&str> = pages
            .iter()
            .flat_map(|page| page.records.iter().map(|r| r.agent_address.as_str()))
            .collect();
        let mut sorted = addresses.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(addresses, sorted, "in order, none twice");
        assert_eq!(addresses.len(), 2_000);
        assert_eq!(pages[0].summary.as_ref().unwrap().agents, 2_000);
        assert!(pages[1..].iter().all(|page| page.summary.is_none()));
    }

    #[test]
    fn filters_by_state_class_and_pattern_and_counts_what_matches() {
        let (mut table, now) = table(100);
        table.expire_due(now + Duration::from_secs(6), 1_795_000_006_000);
        for index in [1, 2, 3] {
            table.observe(
                &HeartbeatRef::of(&proto::Heartbeat {
                    seq: 2,
                    ..heartbeat(&format!("observatory.agent{index:05}"))
                }),
                now + Duration::from_secs(7),
                1_795_000_007_000,
            );
        }
        let alive = pages(&table, query(|q| q.states = vec!["alive".into()]));
        assert_eq!(alive[0].records.len(), 3);
        let summary = alive[0].summary.as_ref().unwrap();
        assert_eq!(summary.agents, 3);
        assert_eq!(summary.by_state.get("alive"), Some(&3));

        let expired_lakeshores = pages(
            &table,
            query(|q| {
                q.states = vec!["expired".into()];
                q.classes = vec!["Lakeshore372Agent".into()];
            }),
        );
        assert_eq!(expired_lakeshores[0].records.len(), 10);
        assert!(
            expired_lakeshores[0]
                .records
                .iter()
                .all(|r| r.expired && r.agent_class == "Lakeshore372Agent")
        );

        let pattern = pages(
            &table,
            query(|q| q.agent_pattern = "observatory.agent000?1".into()),
        );
        let found: Vec<&str> = pattern[0]
            .records
            .iter()
            .map(|r| r.agent_address.as_str())
            .collect();
        assert_eq!(found.len(), 10);
        assert_eq!(
            found[..2],
            ["observatory.agent00001", "observatory.agent00011"]
        );
        let star = pages(&table, query(|q| q.agent_pattern = "*agent0009*".into()));
        assert_eq!(star[0].records.len(), 10);

        let summary = pages(&table, query(|q| q.summary_only = true));
        assert!(summary[0].records.is_empty());
        let counts = summary[0].summary.as_ref().unwrap();
        assert_eq!(counts.agents, 100);
        assert_eq!(counts.by_state.get("expired"), Some(&97));
        assert_eq!(counts.by_class.get("Lakeshore372Agent"), Some(&10));
        assert!(
            summary[0].encoded_len() < 300,
            "{} bytes",
            summary[0].encoded_len()
        );
    }

    #[test]
    fn the_messagepack_bound_holds_for_every_optional_key() {
        let (mut table, now) = table(1);
        let mut beat = heartbeat("observatory.agent00000");
        beat.agent_version = "1.2.3-with-a-long-suffix".into();
        beat.interval_ms = 1500;
        beat.seq = 2;
        table.observe(
            &HeartbeatRef::of(&beat),
            now + Duration::from_secs(1),
            1_795_000_001_000,
        );
        let mut record = table.record("observatory.agent00000").unwrap();
        record.flapping = true;
        record.unverified = true;
        record.incarnations_seen = 7;
        record.time_expired_unix_ms = 1_795_000_001_000;
        record.conflict = Some(proto::Conflict {
            incarnation: "6f7a1c0e-1d2b-4c3a-8e9f-0a1b2c3d4e5f".into(),
            host: "daq2".into(),
            pid: 4_000_000,
        });
        let packed = codec::to_msgpack(&json::AgentRecords(std::slice::from_ref(&record)))
            .unwrap()
            .len();
        assert!(
            packed <= 2 * record.encoded_len() + 256,
            "{packed} bytes for {} on the wire",
            record.encoded_len()
        );
    }

    #[test]
    fn an_unknown_state_is_refused_with_the_names_to_use() {
        let err =
            RecordsFilter::parse(&query(|q| q.states = vec!["dead".into()]), 1 << 20).unwrap_err();
        assert!(
            err.contains("\"dead\"") && err.contains("flapping"),
            "{err}"
        );
    }

    #[test]
    fn status_data_holds_every_record_while_they_fit_and_points_to_pages_beyond() {
        let (table, _) = table(500);
        let encoded = |max_payload: usize| {
            StatusView::of(&table, &counted(&table), max_payload)
                .data(max_payload, "observatory.registry.records")
        };
        let status_data =
            |max_payload: usize| codec::from_msgpack::<Value>(&encoded(max_payload)).unwrap();
        let inline = status_data(1024 * 1024);
        assert_eq!(inline.as_object().unwrap().len(), 500);
        println!(
            "{} bytes per record in status data",
            encoded(1024 * 1024).len() / 500
        );

        let paged = status_data(64 * 1024);
        assert_eq!(paged[json::RECORDS_IN_PAGES]["agents"], 500);
        assert_eq!(
            paged[json::RECORDS_IN_PAGES]["subject"],
            "observatory.registry.records"
        );
        assert_eq!(paged["summary"]["agents"], 500);
        assert!(encoded(64 * 1024).len() < 32 * 1024);
        // Too many even to try: the summary comes from the table directly.
        let summary_only = status_data(16 * 1024);
        assert_eq!(summary_only[json::RECORDS_IN_PAGES]["agents"], 500);
        assert_eq!(summary_only["summary"]["by_class"]["Lakeshore372Agent"], 50);
    }
}
