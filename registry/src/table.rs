//! [`AgentTable`]: every agent the registry has heard, and when each expires.
//!
//! No I/O and no clock of its own: callers pass the monotonic `now`
//! (`tokio::time::Instant`, pausable in tests) for liveness and the wall-clock
//! time in unix milliseconds for display. An agent's own clock is never used.
//!
//! Deadlines live in ordered sets so the service can sleep exactly until the
//! next one: expiry is detected at the deadline, not at the next poll.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use ocs_protocol::heartbeat::{HeartbeatRef, OperationRef};
use ocs_protocol::proto;
use tokio::time::Instant;
use uuid::Uuid;

use interned::{Interned, Operations, op_codes, same_operations};

/// Limits and timings of the table.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// An agent expires when no heartbeat arrives for this long (or three of
    /// its own intervals, if that is longer).
    pub agent_timeout: Duration,
    /// An expired agent is forgotten after this long.
    pub forget_after: Duration,
    /// Most agents tracked at once; heartbeats from further new addresses are dropped.
    pub max_agents: usize,
    /// Self-preservation: when more than this share of the alive agents would
    /// expire together, the registry assumes it is cut off from them and
    /// holds expiries until heartbeats return.
    pub hold_fraction: f64,
    /// ...provided at least this many agents are alive (0 disables holding).
    pub hold_min_agents: usize,
    /// The longest a hold lasts: then the agents still silent expire, and no
    /// new hold starts for as long again. Without a bound, a host that died
    /// for good with most agents on it would be held alive forever.
    pub max_hold: Duration,
    /// Heartbeats accepted per second from one address, on average (a burst
    /// of twice as many is allowed): agents beat once a second plus once per
    /// op-code change, so more is a broken or hostile sender.
    pub max_heartbeat_rate: f64,
}

impl TableConfig {
    /// How long an agent that beats every `interval_ms` may stay silent.
    fn timeout_for(&self, interval_ms: u32) -> Duration {
        self.agent_timeout
            .max(Duration::from_millis(u64::from(interval_ms)) * 3)
    }
}

/// Deadlines this close together count as "at once" for self-preservation:
/// agents heartbeat about once a second, so a partition makes all their
/// deadlines pass within about a second.
const HOLD_WINDOW: Duration = Duration::from_secs(2);

/// How often the schedule of alive agents catches up with their heartbeats
/// (see [`AgentTable::catch_up_schedule`]) while any are alive: each look
/// reschedules those that came within the hold horizon since the last, so a
/// look at 100,000 agents moves a few thousand keys, not half the fleet.
const CATCH_UP_EVERY: Duration = Duration::from_millis(100);
/// How often a holding table looks again whether heartbeats returned.
const HOLD_RECHECK: Duration = Duration::from_millis(250);
/// Accepted heartbeats before an address counts for self-preservation: a
/// burst of one-off beats (a misconfigured script, a spoofer) never
/// established a steady heartbeat, so its silence is no sign of a partition.
pub const STEADY_BEATS: u32 = 3;
/// How far `seq` may run ahead of the last accepted one: this many, plus
/// [`SEQ_JUMP_PER_SECOND`] for each second since. Agents number only the
/// beats they send (about one a second, more on op-code changes), so a
/// larger jump is a forged or corrupt beat that would make every later real
/// one look stale.
pub const SEQ_JUMP_BASE: u64 = 100;
/// See [`SEQ_JUMP_BASE`].
pub const SEQ_JUMP_PER_SECOND: u64 = 100;
/// After this many of its own intervals without an accepted beat, the
/// incarnation shown is taken as gone: a displaced incarnation that still
/// beats takes the record back, and beats of the shown incarnation whose
/// `seq` is out of range are accepted again (resynchronised).
const SILENT_INTERVALS: u32 = 2;
/// An agent flaps when it expires this many times...
const FLAP_EXPIRIES: usize = 3;
/// ...within this long; it stops flapping after this long without an expiry.
/// The gap between entering (three expiries) and leaving (a quiet window)
/// is the hysteresis: one late heartbeat neither raises nor clears it.
pub const FLAP_WINDOW: Duration = Duration::from_secs(600);

/// The liveness of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Heartbeating.
    Alive,
    /// No heartbeat within the timeout.
    Expired,
    /// Said goodbye with a "leaving" heartbeat.
    Left,
}

impl AgentState {
    fn to_proto(self) -> proto::AgentState {
        match self {
            AgentState::Alive => proto::AgentState::Alive,
            AgentState::Expired => proto::AgentState::Expired,
            AgentState::Left => proto::AgentState::Left,
        }
    }
}

/// One agent as a records query sees it (see [`AgentTable::facets`]).
#[derive(Debug, Clone, Copy)]
pub struct Facets<'a> {
    /// Its address.
    pub address: &'a str,
    /// Its class.
    pub agent_class: &'a str,
    /// Its liveness.
    pub state: AgentState,
    /// Two incarnations heartbeat at its address.
    pub conflict: bool,
    /// It expires and returns repeatedly.
    pub flapping: bool,
    /// Alive only by assumption.
    pub unverified: bool,
}

impl<'a> Facets<'a> {
    fn of_entry(address: &'a str, entry: &'a Entry) -> Self {
        Facets {
            address,
            agent_class: &entry.agent_class,
            state: entry.state,
            conflict: entry.conflict,
            flapping: entry.flapping,
            unverified: entry.unverified,
        }
    }

    /// The facets of a record already taken out of the table.
    pub fn of_record(record: &'a proto::AgentRecord) -> Self {
        let state = match proto::AgentState::try_from(record.state) {
            Ok(proto::AgentState::Expired) => AgentState::Expired,
            Ok(proto::AgentState::Left) => AgentState::Left,
            _ => AgentState::Alive,
        };
        Facets {
            address: &record.agent_address,
            agent_class: &record.agent_class,
            state,
            conflict: record.conflict.is_some(),
            flapping: record.flapping,
            unverified: record.unverified,
        }
    }
}

/// What a heartbeat did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A new address.
    New,
    /// Something subscribers care about changed (op codes, state, incarnation, class).
    Changed,
    /// Only the liveness timestamps moved.
    Refreshed,
    /// Dropped: not newer than the last accepted heartbeat of this incarnation.
    Stale,
    /// Dropped: `seq` runs further ahead of the last accepted heartbeat than
    /// an agent can count (see [`SEQ_JUMP_BASE`]).
    SeqJump,
    /// Accepted although its `seq` was out of range, because no beat of this
    /// incarnation had been accepted for [`SILENT_INTERVALS`] intervals: an
    /// earlier forged or corrupt `seq` no longer blocks the real agent.
    Resynced,
    /// Dropped: the table is full and this is a new address.
    TableFull,
    /// Dropped: the incarnation is not a UUID (`heartbeat::read` refuses
    /// such a heartbeat before it gets here).
    InvalidIncarnation,
    /// Dropped: this address sends faster than `max_heartbeat_rate`.
    RateLimited,
    /// Dropped: from an incarnation that a newer one displaced but that still
    /// heartbeats. The record is marked as a conflict (and changed when the
    /// conflict is new).
    Conflict {
        /// The conflict started with this heartbeat.
        new: bool,
    },
}

struct Entry {
    agent_class: Arc<str>,
    /// Kept parsed: 16 bytes beside the other fields instead of a string
    /// elsewhere on the heap, which every heartbeat would read.
    incarnation: Uuid,
    seq: u64,
    host: Arc<str>,
    pid: u32,
    agent_version: Arc<str>,
    interval_ms: u32,
    op_codes: Operations,
    state: AgentState,
    /// Where the entry is scheduled in `expiries` (alive) or `forgets`. An
    /// alive agent is due at [`AgentTable::due`], which unchanged heartbeats
    /// move past this without rescheduling it; see
    /// [`AgentTable::catch_up_schedule`].
    deadline: Instant,
    first_seen_unix_ms: i64,
    last_updated_unix_ms: i64,
    time_expired_unix_ms: Option<i64>,
    incarnations_seen: u64,
    /// When the last accepted heartbeat arrived.
    last_heard: Instant,
    /// The incarnation this one displaced, while it may still be
    /// heartbeating; boxed, as it is rare and would double every entry.
    rival: Option<Box<Rival>>,
    /// Two incarnations heartbeat at this address at once.
    conflict: bool,
    /// The last few expiries, oldest first (at most [`FLAP_EXPIRIES`]).
    recent_expiries: Vec<Instant>,
    /// Expires and returns repeatedly.
    flapping: bool,
    /// Accepted heartbeats at this address (saturating); see [`STEADY_BEATS`].
    beats: u32,
    /// Alive only by assumption, not by a heartbeat: its deadline passed
    /// while expiries were held, or it was restored from storage and not
    /// heard since.
    unverified: bool,
    /// This registry accepted a heartbeat of it (false for a restored
    /// record until then).
    heard: bool,
    /// Heartbeats it may still accept.
    rate: RateLimit,
}

/// A token bucket: `rate` heartbeats a second on average, in bursts of
/// twice as many (at least two).
#[derive(Debug, Clone, Copy)]
struct RateLimit {
    tokens: f64,
    /// When `tokens` was last refilled.
    at: Instant,
}

impl RateLimit {
    fn full(rate: f64, now: Instant) -> Self {
        RateLimit {
            tokens: Self::burst(rate),
            at: now,
        }
    }

    fn burst(rate: f64) -> f64 {
        2.0 * rate.max(1.0)
    }

    /// Refills for the time since the last call, then takes a token if
    /// there is one.
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(Self::burst(rate));
        self.at = self.at.max(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// An incarnation displaced by a newer one at the same address. If it keeps
/// heartbeating, two processes run one instance: a conflict.
#[derive(Debug, Clone)]
struct Rival {
    incarnation: Uuid,
    seq: u64,
    host: Arc<str>,
    pid: u32,
    last_heard: Instant,
    /// The same moment on the wall clock, for the record's `last_updated`.
    last_heard_unix_ms: i64,
    /// What its last heartbeat said, for when the record falls back to it.
    agent_class: Arc<str>,
    agent_version: Arc<str>,
    interval_ms: u32,
    op_codes: Operations,
}

/// The entry a heartbeat replaces: where it was scheduled, and what the
/// new entry carries over.
struct Previous {
    deadline: Instant,
    state: AgentState,
    carried: Carried,
}

/// What an address's entry carries from one heartbeat to the next.
struct Carried {
    first_seen_unix_ms: i64,
    incarnations_seen: u64,
    beats: u32,
    rival: Option<Box<Rival>>,
    conflict: bool,
}

impl Carried {
    /// For an address heard for the first time.
    fn first(now_unix_ms: i64) -> Self {
        Carried {
            first_seen_unix_ms: now_unix_ms,
            incarnations_seen: 1,
            beats: 0,
            rival: None,
            conflict: false,
        }
    }
}

/// The registry's agents.
pub struct AgentTable {
    config: TableConfig,
    /// By address; the address is shared with its place in `expiries` or `forgets`.
    agents: HashMap<Arc<str>, Entry>,
    /// `(deadline, address)` of alive agents. A key may lie before the
    /// agent's real deadline (its heartbeats moved it on); it is never after.
    expiries: BTreeSet<(Instant, Arc<str>)>,
    /// How many of `expiries` beat steadily ([`STEADY_BEATS`]): what a
    /// self-preservation hold compares the silent with. Kept as the table
    /// changes; counting at each expiry cost 6 ms at 20,000 agents.
    steady_alive: usize,
    /// Classes, hosts, versions and operation lists, one copy each.
    interned: Interned,
    /// `(deadline, address)` of expired or departed agents.
    forgets: BTreeSet<(Instant, Arc<str>)>,
    /// While holding expiries (self-preservation).
    hold: Option<Hold>,
    /// After a hold ran out, none starts again before this.
    no_hold_until: Option<Instant>,
    /// When the schedule last caught up: every alive agent's key up to the
    /// hold horizon from then is its real deadline.
    caught_up_at: Option<Instant>,
    /// The empty address, which sorts first: a bound for ranges of keys.
    no_address: Arc<str>,
}

/// Self-preservation in progress.
#[derive(Debug, Clone, Copy)]
struct Hold {
    since: Instant,
    /// When to look again whether heartbeats returned.
    recheck: Instant,
}

/// What [`AgentTable::census`] counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Agents by state.
    pub alive: usize,
    /// Expired agents.
    pub expired: usize,
    /// Departed agents.
    pub left: usize,
    /// Addresses where two incarnations heartbeat at once.
    pub conflicts: usize,
    /// Agents still flapping.
    pub flapping: usize,
    /// Agents alive only by assumption.
    pub unverified: usize,
    /// Agents that stopped flapping now.
    pub settled: Vec<String>,
}

/// What [`AgentTable::expire_due`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expiries {
    /// Agents that expired now.
    pub expired: Vec<String>,
    /// When each of `expired` was due, in the same order: how late the
    /// expiry is shows in the registry's metrics.
    pub deadlines: Vec<Instant>,
    /// Agents whose `unverified` mark was set or cleared.
    pub unverified: Vec<String>,
    /// A hold ended because it reached [`TableConfig::max_hold`].
    pub hold_exhausted: bool,
}

/// How long silence from an agent beating every `interval_ms` means it is gone.
fn silence_limit(interval_ms: u32) -> Duration {
    let interval = if interval_ms == 0 { 1000 } else { interval_ms };
    Duration::from_millis(u64::from(interval)) * SILENT_INTERVALS
}

/// Whether `seq` can follow `last`, accepted `elapsed` ago. 0 means unknown
/// (a record restored from storage): anything follows it.
fn seq_follows(last: u64, seq: u64, elapsed: Duration) -> bool {
    if last == 0 {
        return true;
    }
    let allowed =
        SEQ_JUMP_BASE.saturating_add(SEQ_JUMP_PER_SECOND.saturating_mul(elapsed.as_secs()));
    seq > last && seq - last <= allowed
}

/// The common case: an alive agent beating on, unchanged, is updated in
/// place, with no copy of its strings or operations and nothing rescheduled.
/// `false` for anything else (a new incarnation, a change, a leaving, a
/// conflict, a seq out of range), which [`AgentTable::observe`] handles by
/// building a new entry.
fn refresh_in_place(
    interned: &mut Interned,
    entry: &mut Entry,
    heartbeat: &HeartbeatRef<'_>,
    incarnation: Uuid,
    now: Instant,
    now_unix_ms: i64,
) -> bool {
    let unchanged = entry.incarnation == incarnation
        && entry.state == AgentState::Alive
        && !heartbeat.leaving
        && !entry.unverified
        && !entry.conflict
        && entry.rival.is_none()
        && entry.interval_ms == heartbeat.interval_ms
        && seq_follows(
            entry.seq,
            heartbeat.seq,
            now.saturating_duration_since(entry.last_heard),
        )
        && *entry.agent_class == *heartbeat.agent_class
        && same_operations(&entry.op_codes, &heartbeat.op_codes);
    if !unchanged {
        return false;
    }
    // The deadline moves to `now + timeout` by `last_heard` alone: the
    // scheduled key stays where it is until the schedule catches up with it
    // (`AgentTable::catch_up_schedule`).
    entry.seq = heartbeat.seq;
    entry.last_heard = now;
    entry.last_updated_unix_ms = now_unix_ms;
    entry.beats = entry.beats.saturating_add(1);
    entry.heard = true;
    if *entry.host != *heartbeat.host {
        entry.host = interned.text(heartbeat.host);
    }
    if *entry.agent_version != *heartbeat.agent_version {
        entry.agent_version = interned.text(heartbeat.agent_version);
    }
    entry.pid = heartbeat.pid;
    true
}

impl AgentTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        AgentTable {
            config,
            agents: HashMap::new(),
            expiries: BTreeSet::new(),
            steady_alive: 0,
            interned: Interned::default(),
            forgets: BTreeSet::new(),
            hold: None,
            no_hold_until: None,
            caught_up_at: None,
            no_address: Arc::from(""),
        }
    }

    /// Whether expiries are held because too many agents fell silent at once.
    pub fn holding(&self) -> bool {
        self.hold.is_some()
    }

    fn steady(&self, address: &str) -> bool {
        self.agents
            .get(address)
            .is_some_and(|entry| entry.beats >= STEADY_BEATS)
    }

    /// Whether so many steadily beating alive agents are due together that
    /// the silence is more likely this registry's partition than their deaths.
    /// The schedule must have caught up at `now` (as `expire_due` does first),
    /// so that the keys within the horizon are the agents' real deadlines.
    fn mass_expiry(&self, now: Instant) -> bool {
        let min = self.config.hold_min_agents;
        if min == 0 || self.expiries.len() < min {
            return false;
        }
        let horizon = now + self.hold_horizon();
        let due = self
            .expiries
            .iter()
            .take_while(|(deadline, _)| *deadline <= horizon)
            .filter(|(_, address)| self.steady(address))
            .count();
        // Cheap first: too few due to be most of even the smallest fleet that may hold.
        if due as f64 <= self.config.hold_fraction * min as f64 {
            return false;
        }
        let alive = self.steady_alive;
        alive >= min && due as f64 > self.config.hold_fraction * alive as f64
    }

    /// The steady alive agents counted afresh, to hold `steady_alive` to in tests.
    #[cfg(test)]
    fn steady_alive_recounted(&self) -> usize {
        self.expiries
            .iter()
            .filter(|(_, address)| self.steady(address))
            .count()
    }

    /// Number of agents tracked.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is tracked.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The table's copy of `address` (a new one if it has none): the agent
    /// map and the deadline sets share it, so rescheduling allocates nothing.
    fn shared_address(&self, address: &str) -> Arc<str> {
        self.agents
            .get_key_value(address)
            .map_or_else(|| Arc::from(address), |(shared, _)| shared.clone())
    }

    /// When an alive entry is really due: a timeout after its last
    /// heartbeat, or where it is scheduled if that is later (a fresh timeout
    /// granted after a hold, or on restore).
    fn due(&self, entry: &Entry) -> Instant {
        entry
            .deadline
            .max(entry.last_heard + self.config.timeout_for(entry.interval_ms))
    }

    /// How far ahead self-preservation looks for agents due together. With
    /// a short timeout every beating agent's deadline lies within HOLD_WINDOW
    /// of now; half the timeout still separates the silent (due soon) from
    /// those beating (due a timeout less an interval away).
    fn hold_horizon(&self) -> Duration {
        HOLD_WINDOW.min(self.config.agent_timeout / 2)
    }

    /// Makes the schedule of alive agents exact up to the hold horizon from
    /// `now`: each agent scheduled by then whose heartbeats have since moved
    /// its deadline on is rescheduled at its real deadline.
    ///
    /// Unchanged heartbeats only move `last_heard`, so a hundred thousand
    /// beats a second do not each reorder `expiries` (or allocate a node of
    /// it now and then); the schedule catches up here, once per timeout less
    /// the horizon for each agent. Exact up to the horizon, the keys tell
    /// expiry and self-preservation who is really due without a look at
    /// each entry, as they did when every beat rescheduled.
    fn catch_up_schedule(&mut self, now: Instant) {
        let until = now + self.hold_horizon();
        // Keys up to where the last look reached are exact already: start
        // after them, or do nothing when this look reaches no further.
        let start = match self.caught_up_to() {
            Some(exact) if exact >= until => return,
            Some(exact) => Bound::Included((exact, self.no_address.clone())),
            None => Bound::Unbounded,
        };
        let moved: Vec<(Instant, Instant, Arc<str>)> = self
            .expiries
            .range((start, Bound::Unbounded))
            .take_while(|(scheduled, _)| *scheduled <= until)
            .filter_map(|(scheduled, address)| {
                let due = self.due(self.agents.get(address)?);
                (due > *scheduled).then(|| (*scheduled, due, address.clone()))
            })
            .collect();
        for (scheduled, due, address) in moved {
            self.reschedule_alive(scheduled, due, address);
        }
        self.caught_up_at = Some(self.caught_up_at.map_or(now, |at| at.max(now)));
    }

    /// Up to where the schedule of alive agents is exact.
    fn caught_up_to(&self) -> Option<Instant> {
        self.caught_up_at.map(|at| at + self.hold_horizon())
    }

    /// Moves an alive agent's key from `scheduled` to `due`.
    fn reschedule_alive(&mut self, scheduled: Instant, due: Instant, address: Arc<str>) {
        self.expiries.remove(&(scheduled, address.clone()));
        if let Some(entry) = self.agents.get_mut(&address) {
            entry.deadline = due;
        }
        self.expiries.insert((due, address));
    }

    /// Unschedules whatever deadline `address` has.
    fn unschedule(&mut self, address: &str, entry_deadline: Instant, state: AgentState) {
        let key = (entry_deadline, self.shared_address(address));
        match state {
            AgentState::Alive => {
                if self.expiries.remove(&key) && self.steady(address) {
                    self.steady_alive -= 1;
                }
            }
            AgentState::Expired | AgentState::Left => {
                self.forgets.remove(&key);
            }
        };
    }

    /// Schedules `address`'s expiry (alive) or forgetting (expired, left)
    /// at `deadline`; its entry is in the table already.
    fn schedule(&mut self, address: &str, deadline: Instant, state: AgentState) {
        let key = (deadline, self.shared_address(address));
        match state {
            AgentState::Alive => {
                if self.expiries.insert(key) && self.steady(address) {
                    self.steady_alive += 1;
                }
            }
            AgentState::Expired | AgentState::Left => {
                self.forgets.insert(key);
            }
        };
    }

    /// Records a validated heartbeat received at `now`.
    pub fn observe(
        &mut self,
        heartbeat: &HeartbeatRef<'_>,
        now: Instant,
        now_unix_ms: i64,
    ) -> Observation {
        let address = heartbeat.agent_address;
        let Ok(incarnation) = Uuid::try_parse(heartbeat.incarnation) else {
            // `heartbeat::read` refuses these; a caller that did not check gets this.
            return Observation::InvalidIncarnation;
        };
        let timeout = self.config.timeout_for(heartbeat.interval_ms);
        let max_rate = self.config.max_heartbeat_rate;
        let mut rate = RateLimit::full(max_rate, now);
        if let Some(entry) = self.agents.get_mut(address) {
            if !entry.rate.take(max_rate, now) {
                return Observation::RateLimited;
            }
            let was_steady = entry.beats >= STEADY_BEATS;
            if refresh_in_place(
                &mut self.interned,
                entry,
                heartbeat,
                incarnation,
                now,
                now_unix_ms,
            ) {
                if !was_steady && entry.beats >= STEADY_BEATS {
                    self.steady_alive += 1;
                }
                let scheduled = entry.deadline;
                if self.caught_up_to().is_some_and(|exact| scheduled <= exact) {
                    // A late beat of an agent due within the horizon: its key
                    // must stay exact there.
                    self.reschedule_alive(scheduled, now + timeout, self.shared_address(address));
                }
                return Observation::Refreshed;
            }
            rate = entry.rate;
        }
        // Whether the incarnation shown has gone quiet: expired, departed, or
        // not heard for a few of its intervals.
        let shown_silent = self.agents.get(address).is_some_and(|entry| {
            entry.state != AgentState::Alive
                || now.saturating_duration_since(entry.last_heard)
                    >= silence_limit(entry.interval_ms)
        });
        let mut rival_returns = false;
        if let Some(entry) = self.agents.get_mut(address)
            && entry.incarnation != incarnation
            && let Some(rival) = entry
                .rival
                .as_mut()
                .filter(|rival| rival.incarnation == incarnation)
        {
            if shown_silent && !heartbeat.leaving {
                // The incarnation shown went quiet while the displaced one
                // still beats (a duplicate that died, or one forged beat):
                // the record follows the living one.
                rival_returns = true;
            } else {
                if heartbeat.seq <= rival.seq {
                    return Observation::Stale;
                }
                if heartbeat.leaving {
                    // The displaced one went away: no conflict any more.
                    entry.rival = None;
                    let was = std::mem::replace(&mut entry.conflict, false);
                    return if was {
                        Observation::Changed
                    } else {
                        Observation::Refreshed
                    };
                }
                rival.seq = heartbeat.seq;
                rival.last_heard = now;
                rival.last_heard_unix_ms = now_unix_ms;
                if !same_operations(&rival.op_codes, &heartbeat.op_codes) {
                    rival.op_codes = self.interned.operations(heartbeat.op_codes.iter().copied());
                }
                let new = !std::mem::replace(&mut entry.conflict, true);
                return Observation::Conflict { new };
            }
        }
        let mut resynced = false;
        let (observation, previous) = match self.agents.get(address) {
            None if self.agents.len() >= self.config.max_agents => return Observation::TableFull,
            None => (Observation::New, None),
            Some(entry) => {
                let same_incarnation = entry.incarnation == incarnation;
                if same_incarnation
                    && !seq_follows(
                        entry.seq,
                        heartbeat.seq,
                        now.saturating_duration_since(entry.last_heard),
                    )
                {
                    // Out of range. Accept it anyway once this incarnation has
                    // been silent a while, so a forged high seq (or a buggy
                    // counter) cannot lock the real agent out until it restarts.
                    if shown_silent && !heartbeat.leaving {
                        resynced = true;
                    } else if heartbeat.seq <= entry.seq {
                        return Observation::Stale;
                    } else {
                        return Observation::SeqJump;
                    }
                }
                let rival = if same_incarnation {
                    // Still a conflict while the displaced one was heard within a timeout.
                    entry
                        .rival
                        .clone()
                        .filter(|rival| now.saturating_duration_since(rival.last_heard) < timeout)
                } else if entry.state == AgentState::Alive {
                    // A restart, or a second process: the next heartbeat of
                    // the displaced incarnation, if any, tells.
                    Some(Box::new(Rival {
                        incarnation: entry.incarnation,
                        seq: entry.seq,
                        host: entry.host.clone(),
                        pid: entry.pid,
                        last_heard: entry.last_heard,
                        last_heard_unix_ms: entry.last_updated_unix_ms,
                        agent_class: entry.agent_class.clone(),
                        agent_version: entry.agent_version.clone(),
                        interval_ms: entry.interval_ms,
                        op_codes: entry.op_codes.clone(),
                    }))
                } else {
                    None
                };
                let conflict = same_incarnation && entry.conflict && rival.is_some();
                if conflict
                    && heartbeat.leaving
                    && let Some(survivor) = rival
                {
                    // The copy shown leaves while the one it displaced still
                    // beats: the record falls back to the survivor at once,
                    // rather than show a live instance as left.
                    return self.fall_back_to(address, *survivor);
                }
                let changed = !same_incarnation
                    || entry.state != AgentState::Alive
                    || heartbeat.leaving
                    || entry.unverified
                    || !same_operations(&entry.op_codes, &heartbeat.op_codes)
                    || *entry.agent_class != *heartbeat.agent_class
                    || entry.conflict != conflict;
                let observation = if resynced {
                    Observation::Resynced
                } else if changed {
                    Observation::Changed
                } else {
                    Observation::Refreshed
                };
                (
                    observation,
                    Some(Previous {
                        deadline: entry.deadline,
                        state: entry.state,
                        carried: Carried {
                            first_seen_unix_ms: entry.first_seen_unix_ms,
                            incarnations_seen: if same_incarnation || rival_returns {
                                entry.incarnations_seen
                            } else {
                                entry.incarnations_seen.saturating_add(1)
                            },
                            beats: entry.beats,
                            rival,
                            conflict,
                        },
                    }),
                )
            }
        };
        let carried = match previous {
            None => Carried::first(now_unix_ms),
            Some(previous) => {
                self.unschedule(address, previous.deadline, previous.state);
                previous.carried
            }
        };
        let (state, deadline, op_codes, time_expired_unix_ms) = if heartbeat.leaving {
            (
                AgentState::Left,
                now + self.config.forget_after,
                self.interned
                    .operations_expired(heartbeat.op_codes.iter().copied()),
                Some(now_unix_ms),
            )
        } else {
            (
                AgentState::Alive,
                now + timeout,
                self.interned.operations(heartbeat.op_codes.iter().copied()),
                None,
            )
        };
        // Flapping is about the address, whichever incarnation beats there.
        let (recent_expiries, flapping) = self
            .agents
            .get_mut(address)
            .map(|entry| (std::mem::take(&mut entry.recent_expiries), entry.flapping))
            .unwrap_or_default();
        self.agents.insert(
            self.shared_address(address),
            Entry {
                agent_class: self.interned.text(heartbeat.agent_class),
                incarnation,
                seq: heartbeat.seq,
                host: self.interned.text(heartbeat.host),
                pid: heartbeat.pid,
                agent_version: self.interned.text(heartbeat.agent_version),
                interval_ms: heartbeat.interval_ms,
                op_codes,
                state,
                deadline,
                first_seen_unix_ms: carried.first_seen_unix_ms,
                last_updated_unix_ms: now_unix_ms,
                time_expired_unix_ms,
                incarnations_seen: carried.incarnations_seen,
                last_heard: now,
                rate,
                rival: carried.rival.filter(|_| !heartbeat.leaving),
                conflict: carried.conflict && !heartbeat.leaving,
                recent_expiries,
                flapping,
                beats: carried.beats.saturating_add(1),
                unverified: false,
                heard: true,
            },
        );
        self.schedule(address, deadline, state);
        observation
    }

    /// Makes the record of `address` follow `survivor`, the incarnation it
    /// displaced, which has kept beating (it is a conflict).
    fn fall_back_to(&mut self, address: &str, survivor: Rival) -> Observation {
        let deadline = survivor.last_heard + self.config.timeout_for(survivor.interval_ms);
        let Some(entry) = self.agents.get_mut(address) else {
            return Observation::Stale;
        };
        let (old_deadline, old_state) = (entry.deadline, entry.state);
        entry.incarnation = survivor.incarnation;
        entry.seq = survivor.seq;
        entry.host = survivor.host;
        entry.pid = survivor.pid;
        entry.agent_class = survivor.agent_class;
        entry.agent_version = survivor.agent_version;
        entry.interval_ms = survivor.interval_ms;
        entry.op_codes = survivor.op_codes;
        entry.last_heard = survivor.last_heard;
        entry.state = AgentState::Alive;
        entry.deadline = deadline;
        entry.time_expired_unix_ms = None;
        entry.last_updated_unix_ms = survivor.last_heard_unix_ms;
        entry.rival = None;
        entry.conflict = false;
        self.unschedule(address, old_deadline, old_state);
        self.schedule(address, deadline, AgentState::Alive);
        Observation::Changed
    }

    /// Clears the flapping mark of agents without an expiry for
    /// [`FLAP_WINDOW`]; returns their addresses.
    pub fn settle_flapping(&mut self, now: Instant) -> Vec<String> {
        self.census(now).settled
    }

    /// The counts the registry's metrics show, in one pass over the table,
    /// settling flapping agents on the way (see [`Self::settle_flapping`]).
    pub fn census(&mut self, now: Instant) -> Census {
        self.interned.sweep();
        let mut census = Census::default();
        for (address, entry) in &mut self.agents {
            match entry.state {
                AgentState::Alive => census.alive += 1,
                AgentState::Expired => census.expired += 1,
                AgentState::Left => census.left += 1,
            }
            census.conflicts += usize::from(entry.conflict);
            census.unverified += usize::from(entry.unverified);
            if entry.flapping {
                let quiet = entry
                    .recent_expiries
                    .last()
                    .is_none_or(|last| now.saturating_duration_since(*last) >= FLAP_WINDOW);
                if quiet {
                    entry.flapping = false;
                    census.settled.push(address.to_string());
                } else {
                    census.flapping += 1;
                }
            }
        }
        census
    }

    /// Every tracked address, in no particular order.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(|address| &**address)
    }

    /// Agents marked as flapping.
    pub fn flapping(&self) -> usize {
        self.agents.values().filter(|entry| entry.flapping).count()
    }

    /// Addresses where two incarnations heartbeat at once.
    pub fn conflicts(&self) -> usize {
        self.agents.values().filter(|entry| entry.conflict).count()
    }

    /// The earliest pending deadline (an expiry or a forgetting). An expiry
    /// may turn out to have moved later when [`AgentTable::expire_due`]
    /// looks: heartbeats move deadlines without rescheduling them.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.hold.map(|hold| hold.recheck).or_else(|| {
            let first = self.expiries.first().map(|(at, _)| *at)?;
            let catch_up = self.caught_up_at.map(|at| at + CATCH_UP_EVERY);
            Some(catch_up.map_or(first, |catch_up| first.min(catch_up)))
        });
        let forget = self.forgets.first().map(|(at, _)| *at);
        match (expiry, forget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires every alive agent whose deadline is at or before `now`.
    /// `time_expired` is the moment of expiry.
    ///
    /// Unless most steadily beating agents are due at once (see
    /// [`TableConfig::hold_fraction`]): then it holds every expiry and marks
    /// the agents past their deadline as unverified. Once heartbeats have
    /// returned it gives every agent a fresh timeout, so those that really
    /// died expire one timeout later and those whose heartbeats trickle back
    /// in do not. A hold lasts at most [`TableConfig::max_hold`]: then the
    /// silent agents expire after all.
    pub fn expire_due(&mut self, now: Instant, now_unix_ms: i64) -> Expiries {
        let mut outcome = Expiries::default();
        self.catch_up_schedule(now);
        let due_now = self
            .expiries
            .first()
            .is_some_and(|(deadline, _)| *deadline <= now);
        let exhausted = self
            .hold
            .is_some_and(|hold| now.saturating_duration_since(hold.since) >= self.config.max_hold);
        let may_hold = self.no_hold_until.is_none_or(|until| now >= until);
        if !exhausted && may_hold && (due_now || self.holding()) && self.mass_expiry(now) {
            let since = self.hold.map_or(now, |hold| hold.since);
            self.hold = Some(Hold {
                since,
                recheck: now + HOLD_RECHECK,
            });
            outcome.unverified = self.mark_unverified(now);
            return outcome;
        }
        if self.hold.take().is_some() {
            outcome.unverified = self.clear_unverified();
            if exhausted {
                // Long enough that silence is evidence again: the agents
                // still silent expire now, and the next hold waits as long.
                outcome.hold_exhausted = true;
                self.no_hold_until = Some(now + self.config.max_hold);
            } else {
                self.grant_fresh_timeouts(now);
            }
        }
        let expired = &mut outcome.expired;
        while let Some((deadline, _)) = self.expiries.first() {
            if *deadline > now {
                break;
            }
            let (deadline, address) = self.expiries.pop_first().expect("checked non-empty");
            if self.steady(&address) {
                self.steady_alive -= 1;
            }
            let forget_at = now + self.config.forget_after;
            if let Some(entry) = self.agents.get_mut(&address) {
                entry.state = AgentState::Expired;
                entry.time_expired_unix_ms = Some(now_unix_ms);
                entry.op_codes = self.interned.all_expired(&entry.op_codes);
                entry.deadline = forget_at;
                entry
                    .recent_expiries
                    .retain(|at| now.saturating_duration_since(*at) < FLAP_WINDOW);
                if entry.recent_expiries.len() >= FLAP_EXPIRIES {
                    entry.recent_expiries.remove(0);
                }
                entry.recent_expiries.push(now);
                entry.flapping |= entry.recent_expiries.len() >= FLAP_EXPIRIES;
                self.forgets.insert((forget_at, address.clone()));
            }
            expired.push(address.to_string());
            outcome.deadlines.push(deadline);
        }
        outcome
    }

    /// Marks the alive agents past their deadline as unverified; returns
    /// those newly marked.
    fn mark_unverified(&mut self, now: Instant) -> Vec<String> {
        let mut marked = Vec::new();
        for (_, address) in self
            .expiries
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
        {
            if let Some(entry) = self.agents.get_mut(address)
                && !std::mem::replace(&mut entry.unverified, true)
            {
                marked.push(address.to_string());
            }
        }
        marked
    }

    /// Clears the marks a hold set; returns the addresses that had one. A
    /// restored record not heard yet stays unverified: the hold proved
    /// nothing about it.
    fn clear_unverified(&mut self) -> Vec<String> {
        let mut cleared = Vec::new();
        for (address, entry) in &mut self.agents {
            if entry.heard && std::mem::replace(&mut entry.unverified, false) {
                cleared.push(address.to_string());
            }
        }
        cleared
    }

    /// Agents alive only by assumption: held past their deadline, or
    /// restored and not heard since.
    pub fn unverified(&self) -> usize {
        self.agents
            .values()
            .filter(|entry| entry.unverified)
            .count()
    }

    /// Forgets every agent expired or gone for longer than `forget_after`.
    pub fn forget_due(&mut self, now: Instant) -> Vec<String> {
        let mut forgotten = Vec::new();
        while let Some((deadline, _)) = self.forgets.first() {
            if *deadline > now {
                break;
            }
            let (_, address) = self.forgets.pop_first().expect("checked non-empty");
            self.agents.remove(&address);
            forgotten.push(address.to_string());
        }
        // A map keeps its largest capacity: after a wave of one-off addresses
        // (tens of thousands, a few hundred bytes a slot) is forgotten, give
        // the memory back rather than hold it for a wave that may not come.
        if !forgotten.is_empty() && self.agents.capacity() > 4 * self.agents.len().max(256) {
            self.agents.shrink_to(2 * self.agents.len());
        }
        forgotten
    }

    /// Gives every alive agent at least a full timeout from `now`: after the
    /// registry could not hear anyone (a NATS outage), silence is not evidence.
    pub fn grant_fresh_timeouts(&mut self, now: Instant) {
        let alive: Vec<(Instant, Arc<str>)> =
            std::mem::take(&mut self.expiries).into_iter().collect();
        self.steady_alive = 0;
        for (deadline, address) in alive {
            let Some(entry) = self.agents.get_mut(&address) else {
                continue;
            };
            entry.deadline = deadline.max(now + self.config.timeout_for(entry.interval_ms));
            self.steady_alive += usize::from(entry.beats >= STEADY_BEATS);
            self.expiries.insert((entry.deadline, address));
        }
    }

    /// What to keep of `address` across registry restarts; `None` if untracked.
    pub fn stored(
        &self,
        address: &str,
        now: Instant,
        now_unix_ms: i64,
    ) -> Option<proto::StoredAgent> {
        let entry = self.agents.get(address)?;
        let forget_at_unix_ms = match entry.state {
            AgentState::Alive => 0,
            AgentState::Expired | AgentState::Left => {
                let left = entry.deadline.saturating_duration_since(now);
                now_unix_ms.saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
            }
        };
        Some(proto::StoredAgent {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            record: Some(to_record(address, entry)),
            forget_at_unix_ms,
        })
    }

    /// Takes back an agent a previous registry stored, unless this table
    /// already heard it (a live heartbeat is newer than any stored record).
    ///
    /// An alive agent gets a fresh full timeout from `now`: the registry was
    /// not listening, so its silence proves nothing (as controllers do after a
    /// restart). An expired or departed one stays so, with its original
    /// `time_expired`, and is forgotten when it would have been.
    pub fn restore(&mut self, stored: proto::StoredAgent, now: Instant, now_unix_ms: i64) -> bool {
        let Some(record) = stored.record else {
            return false;
        };
        if self.agents.contains_key(record.agent_address.as_str())
            || self.agents.len() >= self.config.max_agents
        {
            return false;
        }
        let state = match proto::AgentState::try_from(record.state) {
            Ok(proto::AgentState::Alive) => AgentState::Alive,
            Ok(proto::AgentState::Left) => AgentState::Left,
            _ if !record.expired => AgentState::Alive,
            _ => AgentState::Expired,
        };
        let deadline = match state {
            AgentState::Alive => now + self.config.timeout_for(record.interval_ms),
            AgentState::Expired | AgentState::Left => {
                let left = stored.forget_at_unix_ms.saturating_sub(now_unix_ms).max(0);
                now + Duration::from_millis(left as u64).min(self.config.forget_after)
            }
        };
        let Ok(incarnation) = Uuid::try_parse(&record.incarnation) else {
            return false;
        };
        let address = record.agent_address;
        self.agents.insert(
            Arc::from(address.as_str()),
            Entry {
                agent_class: self.interned.text(&record.agent_class),
                incarnation,
                // The next heartbeat of this incarnation is newer than anything stored.
                seq: 0,
                host: self.interned.text(&record.host),
                pid: record.pid,
                agent_version: self.interned.text(&record.agent_version),
                interval_ms: record.interval_ms,
                op_codes: self
                    .interned
                    .operations(record.op_codes.iter().map(OperationRef::from)),
                state,
                deadline,
                first_seen_unix_ms: record.first_seen_unix_ms,
                last_updated_unix_ms: record.last_updated_unix_ms,
                time_expired_unix_ms: (state != AgentState::Alive)
                    .then_some(record.time_expired_unix_ms.min(now_unix_ms)),
                incarnations_seen: record.incarnations_seen.max(1),
                last_heard: now,
                rival: None,
                conflict: false,
                recent_expiries: Vec::new(),
                flapping: false,
                // It was tracked before: the registry's restart is no reason to doubt it.
                beats: STEADY_BEATS,
                // Alive by the record only: not heard by this registry yet. If
                // the record is stale (its expiry could not be stored before a
                // restart), the agent is dead, and the record must not say
                // "alive" as if a heartbeat had proved it.
                unverified: state == AgentState::Alive,
                heard: false,
                rate: RateLimit::full(self.config.max_heartbeat_rate, now),
            },
        );
        self.schedule(&address, deadline, state);
        true
    }

    /// The state of `address`, if tracked.
    pub fn state(&self, address: &str) -> Option<AgentState> {
        self.agents.get(address).map(|entry| entry.state)
    }

    /// Counts of agents by state: `(alive, expired, left)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.agents
            .values()
            .fold((0, 0, 0), |(a, e, l), entry| match entry.state {
                AgentState::Alive => (a + 1, e, l),
                AgentState::Expired => (a, e + 1, l),
                AgentState::Left => (a, e, l + 1),
            })
    }

    /// What a records query filters on, for every agent, built without
    /// copying anything.
    pub fn facets(&self) -> impl Iterator<Item = Facets<'_>> {
        self.agents
            .iter()
            .map(|(address, entry)| Facets::of_entry(address, entry))
    }

    /// What a records query sees of `address`, if tracked.
    pub fn facets_of(&self, address: &str) -> Option<Facets<'_>> {
        self.agents
            .get_key_value(address)
            .map(|(address, entry)| Facets::of_entry(address, entry))
    }

    /// The wire record of `address`.
    pub fn record(&self, address: &str) -> Option<proto::AgentRecord> {
        self.agents
            .get(address)
            .map(|entry| to_record(address, entry))
    }

    /// Every record, sorted by address.
    pub fn records(&self) -> Vec<proto::AgentRecord> {
        let mut records: Vec<proto::AgentRecord> = self
            .agents
            .iter()
            .map(|(address, entry)| to_record(address, entry))
            .collect();
        records.sort_by(|a, b| a.agent_address.cmp(&b.agent_address));
        records
    }
}

fn to_record(address: &str, entry: &Entry) -> proto::AgentRecord {
    proto::AgentRecord {
        agent_address: address.to_owned(),
        agent_class: entry.agent_class.to_string(),
        expired: entry.state != AgentState::Alive,
        state: entry.state.to_proto().into(),
        time_expired_unix_ms: entry.time_expired_unix_ms.unwrap_or(0),
        last_updated_unix_ms: entry.last_updated_unix_ms,
        first_seen_unix_ms: entry.first_seen_unix_ms,
        op_codes: op_codes(&entry.op_codes),
        incarnation: entry.incarnation.to_string(),
        host: entry.host.to_string(),
        pid: entry.pid,
        agent_version: entry.agent_version.to_string(),
        interval_ms: entry.interval_ms,
        incarnations_seen: entry.incarnations_seen,
        flapping: entry.flapping,
        unverified: entry.unverified,
        conflict: entry.conflict.then(|| {
            let rival = entry.rival.as_ref();
            proto::Conflict {
                incarnation: rival.map(|r| r.incarnation.to_string()).unwrap_or_default(),
                host: rival.map(|r| r.host.to_string()).unwrap_or_default(),
                pid: rival.map_or(0, |r| r.pid),
            }
        }),
    }
}

mod interned;
#[cfg(test)]
mod tests;
