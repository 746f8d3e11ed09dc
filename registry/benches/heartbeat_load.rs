//! Load generator and benchmark of the registry.
//!
//! Simulates N agents heartbeating at 1 Hz from one process against a real
//! nats-server and a real `ocs-registry` process, then silences some of them
//! and measures how late their expiry reaches the feed.
//!
//! ```text
//! cargo bench -p ocs-registry --bench heartbeat_load -- --agents 1000 --steady 30 --silence 100
//! ```
//!
//! Reports registry CPU and memory, heartbeats lost or dropped, false
//! expiries and how late expiries come: after the registry's own deadline
//! (its last receipt of the agent's heartbeat + timeout, from its
//! `ocs_registry_expiry_lateness_seconds`), and end to end (feed arrival here
//! minus the silenced agent's last heartbeat *sent* + timeout, which adds the
//! time heartbeats spend on their way in and the feed on its way out). Beside the registry it runs the floor: this
//! program again as a bare subscriber (`--bare-subscriber URL`) that only
//! receives and counts the same heartbeats, and reports the CPU per
//! heartbeat of both and their ratio (`--no-floor` leaves it out: it doubles
//! what nats-server delivers, which matters on a small machine). It also
//! reports how soon the fleet is registered: each agent's first appearance on
//! the feed after its first heartbeat, and when the last one appeared (OCS's
//! registry needed 105 s for 1,000 agents).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::proto;
use ocs_testkit::{NatsServer, Process, measure};

/// Slots of 10 ms in a second; each agent beats in one of them.
const SLOTS: usize = 100;

struct Args {
    bare_subscriber: Option<String>,
    /// Run the bare subscriber beside the registry (it doubles what nats-server delivers).
    floor: bool,
    agents: usize,
    steady: u64,
    silence: usize,
    timeout: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        bare_subscriber: None,
        floor: true,
        agents: 1000,
        steady: 30,
        silence: 100,
        timeout: 5.0,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || {
            iter.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--agents" => args.agents = value().parse().expect("--agents N"),
            "--steady" => args.steady = value().parse().expect("--steady SECONDS"),
            "--silence" => args.silence = value().parse().expect("--silence N"),
            "--timeout" => args.timeout = value().parse().expect("--timeout SECONDS"),
            "--bare-subscriber" => args.bare_subscriber = Some(value()),
            "--no-floor" => args.floor = false,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args.silence = args.silence.min(args.agents);
    args
}

async fn metric(port: u16, series: &str) -> f64 {
    measure::metric(port, series).await.unwrap_or(0.0)
}

/// The floor: a process that only receives and counts the same heartbeats.
async fn bare_subscriber(url: &str) {
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 18)
        .connect(url)
        .await
        .expect("bare subscriber connects");
    let mut heartbeats = client
        .subscribe("observatory.*.feeds.heartbeat")
        .await
        .expect("bare subscriber subscribes");
    let mut count = 0u64;
    while heartbeats.next().await.is_some() {
        count += 1;
    }
    std::hint::black_box(count);
}

struct Simulated {
    address: String,
    subject: String,
    incarnation: String,
    seq: u64,
}

fn heartbeat(agent: &mut Simulated) -> Vec<u8> {
    agent.seq += 1;
    let ops = ["acq", "count", "delay_task", "set_heartbeat", "calibrate"];
    codec::encode(&proto::Heartbeat {
        protocol_version: 1,
        agent_address: agent.address.clone(),
        agent_class: "LoadAgent".into(),
        incarnation: agent.incarnation.clone(),
        seq: agent.seq,
        sent_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        op_codes: ops
            .iter()
            .enumerate()
            .map(|(i, op)| proto::OperationCode {
                op_name: (*op).into(),
                op_code: if i == 0 { 3 } else { 1 },
                op_type: if i == 0 { "process" } else { "task" }.into(),
            })
            .collect(),
        host: "loadgen".into(),
        pid: 1,
        agent_version: "bench".into(),
        interval_ms: 1000,
        leaving: false,
    })
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    if let Some(url) = &args.bare_subscriber {
        return bare_subscriber(url).await;
    }
    let nats = NatsServer::start();
    let http_port = ocs_testkit::free_port();
    let timeout = args.timeout.to_string();
    let registry = ocs_testkit::launch::registry(
        &nats.url(),
        http_port,
        &["--agent-timeout", &timeout, "--max-agents", "1000000"],
    );
    let pid = registry.pid();
    let mut floor_command = Command::new(std::env::current_exe().expect("this bench's path"));
    floor_command.args(["--bare-subscriber", &nats.url()]);
    let floor = args
        .floor
        .then(|| Process::spawn("bare subscriber", floor_command));
    let floor_pid = floor.as_ref().map_or(0, Process::pid);
    let client = async_nats::ConnectOptions::new()
        .client_capacity(65_536)
        .connect(nats.url())
        .await
        .unwrap();

    // Feed recorder: when each address was first reported, and first reported expired.
    let expired_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let registered_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut feed = client
        .subscribe("observatory.registry.feeds.agent_operations")
        .await
        .unwrap();
    let sink = expired_at.clone();
    let registered = registered_at.clone();
    tokio::spawn(async move {
        while let Some(message) = feed.next().await {
            let now = Instant::now();
            let Ok(decoded) =
                codec::decode::<proto::AgentOperations>(&message.payload, MAX_MESSAGE_BYTES)
            else {
                continue;
            };
            let mut registered = registered.lock().unwrap();
            for record in &decoded.agents {
                if !registered.contains_key(&record.agent_address) {
                    registered.insert(record.agent_address.clone(), now);
                }
            }
            let mut sink = sink.lock().unwrap();
            for record in decoded.agents.iter().filter(|r| r.expired) {
                sink.entry(record.agent_address.clone()).or_insert(now);
            }
        }
    });

    // The registry's own heartbeats reach its counter too; count them to subtract.
    let own_beats = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut own = client
        .subscribe("observatory.registry.feeds.heartbeat")
        .await
        .unwrap();
    let counter = own_beats.clone();
    tokio::spawn(async move {
        while own.next().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });

    // Start the load only once the registry listens, so no beat goes unheard.
    let ready_by = Instant::now() + Duration::from_secs(30);
    while metric(http_port, "ocs_registry_nats_connected").await < 1.0 {
        assert!(Instant::now() < ready_by, "registry not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut agents: Vec<Simulated> = (0..args.agents)
        .map(|i| Simulated {
            address: format!("observatory.load{i:06}"),
            subject: format!("observatory.load{i:06}.feeds.heartbeat"),
            incarnation: uuid::Uuid::new_v4().to_string(),
            seq: 0,
        })
        .collect();
    // Spread over the fleet and over the 100 send slots below, so that
    // their deadlines fall at different moments of the second.
    let stride = args.agents / args.silence.max(1);
    let silenced: Vec<usize> = (0..args.silence)
        .map(|k| k * stride + k % stride.min(SLOTS))
        .collect();
    let mut last_sent: HashMap<usize, Instant> = HashMap::new();
    let mut first_sent: Vec<Option<Instant>> = vec![None; args.agents];
    let mut silent = vec![false; args.agents];

    // 1 Hz per agent, spread over the slots of 10 ms.
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let warmup = Duration::from_secs(5);
    let steady = Duration::from_secs(args.steady);
    let tail = Duration::from_secs_f64(args.timeout + 3.0);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut slot = 0usize;
    // When the measurement started: registry CPU, floor CPU, heartbeats received.
    let mut baseline: Option<(Instant, f64, f64, f64)> = None;
    let mut peak_rss = 0u64;
    let mut silence_at: Option<Instant> = None;
    loop {
        ticks.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= warmup && baseline.is_none() {
            let received = metric(http_port, "ocs_registry_heartbeats_received_total").await;
            baseline = Some((
                Instant::now(),
                measure::cpu_seconds(pid),
                measure::cpu_seconds(floor_pid),
                received,
            ));
        }
        if elapsed >= warmup + steady && silence_at.is_none() {
            silence_at = Some(Instant::now());
            for &index in &silenced {
                silent[index] = true;
            }
        }
        if elapsed >= warmup + steady + tail {
            break;
        }
        for index in (slot..args.agents).step_by(SLOTS) {
            if silent[index] {
                continue;
            }
            let payload = heartbeat(&mut agents[index]);
            client
                .publish(agents[index].subject.clone(), payload.into())
                .await
                .unwrap();
            sent += 1;
            let now = Instant::now();
            last_sent.insert(index, now);
            first_sent[index].get_or_insert(now);
        }
        slot = (slot + 1) % SLOTS;
        if slot == 0 {
            peak_rss = peak_rss.max(measure::resident_kib(pid));
        }
    }
    client.flush().await.unwrap();
    // Let the registry finish what is in flight before reading its counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_at, base_cpu, base_floor_cpu, base_received) = baseline.expect("warm-up done");
    let registry_cpu = measure::cpu_seconds(pid) - base_cpu;
    let floor_cpu = measure::cpu_seconds(floor_pid) - base_floor_cpu;
    let end_rss = measure::resident_kib(pid);
    let wall = base_at.elapsed().as_secs_f64();
    let cpu_percent = registry_cpu / wall * 100.0;
    let total_received = metric(http_port, "ocs_registry_heartbeats_received_total").await;
    let measured = (total_received - base_received).max(1.0);
    let received = total_received - own_beats.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let dropped = metric(http_port, "ocs_registry_heartbeats_dropped_total").await;
    let alive = metric(http_port, "ocs_registry_agents{state=\"alive\"}").await;
    let mut lateness_ms = [0.5, 0.99].map(|_| f64::NAN);
    for (q, late) in [0.5, 0.99].iter().zip(&mut lateness_ms) {
        let name = "ocs_registry_expiry_lateness_seconds";
        if let Some(seconds) = measure::histogram_quantile(http_port, name, *q).await {
            *late = seconds * 1000.0;
        }
    }

    // Registration: each agent's first appearance on the feed after its first
    // heartbeat, and the whole fleet's after the first heartbeat of all.
    let registered_at = registered_at.lock().unwrap();
    let mut registration_ms: Vec<f64> = agents
        .iter()
        .zip(&first_sent)
        .filter_map(|(agent, first)| {
            let on_feed = registered_at.get(&agent.address)?;
            Some(on_feed.saturating_duration_since((*first)?).as_secs_f64() * 1000.0)
        })
        .collect();
    registration_ms.sort_by(f64::total_cmp);
    let fleet_registered = agents
        .iter()
        .map(|agent| registered_at.get(&agent.address))
        .collect::<Option<Vec<_>>>()
        .and_then(|seen| seen.into_iter().max().copied())
        .map(|last| last.saturating_duration_since(start).as_secs_f64());

    let expired_at = expired_at.lock().unwrap();
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut latencies_ms: Vec<f64> = silenced
        .iter()
        .filter_map(|index| {
            let deadline = last_sent[index] + timeout;
            let at = expired_at.get(&agents[*index].address)?;
            Some(
                at.saturating_duration_since(deadline).as_secs_f64() * 1000.0
                    - deadline.saturating_duration_since(*at).as_secs_f64() * 1000.0,
            )
        })
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    let missed = silenced.len() - latencies_ms.len();
    let false_expiries = expired_at
        .keys()
        .filter(|address| {
            !silenced
                .iter()
                .any(|index| &agents[*index].address == *address)
        })
        .count();
    println!(
        "agents={} rate=1Hz steady={}s timeout={}s silenced={}",
        args.agents,
        args.steady,
        args.timeout,
        silenced.len()
    );
    println!(
        "heartbeats sent={sent} received_by_registry={received} lost={} dropped_by_registry={dropped}",
        sent as f64 - received
    );
    println!(
        "registry cpu={cpu_percent:.1}% of one core  rss={} KiB  peak_rss={} KiB",
        end_rss,
        peak_rss.max(end_rss)
    );
    if floor.is_some() {
        println!(
            "cpu per heartbeat: registry {:.2} us, bare subscriber (floor) {:.2} us, ratio {:.1} ({measured} heartbeats measured)",
            registry_cpu / measured * 1e6,
            floor_cpu / measured * 1e6,
            registry_cpu / floor_cpu.max(1e-9)
        );
    } else {
        println!(
            "cpu per heartbeat: registry {:.2} us ({measured} heartbeats measured; no floor run)",
            registry_cpu / measured * 1e6
        );
    }
    println!(
        "alive at end={alive} (expected {})",
        args.agents - silenced.len() + 1
    );
    println!("false_expiries={false_expiries}  missed_expiries={missed}");
    println!(
        "registration on the feed after each agent's first heartbeat: p50={:.1} ms p99={:.1} ms max={:.1} ms (n={}); whole fleet on the feed {} after the first heartbeat sent",
        measure::percentile(&registration_ms, 0.5),
        measure::percentile(&registration_ms, 0.99),
        registration_ms.last().copied().unwrap_or(f64::NAN),
        registration_ms.len(),
        fleet_registered.map_or_else(|| "never".to_string(), |s| format!("{s:.2} s")),
    );
    println!(
        "expiry published after the registry's deadline: p50={:.1} ms p99={:.1} ms (its histogram)",
        lateness_ms[0], lateness_ms[1]
    );
    println!(
        "expiry on the feed here after the last heartbeat sent + timeout: p50={:.1} ms p99={:.1} ms max={:.1} ms (n={})",
        measure::percentile(&latencies_ms, 0.5),
        measure::percentile(&latencies_ms, 0.99),
        latencies_ms.last().copied().unwrap_or(f64::NAN),
        latencies_ms.len()
    );
    drop(floor);
    drop(registry);
}
