//! `ocs-operation-monitor`: thin entry point; see the library for the logic.

/// jemalloc, built to give freed memory back (see `.cargo/config.toml`):
/// after a wave of addresses or records is forgotten the resident set
/// returns to its resting size, where glibc's allocator kept and fragmented
/// it (BENCHMARKS.md, "Memory under churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use anyhow::Context;
use ocs_agent::process::{
    connect_service_as, drain, init_tracing, notify_systemd, shutdown_on_signals, stop_with_parent,
};
use ocs_operation_monitor::Config;

#[tokio::main]
async fn main() -> ExitCode {
    // Its instance's arguments in the site file come first, as for every service.
    let config: Config = ocs_agent::process::parse_with_site();
    init_tracing(config.common.log_format);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Run by a host manager (or a test), it stops when its parent dies.
    stop_with_parent();
    let shutdown = shutdown_on_signals();
    let name = format!("{}.{}", config.common.address_root, config.instance_id);
    let client = connect_service_as(&config.common.nats_url, &name, &config.common.nats_auth)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.common.nats_url))?;
    notify_systemd(&shutdown);
    ocs_operation_monitor::run(config, client.clone(), listener, shutdown).await?;
    drain(&client).await;
    Ok(())
}
