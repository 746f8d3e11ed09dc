//! A service process's life: logging, its place under a host manager, systemd,
//! and the signals that end it.

use std::io::IsTerminal;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::LogFormat;

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
        // Colours only for a person at a terminal: under a host manager, in
        // the journal or a container log, escape codes would be kept with
        // every line (and fill a crash report's bytes).
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && !no_color())
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stdout)
            .init(),
    }
}

/// The NO_COLOR convention (<https://no-color.org>): set and not empty.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
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
