//! The registry handles every agent's heartbeat every second, and nearly
//! all of them change nothing. Reading such a heartbeat and refreshing its
//! agent must not touch the allocator: at 100,000 agents a single allocation
//! per beat is 100,000 mallocs and frees a second on the registry's one loop.
//!
//! `allocation_counter` counts the allocations of this thread only.

use std::time::Duration;

use ocs_protocol::heartbeat;
use ocs_protocol::{OpCode, codec, proto};
use ocs_registry::table::{AgentTable, Observation, TableConfig};
use tokio::time::Instant;

fn beat(address: &str, seq: u64, acq: OpCode) -> Vec<u8> {
    let ops = [
        ("acq", acq, "process"),
        ("count", OpCode::Succeeded, "task"),
    ]
    .into_iter()
    .chain((0..4).map(|_| ("delay_task", OpCode::None, "task")))
    .enumerate()
    .map(|(i, (name, code, op_type))| proto::OperationCode {
        op_name: if i < 2 {
            name.into()
        } else {
            format!("{name}{i}")
        },
        op_code: code.value(),
        op_type: op_type.into(),
    })
    .collect();
    codec::encode(&proto::Heartbeat {
        protocol_version: 1,
        agent_address: address.into(),
        agent_class: "FakeDataAgent".into(),
        incarnation: "2f1e8f36-8b0e-4d4f-9a57-3c2a0b7b1c11".into(),
        seq,
        sent_at_unix_ms: 1_795_000_000_000 + seq as i64 * 1000,
        op_codes: ops,
        host: "daq-1".into(),
        pid: 4242,
        agent_version: "0.1.0".into(),
        interval_ms: 1000,
        leaving: false,
    })
}

#[test]
fn an_unchanged_agents_heartbeat_is_read_and_recorded_without_allocating() {
    let mut table = AgentTable::new(TableConfig {
        agent_timeout: Duration::from_secs(3),
        forget_after: Duration::from_secs(3600),
        max_agents: 1000,
        hold_fraction: 0.5,
        hold_min_agents: 10,
        max_hold: Duration::from_secs(60),
        max_heartbeat_rate: 10.0,
    });
    let start = Instant::now();
    let addresses: Vec<String> = (0..100).map(|i| format!("observatory.agent{i}")).collect();
    let payloads: Vec<Vec<Vec<u8>>> = (1..=20)
        .map(|seq| {
            addresses
                .iter()
                .map(|address| beat(address, seq, OpCode::Running))
                .collect()
        })
        .collect();
    let mut observe = |bytes: &[u8], at: Duration| {
        let heartbeat = heartbeat::read(bytes, codec::MAX_MESSAGE_BYTES).unwrap();
        table.observe(&heartbeat, start + at, 1_795_000_000_000)
    };

    for (seq, beats) in payloads.iter().enumerate() {
        let at = Duration::from_secs(seq as u64);
        let mut observations = [Observation::Stale; 100];
        let made = allocation_counter::measure(|| {
            for (agent, seen) in observations.iter_mut().enumerate() {
                *seen = observe(&beats[agent], at);
            }
        })
        .count_total;
        if seq == 0 {
            assert!(observations.iter().all(|seen| *seen == Observation::New));
            assert!(made > 0, "counting works: a new agent is stored");
        } else {
            assert!(
                observations
                    .iter()
                    .all(|seen| *seen == Observation::Refreshed)
            );
            assert_eq!(made, 0, "100 unchanged heartbeats at second {seq}");
        }
    }

    // A change is stored, and stores something new.
    let changed = beat(&addresses[0], 21, OpCode::Succeeded);
    let mut observation = Observation::Stale;
    let made = allocation_counter::measure(|| {
        observation = observe(&changed, Duration::from_secs(20));
    })
    .count_total;
    assert_eq!(observation, Observation::Changed);
    assert!(made > 0);
}
