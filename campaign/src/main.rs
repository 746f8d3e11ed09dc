//! `ocs-campaign`: a seeded, randomised fault campaign over containers (see
//! the crate's documentation and RELIABILITY.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ocs_campaign::campaign::{self, Outcome};
use ocs_campaign::checker::Promises;
use ocs_campaign::cluster::Images;
use ocs_campaign::record::Event;
use ocs_campaign::schedule::Topology;

/// Strikes a cluster of containers with faults drawn from each seed and
/// checks what the system promised against what really happened.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A seed to run (repeatable); the same seed strikes the same faults.
    #[arg(long = "seed")]
    seeds: Vec<u64>,
    /// This many more seeds, drawn at random.
    #[arg(long, default_value_t = 0)]
    random_seeds: usize,
    /// Seconds of faults per seed (the cluster then settles).
    #[arg(long, default_value_t = 120)]
    span: u64,
    #[command(flatten)]
    images: Images,
    /// Agent hosts.
    #[arg(long, default_value_t = 3)]
    hosts: u8,
    /// Fake-data agents per host.
    #[arg(long, default_value_t = 4)]
    agents_per_host: u8,
    /// Where each seed's record and the containers' logs go.
    #[arg(long, default_value = "target/test-artifacts/campaign")]
    artifacts: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ocs_service::lifecycle::init_tracing(ocs_service::LogFormat::Text);
    let args = Args::parse();
    let stopping = ocs_service::lifecycle::shutdown_on_signals();
    let mut seeds = args.seeds.clone();
    seeds.extend((0..args.random_seeds).map(|_| fastrand::u64(..1_000_000)));
    anyhow::ensure!(
        !seeds.is_empty(),
        "no seed: give --seed N or --random-seeds N"
    );
    let topology = Topology::site(args.hosts, args.agents_per_host);
    let promises = Promises {
        agent_timeout: 5.0,
        detect_within: 2.0,
        failover_allowance: 4.0,
        false_expiry_slack: 3.0,
        converge_within: 10.0,
        deposed_window: ocs_fleet::DEPOSED_LEADER_WINDOW.as_secs_f64(),
        // The campaign's registries run with --wait-time=5.
        snapshot_every: 5.0,
    };
    let images = args.images.clone();
    let mut outcomes = Vec::new();
    for seed in seeds {
        let run = campaign::run(
            seed,
            Duration::from_secs(args.span),
            &topology,
            &promises,
            &images,
            &args.artifacts,
        );
        // A stop removes the containers: dropping the campaign drops its cluster.
        let outcome = tokio::select! {
            outcome = run => outcome.with_context(|| format!("seed {seed}"))?,
            _ = stopping.cancelled() => anyhow::bail!("stopped by a signal"),
        };
        report(&outcome);
        outcomes.push(outcome);
    }
    summarise(&outcomes)
}

/// One seed's table of faults and verdicts, and each violation's window.
fn report(outcome: &Outcome) {
    let seed = outcome.schedule.seed;
    println!("\nseed {seed}: {} faults", outcome.schedule.faults.len());
    for fault in &outcome.schedule.faults {
        println!("  {fault}");
    }
    println!("  {:<72} {:>7} {:>10}", "promise", "checked", "violations");
    for verdict in &outcome.verdicts {
        println!(
            "  {:<72} {:>7} {:>10}",
            verdict.promise,
            verdict.checked,
            verdict.violations.len()
        );
    }
    for verdict in &outcome.verdicts {
        for violation in &verdict.violations {
            println!(
                "VIOLATION seed {seed} at {:.1} s: {} (record {:.1}..{:.1} s in {})",
                violation.at,
                violation.what,
                violation.window.0,
                violation.window.1,
                outcome.artifacts.join("record.jsonl").display()
            );
            // The agents the violation names, if any: their records only.
            let named: Vec<&str> = violation
                .what
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|word| word.starts_with("observatory."))
                .collect();
            for entry in
                outcome.record.entries.iter().filter(|entry| {
                    entry.at >= violation.window.0 && entry.at <= violation.window.1
                })
            {
                if let Some(line) = describe(&entry.event, &named) {
                    println!("    {:>8.2} {line}", entry.at);
                }
            }
        }
    }
}

/// One line for an entry of a violation's window, about the agents `named`
/// (every agent not alive when none is named); `None` to leave it out.
fn describe(event: &Event, named: &[&str]) -> Option<String> {
    match event {
        Event::Feed {
            observer,
            registry_incarnation,
            term,
            seq,
            snapshot,
            agents,
            ..
        } => {
            let shown: Vec<String> = agents
                .iter()
                .filter(|seen| {
                    if named.is_empty() {
                        seen.expired
                    } else {
                        named.contains(&seen.address.as_str())
                    }
                })
                .map(|seen| {
                    let incarnation: String = seen.incarnation.chars().take(8).collect();
                    let state = if seen.expired { "expired" } else { "alive" };
                    format!("{} {state} ({incarnation})", seen.address)
                })
                .collect();
            let registry: String = registry_incarnation.chars().take(8).collect();
            let kind = if *snapshot { "snapshot" } else { "change" };
            Some(format!(
                "observer {} {kind} from {registry} term {term} seq {seq}: {}",
                observer + 1,
                if shown.is_empty() {
                    "-".to_owned()
                } else {
                    shown.join(", ")
                }
            ))
        }
        Event::Monitor { .. } => None,
        other => serde_json::to_string(other).ok(),
    }
}

/// Faults by kind and promises over every seed; an error if any broke.
fn summarise(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut promises: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for outcome in outcomes {
        for fault in &outcome.schedule.faults {
            *kinds.entry(fault.kind()).or_default() += 1;
        }
        for verdict in &outcome.verdicts {
            let totals = promises.entry(verdict.promise).or_default();
            totals.0 += verdict.checked;
            totals.1 += verdict.violations.len();
        }
    }
    let seeds: Vec<String> = outcomes
        .iter()
        .map(|outcome| outcome.schedule.seed.to_string())
        .collect();
    println!("\ncampaign over seeds {}", seeds.join(", "));
    println!("  faults injected by kind:");
    for (kind, count) in &kinds {
        println!("    {kind:<24} {count}");
    }
    let violations: usize = promises.values().map(|(_, violations)| violations).sum();
    // One line in the test command's tally: a promise per seed, held or not.
    let broken = outcomes
        .iter()
        .flat_map(|outcome| &outcome.verdicts)
        .filter(|verdict| !verdict.violations.is_empty())
        .count();
    let held = outcomes
        .iter()
        .map(|outcome| outcome.verdicts.len())
        .sum::<usize>()
        - broken;
    println!("  {:<72} {:>7} {:>10}", "promise", "checked", "violations");
    for (promise, (checked, broken)) in &promises {
        println!("  {promise:<72} {checked:>7} {broken:>10}");
    }
    println!("campaign: {held} passed, {broken} failed");
    anyhow::ensure!(
        violations == 0,
        "{violations} violations (seeds {})",
        seeds.join(", ")
    );
    println!("campaign: every promise held");
    Ok(())
}
