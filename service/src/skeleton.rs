//! The one way every service binary starts and stops: the registry, the
//! operation monitor, the host manager and every agent's `main` call [`run`].
//!
//! In order: the command line with the instance's site-file arguments first,
//! logging, stop-with-parent (under a host manager), signal handling, the
//! HTTP listener, the NATS connection (retried for ever), systemd readiness
//! and watchdog; then the service's own body; then the connection drained.
//! A failure is logged and the process exits 1; a clean stop exits 0.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use ocs_protocol::{AgentAddress, InstanceId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::args::{CommonArgs, LogFormat, parse_with_site};
use crate::connect::{BusEvents, connect_service_with, drain};
use crate::lifecycle::{init_tracing, notify_systemd, shutdown_on_signals, stop_with_parent};

/// What a service's command line must tell the skeleton.
pub trait ServiceArgs: clap::Parser {
    /// Who the service is and where it serves its endpoints.
    fn identity(&self) -> Result<ServiceIdentity<'_>, String>;
    /// Checks that must pass before anything starts (for example, a site
    /// file the service cannot run without).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Who a service is: its common options, its instance id (with the address
/// root, its address, which names its NATS connection), and where it
/// serves `/metrics` and `/healthz`, if anywhere.
#[derive(Debug, Clone)]
pub struct ServiceIdentity<'a> {
    /// The options every service takes.
    pub common: &'a CommonArgs,
    /// Its instance id.
    pub instance_id: InstanceId,
    /// Where its endpoints are served.
    pub listen: Option<SocketAddr>,
    /// Messages each of its subscriptions buffers while it is busy.
    pub subscription_capacity: usize,
}

impl<'a> ServiceIdentity<'a> {
    /// The identity of `instance_id` with `common` options, serving its
    /// endpoints on `listen`.
    pub fn new(
        common: &'a CommonArgs,
        instance_id: &InstanceId,
        listen: Option<SocketAddr>,
    ) -> Self {
        ServiceIdentity {
            common,
            instance_id: instance_id.clone(),
            listen,
            subscription_capacity: crate::connect::SERVICE_SUBSCRIPTION_CAPACITY,
        }
    }

    /// The same with each subscription buffering `capacity` messages.
    pub fn with_subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = capacity;
        self
    }

    /// The service's address.
    pub fn address(&self) -> AgentAddress {
        AgentAddress::new(&self.common.address_root, &self.instance_id)
    }
}

/// What a service's body is given once it is up.
pub struct Started {
    /// Connected (or reconnecting) to NATS.
    pub client: async_nats::Client,
    /// Cancelled on SIGINT or SIGTERM; the body returns soon after.
    pub shutdown: CancellationToken,
    /// The service's address.
    pub address: AgentAddress,
    /// Bound to [`ServiceArgs::listen`], for `/metrics` and `/healthz`.
    pub listener: Option<TcpListener>,
    /// What the connection's client reported going wrong (drops, disconnects).
    pub bus_events: Arc<BusEvents>,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its settings are unusable.
    #[error("{0}")]
    Settings(String),
    /// The HTTP address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// NATS settings are unusable (an unreadable credentials file, say).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URLs asked for.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The tokio runtime cannot be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs a service binary from `main`: parses `A`, starts as described in
/// this module's documentation and runs `body` until it returns. Returns
/// the process's exit code.
pub fn run<A, F, Fut, E>(body: F) -> ExitCode
where
    A: ServiceArgs,
    F: FnOnce(A, Started) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let args: A = parse_with_site();
    let log_format = match args.identity() {
        Ok(identity) => identity.common.log_format,
        Err(_) => LogFormat::Text,
    };
    init_tracing(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return failed(&StartError::Runtime(err)),
    };
    runtime.block_on(async move {
        let started = match start(&args).await {
            Ok(started) => started,
            Err(err) => return failed(&err),
        };
        let client = started.client.clone();
        let result = body(args, started).await;
        drain(&client).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => failed(&err),
        }
    })
}

fn failed(err: &dyn Display) -> ExitCode {
    // `{:#}` shows the whole chain of an anyhow error.
    error!("{err:#}");
    ExitCode::FAILURE
}

async fn start(args: &impl ServiceArgs) -> Result<Started, StartError> {
    args.check().map_err(StartError::Settings)?;
    stop_with_parent();
    let started = start_within(args, shutdown_on_signals()).await?;
    notify_systemd(&started.shutdown);
    Ok(started)
}

/// Starts a service as [`run`] does, but inside a process that is not its
/// own (a test, a benchmark): no signal handling and no stopping with a
/// parent; it ends at `shutdown`.
pub async fn start_within(
    args: &impl ServiceArgs,
    shutdown: CancellationToken,
) -> Result<Started, StartError> {
    let identity = args.identity().map_err(StartError::Settings)?;
    let address = identity.address();
    let listener = match identity.listen {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Listen { address, source })?;
            info!(address = %listener.local_addr().unwrap_or(address), "serving /metrics and /healthz");
            Some(listener)
        }
        None => None,
    };
    let common = identity.common;
    info!(nats_url = %common.nats_url, %address, "connecting");
    let bus_events = Arc::new(BusEvents::default());
    let client = connect_service_with(
        &common.nats_url,
        address.as_str(),
        &common.nats_auth,
        identity.subscription_capacity,
        bus_events.clone(),
    )
    .await
    .map_err(|source| StartError::Connect {
        url: common.nats_url.clone(),
        source,
    })?;
    Ok(Started {
        client,
        shutdown,
        address,
        listener,
        bus_events,
    })
}
