//! Whether the registry may take an agent's silence as its death right now.
//!
//! Silence means death only if the registry could have heard the agent. It
//! could not while it was cut off from the bus (disconnected, or its own
//! heartbeat no longer coming back through NATS) or while its own process
//! did not run (SIGSTOP, a paused VM, a starved host). [`Vigil`] tracks both,
//! and the self-preservation hold of the table, and tells the main loop what
//! changed; it expires no one itself and holds no I/O, so its rules are
//! unit-tested on a paused clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::table::AgentTable;

/// The loop wakes at least every 250 ms (housekeeping); a longer gap means
/// this process did not run and could not read the heartbeats sent
/// meanwhile, which still sit unread in the socket. Agents beat every
/// second, so their deadlines are at least a timeout less a second away: a
/// second of not running cannot yet make an alive agent look dead, a longer
/// gap can.
pub(crate) const STALL: Duration = Duration::from_secs(1);
/// The registry is cut off when its own heartbeat (sent every second) has not
/// come back through NATS for this long: two missed beats, well inside the
/// shortest sensible agent timeout (three intervals).
pub(crate) const CANARY: Duration = Duration::from_millis(2500);

/// What changed at a look; the loop logs it and sets its metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Change {
    /// Hearing the bus again: every alive agent was given a fresh timeout.
    Regained,
    /// Cut off from the bus: expiries wait.
    CutOff {
        /// Whether the NATS connection still looked up.
        connected: bool,
    },
    /// The process did not run for `asleep`: every alive agent was given a
    /// fresh timeout.
    Stalled {
        /// How long it did not run.
        asleep: Duration,
    },
    /// Most agents fell silent at once: expiries are held (self-preservation).
    HoldStarted,
    /// Heartbeats returned, or the hold ran out: expiries resume.
    HoldEnded,
}

/// The registry's own alertness; see the module documentation.
#[derive(Debug)]
pub(crate) struct Vigil {
    hearing: bool,
    own_heartbeat_heard: Instant,
    last_awake: Instant,
    holding: bool,
}

impl Vigil {
    /// Starting at `now`: its own first heartbeat gets [`CANARY`] to make
    /// the round trip.
    pub(crate) fn new(now: Instant, connected: bool) -> Self {
        Vigil {
            hearing: connected,
            own_heartbeat_heard: now,
            last_awake: now,
            holding: false,
        }
    }

    /// A heartbeat that proves NATS carries heartbeats to this registry came
    /// back: its own address's, or, while another replica leads, anyone's.
    pub(crate) fn own_heartbeat_heard(&mut self, now: Instant) {
        self.own_heartbeat_heard = now;
    }

    /// Whether the registry hears the bus (as of its last look).
    pub(crate) fn hearing(&self) -> bool {
        self.hearing
    }

    /// At the top of each turn of the loop: whether the bus is heard, and
    /// the next deadline at which silence may expire someone (`None` while
    /// cut off). Regaining the bus gives every alive agent a fresh timeout:
    /// nobody could be heard meanwhile.
    pub(crate) fn look(
        &mut self,
        now: Instant,
        connected: bool,
        table: &mut AgentTable,
    ) -> (Option<Instant>, Option<Change>) {
        let hears_itself = now.saturating_duration_since(self.own_heartbeat_heard) <= CANARY;
        let hearing = connected && hears_itself;
        let change = match (self.hearing, hearing) {
            (false, true) => {
                table.grant_fresh_timeouts(now);
                Some(Change::Regained)
            }
            (true, false) => Some(Change::CutOff { connected }),
            _ => None,
        };
        self.hearing = hearing;
        let deadline = if hearing { table.next_deadline() } else { None };
        (deadline, change)
    }

    /// Woken at a deadline, before anyone is expired: if the process did
    /// not run for longer than [`STALL`], the silence was its own, and every
    /// alive agent gets a fresh timeout.
    pub(crate) fn at_deadline(&mut self, now: Instant, table: &mut AgentTable) -> Option<Change> {
        let asleep = now.saturating_duration_since(self.last_awake);
        (asleep > STALL).then(|| {
            table.grant_fresh_timeouts(now);
            Change::Stalled { asleep }
        })
    }

    /// After expiries: whether the table's self-preservation hold began or ended.
    pub(crate) fn after_expiries(&mut self, table: &AgentTable) -> Option<Change> {
        let holding = table.holding();
        if holding == self.holding {
            return None;
        }
        self.holding = holding;
        Some(if holding {
            Change::HoldStarted
        } else {
            Change::HoldEnded
        })
    }

    /// At the end of each turn of the loop: the process was running until `now`.
    pub(crate) fn awake(&mut self, now: Instant) {
        self.last_awake = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableConfig;
    use ocs_protocol::heartbeat::HeartbeatRef;
    use ocs_protocol::proto;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn table() -> AgentTable {
        AgentTable::new(TableConfig {
            agent_timeout: TIMEOUT,
            forget_after: Duration::from_secs(60),
            max_agents: 100,
            hold_fraction: 0.5,
            hold_min_agents: 10,
            max_hold: Duration::from_secs(60),
            max_heartbeat_rate: 10.0,
        })
    }

    /// Beat `seq` of one steady incarnation at `address`.
    fn beat(table: &mut AgentTable, address: &str, seq: u64) {
        let heartbeat = proto::Heartbeat {
            incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
            seq,
            ..ocs_testkit::heartbeat(address)
        };
        table.observe(&HeartbeatRef::of(&heartbeat), Instant::now(), 0);
    }

    /// One turn of the main loop with nothing but the clock: look, and
    /// expire whoever is due if the deadline allows; returns the expired.
    fn turn(vigil: &mut Vigil, table: &mut AgentTable, connected: bool) -> Vec<String> {
        let now = Instant::now();
        let (deadline, _) = vigil.look(now, connected, table);
        let mut expired = Vec::new();
        if deadline.is_some_and(|deadline| deadline <= now) {
            vigil.at_deadline(now, table);
            expired = table.expire_due(now, 0).expired;
        }
        vigil.awake(now);
        expired
    }

    #[tokio::test(start_paused = true)]
    async fn expires_no_one_while_cut_off_and_gives_a_fresh_timeout_after() {
        let mut table = table();
        let mut vigil = Vigil::new(Instant::now(), true);
        beat(&mut table, "observatory.a", 1);
        // The registry's own heartbeat stops coming back (a frozen server):
        // the agent falls silent too, but its silence proves nothing.
        for _ in 0..40 {
            tokio::time::advance(Duration::from_millis(250)).await;
            assert_eq!(turn(&mut vigil, &mut table, true), Vec::<String>::new());
        }
        assert!(!vigil.hearing());
        // The bus is back at t = 10 s, long past the agent's deadline (5 s).
        vigil.own_heartbeat_heard(Instant::now());
        let (_, change) = vigil.look(Instant::now(), true, &mut table);
        assert_eq!(change, Some(Change::Regained));
        vigil.awake(Instant::now());
        // A full timeout from now: not expired at 4.75 s, expired at 5 s.
        for _ in 0..19 {
            tokio::time::advance(Duration::from_millis(250)).await;
            vigil.own_heartbeat_heard(Instant::now());
            assert_eq!(turn(&mut vigil, &mut table, true), Vec::<String>::new());
        }
        tokio::time::advance(Duration::from_millis(250)).await;
        vigil.own_heartbeat_heard(Instant::now());
        assert_eq!(turn(&mut vigil, &mut table, true), ["observatory.a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disconnection_is_cut_off_at_once() {
        let mut table = table();
        let mut vigil = Vigil::new(Instant::now(), true);
        let (_, change) = vigil.look(Instant::now(), false, &mut table);
        assert_eq!(change, Some(Change::CutOff { connected: false }));
        beat(&mut table, "observatory.a", 1);
        tokio::time::advance(TIMEOUT * 2).await;
        assert_eq!(turn(&mut vigil, &mut table, false), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn expires_no_one_after_a_stall_and_gives_a_fresh_timeout() {
        let mut table = table();
        let mut vigil = Vigil::new(Instant::now(), true);
        beat(&mut table, "observatory.a", 1);
        vigil.awake(Instant::now());
        // The process is stopped for 8 s; the agent's beats sit unread.
        tokio::time::advance(Duration::from_secs(8)).await;
        vigil.own_heartbeat_heard(Instant::now());
        let now = Instant::now();
        let (deadline, change) = vigil.look(now, true, &mut table);
        assert_eq!(change, None);
        assert!(deadline.is_some_and(|deadline| deadline <= now));
        assert_eq!(
            vigil.at_deadline(now, &mut table),
            Some(Change::Stalled {
                asleep: Duration::from_secs(8)
            })
        );
        assert!(table.expire_due(now, 0).expired.is_empty());
        // A gap of one housekeeping tick is no stall.
        vigil.awake(now);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(vigil.at_deadline(Instant::now(), &mut table), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reports_when_a_hold_starts_and_ends() {
        let mut table = table();
        let mut vigil = Vigil::new(Instant::now(), true);
        let addresses: Vec<String> = (0..12).map(|i| format!("observatory.a{i}")).collect();
        for seq in 1..=3 {
            for address in &addresses {
                beat(&mut table, address, seq);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // All twelve fall silent at once: a partition is likelier than
        // twelve deaths. The registry itself keeps running and hearing.
        let mut changes = Vec::new();
        for _ in 0..24 {
            tokio::time::advance(Duration::from_millis(250)).await;
            vigil.own_heartbeat_heard(Instant::now());
            assert!(turn(&mut vigil, &mut table, true).is_empty());
            changes.extend(vigil.after_expiries(&table));
        }
        assert_eq!(changes, [Change::HoldStarted]);
        for address in &addresses {
            beat(&mut table, address, 4);
        }
        tokio::time::advance(Duration::from_millis(250)).await;
        vigil.own_heartbeat_heard(Instant::now());
        let now = Instant::now();
        vigil.look(now, true, &mut table);
        table.expire_due(now, 0);
        assert_eq!(vigil.after_expiries(&table), Some(Change::HoldEnded));
        assert_eq!(vigil.after_expiries(&table), None);
    }
}
