//! `ocs-host-manager`: runs this host's agent instances from the site file and
//! keeps them at their target states; itself an agent (class `HostManager`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ocs_agent::process::{CommonArgs, init_tracing, serve_agent};
use ocs_agent::site::SiteConfig;
use ocs_host_manager::{self as host_manager, Settings};
use ocs_protocol::InstanceId;

/// Runs this host's agent instances from the site file and keeps each at its
/// target state: restarts crashed ones with backoff, stops with SIGINT, SIGTERM
/// then SIGKILL, refuses duplicates, reloads the site file on SIGHUP and when
/// it changes.
#[derive(Debug, Parser)]
#[command(version, args_override_self = true)]
struct Config {
    #[command(flatten)]
    common: CommonArgs,
    /// The manager's own instance id (default: hm-<host name>).
    #[arg(long, env = "INSTANCE_ID")]
    instance_id: Option<InstanceId>,
    /// Directory searched first for agent programs named without a path
    /// (default: this program's directory).
    #[arg(long, env = "OCS_HOST_MANAGER_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Seconds to listen for another incarnation's heartbeat before a launch.
    #[arg(long, env = "OCS_HOST_MANAGER_DUPLICATE_CHECK", default_value = "1.5", value_parser = ocs_agent::seconds::parse)]
    duplicate_check: Duration,
    /// Seconds between checks of the site file for changes.
    #[arg(long, env = "OCS_HOST_MANAGER_RELOAD_INTERVAL", default_value = "2", value_parser = ocs_agent::seconds::parse)]
    reload_interval: Duration,
    /// Address of the HTTP endpoints (/metrics, /healthz).
    #[arg(
        long,
        env = "OCS_HOST_MANAGER_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    listen: std::net::SocketAddr,
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let site_file = config.common.site_file.clone().ok_or_else(|| {
        anyhow::anyhow!("the host manager needs a site file: --site-file or OCS_SITE_FILE")
    })?;
    // Children get the same file whatever their working directory.
    let site_file = std::path::absolute(&site_file)?;
    // A bad site file stops the manager before it starts anything.
    SiteConfig::load(&site_file)?;
    let host = match &config.common.site_host {
        Some(host) => host.clone(),
        None => ocs_agent::process::hostname().unwrap_or_else(|| "localhost".to_owned()),
    };
    let instance_id = match config.instance_id.clone() {
        Some(id) => id,
        None => InstanceId::new(format!("hm-{host}"))?,
    };
    let bin_dir = config.bin_dir.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics and /healthz");
    let report = host_manager::metrics::ManagerReport::default();
    let router = host_manager::metrics::router(report.clone());
    // Read-only endpoints; they end with the process.
    tokio::spawn(ocs_agent::endpoints::serve(
        listener,
        router,
        tokio_util::sync::CancellationToken::new(),
    ));
    let settings = Settings {
        site_file,
        host,
        address_root: config.common.address_root.clone(),
        bin_dir,
        duplicate_check: config.duplicate_check,
        reload_interval: config.reload_interval,
        report,
    };
    let builder = host_manager::declare(ocs_agent::Agent::builder("HostManager"), settings);
    serve_agent(builder, &config.common, &instance_id).await
}

#[tokio::main]
async fn main() -> ExitCode {
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
