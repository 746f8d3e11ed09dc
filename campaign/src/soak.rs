//! The soak: a large fleet churning for an hour, and whether the long-lived
//! services' memory stays flat. Churn: agents killed (a new incarnation comes
//! back), agents stopped (they leave, and come back), host managers
//! restarted with every agent they run. The registry replicas, the monitor and
//! the first host's manager (never restarted, so its history is unbroken) are
//! sampled from outside, once every agent has exited once (the state each
//! exit leaves behind for good is then in place, and only growth with time
//! remains to be seen).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use tracing::{info, warn};

use crate::cluster::{Cluster, Images};
use crate::observe::{Clock, http_get};
use crate::schedule::{Target, Topology};

/// One change to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Churn {
    /// SIGKILL these agents (by index on the host).
    Kill(u8, Vec<u8>),
    /// SIGTERM them: they leave, and the host manager starts them again.
    Stop(u8, Vec<u8>),
    /// Restart the host: its manager and every agent it runs leave and return.
    RestartHost(u8),
}

/// The churn of a soak: one change every `every`, drawn from `seed`. Host 1
/// is never restarted, so that its manager's memory has one history.
pub fn churn_plan(
    seed: u64,
    topology: &Topology,
    span: Duration,
    every: Duration,
) -> Vec<(f64, Churn)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut plan = Vec::new();
    let mut t = every.as_secs_f64();
    while t < span.as_secs_f64() {
        let host = rng.u8(1..=topology.hosts);
        let mut agents: Vec<u8> = (1..=topology.agents_per_host).collect();
        rng.shuffle(&mut agents);
        agents.truncate(rng.usize(1..=5.min(agents.len())));
        let roll = rng.f64();
        let churn = if roll < 0.5 {
            Churn::Kill(host, agents)
        } else if roll < 0.9 || host == 1 || topology.hosts == 1 {
            Churn::Stop(host, agents)
        } else {
            Churn::RestartHost(host)
        };
        plan.push((t, churn));
        t += every.as_secs_f64();
    }
    plan
}

/// One memory reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the soak started.
    pub at: f64,
    /// "registry1", "monitor", "host manager 1"...
    pub component: String,
    /// Resident set, KiB.
    pub kib: u64,
}

/// How a component's memory moved between the start and the end of the soak.
#[derive(Debug, Clone, PartialEq)]
pub struct Flatness {
    /// The component.
    pub component: String,
    /// Median resident set just after the warm-up, KiB.
    pub early_kib: u64,
    /// Median resident set at the end, KiB.
    pub late_kib: u64,
    /// Largest reading after the warm-up, KiB.
    pub peak_kib: u64,
    /// `late / early - 1`.
    pub change: f64,
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// Each component's early and late median: the early window is the tenth of
/// the soak after `warm_up`, the late one its last tenth.
pub fn flatness(samples: &[Sample], warm_up: f64, end: f64) -> Vec<Flatness> {
    let window = ((end - warm_up) / 10.0).max(1.0);
    let mut by_component: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for sample in samples.iter().filter(|sample| sample.at >= warm_up) {
        by_component
            .entry(&sample.component)
            .or_default()
            .push(sample);
    }
    by_component
        .into_iter()
        .filter_map(|(component, samples)| {
            let within = |from: f64, to: f64| {
                samples
                    .iter()
                    .filter(|sample| sample.at >= from && sample.at <= to)
                    .map(|sample| sample.kib)
                    .collect::<Vec<_>>()
            };
            let early = median(within(warm_up, warm_up + window))?;
            let late = median(within(end - window, end))?;
            Some(Flatness {
                component: component.to_owned(),
                early_kib: early,
                late_kib: late,
                peak_kib: samples.iter().map(|sample| sample.kib).max().unwrap_or(0),
                change: late as f64 / early.max(1) as f64 - 1.0,
            })
        })
        .collect()
}

/// What a soak measured.
#[derive(Debug)]
pub struct SoakOutcome {
    /// Memory readings.
    pub samples: Vec<Sample>,
    /// Each component's movement.
    pub flatness: Vec<Flatness>,
    /// Churn events carried out, by kind.
    pub churned: BTreeMap<&'static str, usize>,
    /// Churn events that failed.
    pub failed: usize,
    /// Agents the registry counted alive at the end, of how many.
    pub alive_at_end: (u64, usize),
}

/// The registry's `ocs_registry_agents{state="alive"}` through its replica's `/metrics`.
async fn alive_count(port: u16) -> Option<u64> {
    let body = http_get(port, "/metrics", Duration::from_secs(2))
        .await
        .ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix("ocs_registry_agents{state=\"alive\"} "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// Whether the registry behind `port` counts `everyone` alive within `timeout`.
async fn all_alive_within(port: u16, everyone: usize, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        while alive_count(port).await.unwrap_or(0) < everyone as u64 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await
    .is_ok()
}

/// Kills every agent once, ten at a time per host each second, before any
/// memory is sampled. A host manager keeps a crash report (at most
/// `stderr_tail::BYTES`) for each instance that has ever exited unexpectedly:
/// state bounded by the fleet, not growing with time. Without this, the
/// soak's churn, which reaches each instance for the first time over the
/// hour, would show that state filling in as growth, and hide whether
/// anything grows with time.
async fn every_agent_exits_once(cluster: &Cluster, topology: &Topology) -> anyhow::Result<()> {
    let indices: Vec<u8> = (1..=topology.agents_per_host).collect();
    let mut killed = 0;
    for batch in indices.chunks(10) {
        for host in 1..=topology.hosts {
            let ids: Vec<String> = batch
                .iter()
                .map(|index| Topology::instance_id(host, *index))
                .collect();
            killed += cluster.signal_agents(host, &ids, "KILL").await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fleet = usize::from(topology.hosts) * usize::from(topology.agents_per_host);
    if killed < fleet {
        bail!("only {killed} of {fleet} agents could be killed before the soak");
    }
    info!(
        killed,
        "every agent killed once: each host manager holds its crash reports"
    );
    Ok(())
}

/// Runs the soak: starts the cluster, waits for every agent, kills each once
/// and waits for it to return, churns for `span` while sampling memory every
/// `sample_every`, and removes the cluster.
pub async fn run(
    seed: u64,
    span: Duration,
    churn_every: Duration,
    sample_every: Duration,
    topology: &Topology,
    images: &Images,
) -> anyhow::Result<SoakOutcome> {
    let project = format!("ocs-soak-{}-{seed}", std::process::id());
    let cluster = Cluster::start(&project, topology, images).await?;
    // Every agent and host manager, and the registry's own address.
    let everyone = topology.agents().len() + 1;
    let port = cluster.registry_ports[0];
    if !all_alive_within(port, everyone, Duration::from_secs(600)).await {
        bail!("not every one of {everyone} agents was alive within 600 s");
    }
    every_agent_exits_once(&cluster, topology).await?;
    if !all_alive_within(port, everyone, Duration::from_secs(600)).await {
        bail!("not every one of {everyone} agents was back within 600 s of the first exits");
    }
    info!(agents = everyone, "every agent alive; the soak starts");
    let clock = Clock::start();
    let plan = churn_plan(seed, topology, span, churn_every);
    let mut churned: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failed = 0;
    let mut samples = Vec::new();
    let mut next_churn = plan.iter().peekable();
    let mut sampling = tokio::time::interval(sample_every);
    let watched: Vec<(Target, &str, String)> = (1..=topology.registries)
        .map(|replica| {
            (
                Target::Registry(replica),
                "ocs-registry",
                format!("registry{replica}"),
            )
        })
        .chain([
            (
                Target::Monitor,
                "ocs-operation-monitor",
                "monitor".to_owned(),
            ),
            (
                Target::Host(1),
                "ocs-host-manager",
                "host manager 1".to_owned(),
            ),
        ])
        .collect();
    while clock.now() < span.as_secs_f64() {
        let due = next_churn.peek().map_or(f64::MAX, |(at, _)| *at);
        let wait = (due - clock.now()).max(0.0);
        tokio::select! {
            _ = sampling.tick() => {
                for (target, program, name) in &watched {
                    match cluster.resident_kib(*target, program).await {
                        Ok((kib, anonymous)) => {
                            let at = clock.now();
                            samples.push(Sample { at, component: name.clone(), kib });
                            if let Some(kib) = anonymous {
                                samples.push(Sample { at, component: format!("{name}, anonymous"), kib });
                            }
                        }
                        Err(err) => warn!(error = %err, "no memory reading"),
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs_f64(wait.min(span.as_secs_f64()))) => {
                let Some((_, churn)) = next_churn.next() else { continue };
                let ids = |host: u8, indices: &[u8]| -> Vec<String> {
                    indices.iter().map(|index| Topology::instance_id(host, *index)).collect()
                };
                let (kind, result) = match churn {
                    Churn::Kill(host, agents) => ("agents killed", cluster.signal_agents(*host, &ids(*host, agents), "KILL").await.map(drop)),
                    Churn::Stop(host, agents) => ("agents stopped", cluster.signal_agents(*host, &ids(*host, agents), "TERM").await.map(drop)),
                    Churn::RestartHost(host) => ("host managers restarted", async {
                        cluster.stop(Target::Host(*host), Duration::from_secs(10)).await?;
                        cluster.start_again(Target::Host(*host)).await
                    }.await),
                };
                match result {
                    Ok(()) => *churned.entry(kind).or_default() += 1,
                    Err(err) => {
                        // An agent between incarnations cannot be signalled: counted, not fatal.
                        warn!(error = %err, "churn failed");
                        failed += 1;
                    }
                }
            }
        }
    }
    // Churn over: every agent must come back.
    let settled = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let alive = alive_count(port).await.unwrap_or(0);
            if alive >= everyone as u64 {
                return alive;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let alive = match settled {
        Ok(alive) => alive,
        Err(_) => alive_count(port).await.unwrap_or(0),
    };
    let end = clock.now();
    cluster.remove().await;
    let warm_up = (span.as_secs_f64() / 10.0)
        .max(120.0)
        .min(span.as_secs_f64() / 2.0);
    Ok(SoakOutcome {
        flatness: flatness(&samples, warm_up, end),
        samples,
        churned,
        failed,
        alive_at_end: (alive, everyone),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::site(4, 250)
    }

    #[test]
    fn the_churn_is_seeded_and_never_restarts_the_first_host() {
        let span = Duration::from_secs(3600);
        let plan = churn_plan(3, &topology(), span, Duration::from_secs(5));
        assert_eq!(
            plan,
            churn_plan(3, &topology(), span, Duration::from_secs(5))
        );
        assert_eq!(plan.len(), 719);
        assert!(
            !plan
                .iter()
                .any(|(_, churn)| *churn == Churn::RestartHost(1))
        );
        assert!(
            plan.iter()
                .any(|(_, churn)| matches!(churn, Churn::RestartHost(_)))
        );
        assert!(
            plan.iter()
                .any(|(_, churn)| matches!(churn, Churn::Stop(..)))
        );
        assert!(
            plan.iter()
                .any(|(_, churn)| matches!(churn, Churn::Kill(..)))
        );
    }

    #[test]
    fn flatness_compares_the_median_after_the_warm_up_with_the_median_at_the_end() {
        let mut samples = Vec::new();
        for second in 0..1000 {
            let at = second as f64;
            // Grows during the warm-up, then flat but for one spike.
            let flat = if at < 100.0 { 1000 + second * 10 } else { 2000 };
            let spike = if second == 500 { 9000 } else { flat };
            samples.push(Sample {
                at,
                component: "registry1".into(),
                kib: spike,
            });
            // Leaks a KiB a second.
            samples.push(Sample {
                at,
                component: "monitor".into(),
                kib: 1000 + second,
            });
        }
        let found = flatness(&samples, 100.0, 999.0);
        assert_eq!(found[1].component, "registry1");
        assert_eq!(
            (found[1].early_kib, found[1].late_kib, found[1].peak_kib),
            (2000, 2000, 9000)
        );
        assert_eq!(found[1].change, 0.0);
        assert_eq!(found[0].component, "monitor");
        assert!(found[0].change > 0.6, "{:?}", found[0]);
    }
}
