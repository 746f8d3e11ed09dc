//! The table's rules, with time passed in explicitly: expiry at the deadline,
//! restarts, conflicts, flapping, rate limits, seq checks and self-preservation.

use super::*;
use ocs_protocol::OpCode;

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

/// A table of up to 100 agents that holds expiries when more than half of
/// at least ten fall silent at once, for a minute at most.
fn holding_table(agent_timeout: Duration) -> AgentTable {
    AgentTable::new(TableConfig {
        agent_timeout,
        forget_after: FORGET,
        max_agents: 100,
        hold_fraction: 0.5,
        hold_min_agents: 10,
        max_hold: Duration::from_secs(60),
        max_heartbeat_rate: 10.0,
    })
}

fn beat(address: &str, incarnation: &str, seq: u64, ops: &[(&str, OpCode)]) -> proto::Heartbeat {
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

    /// The earliest deadline of an alive agent, which `next_deadline` may
    /// precede (heartbeats move deadlines without rescheduling them).
    fn earliest_due(&self) -> Option<Instant> {
        self.agents
            .values()
            .filter(|entry| entry.state == AgentState::Alive)
            .map(|entry| self.due(entry))
            .min()
    }
}

#[test]
fn a_late_look_expires_with_the_deadline_each_agent_had() {
    let mut table = table();
    let t0 = Instant::now();
    let acq = [("acq", OpCode::Running)];
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
        t0,
        1000,
    );
    let later = t0 + Duration::from_millis(300);
    table.observe(
        &HeartbeatRef::of(&beat("observatory.other", INCARNATION_B, 1, &acq)),
        later,
        1300,
    );
    // Woken late, after both deadlines: each expiry says when it was due.
    let expiries = table.expire_due(t0 + Duration::from_secs(8), 9000);
    assert_eq!(expiries.expired, [FAKER, "observatory.other"]);
    assert_eq!(
        expiries.deadlines,
        [t0 + Duration::from_secs(5), later + Duration::from_secs(5)]
    );
}

#[test]
fn expires_exactly_at_the_deadline_and_records_that_moment() {
    let mut table = table();
    let t0 = Instant::now();
    let acq = [("acq", OpCode::Running)];
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
            t0,
            1000
        ),
        Observation::New
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 2, &acq)),
            t0 + Duration::from_secs(1),
            2000
        ),
        Observation::Refreshed
    );
    assert_eq!(table.earliest_due(), Some(t0 + Duration::from_secs(6)));
    // Woken early (where the first beat put the deadline), nobody expires.
    assert!(
        table
            .expired_at(t0 + Duration::from_secs(5), 6000)
            .is_empty()
    );
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
    before.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
        at(0),
        1_000,
    );
    before.observe(
        &HeartbeatRef::of(&beat("observatory.other", INCARNATION_B, 1, &acq)),
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
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
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
    before.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 7, &[])),
        t0,
        1_000,
    );
    let stored = before.stored(FAKER, t0, 1_000).unwrap();
    let mut after = table();
    after.restore(stored, t0, 2_000);
    assert!(after.record(FAKER).unwrap().unverified);
    assert_eq!(after.unverified(), 1);
    assert_eq!(
        after.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 8, &[])),
            t0 + Duration::from_secs(1),
            3_000
        ),
        Observation::Changed,
        "verifying it is a change subscribers see"
    );
    assert!(!after.record(FAKER).unwrap().unverified);
}

#[test]
fn an_incarnation_is_a_uuid_in_whatever_form_it_was_written() {
    let mut table = table();
    let t0 = Instant::now();
    let upper = INCARNATION_A.to_uppercase();
    table.observe(&HeartbeatRef::of(&beat(FAKER, &upper, 1, &[])), t0, 0);
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 2, &[])),
            t0 + Duration::from_secs(1),
            0
        ),
        Observation::Refreshed,
        "the same UUID in lower case is the same incarnation"
    );
    let record = table.record(FAKER).unwrap();
    assert_eq!(
        record.incarnation, INCARNATION_A,
        "shown in its canonical form"
    );
    assert_eq!(record.incarnations_seen, 1);
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, "not-a-uuid", 3, &[])),
            t0 + Duration::from_secs(2),
            0
        ),
        Observation::InvalidIncarnation
    );

    let mut stored = table.stored(FAKER, t0, 0).unwrap();
    stored.record.as_mut().unwrap().incarnation = "not-a-uuid".into();
    let mut after = self::table();
    assert!(
        !after.restore(stored, t0, 0),
        "a record that cannot be read is left out"
    );
    assert!(after.is_empty());
}

#[test]
fn an_agent_flaps_after_three_expiries_in_the_window_and_settles_after_a_quiet_one() {
    let mut table = table();
    let t0 = Instant::now();
    let at = |seconds: u64| t0 + Duration::from_secs(seconds);
    let mut seq = 0;
    let mut beat_at = |table: &mut AgentTable, seconds: u64| {
        seq += 1;
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, seq, &[])),
            at(seconds),
            0,
        );
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
fn when_the_newer_copy_of_a_duplicate_leaves_the_record_falls_back_to_the_older_at_once() {
    let mut table = table();
    let t0 = Instant::now();
    let acq = [("acq", OpCode::Running)];
    let at = |millis: u64| t0 + Duration::from_millis(millis);
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
        at(0),
        0,
    );
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 1, &[])),
        at(100),
        100,
    );
    // A still beats: a conflict, the record follows B.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 2, &acq)),
            at(1000),
            1000
        ),
        Observation::Conflict { new: true }
    );
    // B stops gracefully: the record follows A at once, alive with A's op
    // codes, never left, and no conflict remains.
    let mut leaving = beat(FAKER, INCARNATION_B, 2, &[]);
    leaving.leaving = true;
    assert_eq!(
        table.observe(&HeartbeatRef::of(&leaving), at(1200), 1200),
        Observation::Changed
    );
    let record = table.record(FAKER).unwrap();
    assert_eq!(record.incarnation, INCARNATION_A);
    assert!(!record.expired);
    assert!(record.conflict.is_none());
    assert_eq!(record.op_codes[0].op_code, OpCode::Running.value());
    assert_eq!(table.conflicts(), 0);
    // A's next beat is an ordinary one, and A expires a timeout after it
    // was last heard if it stops beating.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 3, &acq)),
            at(2000),
            2000
        ),
        Observation::Refreshed
    );
    assert!(table.expired_at(at(6999), 6999).is_empty());
    assert_eq!(table.expired_at(at(7000), 7000), [FAKER]);
    // Without a confirmed conflict (a restart whose old copy died without a
    // word), the newer copy leaving is a departure: the dead one is not revived.
    table.observe(
        &HeartbeatRef::of(&beat("observatory.other", INCARNATION_A, 1, &[])),
        at(0),
        0,
    );
    table.observe(
        &HeartbeatRef::of(&beat("observatory.other", INCARNATION_B, 1, &[])),
        at(100),
        100,
    );
    let mut leaving = beat("observatory.other", INCARNATION_B, 2, &[]);
    leaving.leaving = true;
    table.observe(&HeartbeatRef::of(&leaving), at(200), 200);
    let record = table.record("observatory.other").unwrap();
    assert_eq!(record.incarnation, INCARNATION_B);
    assert!(record.expired);
}

#[test]
fn two_live_incarnations_at_one_address_are_a_conflict_until_one_stops() {
    let mut table = table();
    let t0 = Instant::now();
    let acq = [("acq", OpCode::Running)];
    let at = |seconds: u64| t0 + Duration::from_secs(seconds);
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
        at(0),
        0,
    );
    // B replaces A: as far as anyone can tell, a restart.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 1, &[])),
            at(1),
            1000
        ),
        Observation::Changed
    );
    assert!(table.record(FAKER).unwrap().conflict.is_none());
    // A is still alive: two processes run one instance. Its heartbeat is
    // dropped; the record follows B and names A.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 2, &acq)),
            at(1),
            1000
        ),
        Observation::Conflict { new: true }
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 3, &acq)),
            at(2),
            2000
        ),
        Observation::Conflict { new: false }
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 3, &acq)),
            at(2),
            2000
        ),
        Observation::Stale
    );
    let record = table.record(FAKER).unwrap();
    assert_eq!(record.incarnation, INCARNATION_B);
    assert!(record.op_codes.is_empty());
    assert_eq!(record.conflict.unwrap().incarnation, INCARNATION_A);
    assert_eq!(table.conflicts(), 1);
    // B keeps beating; once A has been silent for a timeout the conflict ends.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 2, &[])),
            at(4),
            4000
        ),
        Observation::Refreshed
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 3, &[])),
            at(7),
            7000
        ),
        Observation::Changed
    );
    assert!(table.record(FAKER).unwrap().conflict.is_none());
    assert_eq!(table.conflicts(), 0);
    // A restart whose old incarnation says goodbye is never a conflict.
    table.observe(
        &HeartbeatRef::of(&beat("observatory.other", INCARNATION_A, 1, &[])),
        at(0),
        0,
    );
    table.observe(
        &HeartbeatRef::of(&beat("observatory.other", INCARNATION_B, 1, &[])),
        at(1),
        1000,
    );
    let mut leaving = beat("observatory.other", INCARNATION_A, 2, &[]);
    leaving.leaving = true;
    assert_eq!(
        table.observe(&HeartbeatRef::of(&leaving), at(1), 1000),
        Observation::Refreshed
    );
    assert_eq!(table.conflicts(), 0);
    assert!(!table.record("observatory.other").unwrap().expired);
}

#[test]
fn stale_heartbeats_are_dropped_and_new_incarnations_replace_op_codes() {
    let mut table = table();
    let t0 = Instant::now();
    let two_ops = [("acq", OpCode::Running), ("old_op", OpCode::None)];
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 5, &two_ops)),
        t0,
        0,
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 5, &two_ops)),
            t0,
            0
        ),
        Observation::Stale
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 3, &two_ops)),
            t0,
            0
        ),
        Observation::Stale
    );
    let one_op = [("acq", OpCode::None)];
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 1, &one_op)),
            t0,
            0
        ),
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
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &[])),
        t0,
        0,
    );
    table.expired_at(t0 + TIMEOUT, 5000);
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 9, &[])),
            t0 + TIMEOUT * 2,
            10000
        ),
        Observation::Changed
    );
    let record = table.record(FAKER).unwrap();
    assert!(!record.expired);
    assert_eq!(record.time_expired_unix_ms, 0);
    assert_eq!(table.earliest_due(), Some(t0 + TIMEOUT * 3));
}

#[test]
fn a_late_beat_close_to_the_deadline_still_moves_it() {
    let mut table = table();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &[])),
        at(0),
        0,
    );
    // A look 4 s on finds the agent due within the hold horizon...
    assert!(table.expired_at(at(4_000), 4_000).is_empty());
    // ...then it beats, late but in time, and is due 5 s after that.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 2, &[])),
            at(4_500),
            4_500
        ),
        Observation::Refreshed
    );
    assert!(
        table.expired_at(at(5_000), 5_000).is_empty(),
        "alive at its old deadline"
    );
    assert!(table.expired_at(at(9_499), 9_499).is_empty());
    assert_eq!(table.expired_at(at(9_500), 9_500), [FAKER]);
}

#[test]
fn leaving_marks_at_once_and_forgetting_follows() {
    let mut table = table();
    let t0 = Instant::now();
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &[("acq", OpCode::Running)])),
        t0,
        0,
    );
    let mut leaving = beat(FAKER, INCARNATION_A, 2, &[("acq", OpCode::Succeeded)]);
    leaving.leaving = true;
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&leaving),
            t0 + Duration::from_millis(10),
            10
        ),
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
                &HeartbeatRef::of(&beat(&format!("observatory.a{i}"), INCARNATION_A, 1, &[])),
                t0,
                0
            ),
            Observation::New
        );
    }
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat("observatory.a3", INCARNATION_A, 1, &[])),
            t0,
            0
        ),
        Observation::TableFull
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat("observatory.a0", INCARNATION_A, 2, &[])),
            t0,
            0
        ),
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
    table.observe(&HeartbeatRef::of(&slow), t0, 0);
    assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(30)));
}

#[test]
fn fresh_timeouts_after_an_outage() {
    let mut table = table();
    let t0 = Instant::now();
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &[])),
        t0,
        0,
    );
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
        match table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, seq, &[])),
            now,
            0,
        ) {
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
            table.observe(
                &HeartbeatRef::of(&beat(other, INCARNATION_A, seq, &[])),
                now,
                0
            ),
            Observation::RateLimited
        );
    }
}

#[test]
fn an_unchanged_beat_moves_the_deadline_and_takes_the_new_host_version_and_pid() {
    let mut table = table();
    let t0 = Instant::now();
    let acq = [("acq", OpCode::Running)];
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &acq)),
        t0,
        1_000,
    );
    let mut second = beat(FAKER, INCARNATION_A, 2, &acq);
    second.host = "daq2".into();
    second.agent_version = "1.1".into();
    second.pid = 77;
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        table.observe(&HeartbeatRef::of(&second), t1, 2_000),
        Observation::Refreshed
    );
    assert_eq!(table.earliest_due(), Some(t1 + TIMEOUT));
    assert!(
        table.expired_at(t0 + TIMEOUT, 6_000).is_empty(),
        "the first deadline no longer holds"
    );
    let record = table.record(FAKER).unwrap();
    assert_eq!(
        (
            record.host.as_str(),
            record.agent_version.as_str(),
            record.pid,
            record.last_updated_unix_ms
        ),
        ("daq2", "1.1", 77, 2_000)
    );
    assert_eq!(table.expired_at(t1 + TIMEOUT, 7_000), [FAKER]);
}

#[test]
fn with_a_short_timeout_a_few_silent_agents_expire_without_a_hold() {
    let timeout = Duration::from_secs(2);
    let mut table = holding_table(timeout);
    let t0 = Instant::now();
    let address = |i: usize| format!("observatory.agent{i}");
    // Twenty agents beat every 500 ms; the last two stop after 1.5 s.
    for round in 0..12u64 {
        let now = t0 + Duration::from_millis(round * 500);
        let beating = if round < 4 { 20 } else { 18 };
        for i in 0..beating {
            let mut heartbeat = beat(&address(i), INCARNATION_A, round + 1, &[]);
            heartbeat.interval_ms = 500;
            table.observe(&HeartbeatRef::of(&heartbeat), now, 0);
        }
        let expired = table.expire_due(now + Duration::from_millis(499), 0);
        assert!(
            !table.holding(),
            "held at {round}: two of twenty is no partition"
        );
        if !expired.expired.is_empty() {
            assert_eq!(expired.expired, [address(18), address(19)]);
            return;
        }
    }
    panic!("the two silent agents never expired");
}

#[test]
fn most_agents_silent_at_once_holds_expiries_until_heartbeats_return() {
    let mut table = holding_table(TIMEOUT);
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
                &HeartbeatRef::of(&beat(&address(i), INCARNATION_A, seq, &[])),
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
    let first_deadline = table.earliest_due().unwrap();
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
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, seq, &acq)),
            at(seq * 1000),
            0,
        );
    }
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 1, &acq)),
        at(3_100),
        0,
    );
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 2, &acq)),
        at(4_100),
        0,
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 4, &acq)),
            at(4_000),
            0
        ),
        Observation::Conflict { new: true }
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 5, &acq)),
            at(5_000),
            0
        ),
        Observation::Conflict { new: false }
    );
    // B is killed after its beat at 4.1 s; A keeps beating. Two of B's
    // intervals later A's next beat takes the record back, before B's
    // deadline could expire it.
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 6, &acq)),
            at(6_000),
            0
        ),
        Observation::Conflict { new: false }
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 7, &acq)),
            at(7_000),
            0
        ),
        Observation::Changed
    );
    let record = table.record(FAKER).unwrap();
    assert_eq!(record.incarnation, INCARNATION_A);
    assert!(!record.expired);
    assert_eq!(record.incarnations_seen, 2, "A is no new incarnation");
    assert!(record.conflict.is_none(), "B is gone: no conflict");
    for seq in 8..=20 {
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, seq, &acq)),
            at(seq * 1000),
            0,
        );
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
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &[])),
        at(0),
        0,
    );
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_B, 1, &[])),
        at(500),
        0,
    );
    for seq in 2..=12 {
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, seq, &[])),
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
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 1, &[])),
        at(0),
        0,
    );
    // Far beyond anything an agent counts: refused outright, as is a
    // goodbye that jumps.
    let mut poison = beat(FAKER, INCARNATION_A, u64::MAX, &[]);
    assert_eq!(
        table.observe(&HeartbeatRef::of(&poison), at(100), 0),
        Observation::SeqJump
    );
    poison.leaving = true;
    assert_eq!(
        table.observe(&HeartbeatRef::of(&poison), at(200), 0),
        Observation::SeqJump
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 2, &[])),
            at(1_000),
            0
        ),
        Observation::Refreshed
    );
    // A plausible forged seq is accepted; the real beats that follow are
    // stale only until two intervals pass, then they win again.
    table.observe(
        &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 60, &[])),
        at(1_100),
        0,
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 3, &[])),
            at(2_000),
            0
        ),
        Observation::Stale
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 4, &[])),
            at(3_000),
            0
        ),
        Observation::Stale
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 5, &[])),
            at(4_000),
            0
        ),
        Observation::Resynced
    );
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 6, &[])),
            at(5_000),
            0
        ),
        Observation::Refreshed
    );
    assert!(table.expired_at(at(5_000), 0).is_empty());
    // A forged goodbye within range marks it left; its next real beat
    // brings it back at once.
    let mut goodbye = beat(FAKER, INCARNATION_A, 9, &[]);
    goodbye.leaving = true;
    table.observe(&HeartbeatRef::of(&goodbye), at(5_100), 0);
    assert_eq!(table.state(FAKER), Some(AgentState::Left));
    assert_eq!(
        table.observe(
            &HeartbeatRef::of(&beat(FAKER, INCARNATION_A, 7, &[])),
            at(6_000),
            0
        ),
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
        table.observe(
            &HeartbeatRef::of(&beat(&address(i), INCARNATION_A, 1, &[])),
            at(0),
            0,
        );
    }
    assert_eq!(table.expired_at(at(5_000), 5_000).len(), 20);
    assert!(!table.holding());

    // Twelve steady agents on one host that dies for good: held, then
    // expired once the hold reaches its maximum.
    let mut table = AgentTable::new(config);
    for seq in 1..=3u64 {
        for i in 0..12 {
            table.observe(
                &HeartbeatRef::of(&beat(&address(i), INCARNATION_A, seq, &[])),
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
                        table.observe(&HeartbeatRef::of(&heartbeat), now, elapsed_ms as i64);
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
                prop_assert_eq!(table.steady_alive, table.steady_alive_recounted());
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
