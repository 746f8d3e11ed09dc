//! [`AgentBuilder`] and [`Agent::run`]: the async shell that moves requests
//! between NATS and the operation table.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, to_msgpack};
use ocs_protocol::{Action, AgentAddress, FeedName, OpName, ResponseCode, proto, subject};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use crate::context::{AgentShared, Launch, OpContext, now_unix};
use crate::heartbeat;
use crate::journal::{self, Journal};
use crate::operations::{BoxError, OpFuture, OpKind, OpResult, OpSpec, OpTable, Reply, WaitState};
use crate::params::{self, Params};
use crate::shared::{Identity, ReplicaGate};

/// Why an agent could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An operation, feed or startup entry is invalid.
    #[error("invalid agent definition: {0}")]
    Definition(String),
    /// Subscribing to the agent's subjects failed.
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's error.
        reason: String,
    },
    /// The runtime for operations could not be started.
    #[error("cannot start the operations runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Declares an agent: its class, operations, feeds and startup operations.
pub struct AgentBuilder {
    agent_class: String,
    table: OpTable<Launch>,
    feeds: Vec<String>,
    startup: Vec<(String, Vec<u8>)>,
    version: String,
    interval: Duration,
    shutdown_grace: Duration,
    operation_threads: usize,
    replica_gate: Option<ReplicaGate>,
    errors: Vec<String>,
}

/// A running or runnable agent.
pub struct Agent {
    builder: AgentBuilder,
    address: AgentAddress,
}

impl AgentBuilder {
    /// Starts declaring an agent of `agent_class` (e.g. `"FakeDataAgent"`).
    pub fn new(agent_class: impl Into<String>) -> Self {
        AgentBuilder {
            agent_class: agent_class.into(),
            table: OpTable::default(),
            feeds: Vec::new(),
            startup: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(3),
            operation_threads: 2,
            replica_gate: None,
            errors: Vec::new(),
        }
    }

    fn register<P: Params>(
        mut self,
        name: &str,
        kind: OpKind,
        docstring: &str,
        blocking: bool,
        run: Arc<dyn Fn(OpContext, P) -> OpFuture + Send + Sync>,
    ) -> Self {
        if let Err(err) = OpName::new(name) {
            self.errors.push(err.to_string());
            return self;
        }
        let op_name = name.to_owned();
        let prepare = Arc::new(move |bytes: &[u8]| -> Result<Launch, String> {
            let params: P = params::decode(&op_name, bytes)?;
            let run = run.clone();
            Ok(Box::new(move |ctx: OpContext| run(ctx, params)))
        });
        let spec = OpSpec {
            name: name.to_owned(),
            kind,
            docstring: docstring.to_owned(),
            blocking,
            params: P::describe(),
            prepare,
        };
        if let Err(err) = self.table.register(spec) {
            self.errors.push(err);
        }
        self
    }

    /// Registers a task: an async function that ends on its own. `abort`
    /// cancels [`OpContext::stopping`]; the task decides how to end.
    pub fn task<P, F, Fut>(self, name: &str, docstring: &str, function: F) -> Self
    where
        P: Params,
        F: Fn(OpContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        self.register_async(name, OpKind::Task, docstring, function)
    }

    /// Registers a task whose function blocks (synchronous I/O, long
    /// computations); it runs on a thread of its own.
    pub fn blocking_task<P, F>(self, name: &str, docstring: &str, function: F) -> Self
    where
        P: Params,
        F: Fn(OpContext, P) -> OpResult + Send + Sync + 'static,
    {
        let function = Arc::new(function);
        let run = Arc::new(move |ctx: OpContext, params: P| -> OpFuture {
            let function = function.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || function(ctx, params))
                    .await
                    .map_err(|err| -> BoxError { format!("CRASH: {err}").into() })?
            })
        });
        self.register(name, OpKind::Task, docstring, true, run)
    }

    /// Registers a process: an async function that runs until
    /// [`OpContext::stopping`] resolves (on `stop`), then returns.
    pub fn process<P, F, Fut>(self, name: &str, docstring: &str, function: F) -> Self
    where
        P: Params,
        F: Fn(OpContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        self.register_async(name, OpKind::Process, docstring, function)
    }

    fn register_async<P, F, Fut>(
        self,
        name: &str,
        kind: OpKind,
        docstring: &str,
        function: F,
    ) -> Self
    where
        P: Params,
        F: Fn(OpContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = OpResult> + Send + 'static,
    {
        let run = Arc::new(move |ctx: OpContext, params: P| -> OpFuture {
            Box::pin(function(ctx, params))
        });
        self.register(name, kind, docstring, false, run)
    }

    /// Starts `op_name` with `params` when the agent comes up (first start only).
    pub fn startup(mut self, op_name: &str, params: impl Serialize) -> Self {
        match to_msgpack(&params) {
            Ok(bytes) => self.startup.push((op_name.to_owned(), bytes)),
            Err(err) => self
                .errors
                .push(format!("startup params of {op_name:?}: {err}")),
        }
        self
    }

    /// Declares a feed the operations publish to with [`OpContext::publish`].
    pub fn feed(mut self, name: &str) -> Self {
        match FeedName::new(name) {
            Ok(_) => self.feeds.push(name.to_owned()),
            Err(err) => self.errors.push(err.to_string()),
        }
        self
    }

    /// The software version reported in heartbeats (default: this crate's).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The heartbeat period (default 1 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long running operations get to end on shutdown (default 3 s, as OCS).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Worker threads of the runtime that runs operations (default 2).
    pub fn operation_threads(mut self, threads: usize) -> Self {
        self.operation_threads = threads.max(1);
        self
    }

    /// Runs this process as one of several replicas of one address (a
    /// highly available service such as the registry). Requests are shared
    /// among the replicas through a NATS queue group, so any one answers; the
    /// address heartbeats only while `may_speak` says this replica leads, so
    /// the registry sees one incarnation, not a conflict. Replicas keep no
    /// session journal: a standby would otherwise mark the leader's running
    /// session as left behind by a dead process.
    pub fn replicated(mut self, may_speak: ReplicaGate) -> Self {
        self.replica_gate = Some(may_speak);
        self
    }

    /// Checks the definition and binds it to an address.
    pub fn build(mut self, address: AgentAddress) -> Result<Agent, AgentError> {
        for (op_name, _) in &self.startup {
            if self.table.status(op_name).status == ResponseCode::Error {
                self.errors
                    .push(format!("startup operation {op_name:?} is not registered"));
            }
        }
        let longest = Duration::from_millis(u64::from(
            ocs_protocol::heartbeat::MAX_HEARTBEAT_INTERVAL_MS,
        ));
        if self.interval.is_zero() || self.interval > longest {
            self.errors.push(format!(
                "heartbeat interval must be positive and at most {longest:?} (the registry drops longer ones)"
            ));
        }
        if !self.errors.is_empty() {
            return Err(AgentError::Definition(
                std::mem::take(&mut self.errors).join("; "),
            ));
        }
        Ok(Agent {
            builder: self,
            address,
        })
    }
}

impl Agent {
    /// Shortcut for [`AgentBuilder::new`].
    pub fn builder(agent_class: impl Into<String>) -> AgentBuilder {
        AgentBuilder::new(agent_class)
    }

    /// The agent's address.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// Serves operation requests and heartbeats until `shutdown` is cancelled,
    /// then stops running operations within the grace period, sends the
    /// "leaving" heartbeat and flushes.
    pub async fn run(
        self,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<(), AgentError> {
        let Agent { builder, address } = self;
        let feeds = builder
            .feeds
            .iter()
            .map(|name| {
                let feed_name = FeedName::new(name.as_str()).expect("validated by the builder");
                (
                    name.clone(),
                    (subject::feed(&address, &feed_name), AtomicU64::new(0)),
                )
            })
            .collect();
        let shared = Arc::new(AgentShared {
            identity: Identity {
                address: address.clone(),
                agent_class: builder.agent_class,
                incarnation: Uuid::new_v4(),
                host: hostname(),
                pid: std::process::id(),
                version: builder.version,
                interval: builder.interval,
                started: Instant::now(),
            },
            client: client.clone(),
            table: Mutex::new(builder.table),
            feeds,
            heartbeat_on: AtomicBool::new(true),
            replica_gate: builder.replica_gate.clone(),
            op_codes_changed: Notify::new(),
            sessions_changed: Notify::new(),
        });
        // Operations get a runtime of their own: one that blocks or spins
        // cannot starve the heartbeat or the request loop.
        let operations_runtime = OperationsRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(builder.operation_threads)
                .thread_name("ocs-operation")
                .enable_all()
                .build()?,
        ));
        let operations = operations_runtime.handle();

        let ops_subject = subject::all_operations(&address);
        let api_subject = subject::api(&address);
        // Replicas of one address share its requests: one of them answers each.
        let queue_group = builder.replica_gate.is_some().then(|| address.to_string());
        let queue_group = queue_group.as_deref();
        let mut op_requests = subscribe(&client, &ops_subject, queue_group).await?;
        let mut api_requests = subscribe(&client, &api_subject, queue_group).await?;
        let mut ping_requests = subscribe(&client, &subject::ping(&address), queue_group).await?;

        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat::run(shared.clone(), heartbeat_stop.clone()));
        info!(
            address = %address,
            class = %shared.identity.agent_class,
            incarnation = %shared.identity.incarnation,
            "agent up"
        );
        // The journal opens and restores in the background: neither the first
        // heartbeat nor the startup operations wait for JetStream. Restoring
        // never replaces a session this incarnation already has.
        let journal_stop = CancellationToken::new();
        let journal = if builder.replica_gate.is_none() {
            tokio::spawn(keep_journal(
                shared.clone(),
                client.clone(),
                journal_stop.clone(),
            ))
        } else {
            tokio::spawn(async {})
        };
        for (op_name, params) in &builder.startup {
            let reply = start_operation(&shared, &operations, op_name, params);
            info!(op = %op_name, status = reply.status.name(), message = %reply.message, "startup operation");
        }

        let requests = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(message) = op_requests.next() => {
                    requests.spawn(handle_operation_request(shared.clone(), operations.clone(), shutdown.clone(), message));
                }
                Some(message) = api_requests.next() => {
                    requests.spawn(handle_api_request(shared.clone(), message));
                }
                Some(message) = ping_requests.next() => {
                    requests.spawn(handle_ping_request(shared.clone(), message));
                }
            }
        }

        info!("shutting down: no new requests, stopping operations");
        let _ = op_requests.unsubscribe().await;
        let _ = api_requests.unsubscribe().await;
        let _ = ping_requests.unsubscribe().await;
        let asked = shared.table().stop_all(now_unix());
        shared.changed();
        let deadline = tokio::time::Instant::now() + builder.shutdown_grace;
        while shared.table().any_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if shared.table().any_running() {
            warn!(grace = ?builder.shutdown_grace, "operations still running after the grace period; abandoning them");
        } else if asked > 0 {
            info!(operations = asked, "operations stopped");
        }
        // The last journal writes, the goodbye and the flush share one short
        // deadline: with NATS unreachable each would otherwise wait out its
        // own timeout, and the process would outlive its stop timeout.
        let wind_down = tokio::time::Instant::now() + WIND_DOWN;
        requests.close();
        let _ = tokio::time::timeout(Duration::from_millis(500), requests.wait()).await;
        journal_stop.cancel();
        finish_by(wind_down, journal, "the session journal").await;
        heartbeat_stop.cancel();
        finish_by(wind_down, heartbeat, "the leaving heartbeat").await;
        if client.connection_state() == async_nats::connection::State::Connected
            && tokio::time::timeout_at(wind_down, client.flush())
                .await
                .is_err()
        {
            warn!("flushing NATS timed out");
        }
        drop(operations_runtime);
        info!("agent stopped");
        Ok(())
    }
}

/// How long an agent spends, after its operations ended, on its last
/// journal writes, its leaving heartbeat and flushing NATS, all together.
const WIND_DOWN: Duration = Duration::from_secs(1);

/// Waits for `task` until `deadline`, then abandons it.
async fn finish_by(
    deadline: tokio::time::Instant,
    mut task: tokio::task::JoinHandle<()>,
    what: &str,
) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        warn!("{what} did not finish in time on shutdown (NATS unreachable?); abandoning it");
        task.abort();
    }
}

/// Opens the journal, restores the last sessions, then stores every change
/// until `stop`.
async fn keep_journal(
    shared: Arc<AgentShared>,
    client: async_nats::Client,
    stop: CancellationToken,
) {
    let incarnation = shared.identity.incarnation.to_string();
    let mut warned = false;
    let journal = loop {
        let reason = tokio::select! {
            _ = stop.cancelled() => return,
            journal = Journal::open(&client, &shared.identity.address, incarnation.clone()) => match journal {
                Ok(journal) => break journal,
                Err(reason) => reason,
            },
        };
        if !warned {
            warn!(%reason, "no session journal (JetStream KV) yet: sessions will not outlive this process until it opens; retrying");
            warned = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(JOURNAL_RETRY) => {}
        }
    };
    if warned {
        info!("session journal opened");
    }
    restore_sessions(&shared, &journal).await;
    record_sessions(shared, journal, stop).await;
}

/// How often an agent without its journal tries to open it again.
const JOURNAL_RETRY: Duration = Duration::from_secs(5);

/// Reads back the last session of every operation: a finished one is shown
/// again, one a dead incarnation left running is marked FAILED (and stored so).
async fn restore_sessions(shared: &Arc<AgentShared>, journal: &Journal) {
    let incarnation = shared.identity.incarnation.to_string();
    let op_names = shared.table().op_names();
    let mut restored = 0;
    for op_name in op_names {
        let stored = match journal.last(&op_name).await {
            Ok(Some(stored)) => stored,
            Ok(None) => continue,
            Err(reason) => {
                warn!(op = %op_name, %reason, "cannot read the last session");
                continue;
            }
        };
        let Some((stored, changed)) = journal::recover(stored, &incarnation, now_unix()) else {
            continue;
        };
        if changed {
            warn!(op = %op_name, dead = %stored.incarnation, "the last run was cut short by the agent's death: marked FAILED");
            if let Err(reason) = journal.put(stored.clone()).await {
                warn!(op = %op_name, %reason, "cannot store the failed session");
            }
        }
        if let Some(session) = &stored.session
            && shared.table().restore(session)
        {
            restored += 1;
        }
    }
    if restored > 0 {
        info!(
            sessions = restored,
            "restored the last sessions of earlier incarnations"
        );
        shared.changed();
    }
}

/// Stores every session change until `stop`, then once more (the final
/// states after shutdown stopped the operations). Looks every
/// [`BUCKET_CHECK`] (and after a failed write) whether the bucket is still
/// there; one that vanished is created again and every session put back.
async fn record_sessions(shared: Arc<AgentShared>, mut journal: Journal, stop: CancellationToken) {
    // (session id, status, success, degraded) last stored per operation.
    let mut stored: HashMap<String, (u64, String, Option<bool>, bool)> = HashMap::new();
    let mut failing = false;
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + BUCKET_CHECK, BUCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shared.sessions_changed.notified() => false,
            _ = check.tick() => {
                if journal.reopen().await == Ok(true) {
                    warn!("the session journal's bucket is new (the JetStream store was lost?): storing every session anew");
                    stored.clear();
                }
                false
            }
            _ = stop.cancelled() => true,
        };
        let sessions = shared.table().sessions();
        for session in sessions {
            let signature = (
                session.session_id,
                session.status.clone(),
                session.success,
                session.degraded,
            );
            if stored.get(&session.op_name) == Some(&signature) {
                continue;
            }
            let op_name = session.op_name.clone();
            match journal.record(session).await {
                Ok(()) => {
                    stored.insert(op_name, signature);
                    failing = false;
                }
                Err(reason) => {
                    if !failing {
                        warn!(op = %op_name, %reason, "cannot store the session; retrying");
                        failing = true;
                    }
                    // The next check comes soon, and re-creates a vanished bucket.
                    check.reset_after(JOURNAL_RETRY.min(BUCKET_CHECK));
                    break;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// How often the journal makes sure its bucket still exists.
const BUCKET_CHECK: Duration = Duration::from_secs(10);

/// The runtime operations run on. Dropping a runtime inside async code
/// panics, and `Agent::run` may be dropped mid-flight (a cancelled task), so
/// it is always shut down in the background: operations still running are
/// abandoned, which is what shutdown wants after the grace period.
struct OperationsRuntime(Option<tokio::runtime::Runtime>);

impl OperationsRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("present until dropped")
            .handle()
            .clone()
    }
}

impl Drop for OperationsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
    queue_group: Option<&str>,
) -> Result<async_nats::Subscriber, AgentError> {
    match queue_group {
        Some(group) => {
            client
                .queue_subscribe(subject.to_owned(), group.to_owned())
                .await
        }
        None => client.subscribe(subject.to_owned()).await,
    }
    .map_err(|err| AgentError::Subscribe {
        subject: subject.to_owned(),
        reason: err.to_string(),
    })
}

fn hostname() -> String {
    ocs_service::lifecycle::hostname()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Starts an operation and spawns it on the operations runtime.
fn start_operation(
    shared: &Arc<AgentShared>,
    operations: &tokio::runtime::Handle,
    op_name: &str,
    params: &[u8],
) -> Reply {
    let started = match shared.table().start(op_name, params, now_unix()) {
        Ok(started) => started,
        Err(reply) => return reply,
    };
    let ctx = OpContext {
        shared: shared.clone(),
        op_name: Arc::from(op_name),
        session_id: started.session_id,
        stop: started.stop,
    };
    shared.changed();
    let future = (started.launch)(ctx.clone());
    operations.spawn(async move {
        ctx.mark_running();
        let outcome = AssertUnwindSafe(future).catch_unwind().await;
        let (success, message) = match outcome {
            Ok(Ok(message)) => (true, message),
            Ok(Err(error)) => (false, error.to_string()),
            Err(panic) => (false, format!("CRASH: {}", panic_message(&panic))),
        };
        if !success {
            warn!(op = %ctx.op_name, session = ctx.session_id, %message, "operation failed");
        }
        ctx.shared
            .table()
            .finish(&ctx.op_name, ctx.session_id, success, message, now_unix());
        ctx.shared.changed();
    });
    started.reply
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "operation panicked".to_owned())
}

async fn handle_operation_request(
    shared: Arc<AgentShared>,
    operations: tokio::runtime::Handle,
    shutdown: CancellationToken,
    message: async_nats::Message,
) {
    let Some(reply_to) = message.reply.clone() else {
        warn!(subject = %message.subject, "operation request without a reply subject; dropped");
        return;
    };
    let reply = operation_reply(&shared, &operations, &shutdown, &message).await;
    let payload = reply.encode_within(ocs_service::connect::max_payload(&shared.client));
    if let Err(err) = shared.client.publish(reply_to, payload.into()).await {
        warn!(error = %err, "cannot send reply");
    }
}

async fn operation_reply(
    shared: &Arc<AgentShared>,
    operations: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
    message: &async_nats::Message,
) -> Reply {
    let Some((action, op_name)) =
        subject::parse_operation(&shared.identity.address, &message.subject)
    else {
        return error_reply(format!(
            "malformed operation subject {:?}",
            message.subject.as_str()
        ));
    };
    let Some(action) = Action::parse(action) else {
        return error_reply(format!("No implementation for \"{op_name}\""));
    };
    let request: proto::OperationRequest = if message.payload.is_empty() {
        // An empty body is version 1 with no params (PROTOCOL.md), for
        // callers such as `nats req` that send nothing.
        proto::OperationRequest {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            ..Default::default()
        }
    } else {
        match codec::decode(&message.payload, MAX_MESSAGE_BYTES) {
            Ok(request) => request,
            Err(err) => return error_reply(format!("malformed request: {err}")),
        }
    };
    match action {
        Action::Start => start_operation(shared, operations, op_name, &request.params),
        Action::Stop | Action::Abort => {
            let reply = shared.table().request_stop(op_name, action, now_unix());
            shared.changed();
            reply
        }
        Action::Status => {
            // A session's data may be computed on request (the registry's
            // table of every agent): off the async workers, so that a large
            // one cannot starve the tasks queued behind it on this worker.
            let (shared, op_name) = (shared.clone(), op_name.to_owned());
            tokio::task::spawn_blocking(move || shared.table().status(&op_name))
                .await
                .unwrap_or_else(|err| error_reply(format!("status failed: {err}")))
        }
        Action::Wait => match request.timeout {
            // A NaN or infinite timeout has no deadline to sleep until; OCS's
            // clients never send one, so it is a broken or hostile caller.
            Some(seconds) if !seconds.is_finite() => error_reply(format!(
                "malformed request: wait timeout must be a finite number of seconds, got {seconds}"
            )),
            timeout => wait(shared, shutdown, op_name, timeout).await,
        },
    }
}

/// OCS `wait`: until the session is done, the timeout passes, or the agent shuts down.
async fn wait(
    shared: &AgentShared,
    shutdown: &CancellationToken,
    op_name: &str,
    timeout: Option<f64>,
) -> Reply {
    let deadline = timeout.map(|seconds| {
        tokio::time::Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 1e9))
    });
    loop {
        let expired = deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline);
        let mut finished = match shared.table().wait_state(op_name, expired) {
            WaitState::Reply(reply) => return reply,
            WaitState::Running(finished) => finished,
        };
        let until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = finished.changed() => {}
            _ = until_deadline => {}
            _ = shutdown.cancelled() => {
                // Answer with the current state rather than leaving the client hanging.
                let reply = shared.table().wait_state(op_name, true);
                if let WaitState::Reply(reply) = reply { return reply; }
            }
        }
    }
}

fn error_reply(message: String) -> Reply {
    Reply {
        status: ResponseCode::Error,
        message,
        session: None,
    }
}

async fn handle_ping_request(shared: Arc<AgentShared>, message: async_nats::Message) {
    let Some(reply_to) = message.reply else {
        return;
    };
    let identity = &shared.identity;
    let ping = proto::PingReply {
        protocol_version: ocs_protocol::PROTOCOL_VERSION,
        agent_address: identity.address.to_string(),
        incarnation: identity.incarnation.to_string(),
        uptime_ms: uptime_ms(identity),
        agent_version: identity.version.clone(),
    };
    if let Err(err) = shared
        .client
        .publish(reply_to, codec::encode(&ping).into())
        .await
    {
        warn!(error = %err, "cannot send ping reply");
    }
}

fn uptime_ms(identity: &Identity) -> u64 {
    identity
        .started
        .elapsed()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

async fn handle_api_request(shared: Arc<AgentShared>, message: async_nats::Message) {
    let Some(reply_to) = message.reply else {
        return;
    };
    let identity = &shared.identity;
    let api = proto::ApiReply {
        protocol_version: ocs_protocol::PROTOCOL_VERSION,
        agent_address: identity.address.to_string(),
        agent_class: identity.agent_class.clone(),
        host: identity.host.clone(),
        pid: identity.pid,
        agent_version: identity.version.clone(),
        incarnation: identity.incarnation.to_string(),
        operations: shared.table().describe(),
        feeds: shared.feeds.keys().cloned().collect(),
        uptime_ms: uptime_ms(identity),
    };
    if let Err(err) = shared
        .client
        .publish(reply_to, codec::encode(&api).into())
        .await
    {
        warn!(error = %err, "cannot send api reply");
    }
}
