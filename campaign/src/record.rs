//! What really happened in a campaign, as seen from outside the system: the
//! nemesis's own log of faults, the feed as each independent subscriber
//! received it, and the operation monitor's `/metrics` sampled every second.
//! Times are seconds on the campaign's monotonic clock. No I/O but writing
//! the record out as JSON lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::schedule::Fault;

/// One agent as a feed message showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The agent's address.
    pub address: String,
    /// Whether the registry counts it expired (or departed).
    pub expired: bool,
    /// The incarnation the registry holds for it.
    pub incarnation: String,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The nemesis struck; `agents` are the addresses it silenced or killed.
    FaultStarted {
        /// The fault as scheduled (a leading registry resolved to its replica in `struck`).
        fault: Fault,
        /// The container it struck.
        struck: String,
        /// Agent addresses it silences or kills.
        agents: Vec<String>,
    },
    /// The fault's target is back (started, thawed or reconnected).
    FaultHealed {
        /// The fault's id.
        id: u32,
    },
    /// A nemesis action failed: the fault did not happen as scheduled.
    NemesisError {
        /// The fault's id.
        id: u32,
        /// What went wrong.
        error: String,
    },
    /// A feed message received by observer `observer` (NATS server `observer + 1`).
    Feed {
        /// Which observer.
        observer: u8,
        /// The publishing registry's incarnation.
        registry_incarnation: String,
        /// Its lease term.
        term: u64,
        /// Its sequence number.
        seq: u64,
        /// When the registry sent it, on its wall clock (the containers
        /// share the host's), in milliseconds since the Unix epoch.
        #[serde(default)]
        sent_at_ms: i64,
        /// A snapshot (every agent) rather than changes.
        snapshot: bool,
        /// Parts of the snapshot (0 or 1: one message).
        parts: u32,
        /// The records it carried.
        agents: Vec<Seen>,
        /// Addresses it forgot.
        forgotten: Vec<String>,
    },
    /// The operation monitor's view: `ocs_agent_expired` by agent, or `None`
    /// when `/metrics` did not answer.
    Monitor {
        /// Expired flag by address.
        expired: Option<BTreeMap<String, bool>>,
    },
    /// The observers' subscriptions were live and every agent alive: the
    /// faults start now.
    Ready,
    /// The last fault healed and the settle time ran out.
    End,
}

/// One timestamped event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Seconds since the campaign started.
    pub at: f64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A campaign's record, in order of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The entries, appended as they happen.
    pub entries: Vec<Entry>,
}

impl Record {
    /// Appends `event` at `at`.
    pub fn push(&mut self, at: f64, event: Event) {
        self.entries.push(Entry { at, event });
    }

    /// When `Ready` was recorded.
    pub fn ready_at(&self) -> Option<f64> {
        self.entries
            .iter()
            .find(|entry| entry.event == Event::Ready)
            .map(|entry| entry.at)
    }

    /// The entries in time order (observers append concurrently).
    pub fn sorted(mut self) -> Record {
        self.entries.sort_by(|a, b| a.at.total_cmp(&b.at));
        self
    }

    /// Writes one JSON object per line to `path`.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for entry in &self.entries {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Reads a record written by [`Record::write_jsonl`].
    pub fn read_jsonl(path: &Path) -> std::io::Result<Record> {
        let text = std::fs::read_to_string(path)?;
        let entries = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<Entry>, _>>()?;
        Ok(Record { entries })
    }
}
