//! `registry main status` at fleet sizes beyond one message: the complete
//! table (read in pages and reassembled, as `ocs` does), the summary, a
//! filtered query, and the registry's memory after many calls.
//!
//! ```text
//! cargo bench -p ocs-registry --bench status_query -- --agents 1000,20000,100000 --calls 200
//! ```
//!
//! Each size runs its own nats-server (default 1 MiB `max_payload`) and
//! `ocs-registry` process. The fleet beats once per agent with a timeout of an
//! hour, so the figures are the queries' own, without heartbeat load. Times
//! are request to last byte, measured in this client.

use std::time::{Duration, Instant};

use ocs_agent::OcsClient;
use ocs_protocol::{AddressRoot, AgentAddress, InstanceId, codec, proto, subject};
use ocs_testkit::{NatsServer, measure};

/// The benchmark's settings.
#[derive(clap::Parser)]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,20000")]
    agents: Vec<usize>,
    /// Calls of each kind (the complete table at most 20 times past 50,000 agents).
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const REGISTRY: &str = "registry";

/// Times `calls` runs of `call`; sorted milliseconds.
async fn timed<F, Fut, T>(calls: usize, mut call: F) -> (Vec<f64>, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut times = Vec::with_capacity(calls);
    let mut last = None;
    for _ in 0..calls {
        let started = Instant::now();
        last = Some(call().await);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times, last.expect("at least one call"))
}

fn p50_p99(times: &[f64]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        measure::percentile(times, 0.5),
        measure::percentile(times, 0.99)
    )
}

async fn fleet_size(agents: usize, calls: usize) {
    let nats = NatsServer::start();
    let http_port = ocs_testkit::free_port();
    let registry = ocs_testkit::launch::registry(
        &nats.url(),
        http_port,
        &[
            "--agent-timeout",
            "3600",
            "--max-agents",
            "1000000",
            "--hold-min-agents",
            "0",
        ],
    );
    let pid = registry.pid();
    let ready_by = Instant::now() + Duration::from_secs(30);
    while measure::metric(http_port, "ocs_registry_nats_connected").await < Some(1.0) {
        assert!(Instant::now() < ready_by, "registry not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sender = async_nats::connect(nats.url()).await.unwrap();
    let root = AddressRoot::default();
    for index in 0..agents {
        let address =
            AgentAddress::new(&root, &InstanceId::new(format!("agent{index:06}")).unwrap());
        let mut beat = ocs_testkit::heartbeat(address.as_str());
        beat.agent_class = if index % 10 == 0 {
            "Lakeshore372Agent"
        } else {
            "FakeDataAgent"
        }
        .into();
        beat.host = format!("daq{}", index % 50);
        sender
            .publish(subject::heartbeat(&address), codec::encode(&beat).into())
            .await
            .unwrap();
    }
    sender.flush().await.unwrap();
    let known_by = Instant::now() + Duration::from_secs(120);
    while measure::metric(http_port, "ocs_registry_agents{state=\"alive\"}").await
        < Some((agents + 1) as f64)
    {
        assert!(
            Instant::now() < known_by,
            "the registry did not learn {agents} agents within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resting_kib = measure::resident_kib(pid);

    let nats_client = ocs_service::connect::connect_service(&nats.url(), "status-bench")
        .await
        .unwrap();
    let client = OcsClient::new(nats_client, root);
    let registry_id = InstanceId::new(REGISTRY).unwrap();
    let timeout = Duration::from_secs(10);

    let raw = client
        .operation(
            &registry_id,
            &ocs_protocol::OpName::new("main").unwrap(),
            ocs_protocol::Action::Status,
            Vec::new(),
            None,
            timeout,
        )
        .await
        .expect("status answers");
    let raw_bytes = codec::encode(&raw).len();

    let table_calls = if agents > 50_000 {
        calls.min(20)
    } else {
        calls
    };
    let (table_times, reply) = timed(table_calls, || async {
        client
            .registry_status(&registry_id, None, timeout)
            .await
            .expect("complete status")
    })
    .await;
    let data: serde_json::Value =
        codec::from_msgpack(&reply.session.expect("a session").data).unwrap();
    assert_eq!(
        data.as_object().map_or(0, serde_json::Map::len),
        agents + 1,
        "every record reassembled"
    );
    let after_table_kib = measure::resident_kib(pid);

    let (pages_times, found) = timed(table_calls, || async {
        client
            .registry_records(&registry_id, proto::RecordsQuery::default(), timeout)
            .await
            .expect("records")
    })
    .await;
    assert_eq!(found.records.len(), agents + 1);

    let (summary_times, summary) = timed(calls, || async {
        let query = proto::RecordsQuery {
            summary_only: true,
            ..Default::default()
        };
        client
            .registry_records(&registry_id, query, timeout)
            .await
            .expect("summary")
    })
    .await;
    let summary = summary.summary.expect("a summary");
    assert_eq!(summary.agents as usize, agents + 1);
    let summary_bytes = codec::encode(&proto::RecordsPage {
        protocol_version: 1,
        summary: Some(summary),
        ..Default::default()
    })
    .len();

    let (filtered_times, lakeshores) = timed(calls, || async {
        let query = proto::RecordsQuery {
            classes: vec!["Lakeshore372Agent".into()],
            states: vec!["alive".into()],
            ..Default::default()
        };
        client
            .registry_records(&registry_id, query, timeout)
            .await
            .expect("filtered")
    })
    .await;
    assert_eq!(lakeshores.records.len(), agents.div_ceil(10));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_rest_kib = measure::resident_kib(pid);
    println!("agents={agents} (+ the registry itself)");
    println!("  status reply on the wire: {raw_bytes} bytes");
    println!(
        "  complete table via registry_status (n={table_calls}): {}",
        p50_p99(&table_times)
    );
    println!(
        "  complete table as records pages only (n={table_calls}): {}",
        p50_p99(&pages_times)
    );
    println!(
        "  summary (n={calls}, {summary_bytes} bytes): {}",
        p50_p99(&summary_times)
    );
    println!(
        "  one class alive, {} records (n={calls}): {}",
        lakeshores.records.len(),
        p50_p99(&filtered_times)
    );
    println!(
        "  registry rss: resting {resting_kib} KiB, after the table calls {after_table_kib} KiB, after all calls and 5 s {after_rest_kib} KiB ({:+.1} %)",
        (after_rest_kib as f64 / resting_kib as f64 - 1.0) * 100.0
    );
    drop(registry);
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    for agents in args.agents {
        fleet_size(agents, args.calls).await;
    }
}
