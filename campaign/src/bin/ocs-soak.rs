//! `ocs-soak`: a large fleet churning for a long time, and whether the
//! registry's, the monitor's and a host manager's memory stay flat
//! (RELIABILITY.md, "Soak").

use std::time::Duration;

use clap::Parser;
use ocs_campaign::cluster::Images;
use ocs_campaign::schedule::Topology;
use ocs_campaign::soak;

/// Churns a fleet of containers' agents and samples the long-lived services' memory.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Seed of the churn.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 3600)]
    span: u64,
    /// Seconds between churn events.
    #[arg(long, default_value_t = 5)]
    churn_every: u64,
    /// Seconds between memory readings.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Agent hosts.
    #[arg(long, default_value_t = 4)]
    hosts: u8,
    /// Fake-data agents per host.
    #[arg(long, default_value_t = 250)]
    agents_per_host: u8,
    /// Where the memory readings go, as CSV (seconds, component, KiB).
    #[arg(long, default_value = "target/test-artifacts/soak/samples.csv")]
    samples: std::path::PathBuf,
    /// The largest change of a resident set, end against start, that counts as flat.
    #[arg(long, default_value_t = 0.10)]
    band: f64,
    #[command(flatten)]
    images: Images,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ocs_service::lifecycle::init_tracing(ocs_service::LogFormat::Text);
    let args = Args::parse();
    let stopping = ocs_service::lifecycle::shutdown_on_signals();
    let topology = Topology::site(args.hosts, args.agents_per_host);
    let images = args.images.clone();
    let run = soak::run(
        args.seed,
        Duration::from_secs(args.span),
        Duration::from_secs(args.churn_every),
        Duration::from_secs(args.sample_every),
        &topology,
        &images,
    );
    // A stop removes the containers: dropping the soak drops its cluster.
    let outcome = tokio::select! {
        outcome = run => outcome?,
        _ = stopping.cancelled() => anyhow::bail!("stopped by a signal"),
    };
    if let Some(dir) = args.samples.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut csv = String::from("seconds,component,kib\n");
    for sample in &outcome.samples {
        csv.push_str(&format!(
            "{:.1},{},{}\n",
            sample.at, sample.component, sample.kib
        ));
    }
    std::fs::write(&args.samples, csv)?;
    println!(
        "\nsoak: seed {}, {} s, {} agents (and {} host managers), a change every {} s",
        args.seed,
        args.span,
        u32::from(args.hosts) * u32::from(args.agents_per_host),
        args.hosts,
        args.churn_every
    );
    for (kind, count) in &outcome.churned {
        println!("  {kind:<24} {count}");
    }
    println!("  {:<24} {}", "changes that failed", outcome.failed);
    println!(
        "  {:<30} {:>12} {:>12} {:>12} {:>8}",
        "component", "early KiB", "late KiB", "peak KiB", "change"
    );
    let mut broken = Vec::new();
    for flat in &outcome.flatness {
        println!(
            "  {:<30} {:>12} {:>12} {:>12} {:>+7.1}%",
            flat.component,
            flat.early_kib,
            flat.late_kib,
            flat.peak_kib,
            flat.change * 100.0
        );
        if flat.change.abs() > args.band {
            broken.push(format!(
                "{} moved {:+.1}%",
                flat.component,
                flat.change * 100.0
            ));
        }
    }
    let sampled = outcome.flatness.len();
    let watched = usize::from(args.hosts.min(1)) + 2 + 1;
    if sampled < watched {
        broken.push(format!("memory read for {sampled} of {watched} components"));
    }
    let (alive, everyone) = outcome.alive_at_end;
    println!("  alive at the end: {alive} of {everyone}");
    if alive < everyone as u64 {
        broken.push(format!(
            "only {alive} of {everyone} agents alive after the churn"
        ));
    }
    anyhow::ensure!(broken.is_empty(), "{}", broken.join("; "));
    println!("soak: memory flat within ±{:.0}%", args.band * 100.0);
    Ok(())
}
