//! Holds the system's promises against a campaign's [`Record`]. No I/O.
//!
//! The promises, each a [`Verdict`]:
//! - every silenced or killed agent is shown expired or restarted within the
//!   timeout plus a stated bound (plus a failover allowance while the
//!   infrastructure is struck at the same time);
//! - no agent is shown expired unless a fault touched it (its process, its
//!   host, or a NATS server it may have been connected to) within the
//!   timeout before;
//! - at most one registry publishes: no subscriber hears a smaller lease term
//!   after a larger one within the deposed-leader window, nor one term from
//!   two incarnations, nor a message without a term;
//! - no registry record is lost: every snapshot lists every agent;
//! - after faults heal, every agent is alive again and the monitor shows
//!   what the feed shows, within a stated bound.

use std::collections::{BTreeMap, BTreeSet};

use crate::record::{Event, Record, Seen};
use crate::schedule::{Action, Fault, Target, Topology};

/// The bounds the promises are held to, in seconds.
#[derive(Debug, Clone)]
pub struct Promises {
    /// The registry's agent timeout.
    pub agent_timeout: f64,
    /// How long past the timeout an expiry may take to reach a subscriber.
    pub detect_within: f64,
    /// Extra time for detection while a NATS server or a registry is struck
    /// too: the lease's time to live and a reconnection.
    pub failover_allowance: f64,
    /// How long after a fault heals an expiry it caused may still show.
    pub false_expiry_slack: f64,
    /// How long after every fault has healed the system may take to settle.
    pub converge_within: f64,
    /// How long a larger lease term keeps smaller ones out.
    pub deposed_window: f64,
    /// How often a leader publishes a snapshot: a longer silence of the
    /// feed means no replica led.
    pub snapshot_every: f64,
}

/// A broken promise and the window of the record that shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// When it showed.
    pub at: f64,
    /// What broke.
    pub what: String,
    /// The part of the record to read, in seconds.
    pub window: (f64, f64),
}

/// One promise: how many times it was put to the test, and where it broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The promise.
    pub promise: &'static str,
    /// Occasions checked.
    pub checked: usize,
    /// Where it broke.
    pub violations: Vec<Violation>,
}

impl Verdict {
    fn new(promise: &'static str) -> Self {
        Verdict {
            promise,
            checked: 0,
            violations: Vec::new(),
        }
    }

    fn fail(&mut self, at: f64, window: (f64, f64), what: String) {
        self.violations.push(Violation { at, what, window });
    }
}

/// A fault as it happened: when it started and healed.
#[derive(Debug, Clone)]
struct Struck {
    fault: Fault,
    agents: Vec<String>,
    start: f64,
    healed: f64,
}

impl Struck {
    fn overlaps(&self, from: f64, to: f64) -> bool {
        self.start <= to && self.healed >= from
    }
}

/// One feed message as received.
struct Received<'a> {
    at: f64,
    observer: u8,
    registry_incarnation: &'a str,
    term: u64,
    seq: u64,
    sent_at_ms: i64,
    snapshot: bool,
    parts: u32,
    agents: &'a [Seen],
    forgotten: &'a [String],
}

/// Every promise held against `record`.
pub fn check(record: &Record, topology: &Topology, promises: &Promises) -> Vec<Verdict> {
    let ready = record.ready_at().unwrap_or(0.0);
    let end = record
        .entries
        .iter()
        .rev()
        .find(|entry| entry.event == Event::End)
        .map_or_else(
            || record.entries.last().map_or(0.0, |entry| entry.at),
            |entry| entry.at,
        );
    let struck = faults_as_struck(record, end);
    let received: Vec<Received> = record
        .entries
        .iter()
        .filter_map(|entry| match &entry.event {
            Event::Feed {
                observer,
                registry_incarnation,
                term,
                seq,
                sent_at_ms,
                snapshot,
                parts,
                agents,
                forgotten,
            } => Some(Received {
                at: entry.at,
                observer: *observer,
                registry_incarnation,
                term: *term,
                seq: *seq,
                sent_at_ms: *sent_at_ms,
                snapshot: *snapshot,
                parts: *parts,
                agents,
                forgotten,
            }),
            _ => None,
        })
        .collect();
    let mut nemesis = Verdict::new("every fault injected as scheduled");
    for entry in &record.entries {
        match &entry.event {
            Event::FaultStarted { .. } => nemesis.checked += 1,
            Event::NemesisError { id, error } => nemesis.fail(
                entry.at,
                (entry.at - 5.0, entry.at + 5.0),
                format!("fault #{id}: {error}"),
            ),
            _ => {}
        }
    }
    vec![
        nemesis,
        deaths_detected(&received, &struck, topology, promises),
        no_false_expiries(&received, &struck, topology, promises, ready),
        one_publisher(&received, promises),
        no_record_lost(&received, topology, ready),
        settles(record, &received, &struck, topology, promises, ready),
    ]
}

fn faults_as_struck(record: &Record, end: f64) -> Vec<Struck> {
    let healed: BTreeMap<u32, f64> = record
        .entries
        .iter()
        .filter_map(|entry| match entry.event {
            Event::FaultHealed { id } => Some((id, entry.at)),
            _ => None,
        })
        .collect();
    record
        .entries
        .iter()
        .filter_map(|entry| match &entry.event {
            Event::FaultStarted { fault, agents, .. } => Some(Struck {
                fault: fault.clone(),
                agents: agents.clone(),
                start: entry.at,
                healed: if fault.hold == 0.0 {
                    entry.at
                } else {
                    healed.get(&fault.id).copied().unwrap_or(end)
                },
            }),
            _ => None,
        })
        .collect()
}

/// The incarnation of `address` last received before `at`, by any observer.
fn incarnation_before<'a>(received: &'a [Received], address: &str, at: f64) -> Option<&'a str> {
    received
        .iter()
        .rev()
        .filter(|message| message.at < at)
        .flat_map(|message| message.agents.iter())
        .find(|seen| seen.address == address)
        .map(|seen| seen.incarnation.as_str())
}

fn deaths_detected(
    received: &[Received],
    struck: &[Struck],
    topology: &Topology,
    promises: &Promises,
) -> Verdict {
    let mut verdict =
        Verdict::new("every silenced or killed agent shown expired or restarted in time");
    let must_detect_after = promises.agent_timeout + promises.detect_within;
    for fault in struck {
        let always = matches!(fault.fault.action, Action::Kill | Action::KillAgents(_));
        let silenced_long = matches!(fault.fault.action, Action::Pause | Action::Partition)
            && fault.healed - fault.start >= must_detect_after;
        if !matches!(fault.fault.target, Target::Host(_)) || !(always || silenced_long) {
            continue;
        }
        let mut deadline = fault.start + must_detect_after;
        let infrastructure_struck = struck.iter().any(|other| {
            other.fault.target.is_infrastructure()
                && other.overlaps(fault.start - promises.agent_timeout, deadline)
        });
        if infrastructure_struck {
            deadline += promises.failover_allowance;
        }
        // No replica leading at the deadline (the feed silent for longer than
        // a snapshot period: a lease the cluster could not store, an open
        // finding in RELIABILITY.md): the first message once one leads must
        // show it.
        let leaderless = !received.iter().any(|message| {
            message.at > deadline - promises.snapshot_every - 1.0 && message.at <= deadline
        });
        if leaderless && let Some(next) = received.iter().find(|message| message.at > deadline) {
            deadline = next.at;
        }
        for address in &fault.agents {
            debug_assert!(topology.host_of(address).is_some());
            verdict.checked += 1;
            let before = incarnation_before(received, address, fault.start);
            let detected = received
                .iter()
                .filter(|message| message.at > fault.start && message.at <= deadline)
                .flat_map(|message| message.agents.iter())
                .any(|seen| {
                    seen.address == *address
                        && (seen.expired || Some(seen.incarnation.as_str()) != before)
                });
            if !detected {
                verdict.fail(
                    deadline,
                    (fault.start - 2.0, deadline + 5.0),
                    format!(
                        "{address}, struck by fault #{} ({}) at {:.1} s, not shown expired or restarted by {:.1} s",
                        fault.fault.id,
                        fault.fault.kind(),
                        fault.start,
                        deadline
                    ),
                );
            }
        }
    }
    verdict
}

/// Each observer's view of the fleet, message by message: the calls of
/// `on_change(at, observer, address, was_expired, seen)` for every record
/// that changed an agent's expired flag or incarnation.
fn changes(received: &[Received], mut on_change: impl FnMut(f64, u8, &str, Option<bool>, &Seen)) {
    let mut views: BTreeMap<u8, BTreeMap<&str, (bool, &str)>> = BTreeMap::new();
    for message in received {
        let view = views.entry(message.observer).or_default();
        for address in message.forgotten {
            view.remove(address.as_str());
        }
        for seen in message.agents {
            let before = view.insert(&seen.address, (seen.expired, &seen.incarnation));
            if before != Some((seen.expired, &seen.incarnation)) {
                on_change(
                    message.at,
                    message.observer,
                    &seen.address,
                    before.map(|(expired, _)| expired),
                    seen,
                );
            }
        }
    }
}

fn no_false_expiries(
    received: &[Received],
    struck: &[Struck],
    topology: &Topology,
    promises: &Promises,
    ready: f64,
) -> Verdict {
    let mut verdict = Verdict::new("no agent shown expired while alive and reachable");
    changes(received, |at, observer, address, was_expired, seen| {
        // The agents and host managers only: the registry's own address is
        // heartbeated by whichever replica leads, and is rightly shown
        // expired while none does (a lease the cluster cannot store).
        if at < ready
            || !seen.expired
            || was_expired != Some(false)
            || topology.host_of(address).is_none()
        {
            return;
        }
        verdict.checked += 1;
        let from = at - promises.agent_timeout - promises.false_expiry_slack;
        let excused = struck.iter().any(|fault| {
            let touches = fault.agents.iter().any(|agent| agent == address)
                || matches!(fault.fault.target, Target::Nats(_));
            touches && fault.overlaps(from, at)
        });
        if !excused {
            verdict.fail(
                at,
                (from - 2.0, at + 3.0),
                format!(
                    "observer {} received {address} expired at {at:.1} s, and no fault touched it since {from:.1} s",
                    observer + 1
                ),
            );
        }
    });
    verdict
}

fn one_publisher(received: &[Received], promises: &Promises) -> Verdict {
    let mut verdict = Verdict::new("at most one registry publishing the feed");
    let window_ms = (promises.deposed_window * 1000.0) as i64;
    // When each term's first message was sent, on the publishers' clock.
    let mut term_began: BTreeMap<u64, i64> = BTreeMap::new();
    for message in received.iter().filter(|message| message.term != 0) {
        let began = term_began.entry(message.term).or_insert(message.sent_at_ms);
        *began = (*began).min(message.sent_at_ms);
    }
    let mut publisher_of_term: BTreeMap<u64, &str> = BTreeMap::new();
    // Each message once, however many subscribers received it.
    let mut judged: BTreeSet<(&str, u64)> = BTreeSet::new();
    for message in received {
        if !judged.insert((message.registry_incarnation, message.seq)) {
            continue;
        }
        verdict.checked += 1;
        let window = (message.at - promises.deposed_window, message.at + 2.0);
        if message.term == 0 {
            verdict.fail(
                message.at,
                window,
                format!(
                    "a message without a lease term from {}",
                    message.registry_incarnation
                ),
            );
            continue;
        }
        let publisher = *publisher_of_term
            .entry(message.term)
            .or_insert(message.registry_incarnation);
        if publisher != message.registry_incarnation {
            verdict.fail(
                message.at,
                window,
                format!(
                    "term {} published by two registries: {publisher} and {}",
                    message.term, message.registry_incarnation
                ),
            );
        }
        // Sent under a term after a later one began: two publishers at once.
        // (A message sent before, and delivered after the successor's, is a
        // late delivery, which consumers drop by its term; not a violation.)
        let overlapped = term_began.range(message.term + 1..).find(|(_, began)| {
            **began < message.sent_at_ms && message.sent_at_ms - **began < window_ms
        });
        if let Some((later, began)) = overlapped {
            verdict.fail(
                message.at,
                window,
                format!(
                    "{} published under term {} (seq {}) {} ms after term {later} began: a deposed leader published",
                    message.registry_incarnation,
                    message.term,
                    message.seq,
                    message.sent_at_ms - began
                ),
            );
        }
    }
    verdict
}

fn no_record_lost(received: &[Received], topology: &Topology, ready: f64) -> Verdict {
    let mut verdict = Verdict::new("no registry record lost: every snapshot lists every agent");
    let everyone: BTreeSet<String> = topology
        .agents()
        .into_iter()
        .map(|(_, address)| address)
        .collect();
    for message in received {
        if message.at < ready || !message.snapshot || message.parts > 1 {
            continue;
        }
        verdict.checked += 1;
        let listed: BTreeSet<&str> = message
            .agents
            .iter()
            .map(|seen| seen.address.as_str())
            .collect();
        let missing: Vec<&str> = everyone
            .iter()
            .map(String::as_str)
            .filter(|address| !listed.contains(address))
            .collect();
        if !missing.is_empty() {
            verdict.fail(
                message.at,
                (message.at - 10.0, message.at + 2.0),
                format!(
                    "a snapshot from {} (term {}) received by observer {} omits {}",
                    message.registry_incarnation,
                    message.term,
                    message.observer + 1,
                    missing.join(", ")
                ),
            );
        }
    }
    verdict
}

fn settles(
    record: &Record,
    received: &[Received],
    struck: &[Struck],
    topology: &Topology,
    promises: &Promises,
    ready: f64,
) -> Verdict {
    let mut verdict = Verdict::new("all alive again and the monitor agreeing after faults heal");
    // Each agent's latest record, by any observer, as time advances.
    let mut latest: BTreeMap<&str, &Seen> = BTreeMap::new();
    let mut next = 0;
    let everyone = topology.agents();
    for entry in &record.entries {
        let Event::Monitor { expired } = &entry.event else {
            continue;
        };
        let at = entry.at;
        while next < received.len() && received[next].at <= at {
            for seen in received[next].agents {
                latest.insert(&seen.address, seen);
            }
            next += 1;
        }
        let quiet_since = at - promises.converge_within;
        if at < ready + promises.converge_within
            || struck.iter().any(|fault| fault.overlaps(quiet_since, at))
        {
            continue;
        }
        verdict.checked += 1;
        let window = (quiet_since - 5.0, at + 1.0);
        let Some(monitor) = expired else {
            verdict.fail(
                at,
                window,
                "the operation monitor's /metrics did not answer".to_owned(),
            );
            continue;
        };
        for (_, address) in &everyone {
            let feed = latest.get(address.as_str()).map(|seen| seen.expired);
            if feed != Some(false) {
                verdict.fail(
                    at,
                    window,
                    format!(
                        "{address} is {} on the feed {:.0} s after every fault healed",
                        if feed.is_some() { "expired" } else { "missing" },
                        promises.converge_within
                    ),
                );
            }
            if monitor.get(address) != Some(&false) {
                verdict.fail(
                    at,
                    window,
                    format!(
                        "the monitor shows {address} {} {:.0} s after every fault healed",
                        match monitor.get(address) {
                            Some(true) => "expired",
                            _ => "missing",
                        },
                        promises.converge_within
                    ),
                );
            }
        }
    }
    verdict
}

/// Whether every observer in `observers` and the monitor's latest sample
/// show every agent alive: the system is ready for faults.
pub fn everyone_alive(record: &Record, topology: &Topology, observers: u8) -> bool {
    let mut views: BTreeMap<u8, BTreeMap<&str, bool>> = BTreeMap::new();
    let mut monitor = None;
    for entry in &record.entries {
        match &entry.event {
            Event::Feed {
                observer,
                agents,
                forgotten,
                ..
            } => {
                let view = views.entry(*observer).or_default();
                for address in forgotten {
                    view.remove(address.as_str());
                }
                for seen in agents {
                    view.insert(&seen.address, seen.expired);
                }
            }
            Event::Monitor { expired } => monitor = expired.as_ref(),
            _ => {}
        }
    }
    let everyone = topology.agents();
    let all_alive = |expired: &dyn Fn(&str) -> Option<bool>| {
        everyone
            .iter()
            .all(|(_, address)| expired(address) == Some(false))
    };
    (0..observers).all(|observer| {
        views
            .get(&observer)
            .is_some_and(|view| all_alive(&|address| view.get(address).copied()))
    }) && monitor.is_some_and(|monitor| all_alive(&|address| monitor.get(address).copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::site(1, 2)
    }

    fn promises() -> Promises {
        Promises {
            agent_timeout: 5.0,
            detect_within: 2.0,
            failover_allowance: 5.0,
            false_expiry_slack: 2.0,
            converge_within: 10.0,
            deposed_window: 10.0,
            snapshot_every: 5.0,
        }
    }

    fn seen(address: &str, expired: bool, incarnation: &str) -> Seen {
        Seen {
            address: address.into(),
            expired,
            incarnation: incarnation.into(),
        }
    }

    /// A feed message as received; `seq` and the time it was sent (1 ms
    /// before its receipt, in whole milliseconds) are set by [`push_feed`].
    fn feed(observer: u8, term: u64, registry: &str, snapshot: bool, agents: Vec<Seen>) -> Event {
        Event::Feed {
            observer,
            registry_incarnation: registry.into(),
            term,
            seq: 0,
            sent_at_ms: 0,
            snapshot,
            parts: 1,
            agents,
            forgotten: vec![],
        }
    }

    /// Both agents and their host manager, alive.
    fn both_alive() -> Vec<Seen> {
        vec![
            seen("observatory.h1a1", false, "i1"),
            seen("observatory.h1a2", false, "j1"),
            seen("observatory.hm-host1", false, "m1"),
        ]
    }

    fn monitor_showing(expired: &[(&str, bool)]) -> Event {
        Event::Monitor {
            expired: Some(
                expired
                    .iter()
                    .map(|(address, expired)| (address.to_string(), *expired))
                    .collect(),
            ),
        }
    }

    fn pause_host(id: u32, hold: f64) -> Event {
        Event::FaultStarted {
            fault: Fault {
                id,
                at: 0.0,
                hold,
                target: Target::Host(1),
                action: Action::Pause,
            },
            struck: "host1".into(),
            agents: vec!["observatory.h1a1".into(), "observatory.h1a2".into()],
        }
    }

    /// Checks `record` with each registry's messages numbered in order and,
    /// unless a test set it, sent 1 ms before they were received.
    fn judge(record: Record) -> Vec<Verdict> {
        let mut record = record.sorted();
        let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
        for entry in &mut record.entries {
            if let Event::Feed {
                registry_incarnation,
                seq,
                sent_at_ms,
                ..
            } = &mut entry.event
            {
                let next = seqs.entry(registry_incarnation.clone()).or_default();
                *next += 1;
                *seq = *next;
                if *sent_at_ms == 0 {
                    *sent_at_ms = (entry.at * 1000.0) as i64 - 1;
                }
            }
        }
        check(&record, &topology(), &promises())
    }

    /// Fault `id`: SIGKILL of agent h1a1 (its host manager restarts it).
    fn kill_h1a1(id: u32) -> Event {
        Event::FaultStarted {
            fault: Fault {
                id,
                at: 0.0,
                hold: 0.0,
                target: Target::Host(1),
                action: Action::KillAgents(vec![1]),
            },
            struck: "host1".into(),
            agents: vec!["observatory.h1a1".into()],
        }
    }

    fn verdict<'a>(verdicts: &'a [Verdict], promise: &str) -> &'a Verdict {
        verdicts
            .iter()
            .find(|verdict| verdict.promise.starts_with(promise))
            .unwrap()
    }

    /// A quiet campaign: both agents alive, a snapshot, the monitor agreeing.
    fn quiet() -> Record {
        let mut record = Record::default();
        record.push(0.0, feed(0, 3, "r1", true, both_alive()));
        record.push(1.0, Event::Ready);
        for second in 2..40 {
            record.push(
                second as f64,
                monitor_showing(&[
                    ("observatory.h1a1", false),
                    ("observatory.h1a2", false),
                    ("observatory.hm-host1", false),
                ]),
            );
        }
        record
    }

    #[test]
    fn ready_when_every_observer_and_the_monitor_show_everyone_alive() {
        let mut record = quiet();
        assert!(
            !everyone_alive(&record, &topology(), 2),
            "observer 2 has heard nothing"
        );
        record.push(3.0, feed(1, 3, "r1", true, both_alive()));
        assert!(everyone_alive(&record, &topology(), 2));
        record.push(4.0, Event::Monitor { expired: None });
        assert!(!everyone_alive(&record, &topology(), 2));
    }

    #[test]
    fn a_quiet_campaign_keeps_every_promise() {
        let verdicts = judge(quiet());
        for verdict in &verdicts {
            assert!(verdict.violations.is_empty(), "{verdict:?}");
        }
        assert!(verdict(&verdicts, "all alive again").checked > 20);
    }

    #[test]
    fn a_long_pause_must_show_as_expiry_within_the_bound() {
        let mut record = quiet();
        record.push(5.0, pause_host(1, 10.0));
        record.push(15.0, Event::FaultHealed { id: 1 });
        // h1a1 expires in time; h1a2 only after the deadline (5 + 5 + 2).
        record.push(
            10.5,
            feed(
                0,
                3,
                "r1",
                false,
                vec![seen("observatory.h1a1", true, "i1")],
            ),
        );
        record.push(
            12.5,
            feed(
                0,
                3,
                "r1",
                false,
                vec![seen("observatory.h1a2", true, "j1")],
            ),
        );
        record.push(16.0, feed(0, 3, "r1", false, both_alive()));
        let verdicts = judge(record);
        let detected = verdict(&verdicts, "every silenced");
        assert_eq!(detected.checked, 2);
        assert_eq!(detected.violations.len(), 1, "{detected:?}");
        assert!(detected.violations[0].what.starts_with("observatory.h1a2"));
        // The expiries were caused by the pause: none is false.
        assert!(
            verdict(&verdicts, "no agent shown expired")
                .violations
                .is_empty()
        );
    }

    #[test]
    fn a_restart_counts_as_detection_and_a_short_pause_needs_none() {
        let mut record = quiet();
        record.push(5.0, kill_h1a1(1));
        record.push(
            7.0,
            feed(
                0,
                3,
                "r1",
                false,
                vec![seen("observatory.h1a1", false, "i2")],
            ),
        );
        record.push(20.0, pause_host(2, 2.0));
        record.push(22.0, Event::FaultHealed { id: 2 });
        let verdicts = judge(record);
        let detected = verdict(&verdicts, "every silenced");
        assert_eq!(
            (detected.checked, detected.violations.len()),
            (1, 0),
            "{detected:?}"
        );
    }

    #[test]
    fn with_no_leader_at_the_deadline_the_first_message_after_must_show_the_death() {
        let mut record = quiet();
        record.push(5.0, kill_h1a1(1));
        // Silent feed from 0 to 20 s: no leader at the deadline (12 s).
        record.push(
            20.0,
            feed(
                0,
                4,
                "r2",
                true,
                vec![seen("observatory.h1a1", false, "i2")],
            ),
        );
        record.push(40.0, kill_h1a1(2));
        record.push(
            60.0,
            feed(
                0,
                4,
                "r2",
                true,
                vec![seen("observatory.h1a1", false, "i2")],
            ),
        );
        let verdicts = judge(record);
        let detected = verdict(&verdicts, "every silenced");
        assert_eq!(detected.checked, 2);
        // The second death is still unseen in the first message after its deadline.
        assert_eq!(detected.violations.len(), 1, "{detected:?}");
        assert!(detected.violations[0].what.contains("fault #2"));
    }

    #[test]
    fn an_expiry_no_fault_explains_is_false() {
        let mut record = quiet();
        record.push(0.5, feed(1, 3, "r1", true, both_alive()));
        record.push(
            30.0,
            feed(
                1,
                3,
                "r1",
                false,
                vec![seen("observatory.h1a2", true, "j1")],
            ),
        );
        // The registry's own address expired while no replica led: not an
        // agent's false expiry.
        let registry = |expired| vec![seen("observatory.registry", expired, "r1")];
        record.push(31.0, feed(1, 3, "r1", false, registry(false)));
        record.push(32.0, feed(1, 3, "r1", false, registry(true)));
        let verdicts = judge(record);
        let false_expiries = verdict(&verdicts, "no agent shown expired");
        assert_eq!(false_expiries.violations.len(), 1);
        assert!(false_expiries.violations[0].what.contains("observer 2"));
        // And it has not settled: the feed shows it expired in a quiet time.
        assert!(!verdict(&verdicts, "all alive again").violations.is_empty());
    }

    #[test]
    fn a_deposed_leader_or_a_shared_term_breaks_the_one_publisher_promise() {
        let mut record = quiet();
        record.push(10.0, feed(0, 7, "r2", true, both_alive()));
        // Sent under term 3 before term 7 began, delivered after: a late
        // delivery that consumers drop, not a second publisher.
        let mut late = feed(0, 3, "r1", false, vec![]);
        if let Event::Feed { sent_at_ms, .. } = &mut late {
            *sent_at_ms = 9_000;
        }
        record.push(11.0, late);
        record.push(12.0, feed(0, 3, "r1", false, vec![]));
        // Past the window a smaller term is a new history, not a violation.
        record.push(25.0, feed(0, 2, "r1", false, vec![]));
        record.push(26.0, feed(1, 7, "r1", false, vec![]));
        record.push(27.0, feed(2, 0, "r1", false, vec![]));
        let verdicts = judge(record);
        let publishers = verdict(&verdicts, "at most one registry");
        let found: Vec<&str> = publishers
            .violations
            .iter()
            .map(|v| v.what.as_str())
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].contains("r1 published under term 3")
                && found[0].contains("after term 7 began"),
            "{found:?}"
        );
        assert!(found[1].contains("term 7 published by two registries"));
        assert!(found[2].contains("without a lease term"));
    }

    #[test]
    fn a_snapshot_missing_an_agent_loses_a_record_and_a_lagging_monitor_is_caught() {
        let mut record = quiet();
        record.push(
            20.5,
            feed(
                2,
                3,
                "r1",
                true,
                vec![seen("observatory.h1a1", false, "i1")],
            ),
        );
        record.push(
            30.5,
            monitor_showing(&[
                ("observatory.h1a1", false),
                ("observatory.h1a2", true),
                ("observatory.hm-host1", false),
            ]),
        );
        record.push(31.5, Event::Monitor { expired: None });
        let verdicts = judge(record);
        let lost = verdict(&verdicts, "no registry record lost");
        assert_eq!(lost.violations.len(), 1);
        assert!(
            lost.violations[0]
                .what
                .ends_with("omits observatory.h1a2, observatory.hm-host1")
        );
        let settled = verdict(&verdicts, "all alive again");
        assert_eq!(settled.violations.len(), 2, "{settled:?}");
    }
}
