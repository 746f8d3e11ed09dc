//! The registry's memory under address churn: rounds of many one-off
//! addresses (a spoofing script, a fleet renamed), each tracked, expired and
//! forgotten, against a real nats-server and a real `ocs-registry` process.
//!
//! ```text
//! cargo bench -p ocs-registry --bench memory_churn -- --addresses 50000 --rounds 3
//! ```
//!
//! Reports the registry's resident set (`VmRSS`) before, its peak during
//! each round (sampled every 50 ms) and at rest after each round, once every
//! address was forgotten. Every wait is bounded; the registry and the server
//! stop with the benchmark.

use std::time::{Duration, Instant};

use ocs_protocol::codec;
use ocs_testkit::{NatsServer, measure};

/// The benchmark's settings.
#[derive(clap::Parser)]
struct Args {
    /// New addresses per round.
    #[arg(long, default_value_t = 50_000)]
    addresses: usize,
    /// Rounds of track, expire, forget.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn rss_mib(pid: u32) -> f64 {
    measure::resident_kib(pid) as f64 / 1024.0
}

/// Polls until the registry's `name` reaches `target`, sampling the peak
/// resident set meanwhile; panics after `limit`.
async fn until_metric(
    port: u16,
    pid: u32,
    name: &str,
    target: f64,
    limit: Duration,
    peak: &mut f64,
) {
    let started = Instant::now();
    loop {
        *peak = peak.max(rss_mib(pid));
        if measure::metric(port, name)
            .await
            .is_some_and(|value| value >= target)
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{name} did not reach {target} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let nats = NatsServer::start();
    let port = ocs_testkit::free_port();
    let registry = ocs_testkit::launch::registry(
        &nats.url(),
        port,
        &[
            "--agent-timeout",
            "1",
            "--forget-after",
            "2",
            "--max-agents",
            "1000000",
            "--max-heartbeat-rate",
            "1000",
        ],
    );
    let pid = registry.pid();
    let client = async_nats::ConnectOptions::new()
        .client_capacity(65_536)
        .connect(nats.url())
        .await
        .unwrap();
    let mut base = 0.0;
    until_metric(
        port,
        pid,
        "ocs_registry_nats_connected",
        1.0,
        Duration::from_secs(20),
        &mut base,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = rss_mib(pid);
    println!(
        "registry memory under churn: {} one-off addresses per round, {} rounds",
        args.addresses, args.rounds
    );
    println!("| Round | Peak RSS (MiB) | RSS at rest after forgetting (MiB) |");
    println!("|---|---|---|");
    println!("| before | {start:.1} | {start:.1} |");
    let mut forgotten = 0.0;
    for round in 1..=args.rounds {
        let mut peak = rss_mib(pid);
        for i in 0..args.addresses {
            let address = format!("observatory.churn{round}x{i}");
            let mut beat = ocs_testkit::heartbeat(&address);
            beat.host = "churn-host".into();
            client
                .publish(
                    format!("{address}.feeds.heartbeat"),
                    codec::encode(&beat).into(),
                )
                .await
                .unwrap();
            if i % 1000 == 0 {
                peak = peak.max(rss_mib(pid));
            }
        }
        client.flush().await.unwrap();
        forgotten += args.addresses as f64;
        until_metric(
            port,
            pid,
            "ocs_registry_forgotten_agents_total",
            forgotten,
            Duration::from_secs(120),
            &mut peak,
        )
        .await;
        // Let the last feed messages and KV writes finish.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(15) {
            peak = peak.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("| {round} | {peak:.1} | {:.1} |", rss_mib(pid));
    }
    drop(registry);
}
