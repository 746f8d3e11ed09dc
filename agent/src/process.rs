//! Process plumbing shared by every binary: common options, tracing, signals
//! and NATS connection settings.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use clap::{Args, ValueEnum};
use ocs_protocol::AddressRoot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Options every service, agent and the `ocs` client take.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// First token of every agent address.
    #[arg(long, env = "OCS_ADDRESS_ROOT", default_value = "observatory")]
    pub address_root: AddressRoot,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Site file: agents take their arguments from their instance's entry
    /// (command-line arguments override them).
    #[arg(long, env = crate::site::SITE_FILE_ENV)]
    pub site_file: Option<std::path::PathBuf>,
    /// This host's name in the site file (default: the host name).
    #[arg(long, env = crate::site::SITE_HOST_ENV)]
    pub site_host: Option<String>,
    /// How to authenticate to NATS and check its certificate.
    #[command(flatten)]
    pub nats_auth: NatsAuth,
}

/// NATS authentication and TLS. Secrets are best given by environment
/// variable or file: command-line arguments show in `ps`.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsAuth {
    /// NATS user name (with --nats-password).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// NATS credentials file (a user JWT and nkey seed, from nsc).
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to check the server's with; implies TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (with --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// Client certificate key (PEM).
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

impl NatsAuth {
    /// Fresh connect options with these settings; a credentials file that
    /// cannot be read is a connection error.
    async fn options(&self) -> Result<ConnectOptions, async_nats::ConnectError> {
        self.apply(ConnectOptions::new()).await.map_err(|err| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, err)
        })
    }

    /// `options` with these credentials and TLS settings.
    pub async fn apply(&self, mut options: ConnectOptions) -> std::io::Result<ConnectOptions> {
        if let Some(creds) = &self.nats_creds {
            options = options.credentials_file(creds).await?;
        }
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// Parses the command line of an agent or service, with its arguments from
/// the site file put first (see [`crate::site::with_site_arguments`]); a bad
/// site file ends the process with its file, line and reason.
pub fn parse_with_site<C: clap::Parser>() -> C {
    match crate::site::with_site_arguments(std::env::args_os()) {
        Ok(args) => C::parse_from(args),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the tracing subscriber: `RUST_LOG` filter (default `info`); text to
/// stderr, or JSON lines to stdout, where container log collectors read them.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log that cannot be written (the host manager that read this stderr
    // died) must not panic the writing task: that could be the one handling
    // SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_writer(std::io::stderr).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stdout)
            .init(),
    }
}

/// This host's name, as the kernel has it.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
}

/// Set by the host manager for its children: the manager's pid.
pub const PARENT_PID_ENV: &str = "OCS_PARENT_PID";

/// For a process the host manager started: asks the kernel for SIGTERM when
/// the manager dies (even by SIGKILL), so no agent outlives it; exits at once
/// when the manager is already gone. Does nothing otherwise.
pub fn stop_with_parent() {
    let Some(parent) = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    if let Err(err) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        warn!(error = %err, "cannot ask to be stopped with the host manager");
    }
    // The manager may have died before the request took effect.
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get()) != Some(parent) {
        warn!(
            parent,
            "the host manager that started this agent is gone; exiting"
        );
        std::process::exit(1);
    }
}

/// Tells systemd (`Type=notify`) that the service is up, and pings its
/// watchdog (`WatchdogSec=`) at half the interval until `shutdown`, then says
/// it is stopping. Does nothing outside systemd.
///
/// The pings come from the service's own runtime, so a wedged runtime stops
/// them and systemd restarts the service.
pub fn notify_systemd(shutdown: &CancellationToken) {
    use sd_notify::NotifyState;
    if let Err(err) = sd_notify::notify(&[NotifyState::Ready]) {
        warn!(error = %err, "cannot notify systemd");
    }
    let watchdog = sd_notify::watchdog_enabled();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Some(timeout) = watchdog {
            let mut ticks = tokio::time::interval(timeout / 2);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticks.tick() => {
                        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    }
                }
            }
        } else {
            shutdown.cancelled().await;
        }
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    });
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    warn!(error = %err, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    trigger.cancel();
                    return;
                }
            };
        let name = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        trigger.cancel();
        info!(signal = name, "shutdown requested");
    });
    token
}

/// Ping interval of long-running connections: a frozen or partitioned server
/// is noticed within about three intervals instead of minutes.
pub const SERVICE_PING_INTERVAL: Duration = Duration::from_secs(2);

/// Connects a long-running service or agent: retries the first connection and
/// every reconnect forever, notices dead servers within seconds, and logs
/// connection changes (never one line per failed attempt).
pub async fn connect_service(
    nats_url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    connect_service_as(nats_url, name, &NatsAuth::default()).await
}

/// [`connect_service`] with credentials and TLS settings.
pub async fn connect_service_as(
    nats_url: &str,
    name: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = auth.options().await?;
    options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(SERVICE_PING_INTERVAL)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(|event| async move {
            match event {
                Event::Connected => info!("connected to NATS"),
                Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                Event::SlowConsumer(sid) => {
                    warn!(subscription = sid, "slow consumer: messages dropped")
                }
                Event::ServerError(err) => warn!(error = %err, "NATS server error"),
                Event::LameDuckMode => warn!("NATS server entering lame duck mode"),
                Event::ClientError(_) | Event::Draining | Event::Closed => {}
            }
        })
        .connect(server_urls(nats_url).as_slice())
        .await
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`):
/// async-nats reads a single string as one server, so a cluster's URLs are
/// split here and the client fails over between them.
fn server_urls(nats_url: &str) -> Vec<&str> {
    nats_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Connects a short-lived client (the CLI): one attempt, bounded in time.
pub async fn connect_client(
    nats_url: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = auth.options().await?;
    options
        .name("ocs-cli")
        .connection_timeout(Duration::from_secs(3))
        .connect(server_urls(nats_url).as_slice())
        .await
}

/// Runs `builder` as the agent `instance_id` until SIGINT or SIGTERM: connects
/// (retrying), serves, then drains the connection. For agent binaries' `main`.
pub async fn serve_agent(
    builder: crate::AgentBuilder,
    common: &CommonArgs,
    instance_id: &ocs_protocol::InstanceId,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let address = ocs_protocol::AgentAddress::new(&common.address_root, instance_id);
    let agent = builder.build(address.clone())?;
    stop_with_parent();
    let shutdown = shutdown_on_signals();
    info!(nats_url = %common.nats_url, %address, "connecting");
    let client = connect_service_as(&common.nats_url, address.as_str(), &common.nats_auth)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", common.nats_url))?;
    notify_systemd(&shutdown);
    agent.run(client.clone(), shutdown).await?;
    drain(&client).await;
    Ok(())
}

/// Drains the connection (flushing buffered publishes), bounded in time.
pub async fn drain(client: &async_nats::Client) {
    if tokio::time::timeout(Duration::from_secs(3), client.drain())
        .await
        .is_err()
    {
        warn!("draining NATS timed out");
    }
}
