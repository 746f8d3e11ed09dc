//! One seed's campaign, from starting the cluster to the verdicts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::checker::{self, Promises, Verdict};
use crate::cluster::{Cluster, Images};
use crate::observe::{self, Clock, note};
use crate::record::{Event, Record};
use crate::schedule::{QUIET, Schedule, Topology};

/// How long the cluster may take to show every agent alive.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// What one seed's campaign found.
#[derive(Debug)]
pub struct Outcome {
    /// The faults drawn.
    pub schedule: Schedule,
    /// Every promise, checked.
    pub verdicts: Vec<Verdict>,
    /// What happened, in time order.
    pub record: Record,
    /// Where the record and the containers' logs were written.
    pub artifacts: PathBuf,
}

/// Runs the campaign of `seed`: starts a cluster, strikes it for `span`,
/// waits for it to settle, removes it and checks the record.
pub async fn run(
    seed: u64,
    span: Duration,
    topology: &Topology,
    promises: &Promises,
    images: &Images,
    artifacts: &Path,
) -> anyhow::Result<Outcome> {
    let schedule = Schedule::generate(seed, topology, span);
    info!(seed, faults = schedule.faults.len(), "campaign starts");
    let project = format!("ocs-campaign-{}-{seed}", std::process::id());
    let cluster = Arc::new(Cluster::start(&project, topology, images).await?);
    let clock = Clock::start();
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = CancellationToken::new();
    let mut witnesses: Vec<_> = cluster
        .nats_ports
        .iter()
        .enumerate()
        .map(|(observer, port)| {
            observe::observe_feed(observer as u8, *port, clock, record.clone(), stop.clone())
        })
        .collect();
    witnesses.push(observe::sample_monitor(
        cluster.monitor_port,
        clock,
        record.clone(),
        stop.clone(),
    ));
    let artifacts = artifacts.join(format!("seed-{seed}"));
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("create {}", artifacts.display()))?;

    let ready = tokio::time::timeout(READY_WITHIN, async {
        while !checker::everyone_alive(
            &record.lock().clone().sorted(),
            topology,
            topology.nats_nodes,
        ) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if ready.is_err() {
        cluster.save_logs(&artifacts).await;
        stop.cancel();
        bail!(
            "seed {seed}: not every agent was alive on every NATS server and on the monitor within {READY_WITHIN:?}; logs in {}",
            artifacts.display()
        );
    }
    note(&record, clock, Event::Ready);
    let offset = clock.now();
    crate::nemesis::run(
        &schedule,
        cluster.clone(),
        topology,
        clock,
        record.clone(),
        offset,
    )
    .await;
    // The last quiet period is checked too.
    let end = offset + schedule.ends_at() + QUIET.1;
    let left = end - clock.now();
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left)).await;
    }
    note(&record, clock, Event::End);
    stop.cancel();
    for witness in witnesses {
        let _ = witness.await;
    }
    cluster.save_logs(&artifacts).await;
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.remove().await;
    }
    let record = std::mem::take(&mut *record.lock()).sorted();
    record
        .write_jsonl(&artifacts.join("record.jsonl"))
        .context("write the record")?;
    let verdicts = checker::check(&record, topology, promises);
    Ok(Outcome {
        schedule,
        verdicts,
        record,
        artifacts,
    })
}
