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
//! expiries and the expiry-detection latency (feed arrival minus the deadline,
//! last heartbeat + timeout).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES};
use ocs_protocol::proto;
use ocs_testkit::NatsServer;

struct Args {
    agents: usize,
    steady: u64,
    silence: usize,
    timeout: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
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
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args.silence = args.silence.min(args.agents);
    args
}

/// `(utime + stime)` in clock ticks and resident set in KiB, from /proc.
fn cpu_and_rss(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

fn clock_ticks_per_second() -> f64 {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

async fn metric(port: u16, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metric_or_zero(port: u16, name: &str) -> f64 {
    if tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        return 0.0;
    }
    metric(port, name).await
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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
    let nats = NatsServer::start();
    let http_port = ocs_testkit::free_port();
    let timeout = args.timeout.to_string();
    let registry = ocs_testkit::launch::registry(
        &nats.url(),
        http_port,
        &["--agent-timeout", &timeout, "--max-agents", "1000000"],
    );
    let pid = registry.pid();
    let client = async_nats::ConnectOptions::new()
        .client_capacity(65_536)
        .connect(nats.url())
        .await
        .unwrap();

    // Feed recorder: when each address was first reported expired.
    let expired_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut feed = client
        .subscribe("observatory.registry.feeds.agent_operations")
        .await
        .unwrap();
    let sink = expired_at.clone();
    tokio::spawn(async move {
        while let Some(message) = feed.next().await {
            let now = Instant::now();
            let Ok(decoded) =
                codec::decode::<proto::AgentOperations>(&message.payload, MAX_MESSAGE_BYTES)
            else {
                continue;
            };
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
    while metric_or_zero(http_port, "ocs_registry_nats_connected").await < 1.0 {
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
    let silenced: Vec<usize> = (0..args.silence)
        .map(|k| k * args.agents / args.silence.max(1))
        .collect();
    let mut last_sent: HashMap<usize, Instant> = HashMap::new();
    let mut silent = vec![false; args.agents];

    // 1 Hz per agent, spread over 100 slots of 10 ms.
    const SLOTS: usize = 100;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let warmup = Duration::from_secs(5);
    let steady = Duration::from_secs(args.steady);
    let tail = Duration::from_secs_f64(args.timeout + 3.0);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut slot = 0usize;
    let mut baseline: Option<(Instant, (u64, u64), f64)> = None;
    let mut peak_rss = 0u64;
    let mut silence_at: Option<Instant> = None;
    loop {
        ticks.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= warmup && baseline.is_none() {
            let received = metric(http_port, "ocs_registry_heartbeats_received_total").await;
            baseline = Some((Instant::now(), cpu_and_rss(pid), received));
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
            last_sent.insert(index, Instant::now());
        }
        slot = (slot + 1) % SLOTS;
        if slot == 0 {
            peak_rss = peak_rss.max(cpu_and_rss(pid).1);
        }
    }
    client.flush().await.unwrap();
    // Let the registry finish what is in flight before reading its counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_at, (base_ticks, _), _) = baseline.expect("warm-up done");
    let (end_ticks, end_rss) = cpu_and_rss(pid);
    let wall = base_at.elapsed().as_secs_f64();
    let cpu_percent = (end_ticks - base_ticks) as f64 / clock_ticks_per_second() / wall * 100.0;
    let received = metric(http_port, "ocs_registry_heartbeats_received_total").await
        - own_beats.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let dropped = metric(http_port, "ocs_registry_heartbeats_dropped_total").await;
    let alive = metric(http_port, "ocs_registry_agents{state=\"alive\"}").await;

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
    println!(
        "alive at end={alive} (expected {})",
        args.agents - silenced.len() + 1
    );
    println!("false_expiries={false_expiries}  missed_expiries={missed}");
    println!(
        "expiry detection latency after the deadline: p50={:.1} ms p99={:.1} ms max={:.1} ms (n={})",
        percentile(&latencies_ms, 0.5),
        percentile(&latencies_ms, 0.99),
        latencies_ms.last().copied().unwrap_or(f64::NAN),
        latencies_ms.len()
    );
    drop(registry);
}
