//! Benchmarks of the operation monitor.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p ocs-operation-monitor --bench scrape -- --agents 1000,20000 --changes 200
//! cargo bench -p ocs-operation-monitor --bench scrape -- --agents 100000 --series per-operation,per-agent,aggregate --changes 20
//! ```
//!
//! 1. Scrape: a fleet of N agents with five operations each, fed through the
//!    real feed path, then `/metrics` fetched over HTTP from the real router
//!    behind the services' endpoint layers, plain and with gzip; reports time
//!    per scrape, body sizes and the process's memory growth, for each
//!    `--series` detail asked.
//! 2. End to end: a real nats-server, `ocs-registry` and `ocs-fake-data-agent`
//!    processes and the monitor; times from a `start` request to the new op
//!    code being visible on `/metrics`, polled every 2 ms. Every wait is
//!    bounded and fails naming what it waited for; the processes are stopped
//!    when it ends or fails, and the registry and agent also when it is
//!    killed (they stop with their parent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocs_agent::OcsClient;
use ocs_fleet::{Fleet, FleetLimits};
use ocs_operation_monitor::metrics::{MonitorMetrics, SeriesDetail};
use ocs_protocol::codec::to_msgpack;
use ocs_protocol::{Action, AddressRoot, AgentAddress, InstanceId, OpName, proto};
use ocs_testkit::{NatsServer, http_get, measure};
use parking_lot::Mutex;

fn record(i: usize) -> proto::AgentRecord {
    let ops = [
        ("acq", 3, "process"),
        ("count", 1, "task"),
        ("delay_task", 5, "task"),
        ("set_heartbeat", 1, "task"),
        ("calibrate", 6, "task"),
    ];
    proto::AgentRecord {
        agent_address: format!("observatory.agent{i:06}"),
        agent_class: "FakeDataAgent".into(),
        state: proto::AgentState::Alive as i32,
        last_updated_unix_ms: 1_795_000_000_000,
        op_codes: ops
            .iter()
            .map(|(name, code, kind)| proto::OperationCode {
                op_name: (*name).into(),
                op_code: *code,
                op_type: (*kind).into(),
            })
            .collect(),
        incarnation: uuid::Uuid::new_v4().to_string(),
        host: format!("host{:03}", i % 100),
        pid: 1000 + i as u32,
        agent_version: "0.1.0".into(),
        interval_ms: 1000,
        incarnations_seen: 1,
        ..Default::default()
    }
}

/// A GET of `/metrics` that accepts gzip: (milliseconds to the last byte, bytes on the wire).
async fn scrape_gzip(address: SocketAddr) -> (f64, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let head = String::from_utf8_lossy(&response[..response.len().min(300)]).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    (start.elapsed().as_secs_f64() * 1000.0, response.len())
}

async fn scrape_bench(agents: usize, detail: SeriesDetail) {
    let registry = AgentAddress::new(
        &AddressRoot::default(),
        &InstanceId::new("registry").unwrap(),
    );
    let before = measure::own_resident_kib();
    let fleet = Arc::new(Mutex::new(Fleet::new(
        &registry,
        FleetLimits {
            max_agents: 1_000_000,
            max_operations: 256,
        },
    )));
    let records: Vec<proto::AgentRecord> = (0..agents).map(record).collect();
    for chunk in records.chunks(1000) {
        let message = proto::AgentOperations {
            protocol_version: 1,
            registry_address: registry.to_string(),
            agents: chunk.to_vec(),
            ..Default::default()
        };
        fleet.lock().apply(&message, tokio::time::Instant::now());
    }
    drop(records);
    let metrics = Arc::new(MonitorMetrics::new(fleet.clone(), detail));
    let router = ocs_operation_monitor::http::router(metrics, fleet, Duration::from_secs(95));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(ocs_service::endpoints::serve(
        listener,
        router,
        tokio_util::sync::CancellationToken::new(),
    ));
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let start = Instant::now();
        let (status, body) = http_get(address, "/metrics").await;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200);
        size = body.len();
    }
    times.sort_by(f64::total_cmp);
    let mut gzip_times = Vec::new();
    let mut gzip_size = 0;
    for _ in 0..20 {
        let (ms, bytes) = scrape_gzip(address).await;
        gzip_times.push(ms);
        gzip_size = bytes;
    }
    gzip_times.sort_by(f64::total_cmp);
    let grown = measure::own_resident_kib().saturating_sub(before);
    let series = size_lines(&http_get(address, "/metrics").await.1);
    println!(
        "scrape agents={agents} ops/agent=5 --series {detail:?} ({series} samples): plain p50={:.1} ms p99={:.1} ms body={:.1} MiB; gzip p50={:.1} ms p99={:.1} ms body={:.2} MiB; rss_growth={:.1} MiB",
        measure::percentile(&times, 0.5),
        measure::percentile(&times, 0.99),
        size as f64 / 1048576.0,
        measure::percentile(&gzip_times, 0.5),
        measure::percentile(&gzip_times, 0.99),
        gzip_size as f64 / 1048576.0,
        grown as f64 / 1024.0
    );
}

/// Samples in an exposition.
fn size_lines(body: &str) -> usize {
    body.lines().filter(|line| !line.starts_with('#')).count()
}

async fn latency_bench(changes: usize) {
    let nats = NatsServer::start();
    let _registry = ocs_testkit::launch::registry(&nats.url(), 0, &[]);
    let _agent = ocs_testkit::idle_faker(&nats.url(), "faker");

    let config = <ocs_operation_monitor::Config as clap::Parser>::parse_from([
        "m",
        "--nats-url",
        &nats.url(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let started =
        ocs_service::skeleton::start_within(&config, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    let monitor = started.listener.as_ref().unwrap().local_addr().unwrap();
    tokio::spawn(ocs_operation_monitor::run(config, started));

    let client = OcsClient::new(
        async_nats::connect(nats.url()).await.unwrap(),
        AddressRoot::default(),
    );
    let faker = InstanceId::new("faker").unwrap();
    let delay_task = OpName::new("delay_task").unwrap();
    let series = |code: i32| format!("operation=\"delay_task\",op_type=\"task\"}} {code}");
    shows(
        monitor,
        "the faker on /metrics",
        Duration::from_secs(20),
        |body| body.contains(&series(1)),
    )
    .await;
    let mut latencies = Vec::new();
    for change in 0..changes {
        // Long enough that RUNNING is on /metrics for many polls: a task
        // that ends between two polls would never be seen running.
        let params = to_msgpack(&serde_json::json!({"delay": 0.5})).unwrap();
        let start = Instant::now();
        client
            .operation(
                &faker,
                &delay_task,
                Action::Start,
                params,
                None,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        shows(
            monitor,
            &format!("change {change}: delay_task starting or running"),
            Duration::from_secs(10),
            |body| body.contains(&series(2)) || body.contains(&series(3)),
        )
        .await;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        client
            .operation(
                &faker,
                &delay_task,
                Action::Wait,
                Vec::new(),
                Some(5.0),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        shows(
            monitor,
            &format!("change {change}: delay_task succeeded"),
            Duration::from_secs(10),
            |body| body.contains(&series(5)),
        )
        .await;
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "end-to-end start request -> op code on /metrics, n={changes}: p50={:.1} ms p99={:.1} ms max={:.1} ms",
        measure::percentile(&latencies, 0.5),
        measure::percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

/// Polls the monitor's `/metrics` every 2 ms until `done` holds, for at most
/// `limit`; fails loudly, naming `what`, rather than hang.
async fn shows(monitor: SocketAddr, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let body = tokio::time::timeout(Duration::from_secs(5), http_get(monitor, "/metrics"))
            .await
            .unwrap_or_else(|_| panic!("{what}: /metrics did not answer within 5 s"))
            .1;
        if done(&body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on /metrics within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() {
    let mut sizes = vec![1000, 20000];
    let mut changes = 200;
    let mut details = vec![SeriesDetail::PerOperation];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--agents" => {
                sizes = args
                    .next()
                    .expect("--agents N,M")
                    .split(',')
                    .map(|n| n.parse().expect("number"))
                    .collect()
            }
            "--series" => {
                details = args
                    .next()
                    .expect("--series per-operation,per-agent,aggregate")
                    .split(',')
                    .map(|name| {
                        <SeriesDetail as clap::ValueEnum>::from_str(name, false)
                            .expect("per-operation, per-agent or aggregate")
                    })
                    .collect()
            }
            "--changes" => changes = args.next().expect("--changes N").parse().expect("number"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    for agents in sizes {
        for detail in &details {
            scrape_bench(agents, *detail).await;
        }
    }
    latency_bench(changes).await;
}
