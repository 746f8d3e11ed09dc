//! `ocs`: the command-line client, mirroring OCS's `OCSClient` and `ocs-client-cli`.
//!
//! Exit codes: 0 the call was carried out (OK); 1 the agent refused it (ERROR);
//! 3 a `wait` timed out (TIMEOUT); 2 the call could not be made (bad usage,
//! NATS unreachable, no such agent, no answer in time).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ocs_service::CommonArgs;

/// `println!` that reports a failed write instead of panicking (see [`ocs_cli::output`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        ocs_cli::output::write_line(format_args!($($arg)*))
    };
}

mod commands;
mod conformance_calls;

use commands::{AgentQuery, HostArgs, ListenArgs, Nats, ProbeArgs, ScanArgs};
use conformance_calls::ConformanceArgs;

/// Control and inspect OCS agents over NATS.
///
/// `ocs <instance-id> <operation> <action> [key=value ...]` calls an operation,
/// e.g. `ocs registry main status` or `ocs faker delay_task start delay=2`.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = false)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List agents: those the registry knows, or those heard heartbeating.
    Scan(ScanArgs),
    /// Show an agent's identity and operations with their docs.
    Api(AgentQuery),
    /// Check that an agent answers: its incarnation, uptime and version, and
    /// the round trip, without touching its operations.
    Ping(AgentQuery),
    /// Print messages on feed subjects as JSON lines, e.g. `observatory.*.feeds.heartbeat`.
    Listen(ListenArgs),
    /// Ask a host manager to bring instances up or down, or to freeze or thaw
    /// them: `ocs host up faker1 faker2`, `ocs host down --all`.
    Host(HostArgs),
    /// Fetch an HTTP endpoint such as `/healthz` and exit 0 on a 2xx answer, 1
    /// otherwise: container healthchecks need no curl or wget in the image.
    Probe(ProbeArgs),
    /// Hold a live agent to the protocol's rules (heartbeats, api, ping, the
    /// reply table, request versions, sessions; with --pid, the leaving
    /// heartbeat on a signal) with calls that change nothing.
    Conformance(ConformanceArgs),
    #[command(external_subcommand)]
    Operation(Vec<String>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let nats = Nats(&cli.common);
    match cli.command {
        Command::Operation(args) => commands::operation(&nats, args).await,
        Command::Scan(args) => commands::scan(&nats, args).await,
        Command::Api(args) => commands::api(&nats, args).await,
        Command::Ping(args) => commands::ping(&nats, args).await,
        Command::Listen(args) => commands::listen(&nats, args).await,
        Command::Host(args) => commands::host(&nats, args).await,
        Command::Probe(args) => commands::probe(args).await,
        Command::Conformance(args) => conformance_calls::conformance(&nats, args).await,
    }
}
