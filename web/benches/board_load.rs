//! The board under load, in a real headless Chromium: N simulated agents
//! (default 10,000) heartbeating at 1 Hz through a real registry, of which
//! `--changes` a second change an op code. Measures how soon the page opens
//! and becomes interactive, how late a change shows in it, and the page's
//! long tasks while the changes pour in; beside it, as the reference of the
//! same run, how late the change reaches a bare subscriber of the feed.
//!
//!   cargo build --release --bins && cargo bench -p ocs-web --bench board_load -- [--agents N] [--changes N] [--seconds N]
//!
//! Every wait is bounded; every process it starts ends with it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ocs_protocol::{codec, proto};
use ocs_testkit::measure::percentile;
use ocs_testkit::{NatsServer, TempDir, launch};
use parking_lot::Mutex;
use prost::Message;

struct Settings {
    agents: usize,
    changes: usize,
    seconds: u64,
}

fn settings() -> Settings {
    let mut settings = Settings {
        agents: 10_000,
        changes: 1_000,
        seconds: 20,
    };
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .map(|value| {
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    if let Some(agents) = value("--agents") {
        settings.agents = agents;
    }
    if let Some(changes) = value("--changes") {
        settings.changes = changes;
    }
    if let Some(seconds) = value("--seconds") {
        settings.seconds = seconds as u64;
    }
    settings
}

fn address(index: usize) -> String {
    format!("observatory.load{index:05}")
}

/// The simulated fleet: each agent's incarnation, sequence and op code.
struct Fleet {
    incarnations: Vec<String>,
    seqs: Vec<u64>,
    codes: Vec<i32>,
}

impl Fleet {
    fn beat(&mut self, index: usize) -> (String, Vec<u8>) {
        self.seqs[index] += 1;
        let mut heartbeat = ocs_testkit::heartbeat(&address(index));
        heartbeat.agent_class = format!("LoadAgent{}", index % 5);
        heartbeat.incarnation = self.incarnations[index].clone();
        heartbeat.seq = self.seqs[index];
        heartbeat.host = format!("host{}", index % 50);
        heartbeat.op_codes[0].op_code = self.codes[index];
        (
            format!("{}.feeds.heartbeat", address(index)),
            heartbeat.encode_to_vec(),
        )
    }
}

async fn run(settings: Settings) {
    let nats = NatsServer::start();
    let url = nats.url();
    let _registry = launch::registry(&url, 0, &["--wait-time", "30"]);
    let dir = TempDir::new("ocs-web-bench");
    let users = dir.path().join("users");
    common::users_file(&users, "bench", "bench-viewer");
    let (_web, board) = common::web(&url, &users, &[]);
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(&url)
        .await
        .expect("connect to nats");

    let fleet = Arc::new(Mutex::new(Fleet {
        incarnations: (0..settings.agents)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect(),
        seqs: vec![0; settings.agents],
        codes: vec![3; settings.agents],
    }));
    // Every agent beats once a second, spread over 100 slots; `changes` a
    // second of the first half flip acq between running and succeeded. The
    // second half changes only when sampled below, so a sample is always a
    // change the registry has not seen.
    let generator = {
        let fleet = fleet.clone();
        let client = client.clone();
        let agents = settings.agents;
        let changes_per_slot = settings.changes.div_ceil(100);
        tokio::spawn(async move {
            let mut slot = 0usize;
            let mut next_change = 0usize;
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            loop {
                ticks.tick().await;
                let beats: Vec<(String, Vec<u8>)> = {
                    let mut fleet = fleet.lock();
                    for _ in 0..changes_per_slot {
                        let index = next_change % (agents / 2);
                        fleet.codes[index] = if fleet.codes[index] == 3 { 5 } else { 3 };
                        next_change += 1;
                    }
                    (slot..agents)
                        .step_by(100)
                        .map(|index| fleet.beat(index))
                        .collect()
                };
                for (subject, payload) in beats {
                    client
                        .publish(subject, payload.into())
                        .await
                        .expect("publish");
                }
                slot = (slot + 1) % 100;
            }
        })
    };

    let browser = common::Browser::start().await;
    browser.log_in(&board, "alice", "bench").await;
    browser
        .until(
            "the board to list the whole fleet",
            Duration::from_secs(60),
            &format!("agents.size >= {}", settings.agents + 1),
        )
        .await;

    // Opening: from navigation to the whole fleet counted and the filter answering.
    let started = Instant::now();
    browser.client.goto(&board).await.unwrap();
    browser
        .until(
            "the reopened board to count the fleet",
            Duration::from_secs(30),
            &format!("document.getElementById('count-all') && document.getElementById('count-all').textContent.startsWith('{}')", settings.agents + 1),
        )
        .await;
    let listed = started.elapsed();
    browser
        .js("const f = document.getElementById('filter'); f.value = 'load00042'; f.dispatchEvent(new Event('input')); return true")
        .await;
    browser
        .until(
            "the filter to answer",
            Duration::from_secs(30),
            "document.querySelectorAll('#spacer .row').length === 1",
        )
        .await;
    let interactive = started.elapsed();
    browser
        .js("const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); \
             window.longTasks = []; new PerformanceObserver((list) => window.longTasks.push(...list.getEntries().map((e) => e.duration))).observe({type: 'longtask', buffered: false}); return true")
        .await;

    // Keeping up: one agent at a time gets a change, published at once; how
    // long until the bare subscriber sees it on the feed, and the page.
    let mut feed = client
        .subscribe("observatory.registry.feeds.agent_operations")
        .await
        .unwrap();
    // When each (agent, op code) was first seen on the feed.
    let feed_seen: Arc<Mutex<HashMap<(String, i32), Instant>>> = Arc::default();
    let recorder = {
        let feed_seen = feed_seen.clone();
        tokio::spawn(async move {
            while let Some(message) = feed.next().await {
                let Ok(decoded) =
                    codec::decode::<proto::AgentOperations>(&message.payload, 64 << 20)
                else {
                    continue;
                };
                let now = Instant::now();
                let mut seen = feed_seen.lock();
                for record in decoded.agents {
                    if let Some(op) = record.op_codes.first() {
                        seen.entry((record.agent_address, op.op_code))
                            .or_insert(now);
                    }
                }
            }
        })
    };
    let mut page_lags = Vec::new();
    let mut feed_lags = Vec::new();
    let window = Instant::now();
    let mut sample = 0usize;
    while window.elapsed() < Duration::from_secs(settings.seconds) {
        let index = settings.agents / 2 + (sample * 7) % (settings.agents / 2);
        sample += 1;
        let (subject, payload, code) = {
            let mut fleet = fleet.lock();
            fleet.codes[index] = if fleet.codes[index] == 3 { 6 } else { 3 };
            let code = fleet.codes[index];
            let (subject, payload) = fleet.beat(index);
            (subject, payload, code)
        };
        let target = address(index);
        feed_seen.lock().remove(&(target.clone(), code));
        let sent = Instant::now();
        client.publish(subject, payload.into()).await.unwrap();
        browser
            .until(
                "a change to show in the page",
                Duration::from_secs(10),
                &format!("(agents.get('{target}') || {{operations: [{{}}]}}).operations[0].code === {code}"),
            )
            .await;
        page_lags.push(sent.elapsed().as_secs_f64() * 1000.0);
        let feed_at = common::eventually("the change on the feed", Duration::from_secs(5), || {
            let seen = feed_seen.lock().get(&(target.clone(), code)).copied();
            async move { seen }
        })
        .await;
        feed_lags.push(feed_at.duration_since(sent).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let long_tasks = browser.js("return window.longTasks").await;
    let long_tasks: Vec<f64> = long_tasks
        .as_array()
        .map(|tasks| tasks.iter().filter_map(|task| task.as_f64()).collect())
        .unwrap_or_default();
    recorder.abort();
    generator.abort();
    browser.client.clone().close().await.ok();

    page_lags.sort_by(f64::total_cmp);
    feed_lags.sort_by(f64::total_cmp);
    println!(
        "agents {}, changes {}/s, {} samples over {} s",
        settings.agents,
        settings.changes,
        page_lags.len(),
        settings.seconds
    );
    println!(
        "open: whole fleet counted {:.0} ms, filter answered {:.0} ms after navigation",
        listed.as_secs_f64() * 1000.0,
        interactive.as_secs_f64() * 1000.0
    );
    println!(
        "change to page: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; change to feed (reference, bare subscriber): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&page_lags, 0.5),
        percentile(&page_lags, 0.99),
        page_lags.last().copied().unwrap_or(0.0),
        percentile(&feed_lags, 0.5),
        percentile(&feed_lags, 0.99),
    );
    println!(
        "page long tasks (over 50 ms) during the window: {}, total {:.0} ms, longest {:.0} ms",
        long_tasks.len(),
        long_tasks.iter().fold(0.0, |total, task| total + task),
        long_tasks.iter().copied().fold(0.0, f64::max)
    );
}

fn main() {
    let settings = settings();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            // On Ctrl-C or SIGTERM the run is dropped, and with it every
            // process it started (their drops stop them).
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                finished = tokio::time::timeout(Duration::from_secs(600), run(settings)) => {
                    finished.expect("the benchmark did not finish within 10 minutes");
                }
                _ = tokio::signal::ctrl_c() => eprintln!("interrupted"),
                _ = terminate.recv() => eprintln!("terminated"),
            }
        });
}
