//! The host manager: an agent (class `HostManager`) whose `manager` process
//! runs this host's agent instances from the site file as child processes and
//! keeps each at its target state, and whose `update` task changes targets
//! (`ocs host up|down|freeze|thaw`).
//!
//! - [`child`]: the sans-I/O [`Child`] policy (restart backoff with jitter,
//!   crash loops, SIGINT → SIGTERM → SIGKILL, frozen instances);
//! - `launch`: the I/O: the duplicate check on the bus, spawning in a process
//!   group of its own, stderr tails, exit statuses;
//! - [`schedule`]: scheduled operations.
//!
//! Children are never orphaned: each runs in its own process group, which a
//! stop signals as a whole, and agents built on this crate ask the kernel to
//! send them SIGTERM when the manager dies, even by SIGKILL
//! ([`ocs_service::lifecycle::PARENT_PID_ENV`]).

pub mod child;
mod launch;
pub mod metrics;
pub mod schedule;
mod settings;
pub mod stderr_tail;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use child::{Child, Command, Exit, StopSignal, Target};
use launch::{Event, Launcher};
use ocs_agent::{AgentBuilder, OpContext, OpResult, Params};
use ocs_protocol::codec;
use ocs_service::site::SiteConfig;
use schedule::Scheduler;
pub use settings::Settings;

/// An `update` request: `(instance id or "all", action)` pairs as in OCS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateParams {
    /// `[["faker1", "up"], ["all", "down"]]`; actions: up, down, freeze, thaw.
    #[serde(default)]
    pub requests: Vec<(String, String)>,
    /// Re-read the site file first.
    #[serde(default)]
    pub reload_config: bool,
}

impl Params for UpdateParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "requests",
                "list of [instance id or \"all\", \"up\" | \"down\" | \"freeze\" | \"thaw\"]",
            ),
            ("reload_config", "re-read the site file first (bool)"),
        ]
    }

    fn validate(&self) -> Result<(), String> {
        for (_, action) in &self.requests {
            if !["up", "down", "freeze", "thaw"].contains(&action.as_str()) {
                return Err(format!(
                    "unknown action {action:?}: use up, down, freeze or thaw"
                ));
            }
        }
        Ok(())
    }
}

struct Update {
    params: UpdateParams,
    reply: oneshot::Sender<Result<String, String>>,
}

/// Declares the host manager's operations on `builder`.
pub fn declare(builder: AgentBuilder, settings: Settings) -> AgentBuilder {
    let settings = Arc::new(settings);
    let (updates, inbox) = mpsc::channel::<Update>(16);
    // The manager process owns the receiver while it runs; a restarted
    // manager process takes it back.
    let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
    builder
        .process(
            "manager",
            "Run this host's agent instances from the site file and keep each at its target state.",
            move |ctx, _: ocs_agent::NoParams| manager(ctx, settings.clone(), inbox.clone()),
        )
        .task(
            "update",
            "Change target states: requests=[[instance id | \"all\", up | down | freeze | thaw]], reload_config=bool.",
            move |_ctx: OpContext, params: UpdateParams| {
                let updates = updates.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    updates
                        .send(Update { params, reply })
                        .await
                        .map_err(|_| "the manager process is not running")?;
                    match answer.await {
                        Ok(Ok(message)) => Ok(message),
                        Ok(Err(message)) => Err(message.into()),
                        Err(_) => Err("the manager process stopped".into()),
                    }
                }
            },
        )
        .startup("manager", json!({}))
        // Children get their own grace periods (SIGINT, then SIGTERM) on the
        // way down; the manager process must outlast them.
        .shutdown_grace(Duration::from_secs(60))
}

/// The config status shown in the session: the last load and the last error.
struct ConfigStatus {
    loaded_at: chrono::DateTime<chrono::Utc>,
    error: Option<(chrono::DateTime<chrono::Utc>, String)>,
    fingerprint: Option<(std::time::SystemTime, u64)>,
}

fn fingerprint(settings: &Settings) -> Option<(std::time::SystemTime, u64)> {
    let metadata = std::fs::metadata(&settings.site_file).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

struct Manager {
    ctx: OpContext,
    settings: Arc<Settings>,
    site: SiteConfig,
    children: BTreeMap<String, Child>,
    launcher: Launcher,
    scheduler: Scheduler,
    config: ConfigStatus,
    stopping: bool,
}

async fn manager(
    ctx: OpContext,
    settings: Arc<Settings>,
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<Update>>>,
) -> OpResult {
    let mut inbox = inbox
        .try_lock()
        .map_err(|_| "another manager process is running")?;
    let site = SiteConfig::load(&settings.site_file)?;
    // What a killed predecessor left running goes first: no orphans, and no
    // duplicate refusing our own launches.
    let orphans = launch::orphans(ctx.address().as_str());
    if !orphans.is_empty() {
        for (pid, command) in &orphans {
            ctx.log(format!(
                "stopping pid {pid} ({command}), left running by an earlier manager"
            ));
        }
        launch::reap_orphans(&orphans, Duration::from_secs(5)).await;
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let scheduler = Scheduler::new(settings.address_root.clone(), events_tx.clone());
    let launcher = Launcher::new(ctx.clone(), settings.clone(), events_tx);
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut manager = Manager {
        ctx: ctx.clone(),
        config: ConfigStatus {
            loaded_at: chrono::Utc::now(),
            error: None,
            fingerprint: fingerprint(&settings),
        },
        settings,
        site,
        children: BTreeMap::new(),
        launcher,
        scheduler,
        stopping: false,
    };
    manager.apply_site(Instant::now());
    let mut next_file_check = Instant::now() + manager.settings.reload_interval;
    loop {
        let now = Instant::now();
        manager.step(now);
        if manager.stopping && manager.children.values().all(Child::is_down) {
            break;
        }
        let wake = manager
            .next_deadline()
            .map_or(next_file_check, |deadline| deadline.min(next_file_check))
            .min(now + Duration::from_secs(1));
        tokio::select! {
            _ = ctx.stopping(), if !manager.stopping => manager.stop_all(),
            Some(event) = events.recv() => manager.on_event(event),
            Some(update) = inbox.recv(), if !manager.stopping => {
                let result = manager.update(update.params);
                let _ = update.reply.send(result);
            }
            _ = hangups.recv() => {
                ctx.log("SIGHUP: reloading the site file");
                manager.reload();
            }
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= next_file_check {
                    next_file_check = Instant::now() + manager.settings.reload_interval;
                    if fingerprint(&manager.settings) != manager.config.fingerprint {
                        ctx.log("the site file changed: reloading");
                        manager.reload();
                    }
                }
            }
        }
    }
    Ok("Stopped every managed instance.".into())
}

impl Manager {
    /// Applies every child's pending command, runs due schedules and
    /// publishes the session data.
    fn step(&mut self, now: Instant) {
        for child in self.children.values_mut() {
            while let Some(command) = child.poll(now) {
                self.launcher.execute(child, command, &self.site);
            }
            for message in child.take_messages() {
                tracing::info!(instance = %child.config().instance_id, "{message}");
                self.ctx.log(message);
            }
        }
        if !self.stopping {
            self.scheduler.run_due(&self.children, &self.ctx, now);
        }
        self.publish(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.children
            .values()
            .filter_map(Child::next_deadline)
            .chain(self.scheduler.next_deadline())
            .min()
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Launched { instance_id, pid } => {
                if let Some(child) = self.children.get_mut(&instance_id) {
                    child.launched(pid, now);
                }
            }
            Event::Refused {
                instance_id,
                reason,
            } => {
                if let Some(child) = self.children.get_mut(&instance_id) {
                    child.refused(reason, now);
                }
            }
            Event::Exited {
                instance_id,
                exit,
                stderr_tail,
            } => {
                if let Some(child) = self.children.get_mut(&instance_id) {
                    child.exited(exit, stderr_tail, now, fastrand::f64());
                }
                // An instance taken out of the site file goes once it is down.
                if !self.in_site(&instance_id)
                    && self.children.get(&instance_id).is_some_and(Child::is_down)
                {
                    self.children.remove(&instance_id);
                }
            }
            Event::ScheduleResult {
                instance_id,
                operation,
                result,
            } => self.scheduler.record(&instance_id, &operation, result),
        }
    }

    fn in_site(&self, instance_id: &str) -> bool {
        self.site
            .host(&self.settings.host)
            .is_some_and(|(_, instances)| {
                instances.iter().any(|instance| {
                    instance.instance_id.as_str() == instance_id
                        && Target::from_manage(instance.manage).is_some()
                })
            })
    }

    /// Brings the children in line with the site file: new instances are
    /// added, changed ones reconfigured, removed ones stopped; untouched ones
    /// keep running.
    fn apply_site(&mut self, now: Instant) {
        let instances = self
            .site
            .host(&self.settings.host)
            .map(|(_, instances)| instances.to_vec())
            .unwrap_or_default();
        if instances.is_empty() {
            self.ctx.log(format!(
                "the site file has no instances for host {:?} (nor localhost)",
                self.settings.host
            ));
        }
        let mut listed = Vec::new();
        for instance in instances {
            let Some(target) = Target::from_manage(instance.manage) else {
                continue;
            };
            let instance_id = instance.instance_id.to_string();
            listed.push(instance_id.clone());
            match self.children.get_mut(&instance_id) {
                Some(child) => {
                    if child.config().manage != instance.manage {
                        child.set_target(target);
                    }
                    child.reconfigure(instance);
                }
                None => {
                    self.children
                        .insert(instance_id, Child::new(instance, target));
                }
            }
        }
        for (instance_id, child) in &mut self.children {
            if !listed.contains(instance_id) {
                child.set_frozen(false);
                child.set_target(Target::Down);
            }
        }
        self.children
            .retain(|instance_id, child| listed.contains(instance_id) || !child.is_down());
        self.scheduler.configure(&self.children, now);
    }

    fn reload(&mut self) {
        self.config.fingerprint = fingerprint(&self.settings);
        match SiteConfig::load(&self.settings.site_file) {
            Ok(site) => {
                self.site = site;
                self.config.loaded_at = chrono::Utc::now();
                self.config.error = None;
                self.apply_site(Instant::now());
                self.ctx.log("site file reloaded");
            }
            Err(err) => {
                // Keep running on the last good config.
                tracing::error!(error = %err, "site file rejected; keeping the last good one");
                self.ctx.log(format!(
                    "site file rejected, keeping the last good one: {err}"
                ));
                self.config.error = Some((chrono::Utc::now(), err.to_string()));
            }
        }
    }

    fn update(&mut self, params: UpdateParams) -> Result<String, String> {
        if params.reload_config {
            self.reload();
            if let Some((_, error)) = &self.config.error {
                return Err(format!("site file rejected: {error}"));
            }
        }
        let mut done = Vec::new();
        for (instance_id, action) in params.requests {
            let names: Vec<String> = if instance_id == "all" {
                self.children.keys().cloned().collect()
            } else if self.children.contains_key(&instance_id) {
                vec![instance_id.clone()]
            } else {
                return Err(format!(
                    "{instance_id:?} is not managed on this host (managed: {})",
                    self.children.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            };
            for name in names {
                let Some(child) = self.children.get_mut(&name) else {
                    continue;
                };
                match action.as_str() {
                    "up" => child.set_target(Target::Up),
                    "down" => child.set_target(Target::Down),
                    "freeze" => child.set_frozen(true),
                    _ => child.set_frozen(false),
                }
                done.push(format!("{name} {action}"));
            }
        }
        let message = if done.is_empty() {
            "Nothing to change.".to_owned()
        } else {
            format!("Requested: {}.", done.join(", "))
        };
        self.ctx.log(message.clone());
        Ok(message)
    }

    fn stop_all(&mut self) {
        self.stopping = true;
        self.ctx.log("stopping every managed instance");
        for child in self.children.values_mut() {
            // No orphans: frozen instances go too when the manager goes.
            child.set_frozen(false);
            child.set_target(Target::Down);
        }
    }

    fn publish(&mut self, now: Instant) {
        let troubled = self
            .children
            .values()
            .any(|child| child.crash_loop() || child.state_name() == "conflict");
        self.settings.report.update(
            self.children
                .values()
                .map(|child| metrics::ChildSample {
                    instance_id: child.config().instance_id.to_string(),
                    agent_class: child.config().agent_class.clone(),
                    state: child.state_name(),
                    target_up: child.target() == Target::Up,
                    frozen: child.frozen(),
                    restarts: child.restarts(),
                    crash_loop: child.crash_loop(),
                })
                .collect(),
            self.config.error.is_none(),
        );
        self.ctx.set_degraded(troubled);
        let data = ManagerData {
            host: &self.settings.host,
            site_file: self.settings.site_file.display().to_string(),
            config: json!({
                "loaded_at": self.config.loaded_at.to_rfc3339(),
                "ok": self.config.error.is_none(),
                "error": self.config.error.as_ref().map(|(_, error)| error),
                "error_at": self.config.error.as_ref().map(|(at, _)| at.to_rfc3339()),
            }),
            child_states: self
                .children
                .values_mut()
                .map(|child| child.report(now))
                .collect(),
            schedules: self.scheduler.report(now),
        };
        // Kept encoded: one compact copy of every child's crash report,
        // rather than a JSON tree of them beside the children's own.
        match codec::to_msgpack(&data) {
            Ok(encoded) => {
                let encoded: Arc<[u8]> = encoded.into();
                self.ctx.set_data_source(Arc::new(move || encoded.to_vec()));
            }
            Err(err) => self
                .ctx
                .log(format!("cannot encode the session data: {err}")),
        }
    }
}

/// The `manager` session's data.
#[derive(Serialize)]
struct ManagerData<'a> {
    host: &'a str,
    site_file: String,
    config: Value,
    child_states: Vec<child::ChildReport<'a>>,
    schedules: Value,
}
