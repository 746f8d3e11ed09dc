//! `ocs-host-manager`: runs this host's agent instances from the site file and
//! keeps them at their target states; itself an agent (class `HostManager`).

/// jemalloc, built to give freed memory back (see `.cargo/config.toml`), as
/// the registry and the monitor use: with glibc's allocator the manager's
/// resident set grew with every restart of its agents (RELIABILITY.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ocs_host_manager::{self as host_manager, Settings};
use ocs_protocol::InstanceId;
use ocs_service::CommonArgs;
use ocs_service::site::SiteConfig;
use ocs_service::skeleton::{self, ServiceArgs, ServiceIdentity, Started};

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
    #[arg(long, env = "OCS_HOST_MANAGER_DUPLICATE_CHECK", default_value = "1.5", value_parser = ocs_service::seconds::parse)]
    duplicate_check: Duration,
    /// Seconds between checks of the site file for changes.
    #[arg(long, env = "OCS_HOST_MANAGER_RELOAD_INTERVAL", default_value = "2", value_parser = ocs_service::seconds::parse)]
    reload_interval: Duration,
    /// Address of the HTTP endpoints (/metrics, /healthz).
    #[arg(
        long,
        env = "OCS_HOST_MANAGER_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    listen: std::net::SocketAddr,
}

impl Config {
    /// This host's name in the site file.
    fn host(&self) -> String {
        match &self.common.site_host {
            Some(host) => host.clone(),
            None => ocs_service::lifecycle::hostname().unwrap_or_else(|| "localhost".to_owned()),
        }
    }

    fn site_file(&self) -> Result<PathBuf, String> {
        let site_file = self
            .common
            .site_file
            .as_ref()
            .ok_or("the host manager needs a site file: --site-file or OCS_SITE_FILE")?;
        // Children get the same file whatever their working directory.
        std::path::absolute(site_file).map_err(|err| format!("{}: {err}", site_file.display()))
    }
}

impl ServiceArgs for Config {
    fn identity(&self) -> Result<ServiceIdentity<'_>, String> {
        let instance_id = match &self.instance_id {
            Some(id) => id.clone(),
            None => {
                InstanceId::new(format!("hm-{}", self.host())).map_err(|err| err.to_string())?
            }
        };
        Ok(ServiceIdentity::new(
            &self.common,
            &instance_id,
            Some(self.listen),
        ))
    }
    /// A bad site file stops the manager before it starts anything.
    fn check(&self) -> Result<(), String> {
        SiteConfig::load(&self.site_file()?).map_err(|err| err.to_string())?;
        Ok(())
    }
}

async fn serve(config: Config, started: Started) -> anyhow::Result<()> {
    let bin_dir = config.bin_dir.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
    });
    let report = host_manager::metrics::ManagerReport::default();
    let settings = Settings {
        site_file: config.site_file().map_err(anyhow::Error::msg)?,
        host: config.host(),
        address_root: config.common.address_root.clone(),
        bin_dir,
        duplicate_check: config.duplicate_check,
        reload_interval: config.reload_interval,
        report: report.clone(),
    };
    let builder = host_manager::declare(ocs_agent::Agent::builder("HostManager"), settings);
    let router = |_| host_manager::metrics::router(report);
    Ok(ocs_agent::serve(builder, started, router).await?)
}

fn main() -> ExitCode {
    skeleton::run(serve)
}
