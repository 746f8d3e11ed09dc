//! [`AgentTable`]: every agent the registry has heard, and when each expires.
//!
//! No I/O and no clock of its own: callers pass the monotonic `now`
//! (`tokio::time::Instant`, pausable in tests) for liveness and the wall-clock
//! time in unix milliseconds for display. An agent's own clock is never used.
//!
//! Deadlines live in ordered sets so the service can sleep exactly until the
//! next one: expiry is detected at the deadline, not at the next poll.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ocs_protocol::{OpCode, proto};
use tokio::time::Instant;

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

/// Deadlines this close together count as "at once" for self-preservation:
/// agents heartbeat about once a second, so a partition makes all their
/// deadlines pass within about a second.
const HOLD_WINDOW: Duration = Duration::from_secs(2);
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
    agent_class: String,
    incarnation: String,
    seq: u64,
    host: String,
    pid: u32,
    agent_version: String,
    interval_ms: u32,
    op_codes: Vec<proto::OperationCode>,
    state: AgentState,
    deadline: Instant,
    first_seen_unix_ms: i64,
    last_updated_unix_ms: i64,
    time_expired_unix_ms: Option<i64>,
    incarnations_seen: u64,
    /// When the last accepted heartbeat arrived.
    last_heard: Instant,
    /// The incarnation this one displaced, while it may still be heartbeating.
    rival: Option<Rival>,
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
    /// Token bucket of the rate limit: heartbeats it may still accept, as of
    /// `tokens_at`.
    tokens: f64,
    tokens_at: Instant,
}

/// An incarnation displaced by a newer one at the same address. If it keeps
/// heartbeating, two processes run one instance: a conflict.
#[derive(Debug, Clone)]
struct Rival {
    incarnation: String,
    seq: u64,
    host: String,
    pid: u32,
    last_heard: Instant,
}

/// What [`AgentTable::observe`] keeps of the entry a heartbeat replaces.
struct Previous {
    deadline: Instant,
    state: AgentState,
    first_seen_unix_ms: i64,
    incarnations_seen: u64,
    beats: u32,
    rival: Option<Rival>,
    conflict: bool,
}

/// The registry's agents.
pub struct AgentTable {
    config: TableConfig,
    agents: HashMap<String, Entry>,
    /// `(deadline, address)` of alive agents.
    expiries: BTreeSet<(Instant, String)>,
    /// `(deadline, address)` of expired or departed agents.
    forgets: BTreeSet<(Instant, String)>,
    /// While holding expiries (self-preservation).
    hold: Option<Hold>,
    /// After a hold ran out, none starts again before this.
    no_hold_until: Option<Instant>,
}

/// Self-preservation in progress.
#[derive(Debug, Clone, Copy)]
struct Hold {
    since: Instant,
    /// When to look again whether heartbeats returned.
    recheck: Instant,
}

/// What [`AgentTable::expire_due`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expiries {
    /// Agents that expired now.
    pub expired: Vec<String>,
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

fn all_expired(op_codes: &[proto::OperationCode]) -> Vec<proto::OperationCode> {
    op_codes
        .iter()
        .map(|op| proto::OperationCode {
            op_name: op.op_name.clone(),
            op_code: OpCode::Expired.value(),
            op_type: op.op_type.clone(),
        })
        .collect()
}

impl AgentTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        AgentTable {
            config,
            agents: HashMap::new(),
            expiries: BTreeSet::new(),
            forgets: BTreeSet::new(),
            hold: None,
            no_hold_until: None,
        }
    }

    /// The rate limit's burst: twice the rate, at least two.
    fn burst(&self) -> f64 {
        2.0 * self.config.max_heartbeat_rate.max(1.0)
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
    fn mass_expiry(&self, now: Instant) -> bool {
        let min = self.config.hold_min_agents;
        if min == 0 || self.expiries.len() < min {
            return false;
        }
        let horizon = now + HOLD_WINDOW;
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
        let alive = self
            .expiries
            .iter()
            .filter(|(_, address)| self.steady(address))
            .count();
        alive >= min && due as f64 > self.config.hold_fraction * alive as f64
    }

    /// Number of agents tracked.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is tracked.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    fn timeout_for(&self, interval_ms: u32) -> Duration {
        self.config
            .agent_timeout
            .max(Duration::from_millis(u64::from(interval_ms)) * 3)
    }

    /// Unschedules whatever deadline `address` has.
    fn unschedule(&mut self, address: &str, entry_deadline: Instant, state: AgentState) {
        let key = (entry_deadline, address.to_owned());
        match state {
            AgentState::Alive => self.expiries.remove(&key),
            AgentState::Expired | AgentState::Left => self.forgets.remove(&key),
        };
    }

    /// Schedules `address`'s expiry (alive) or forgetting (expired, left) at `deadline`.
    fn schedule(&mut self, address: &str, deadline: Instant, state: AgentState) {
        let key = (deadline, address.to_owned());
        match state {
            AgentState::Alive => self.expiries.insert(key),
            AgentState::Expired | AgentState::Left => self.forgets.insert(key),
        };
    }

    /// Records a validated heartbeat received at `now`.
    pub fn observe(
        &mut self,
        heartbeat: &proto::Heartbeat,
        now: Instant,
        now_unix_ms: i64,
    ) -> Observation {
        let address = heartbeat.agent_address.as_str();
        let timeout = self.timeout_for(heartbeat.interval_ms);
        let mut tokens = self.burst();
        if let Some(entry) = self.agents.get_mut(address) {
            // Refill since the last accepted heartbeat, then take one.
            let refill = now.saturating_duration_since(entry.tokens_at).as_secs_f64()
                * self.config.max_heartbeat_rate;
            tokens = (entry.tokens + refill).min(2.0 * self.config.max_heartbeat_rate.max(1.0));
            entry.tokens_at = entry.tokens_at.max(now);
            if tokens < 1.0 {
                entry.tokens = tokens;
                return Observation::RateLimited;
            }
            tokens -= 1.0;
            entry.tokens = tokens;
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
            && entry.incarnation != heartbeat.incarnation
            && let Some(rival) = entry
                .rival
                .as_mut()
                .filter(|rival| rival.incarnation == heartbeat.incarnation)
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
                let new = !std::mem::replace(&mut entry.conflict, true);
                return Observation::Conflict { new };
            }
        }
        let mut resynced = false;
        let (observation, previous) = match self.agents.get(address) {
            None if self.agents.len() >= self.config.max_agents => return Observation::TableFull,
            None => (Observation::New, None),
            Some(entry) => {
                let same_incarnation = entry.incarnation == heartbeat.incarnation;
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
                    Some(Rival {
                        incarnation: entry.incarnation.clone(),
                        seq: entry.seq,
                        host: entry.host.clone(),
                        pid: entry.pid,
                        last_heard: entry.last_heard,
                    })
                } else {
                    None
                };
                let conflict = same_incarnation && entry.conflict && rival.is_some();
                let changed = !same_incarnation
                    || entry.state != AgentState::Alive
                    || heartbeat.leaving
                    || entry.unverified
                    || entry.op_codes != heartbeat.op_codes
                    || entry.agent_class != heartbeat.agent_class
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
                        first_seen_unix_ms: entry.first_seen_unix_ms,
                        incarnations_seen: if same_incarnation || rival_returns {
                            entry.incarnations_seen
                        } else {
                            entry.incarnations_seen.saturating_add(1)
                        },
                        beats: entry.beats,
                        rival,
                        conflict,
                    }),
                )
            }
        };
        let (first_seen_unix_ms, incarnations_seen, beats, rival, conflict) = match previous {
            None => (now_unix_ms, 1, 0, None, false),
            Some(previous) => {
                self.unschedule(address, previous.deadline, previous.state);
                (
                    previous.first_seen_unix_ms,
                    previous.incarnations_seen,
                    previous.beats,
                    previous.rival,
                    previous.conflict,
                )
            }
        };
        let (state, deadline, op_codes, time_expired_unix_ms) = if heartbeat.leaving {
            (
                AgentState::Left,
                now + self.config.forget_after,
                all_expired(&heartbeat.op_codes),
                Some(now_unix_ms),
            )
        } else {
            (
                AgentState::Alive,
                now + timeout,
                heartbeat.op_codes.clone(),
                None,
            )
        };
        // Flapping is about the address, whichever incarnation beats there.
        let (recent_expiries, flapping) = self
            .agents
            .get_mut(address)
            .map(|entry| (std::mem::take(&mut entry.recent_expiries), entry.flapping))
            .unwrap_or_default();
        self.schedule(address, deadline, state);
        self.agents.insert(
            address.to_owned(),
            Entry {
                agent_class: heartbeat.agent_class.clone(),
                incarnation: heartbeat.incarnation.clone(),
                seq: heartbeat.seq,
                host: heartbeat.host.clone(),
                pid: heartbeat.pid,
                agent_version: heartbeat.agent_version.clone(),
                interval_ms: heartbeat.interval_ms,
                op_codes,
                state,
                deadline,
                first_seen_unix_ms,
                last_updated_unix_ms: now_unix_ms,
                time_expired_unix_ms,
                incarnations_seen,
                last_heard: now,
                tokens,
                tokens_at: now,
                rival: rival.filter(|_| !heartbeat.leaving),
                conflict: conflict && !heartbeat.leaving,
                recent_expiries,
                flapping,
                beats: beats.saturating_add(1),
                unverified: false,
                heard: true,
            },
        );
        observation
    }

    /// Clears the flapping mark of agents without an expiry for
    /// [`FLAP_WINDOW`]; returns their addresses.
    pub fn settle_flapping(&mut self, now: Instant) -> Vec<String> {
        let mut settled = Vec::new();
        for (address, entry) in &mut self.agents {
            let quiet = entry
                .recent_expiries
                .last()
                .is_none_or(|last| now.saturating_duration_since(*last) >= FLAP_WINDOW);
            if entry.flapping && quiet {
                entry.flapping = false;
                settled.push(address.clone());
            }
        }
        settled
    }

    /// Every tracked address, in no particular order.
    pub fn addresses(&self) -> impl Iterator<Item = &String> {
        self.agents.keys()
    }

    /// Agents marked as flapping.
    pub fn flapping(&self) -> usize {
        self.agents.values().filter(|entry| entry.flapping).count()
    }

    /// Addresses where two incarnations heartbeat at once.
    pub fn conflicts(&self) -> usize {
        self.agents.values().filter(|entry| entry.conflict).count()
    }

    /// The earliest pending deadline (an expiry or a forgetting).
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .hold
            .map(|hold| hold.recheck)
            .or_else(|| self.expiries.first().map(|(at, _)| *at));
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
            let (_, address) = self.expiries.pop_first().expect("checked non-empty");
            let forget_at = now + self.config.forget_after;
            if let Some(entry) = self.agents.get_mut(&address) {
                entry.state = AgentState::Expired;
                entry.time_expired_unix_ms = Some(now_unix_ms);
                entry.op_codes = all_expired(&entry.op_codes);
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
            expired.push(address);
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
                marked.push(address.clone());
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
                cleared.push(address.clone());
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
            forgotten.push(address);
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
        let alive: Vec<(Instant, String)> =
            std::mem::take(&mut self.expiries).into_iter().collect();
        for (deadline, address) in alive {
            let Some(entry) = self.agents.get_mut(&address) else {
                continue;
            };
            let timeout = self
                .config
                .agent_timeout
                .max(Duration::from_millis(u64::from(entry.interval_ms)) * 3);
            entry.deadline = deadline.max(now + timeout);
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
        if self.agents.contains_key(&record.agent_address)
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
            AgentState::Alive => now + self.timeout_for(record.interval_ms),
            AgentState::Expired | AgentState::Left => {
                let left = stored.forget_at_unix_ms.saturating_sub(now_unix_ms).max(0);
                now + Duration::from_millis(left as u64).min(self.config.forget_after)
            }
        };
        let address = record.agent_address;
        self.schedule(&address, deadline, state);
        self.agents.insert(
            address,
            Entry {
                agent_class: record.agent_class,
                incarnation: record.incarnation,
                // The next heartbeat of this incarnation is newer than anything stored.
                seq: 0,
                host: record.host,
                pid: record.pid,
                agent_version: record.agent_version,
                interval_ms: record.interval_ms,
                op_codes: record.op_codes,
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
                tokens: self.burst(),
                tokens_at: now,
            },
        );
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
        agent_class: entry.agent_class.clone(),
        expired: entry.state != AgentState::Alive,
        state: entry.state.to_proto().into(),
        time_expired_unix_ms: entry.time_expired_unix_ms.unwrap_or(0),
        last_updated_unix_ms: entry.last_updated_unix_ms,
        first_seen_unix_ms: entry.first_seen_unix_ms,
        op_codes: entry.op_codes.clone(),
        incarnation: entry.incarnation.clone(),
        host: entry.host.clone(),
        pid: entry.pid,
        agent_version: entry.agent_version.clone(),
        interval_ms: entry.interval_ms,
        incarnations_seen: entry.incarnations_seen,
        flapping: entry.flapping,
        unverified: entry.unverified,
        conflict: entry.conflict.then(|| {
            let rival = entry.rival.as_ref();
            proto::Conflict {
                incarnation: rival.map(|r| r.incarnation.clone()).unwrap_or_default(),
                host: rival.map(|r| r.host.clone()).unwrap_or_default(),
                pid: rival.map_or(0, |r| r.pid),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const FORGET: Duration = Duration::from_secs(60);
    const INCARNATION_A: &str = "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11";
    const INCARNATION_B: &str = "6f7a1c0e-1d2b-4c3a-8e9f-0a1b2c3d4e5f";

    fn table() -> AgentTable {
        AgentTable::new(TableConfig {
            agent_timeout: TIMEOUT,
            forget_after: FORGET,
            max_agents: 3,
            hold_fraction: 0.5,
            hold_min_agents: 10,
            max_hold: Duration::from_secs(60),
            max_heartbeat_rate: 10.0,
        })
    }

    fn beat(
        address: &str,
        incarnation: &str,
        seq: u64,
        ops: &[(&str, OpCode)],
    ) -> proto::Heartbeat {
        proto::Heartbeat {
            protocol_version: 1,
            agent_address: address.into(),
            agent_class: "FakeDataAgent".into(),
            incarnation: incarnation.into(),
            seq,
            op_codes: ops
                .iter()
                .map(|(name, code)| proto::OperationCode {
                    op_name: (*name).into(),
                    op_code: code.value(),
                    op_type: "task".into(),
                })
                .collect(),
            interval_ms: 1000,
            ..Default::default()
        }
    }

    const FAKER: &str = "observatory.faker";

    impl AgentTable {
        /// The addresses [`AgentTable::expire_due`] expires.
        fn expired_at(&mut self, now: Instant, now_unix_ms: i64) -> Vec<String> {
            self.expire_due(now, now_unix_ms).expired
        }
    }

    #[test]
    fn expires_exactly_at_the_deadline_and_records_that_moment() {
        let mut table = table();
        let t0 = Instant::now();
        let acq = [("acq", OpCode::Running)];
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 1, &acq), t0, 1000),
            Observation::New
        );
        assert_eq!(
            table.observe(
                &beat(FAKER, INCARNATION_A, 2, &acq),
                t0 + Duration::from_secs(1),
                2000
            ),
            Observation::Refreshed
        );
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(6)));
        assert!(
            table
                .expired_at(t0 + Duration::from_millis(5999), 6999)
                .is_empty()
        );
        assert_eq!(table.expired_at(t0 + Duration::from_secs(6), 7000), [FAKER]);
        let record = table.record(FAKER).unwrap();
        assert!(record.expired);
        assert_eq!(record.time_expired_unix_ms, 7000);
        assert_eq!(record.op_codes[0].op_code, OpCode::Expired.value());
        // Expiry happens once: time_expired is not rewritten later.
        assert!(
            table
                .expired_at(t0 + Duration::from_secs(20), 21000)
                .is_empty()
        );
        assert_eq!(table.record(FAKER).unwrap().time_expired_unix_ms, 7000);
    }

    #[test]
    fn a_restored_table_keeps_expiries_and_gives_the_living_a_fresh_timeout() {
        let mut before = table();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let acq = [("acq", OpCode::Running)];
        before.observe(&beat(FAKER, INCARNATION_A, 1, &acq), at(0), 1_000);
        before.observe(
            &beat("observatory.other", INCARNATION_B, 1, &acq),
            at(4_000),
            5_000,
        );
        assert_eq!(before.expired_at(at(5_000), 6_000), [FAKER]);
        let stored: Vec<proto::StoredAgent> = [FAKER, "observatory.other"]
            .iter()
            .map(|address| before.stored(address, at(5_000), 6_000).unwrap())
            .collect();
        assert_eq!(
            stored[0].forget_at_unix_ms,
            6_000 + FORGET.as_millis() as i64
        );
        assert_eq!(stored[1].forget_at_unix_ms, 0);

        // A new registry process, 30 s later on the wall clock, on its own monotonic clock.
        let mut after = table();
        let t1 = Instant::now() + Duration::from_secs(1000);
        for stored in stored.iter().cloned() {
            assert!(after.restore(stored, t1, 36_000));
        }
        let expired = after.record(FAKER).unwrap();
        assert!(expired.expired);
        assert_eq!(
            expired.time_expired_unix_ms, 6_000,
            "the original moment of expiry"
        );
        assert_eq!(expired.incarnation, INCARNATION_A);
        // Forgotten when it would have been: 60 s after expiry, 30 s of which passed.
        assert!(
            after
                .forget_due(t1 + Duration::from_millis(29_999))
                .is_empty()
        );
        let other = after.record("observatory.other").unwrap();
        assert!(!other.expired);
        // Alive by the record only, until this registry hears it.
        assert!(other.unverified);
        assert!(!expired.unverified);
        // A full timeout from the restart, not from its last heartbeat.
        assert!(
            after
                .expired_at(t1 + TIMEOUT - Duration::from_millis(1), 40_999)
                .is_empty()
        );
        assert_eq!(
            after.expired_at(t1 + TIMEOUT, 41_000),
            ["observatory.other"]
        );
        assert_eq!(after.forget_due(t1 + Duration::from_secs(30)), [FAKER]);
        // Its next heartbeat (any seq) is accepted; a record heard live is not overwritten.
        assert_eq!(
            after.observe(
                &beat(FAKER, INCARNATION_A, 1, &acq),
                t1 + Duration::from_secs(31),
                67_000
            ),
            Observation::New
        );
        assert!(!after.restore(stored[0].clone(), t1 + Duration::from_secs(31), 67_000));
    }

    #[test]
    fn a_restored_agent_is_unverified_until_heard() {
        let mut before = table();
        let t0 = Instant::now();
        before.observe(&beat(FAKER, INCARNATION_A, 7, &[]), t0, 1_000);
        let stored = before.stored(FAKER, t0, 1_000).unwrap();
        let mut after = table();
        after.restore(stored, t0, 2_000);
        assert!(after.record(FAKER).unwrap().unverified);
        assert_eq!(after.unverified(), 1);
        assert_eq!(
            after.observe(
                &beat(FAKER, INCARNATION_A, 8, &[]),
                t0 + Duration::from_secs(1),
                3_000
            ),
            Observation::Changed,
            "verifying it is a change subscribers see"
        );
        assert!(!after.record(FAKER).unwrap().unverified);
    }

    #[test]
    fn an_agent_flaps_after_three_expiries_in_the_window_and_settles_after_a_quiet_one() {
        let mut table = table();
        let t0 = Instant::now();
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        let mut seq = 0;
        let mut beat_at = |table: &mut AgentTable, seconds: u64| {
            seq += 1;
            table.observe(&beat(FAKER, INCARNATION_A, seq, &[]), at(seconds), 0);
        };
        // Expires twice: late, not flapping.
        for start in [0, 100] {
            beat_at(&mut table, start);
            assert_eq!(table.expired_at(at(start + 5), 0), [FAKER]);
        }
        beat_at(&mut table, 200);
        assert!(!table.record(FAKER).unwrap().flapping);
        assert_eq!(table.expired_at(at(205), 0), [FAKER]);
        assert!(
            table.record(FAKER).unwrap().flapping,
            "third expiry in ten minutes"
        );
        // Back and steady: still flapping until ten quiet minutes passed.
        beat_at(&mut table, 206);
        assert!(table.settle_flapping(at(205 + 599)).is_empty());
        assert_eq!(table.flapping(), 1);
        assert_eq!(table.settle_flapping(at(205 + 600)), [FAKER]);
        assert!(!table.record(FAKER).unwrap().flapping);
        // Expiries spread wider than the window never make it flap.
        for start in [1000, 1400, 1800, 2200] {
            beat_at(&mut table, start);
            table.expired_at(at(start + 5), 0);
            assert!(!table.record(FAKER).unwrap().flapping);
        }
    }

    #[test]
    fn two_live_incarnations_at_one_address_are_a_conflict_until_one_stops() {
        let mut table = table();
        let t0 = Instant::now();
        let acq = [("acq", OpCode::Running)];
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        table.observe(&beat(FAKER, INCARNATION_A, 1, &acq), at(0), 0);
        // B replaces A: as far as anyone can tell, a restart.
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_B, 1, &[]), at(1), 1000),
            Observation::Changed
        );
        assert!(table.record(FAKER).unwrap().conflict.is_none());
        // A is still alive: two processes run one instance. Its heartbeat is
        // dropped; the record follows B and names A.
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 2, &acq), at(1), 1000),
            Observation::Conflict { new: true }
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 3, &acq), at(2), 2000),
            Observation::Conflict { new: false }
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 3, &acq), at(2), 2000),
            Observation::Stale
        );
        let record = table.record(FAKER).unwrap();
        assert_eq!(record.incarnation, INCARNATION_B);
        assert!(record.op_codes.is_empty());
        assert_eq!(record.conflict.unwrap().incarnation, INCARNATION_A);
        assert_eq!(table.conflicts(), 1);
        // B keeps beating; once A has been silent for a timeout the conflict ends.
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_B, 2, &[]), at(4), 4000),
            Observation::Refreshed
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_B, 3, &[]), at(7), 7000),
            Observation::Changed
        );
        assert!(table.record(FAKER).unwrap().conflict.is_none());
        assert_eq!(table.conflicts(), 0);
        // A restart whose old incarnation says goodbye is never a conflict.
        table.observe(&beat("observatory.other", INCARNATION_A, 1, &[]), at(0), 0);
        table.observe(
            &beat("observatory.other", INCARNATION_B, 1, &[]),
            at(1),
            1000,
        );
        let mut leaving = beat("observatory.other", INCARNATION_A, 2, &[]);
        leaving.leaving = true;
        assert_eq!(table.observe(&leaving, at(1), 1000), Observation::Refreshed);
        assert_eq!(table.conflicts(), 0);
        assert!(!table.record("observatory.other").unwrap().expired);
    }

    #[test]
    fn stale_heartbeats_are_dropped_and_new_incarnations_replace_op_codes() {
        let mut table = table();
        let t0 = Instant::now();
        let two_ops = [("acq", OpCode::Running), ("old_op", OpCode::None)];
        table.observe(&beat(FAKER, INCARNATION_A, 5, &two_ops), t0, 0);
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 5, &two_ops), t0, 0),
            Observation::Stale
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 3, &two_ops), t0, 0),
            Observation::Stale
        );
        let one_op = [("acq", OpCode::None)];
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_B, 1, &one_op), t0, 0),
            Observation::Changed
        );
        let record = table.record(FAKER).unwrap();
        assert_eq!(
            record.op_codes.len(),
            1,
            "op codes are replaced, not merged"
        );
        assert_eq!(record.incarnation, INCARNATION_B);
        assert_eq!(record.incarnations_seen, 2);
    }

    #[test]
    fn an_expired_agent_returns_on_its_next_heartbeat() {
        let mut table = table();
        let t0 = Instant::now();
        table.observe(&beat(FAKER, INCARNATION_A, 1, &[]), t0, 0);
        table.expired_at(t0 + TIMEOUT, 5000);
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 9, &[]), t0 + TIMEOUT * 2, 10000),
            Observation::Changed
        );
        let record = table.record(FAKER).unwrap();
        assert!(!record.expired);
        assert_eq!(record.time_expired_unix_ms, 0);
        assert_eq!(table.next_deadline(), Some(t0 + TIMEOUT * 3));
    }

    #[test]
    fn leaving_marks_at_once_and_forgetting_follows() {
        let mut table = table();
        let t0 = Instant::now();
        table.observe(
            &beat(FAKER, INCARNATION_A, 1, &[("acq", OpCode::Running)]),
            t0,
            0,
        );
        let mut leaving = beat(FAKER, INCARNATION_A, 2, &[("acq", OpCode::Succeeded)]);
        leaving.leaving = true;
        assert_eq!(
            table.observe(&leaving, t0 + Duration::from_millis(10), 10),
            Observation::Changed
        );
        assert_eq!(table.state(FAKER), Some(AgentState::Left));
        assert!(
            table.expired_at(t0 + TIMEOUT * 2, 0).is_empty(),
            "a departed agent does not expire again"
        );
        assert!(table.forget_due(t0 + FORGET).is_empty());
        assert_eq!(
            table.forget_due(t0 + FORGET + Duration::from_millis(10)),
            [FAKER]
        );
        assert!(table.is_empty());
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut table = table();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                table.observe(
                    &beat(&format!("observatory.a{i}"), INCARNATION_A, 1, &[]),
                    t0,
                    0
                ),
                Observation::New
            );
        }
        assert_eq!(
            table.observe(&beat("observatory.a3", INCARNATION_A, 1, &[]), t0, 0),
            Observation::TableFull
        );
        assert_eq!(
            table.observe(&beat("observatory.a0", INCARNATION_A, 2, &[]), t0, 0),
            Observation::Refreshed
        );
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn slow_agents_get_three_intervals() {
        let mut table = table();
        let t0 = Instant::now();
        let mut slow = beat(FAKER, INCARNATION_A, 1, &[]);
        slow.interval_ms = 10_000;
        table.observe(&slow, t0, 0);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn fresh_timeouts_after_an_outage() {
        let mut table = table();
        let t0 = Instant::now();
        table.observe(&beat(FAKER, INCARNATION_A, 1, &[]), t0, 0);
        let reconnected = t0 + Duration::from_secs(4);
        table.grant_fresh_timeouts(reconnected);
        assert!(table.expired_at(t0 + TIMEOUT, 0).is_empty());
        assert_eq!(table.expired_at(reconnected + TIMEOUT, 0), [FAKER]);
    }

    #[test]
    fn a_sender_faster_than_the_rate_limit_is_cut_to_it() {
        let mut table = table();
        let t0 = Instant::now();
        let mut accepted = 0;
        let mut limited = 0;
        // 200 heartbeats in 2 s (100 per second) from one address: a burst of
        // 20, then 10 per second.
        for seq in 1..=200u64 {
            let now = t0 + Duration::from_millis(seq * 10);
            match table.observe(&beat(FAKER, INCARNATION_A, seq, &[]), now, 0) {
                Observation::RateLimited => limited += 1,
                _ => accepted += 1,
            }
        }
        assert!((38..=42).contains(&accepted), "accepted {accepted}");
        assert_eq!(accepted + limited, 200);
        // Another address is not affected, and a calm sender is never limited.
        let other = "observatory.other";
        for seq in 1..=30u64 {
            let now = t0 + Duration::from_millis(seq * 1000);
            assert_ne!(
                table.observe(&beat(other, INCARNATION_A, seq, &[]), now, 0),
                Observation::RateLimited
            );
        }
    }

    #[test]
    fn most_agents_silent_at_once_holds_expiries_until_heartbeats_return() {
        let mut table = AgentTable::new(TableConfig {
            agent_timeout: TIMEOUT,
            forget_after: FORGET,
            max_agents: 100,
            hold_fraction: 0.5,
            hold_min_agents: 10,
            max_hold: Duration::from_secs(60),
            max_heartbeat_rate: 10.0,
        });
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let address = |i: usize| format!("observatory.agent{i}");
        let mut seq = 0;
        let mut beat_all = |table: &mut AgentTable, agents: std::ops::Range<usize>, ms: u64| {
            seq += 1;
            for i in agents {
                // Spread over the second, as real heartbeats are.
                let now = at(ms + i as u64 * 50);
                table.observe(
                    &beat(&address(i), INCARNATION_A, seq, &[]),
                    now,
                    now_ms(now, t0),
                );
            }
        };
        fn now_ms(now: Instant, t0: Instant) -> i64 {
            now.duration_since(t0).as_millis() as i64
        }
        for ms in [0, 1_000, 2_000] {
            beat_all(&mut table, 0..12, ms);
        }
        // A partition: nobody is heard any more. At the first deadline the
        // registry holds instead of expiring twelve agents...
        let first_deadline = table.next_deadline().unwrap();
        assert_eq!(first_deadline, at(7_000));
        let held = table.expire_due(first_deadline, 7_000);
        assert!(held.expired.is_empty());
        assert!(table.holding());
        // ...and says the agents past their deadline are unverified, not alive.
        assert_eq!(held.unverified, [address(0)]);
        assert!(table.record(&address(0)).unwrap().unverified);
        assert!(!table.record(&address(1)).unwrap().unverified);
        assert!(
            table.expired_at(at(20_000), 20_000).is_empty(),
            "held however long it lasts"
        );
        assert_eq!(table.counts(), (12, 0, 0));
        // The holding table wakes the service to look again, not in a loop.
        assert!(table.next_deadline().unwrap() > at(20_000));
        // Heartbeats return, but not agent11's: it really died. Once most are
        // back the hold ends and everyone gets a fresh timeout...
        assert_eq!(table.unverified(), 12);
        beat_all(&mut table, 0..11, 21_000);
        assert_eq!(table.unverified(), 1, "a heartbeat verifies its agent");
        let released = table.expire_due(at(21_600), 21_600);
        assert!(released.expired.is_empty());
        assert_eq!(released.unverified, [address(11)]);
        assert!(!table.holding());
        assert_eq!(table.unverified(), 0);
        assert_eq!(table.counts(), (12, 0, 0));
        // ...so the dead one expires a timeout later, the others not.
        beat_all(&mut table, 0..11, 22_000);
        beat_all(&mut table, 0..11, 23_000);
        beat_all(&mut table, 0..11, 24_000);
        beat_all(&mut table, 0..11, 25_000);
        beat_all(&mut table, 0..11, 26_000);
        assert_eq!(table.expired_at(at(26_600), 26_600), [address(11)]);
        assert!(!table.holding());

        // One death among many is no partition: it expires at its deadline.
        for ms in [27_000, 28_000, 29_000, 30_000, 31_000] {
            beat_all(&mut table, 1..11, ms);
        }
        assert_eq!(table.expired_at(at(31_000), 31_000), [address(0)]);
        assert!(!table.holding());
    }

    #[test]
    fn a_duplicate_that_dies_leaves_the_record_to_the_survivor() {
        let mut table = table();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let acq = [("acq", OpCode::Running)];
        // A runs; B, the same instance started by mistake, displaces it.
        for seq in 1..=3 {
            table.observe(&beat(FAKER, INCARNATION_A, seq, &acq), at(seq * 1000), 0);
        }
        table.observe(&beat(FAKER, INCARNATION_B, 1, &acq), at(3_100), 0);
        table.observe(&beat(FAKER, INCARNATION_B, 2, &acq), at(4_100), 0);
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 4, &acq), at(4_000), 0),
            Observation::Conflict { new: true }
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 5, &acq), at(5_000), 0),
            Observation::Conflict { new: false }
        );
        // B is killed after its beat at 4.1 s; A keeps beating. Two of B's
        // intervals later A's next beat takes the record back, before B's
        // deadline could expire it.
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 6, &acq), at(6_000), 0),
            Observation::Conflict { new: false }
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 7, &acq), at(7_000), 0),
            Observation::Changed
        );
        let record = table.record(FAKER).unwrap();
        assert_eq!(record.incarnation, INCARNATION_A);
        assert!(!record.expired);
        assert_eq!(record.incarnations_seen, 2, "A is no new incarnation");
        assert!(record.conflict.is_none(), "B is gone: no conflict");
        for seq in 8..=20 {
            table.observe(&beat(FAKER, INCARNATION_A, seq, &acq), at(seq * 1000), 0);
            assert!(table.expired_at(at(seq * 1000), 0).is_empty());
        }
        assert_eq!(table.state(FAKER), Some(AgentState::Alive));
        assert_eq!(table.conflicts(), 0);
    }

    #[test]
    fn one_forged_beat_of_another_incarnation_does_not_expire_the_agent() {
        let mut table = table();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        table.observe(&beat(FAKER, INCARNATION_A, 1, &[]), at(0), 0);
        table.observe(&beat(FAKER, INCARNATION_B, 1, &[]), at(500), 0);
        for seq in 2..=12 {
            table.observe(
                &beat(FAKER, INCARNATION_A, seq, &[]),
                at(seq * 1000 - 1000),
                0,
            );
            assert!(table.expired_at(at(seq * 1000 - 1000), 0).is_empty());
        }
        let record = table.record(FAKER).unwrap();
        assert_eq!(record.incarnation, INCARNATION_A);
        assert!(record.conflict.is_none());
    }

    #[test]
    fn a_forged_seq_is_refused_or_overruled_within_two_intervals() {
        let mut table = table();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        table.observe(&beat(FAKER, INCARNATION_A, 1, &[]), at(0), 0);
        // Far beyond anything an agent counts: refused outright, as is a
        // goodbye that jumps.
        let mut poison = beat(FAKER, INCARNATION_A, u64::MAX, &[]);
        assert_eq!(table.observe(&poison, at(100), 0), Observation::SeqJump);
        poison.leaving = true;
        assert_eq!(table.observe(&poison, at(200), 0), Observation::SeqJump);
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 2, &[]), at(1_000), 0),
            Observation::Refreshed
        );
        // A plausible forged seq is accepted; the real beats that follow are
        // stale only until two intervals pass, then they win again.
        table.observe(&beat(FAKER, INCARNATION_A, 60, &[]), at(1_100), 0);
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 3, &[]), at(2_000), 0),
            Observation::Stale
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 4, &[]), at(3_000), 0),
            Observation::Stale
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 5, &[]), at(4_000), 0),
            Observation::Resynced
        );
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 6, &[]), at(5_000), 0),
            Observation::Refreshed
        );
        assert!(table.expired_at(at(5_000), 0).is_empty());
        // A forged goodbye within range marks it left; its next real beat
        // brings it back at once.
        let mut goodbye = beat(FAKER, INCARNATION_A, 9, &[]);
        goodbye.leaving = true;
        table.observe(&goodbye, at(5_100), 0);
        assert_eq!(table.state(FAKER), Some(AgentState::Left));
        assert_eq!(
            table.observe(&beat(FAKER, INCARNATION_A, 7, &[]), at(6_000), 0),
            Observation::Resynced
        );
        assert_eq!(table.state(FAKER), Some(AgentState::Alive));
    }

    #[test]
    fn one_off_beats_never_hold_and_a_hold_ends_after_its_maximum() {
        let config = TableConfig {
            agent_timeout: TIMEOUT,
            forget_after: FORGET,
            max_agents: 100,
            hold_fraction: 0.5,
            hold_min_agents: 10,
            max_hold: Duration::from_secs(30),
            max_heartbeat_rate: 10.0,
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let address = |i: usize| format!("observatory.agent{i}");
        // Twenty single beats from new addresses, then silence: nothing to hold.
        let mut table = AgentTable::new(config.clone());
        for i in 0..20 {
            table.observe(&beat(&address(i), INCARNATION_A, 1, &[]), at(0), 0);
        }
        assert_eq!(table.expired_at(at(5_000), 5_000).len(), 20);
        assert!(!table.holding());

        // Twelve steady agents on one host that dies for good: held, then
        // expired once the hold reaches its maximum.
        let mut table = AgentTable::new(config);
        for seq in 1..=3u64 {
            for i in 0..12 {
                table.observe(
                    &beat(&address(i), INCARNATION_A, seq, &[]),
                    at(seq * 1000),
                    0,
                );
            }
        }
        assert!(table.expired_at(at(8_000), 8_000).is_empty());
        assert!(table.holding());
        assert_eq!(table.unverified(), 12);
        assert!(table.expired_at(at(37_999), 37_999).is_empty());
        let released = table.expire_due(at(38_000), 38_000);
        assert!(released.hold_exhausted);
        assert_eq!(released.expired.len(), 12);
        assert_eq!(released.unverified.len(), 12, "the marks are cleared");
        assert!(!table.holding());
        assert_eq!(table.unverified(), 0);
        let record = table.record(&address(0)).unwrap();
        assert!(record.expired && !record.unverified);
        assert_eq!(record.time_expired_unix_ms, 38_000);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// A heartbeat of `agent` from `incarnation`; `replay` resends
            /// that incarnation's last sequence number (a stale duplicate).
            Beat {
                agent: usize,
                incarnation: usize,
                leaving: bool,
                replay: bool,
            },
            /// Time passes (milliseconds).
            Advance(u64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => (0..4usize, 0..3usize, prop::bool::weighted(0.1), prop::bool::weighted(0.1)).prop_map(
                    |(agent, incarnation, leaving, replay)| Step::Beat { agent, incarnation, leaving, replay }
                ),
                2 => (0..7_000u64).prop_map(Step::Advance),
            ]
        }

        const INCARNATIONS: [&str; 3] = [
            INCARNATION_A,
            INCARNATION_B,
            "0d9e6c4a-5b3f-4e2d-8c1a-7f6e5d4c3b2a",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever heartbeats, goodbyes, replays, rival incarnations and
            /// clock advances come, with expiry run as the service runs it:
            /// an agent is alive exactly while its deadline is ahead,
            /// time_expired is the moment of expiry (never later than now,
            /// never before the deadline), expired agents' op codes are all
            /// EXPIRED, and the table stays within its bounds.
            #[test]
            fn the_table_keeps_its_invariants(steps in prop::collection::vec(step(), 1..80)) {
                let mut table = table();
                let t0 = Instant::now();
                let mut elapsed_ms: u64 = 0;
                let mut seqs = [[0u64; 3]; 4];
                let mut max_advance = 0u64;
                let timeout_ms = TIMEOUT.as_millis() as i64;
                for step in steps {
                    match step {
                        Step::Beat { agent, incarnation, leaving, replay } => {
                            let seq = &mut seqs[agent][incarnation];
                            if !replay || *seq == 0 {
                                *seq += 1;
                            }
                            let mut heartbeat = beat(
                                &format!("observatory.agent{agent}"),
                                INCARNATIONS[incarnation],
                                *seq,
                                &[("acq", OpCode::Running), ("count", OpCode::Succeeded)],
                            );
                            heartbeat.leaving = leaving;
                            let now = t0 + Duration::from_millis(elapsed_ms);
                            table.observe(&heartbeat, now, elapsed_ms as i64);
                        }
                        Step::Advance(ms) => {
                            elapsed_ms += ms;
                            max_advance = max_advance.max(ms);
                        }
                    }
                    let now = t0 + Duration::from_millis(elapsed_ms);
                    let now_ms = elapsed_ms as i64;
                    table.expired_at(now, now_ms);
                    table.forget_due(now);
                    prop_assert!(table.len() <= 3, "max_agents is 3");
                    prop_assert!(table.conflicts() <= table.len());
                    if let Some(deadline) = table.next_deadline() {
                        prop_assert!(deadline > now, "a due deadline was left unprocessed");
                    }
                    for record in table.records() {
                        let deadline = record.last_updated_unix_ms + timeout_ms;
                        match proto::AgentState::try_from(record.state).unwrap() {
                            proto::AgentState::Alive => {
                                prop_assert!(!record.expired);
                                prop_assert!(deadline > now_ms, "alive past its deadline: {record:?} at {now_ms}");
                                prop_assert_eq!(record.time_expired_unix_ms, 0);
                            }
                            proto::AgentState::Expired => {
                                prop_assert!(record.expired);
                                prop_assert!(record.time_expired_unix_ms <= now_ms, "time_expired in the future");
                                prop_assert!(record.time_expired_unix_ms >= deadline, "expired before its deadline: {record:?}");
                                prop_assert!(
                                    record.time_expired_unix_ms - deadline <= max_advance as i64,
                                    "expired later than the step that passed its deadline"
                                );
                                prop_assert!(record.op_codes.iter().all(|op| op.op_code == OpCode::Expired.value()));
                            }
                            proto::AgentState::Left => {
                                prop_assert!(record.expired);
                                prop_assert_eq!(record.time_expired_unix_ms, record.last_updated_unix_ms);
                                prop_assert!(record.op_codes.iter().all(|op| op.op_code == OpCode::Expired.value()));
                            }
                            proto::AgentState::Unspecified => prop_assert!(false, "unspecified state"),
                        }
                    }
                }
            }
        }
    }
}
