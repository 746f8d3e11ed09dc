//! The registry's `main` process: heartbeats in, expiries and the
//! `agent_operations` feed out. Only moves messages; decisions are in [`AgentTable`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use futures::{FutureExt, StreamExt};
use ocs_agent::{OpContext, OpResult};
use ocs_protocol::codec::{self, CodecError};
use ocs_protocol::{AddressRoot, AgentAddress, heartbeat, proto, subject};
use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::lease::{self, SharedLease};
use crate::metrics::{DropReason, KindLabel, RegistryMetrics};
use crate::records;
use crate::store::{self, AgentStore, PendingWrites};
use crate::table::{AgentTable, Observation, TableConfig};
use crate::vigil::{Change, Vigil};

/// Records per feed message; keeps a snapshot of any size under NATS's 1 MiB payload limit.
pub const RECORDS_PER_MESSAGE: usize = 1000;
/// Heartbeats handled before expiries are checked and changes published.
const BATCH: usize = 1024;
/// Housekeeping: counts for the metrics, flapping settled; also the
/// longest the loop sleeps, which [`crate::vigil::STALL`] relies on.
const HOUSEKEEPING: Duration = Duration::from_millis(250);

/// What the `main` process needs to know.
pub(crate) struct Settings {
    pub(crate) root: AddressRoot,
    pub(crate) address: AgentAddress,
    pub(crate) table: TableConfig,
    pub(crate) wait_time: Duration,
    pub(crate) max_heartbeat_bytes: usize,
    /// Heartbeats the NATS client holds for the loop (`--heartbeat-buffer`).
    pub(crate) heartbeat_buffer: usize,
    /// Copies of each record (and of the lease) in a NATS cluster.
    pub(crate) kv_replicas: usize,
    /// Whether this replica leads (always, without `--ha`).
    pub(crate) lease: SharedLease,
    /// What the NATS client reported going wrong, for the metrics.
    pub(crate) bus_events: Arc<ocs_service::connect::BusEvents>,
}

/// The task publishing a snapshot's parts, and whether it is done: set by
/// the task before it wakes the loop, where `JoinHandle::is_finished` could
/// still say no and leave the waiting changes for the next wake-up.
struct SnapshotInFlight {
    task: tokio::task::JoinHandle<()>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl SnapshotInFlight {
    fn done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Logs the first drop of each reason with its context, then a count at most once a minute,
/// so a flood of bad input cannot flood the log.
struct DropLog {
    last: HashMap<DropReason, (Instant, u64)>,
}

impl DropLog {
    fn note(&mut self, reason: DropReason, subject: &str, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        match self.last.get_mut(&reason) {
            None => {
                warn!(?reason, subject, %detail, "dropping heartbeat (further drops of this kind are summarised)");
                self.last.insert(reason, (now, 0));
            }
            Some((since, suppressed)) => {
                *suppressed += 1;
                if now.duration_since(*since) >= Duration::from_secs(60) {
                    warn!(?reason, dropped = *suppressed, last_subject = subject, %detail, "heartbeats dropped in the last minute");
                    *since = now;
                    *suppressed = 0;
                }
            }
        }
    }
}

struct MainProcess {
    settings: Arc<Settings>,
    metrics: Arc<RegistryMetrics>,
    table: Arc<Mutex<AgentTable>>,
    /// The table's counts by state and class, for unfiltered summaries.
    summary: Arc<Mutex<records::SummaryIndex>>,
    client: async_nats::Client,
    feed_subject: String,
    incarnation: String,
    seq: u64,
    changed: BTreeSet<String>,
    forgotten: Vec<String>,
    /// Deadlines of the agents expired since the last publish, for the lateness metric.
    expired_deadlines: Vec<Instant>,
    /// A snapshot's parts are being published by a task of their own; see
    /// [`MainProcess::publish_snapshot`].
    snapshot_in_flight: Option<SnapshotInFlight>,
    /// Notified when a snapshot's last part is out, so the changes that
    /// waited go out at once.
    snapshot_sent: Arc<tokio::sync::Notify>,
    drops: DropLog,
    /// Records to write to the KV bucket, while leading.
    pending_writes: Arc<PendingWrites>,
    /// Whether silence may count as death now.
    vigil: Vigil,
    /// Whether this replica holds the lease (always, without replicas), as
    /// of the last change the election sent.
    leading: bool,
    /// When the stored records were taken back, or `None` while JetStream
    /// has not answered yet.
    records_back: Option<Instant>,
    /// When this process started listening to heartbeats.
    listening_since: Instant,
}

fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The `main` process: runs until stopped.
pub(crate) async fn main_process(
    ctx: OpContext,
    settings: Arc<Settings>,
    metrics: Arc<RegistryMetrics>,
    mut leading: tokio::sync::watch::Receiver<bool>,
) -> OpResult {
    let table = Arc::new(Mutex::new(AgentTable::new(settings.table.clone())));
    let client = ctx.client().clone();
    let records_subject = subject::registry_records(&settings.address);
    // Counts of the whole table, kept as changes are published.
    let summary = Arc::new(Mutex::new(records::SummaryIndex::default()));
    let (view, counts) = (table.clone(), summary.clone());
    let (limit, subject_name) = (
        ocs_service::connect::max_payload(&client),
        records_subject.clone(),
    );
    ctx.set_data_source(Arc::new(move || {
        let status = records::StatusView::of(&view.lock(), &counts.lock(), limit);
        status.data(limit, &subject_name)
    }));
    let mut heartbeats = client
        .subscribe(subject::all_heartbeats(&settings.root))
        .await
        .map_err(|err| format!("cannot subscribe to heartbeats: {err}"))?;
    let mut snapshot_requests = client
        .subscribe(subject::snapshot_request(&settings.address))
        .await
        .map_err(|err| format!("cannot subscribe to snapshot requests: {err}"))?;
    // Replicas share the address, so a query reaches one of them.
    let records_queries = client
        .queue_subscribe(records_subject, settings.address.to_string())
        .await
        .map_err(|err| format!("cannot subscribe to records queries: {err}"))?;
    let answering = tokio::spawn(answer_records_queries(
        client.clone(),
        table.clone(),
        summary.clone(),
        records_queries,
    ));
    let mut last_requested_snapshot: Option<Instant> = None;
    let mut main = MainProcess {
        feed_subject: subject::agent_operations(&settings.address),
        incarnation: ctx.incarnation().to_string(),
        settings: settings.clone(),
        metrics,
        table,
        summary,
        client: client.clone(),
        seq: 0,
        changed: BTreeSet::new(),
        forgotten: Vec::new(),
        expired_deadlines: Vec::new(),
        snapshot_in_flight: None,
        snapshot_sent: Arc::new(tokio::sync::Notify::new()),
        drops: DropLog {
            last: HashMap::new(),
        },
        pending_writes: Arc::new(PendingWrites::default()),
        vigil: Vigil::new(
            Instant::now(),
            client.connection_state() == State::Connected,
        ),
        leading: lease::leads(&settings.lease),
        records_back: None,
        listening_since: Instant::now(),
    };
    // The stored records arrive once JetStream answers; heartbeats are
    // handled meanwhile, and a record heard live wins over a stored one.
    let storage_stop = tokio_util::sync::CancellationToken::new();
    let (restored_tx, mut restored_rx) = tokio::sync::oneshot::channel();
    let bucket_recreated = Arc::new(tokio::sync::Notify::new());
    let storage = tokio::spawn(keep_records(
        client.clone(),
        settings.clone(),
        main.pending_writes.clone(),
        main.metrics.clone(),
        restored_tx,
        bucket_recreated.clone(),
        storage_stop.clone(),
    ));
    main.metrics
        .leader
        .set(i64::from(lease::leads(&settings.lease)));
    info!(subject = %subject::all_heartbeats(&settings.root), timeout = ?settings.table.agent_timeout, "registry main process running");

    let mut snapshots =
        tokio::time::interval_at(Instant::now() + settings.wait_time, settings.wait_time);
    snapshots.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let snapshot_sent = main.snapshot_sent.clone();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let connected = client.connection_state() == State::Connected;
        main.metrics.nats_connected.set(i64::from(connected));
        let (next_deadline, change) = {
            let mut table = main.table.lock();
            main.vigil.look(Instant::now(), connected, &mut table)
        };
        main.metrics.cut_off.set(i64::from(!main.vigil.hearing()));
        if let Some(change) = change {
            main.report(change, &ctx);
            if change == Change::Regained {
                main.publish_snapshot().await;
            }
        }
        tokio::select! {
            biased;
            _ = ctx.stopping() => break,
            _ = sleep_until(next_deadline), if next_deadline.is_some() => {
                let stalled = {
                    let mut table = main.table.lock();
                    main.vigil.at_deadline(Instant::now(), &mut table)
                };
                if let Some(stalled) = stalled {
                    main.report(stalled, &ctx);
                }
                // Heartbeats already queued arrived before the deadline; count
                // them all first, or a registry that fell behind would expire
                // agents whose heartbeats it holds.
                main.drain_ready(&mut heartbeats, settings.heartbeat_buffer);
                main.expire_and_forget();
                let hold = main.vigil.after_expiries(&main.table.lock());
                if let Some(hold) = hold {
                    main.report(hold, &ctx);
                }
            }
            _ = snapshots.tick() => main.publish_snapshot().await,
            // The changes that waited for a snapshot go out at the end of this turn.
            _ = snapshot_sent.notified() => {}
            Some(request) = snapshot_requests.next() => {
                // At most one on-demand snapshot per second, however many consumers restart at once.
                let now = Instant::now();
                if last_requested_snapshot.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                    last_requested_snapshot = Some(now);
                    main.publish_snapshot().await;
                }
                if let Some(reply) = request.reply {
                    let _ = client.publish(reply, bytes::Bytes::new()).await;
                }
            }
            stored = &mut restored_rx, if main.records_back.is_none() => {
                main.records_back = Some(Instant::now());
                if let Ok(stored) = stored {
                    main.restore(stored);
                    main.publish_snapshot().await;
                }
            }
            _ = bucket_recreated.notified() => {
                // The stored records were lost with the bucket: put back what we know.
                if main.leads() {
                    main.store_all();
                }
            }
            Ok(()) = leading.changed() => {
                let leads = *leading.borrow_and_update();
                main.leading = leads;
                main.metrics.leader.set(i64::from(leads));
                if leads {
                    info!("leading: this replica publishes the feed and keeps the records");
                    main.store_all();
                    main.publish_snapshot().await;
                } else {
                    warn!("not leading: another replica publishes the feed");
                }
            }
            _ = housekeeping.tick() => {
                let census = main.table.lock().census(Instant::now());
                main.metrics.set_agent_counts((census.alive, census.expired, census.left), census.conflicts);
                main.metrics.sync_bus_events(&settings.bus_events);
                main.metrics.flapping.set(census.flapping as i64);
                main.metrics.unverified.set(census.unverified as i64);
                main.changed.extend(census.settled);
            }
            // Last: under a flood of heartbeats the rarer branches above still get their turn.
            message = heartbeats.next() => {
                let Some(message) = message else {
                    return Err("heartbeat subscription closed".into());
                };
                main.handle(&message);
                main.drain_ready(&mut heartbeats, BATCH);
            }
        }
        main.publish_changes().await;
        main.note_expiry_lateness();
        main.vigil.awake(Instant::now());
    }
    answering.abort();
    if let Some(in_flight) = main.snapshot_in_flight.take() {
        in_flight.task.abort();
    }
    storage_stop.cancel();
    // The last writes get a moment; with JetStream unreachable they would
    // hold the stop past any sensible grace period.
    if tokio::time::timeout(Duration::from_secs(1), storage)
        .await
        .is_err()
    {
        warn!(
            "the last record writes did not finish in time on shutdown; the next leader rewrites them"
        );
    }
    Ok("Stopped registry main process".into())
}

/// Answers records queries, a page each, from the table the main loop keeps.
async fn answer_records_queries(
    client: async_nats::Client,
    table: Arc<Mutex<AgentTable>>,
    summary: Arc<Mutex<records::SummaryIndex>>,
    mut queries: async_nats::Subscriber,
) {
    while let Some(query) = queries.next().await {
        let Some(reply_to) = query.reply else {
            continue;
        };
        // Room for the reply's subject and headers under the server's limit.
        let limit = ocs_service::connect::max_payload(&client).saturating_sub(4096);
        let page =
            match codec::decode::<proto::RecordsQuery>(&query.payload, codec::MAX_MESSAGE_BYTES)
                .map_err(|err| format!("malformed records query: {err}"))
                .and_then(|query| records::RecordsFilter::parse(&query, limit))
            {
                Ok(filter) => filter.page(&table.lock(), &summary.lock()),
                Err(error) => proto::RecordsPage {
                    protocol_version: ocs_protocol::PROTOCOL_VERSION,
                    error,
                    ..Default::default()
                },
            };
        if let Err(err) = client.publish(reply_to, codec::encode(&page).into()).await {
            warn!(error = %err, "cannot send a records page");
        }
    }
}

/// Opens the KV bucket (retrying until JetStream answers), hands the stored
/// records to the main loop, then writes what the main loop queues.
async fn keep_records(
    client: async_nats::Client,
    settings: Arc<Settings>,
    pending: Arc<PendingWrites>,
    metrics: Arc<RegistryMetrics>,
    restored: tokio::sync::oneshot::Sender<Vec<proto::StoredAgent>>,
    recreated: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut complained = false;
    let (store, records) = loop {
        let attempt = async {
            let store = AgentStore::open(&client, &settings.address, settings.kv_replicas).await?;
            let loaded = store.load().await?;
            Ok::<_, String>((store, loaded))
        };
        match attempt.await {
            Ok((store, (records, unreadable))) => {
                if unreadable > 0 {
                    warn!(unreadable, "skipped unreadable stored agent records");
                }
                info!(records = records.len(), "read the stored agent records");
                break (store, records);
            }
            Err(err) => {
                metrics.store_failing.set(1);
                if !complained {
                    warn!(error = %err, "cannot read the stored agent records (JetStream KV); tracking from heartbeats alone until it answers");
                    complained = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    metrics.store_failing.set(0);
    let _ = restored.send(records);
    store::write_loop(store, pending, metrics, recreated, stop).await;
}

/// Queues the current stored form of each of `addresses` for the KV bucket.
fn queue_writes<'a>(
    pending: &PendingWrites,
    table: &AgentTable,
    addresses: impl Iterator<Item = &'a str>,
) {
    let now = Instant::now();
    let now_unix = now_unix_ms();
    for address in addresses {
        if let Some(stored) = table.stored(address, now, now_unix) {
            pending.put(&stored);
        }
    }
}

/// Publishes one feed message, counting it or its failure; gives up after a
/// second (a failed change is repaired by the next snapshot).
async fn publish_feed(
    client: &async_nats::Client,
    subject: &str,
    metrics: &RegistryMetrics,
    message: &proto::AgentOperations,
    kind: &'static str,
) -> bool {
    let published = client.connection_state() == State::Connected
        && matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                client.publish(subject.to_owned(), codec::encode(message).into()),
            )
            .await,
            Ok(Ok(()))
        );
    if published {
        metrics
            .feed_messages
            .get_or_create(&KindLabel { kind })
            .inc();
    } else {
        metrics.feed_failures.inc();
    }
    published
}

/// Resolves at `deadline`, at once if it has passed: a timer registered
/// for a moment the runtime's timer wheel has not reached yet (it learns
/// the time when its driver turns, which a busy loop delays) would wait
/// for that turn.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) if deadline <= Instant::now() => {}
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl MainProcess {
    /// Logs a change of the registry's alertness and sets its metrics.
    fn report(&self, change: Change, ctx: &OpContext) {
        match change {
            Change::Regained => {
                info!("hearing the bus again; every agent gets a fresh timeout");
            }
            Change::CutOff { connected } => warn!(
                connected,
                "cut off from the bus (disconnected, or our own heartbeat no longer comes back): holding expiries"
            ),
            Change::Stalled { asleep } => {
                self.metrics.stalls.inc();
                warn!(
                    ?asleep,
                    "this process did not run for a while (stopped or starved); every agent gets a fresh timeout"
                );
            }
            Change::HoldStarted | Change::HoldEnded => {
                let holding = change == Change::HoldStarted;
                self.metrics.self_preservation.set(i64::from(holding));
                ctx.set_degraded(holding);
                if holding {
                    warn!(
                        "most agents fell silent at once: holding expiries (self-preservation) until heartbeats return"
                    );
                    ctx.log("Most agents fell silent at once: holding expiries until heartbeats return (self-preservation).");
                } else {
                    info!("heartbeats returned: expiries resume, every agent with a fresh timeout");
                    ctx.log(
                        "Heartbeats returned: expiries resume, every agent with a fresh timeout.",
                    );
                }
            }
        }
    }

    /// Handles the heartbeats already queued, at most `limit`; returns how many.
    fn drain_ready(&mut self, heartbeats: &mut async_nats::Subscriber, limit: usize) -> usize {
        for handled in 0..limit {
            match heartbeats.next().now_or_never() {
                Some(Some(message)) => self.handle(&message),
                _ => return handled,
            }
        }
        limit
    }

    fn drop_heartbeat(
        &mut self,
        reason: DropReason,
        subject: &str,
        detail: &dyn std::fmt::Display,
    ) {
        self.metrics.dropped(reason);
        self.drops.note(reason, subject, detail);
    }

    /// Validates one heartbeat and records it. O(log n) per message.
    fn handle(&mut self, message: &async_nats::Message) {
        self.metrics.heartbeats_received.inc();
        let subject = message.subject.as_str();
        let Some(instance_id) = subject::instance_id_of_heartbeat(&self.settings.root, subject)
        else {
            return self.drop_heartbeat(
                DropReason::address_mismatch,
                subject,
                &"subject is not a heartbeat subject under the address root",
            );
        };
        let heartbeat = match heartbeat::read(&message.payload, self.settings.max_heartbeat_bytes) {
            Ok(heartbeat) => heartbeat,
            Err(err) => {
                let reason = match err {
                    CodecError::TooLarge { .. } => DropReason::oversized,
                    CodecError::Protobuf(_) | CodecError::Malformed(_) => DropReason::undecodable,
                    CodecError::UnsupportedVersion { .. } => DropReason::unsupported_version,
                    _ => DropReason::invalid,
                };
                return self.drop_heartbeat(reason, subject, &err);
            }
        };
        let address_matches = heartbeat
            .agent_address
            .split_once('.')
            .is_some_and(|(root, iid)| root == self.settings.root.as_str() && iid == instance_id);
        if !address_matches {
            let detail = format!("payload claims {}", heartbeat.agent_address);
            return self.drop_heartbeat(DropReason::address_mismatch, subject, &detail);
        }
        if !self.leading || heartbeat.agent_address == self.settings.address.as_str() {
            // Ours, or (with replicas) the leader's: either proves the bus
            // carries heartbeats to us. While another replica leads, so does
            // any agent's: the leader itself may be the one cut off, and a
            // replica that took its silence for its own would hold expiries
            // and, on taking over, give every agent a fresh timeout, so that
            // agents that died meanwhile were shown dead a timeout late (the
            // fault campaign's seed 281485).
            self.vigil.own_heartbeat_heard(Instant::now());
        }
        let observation = self
            .table
            .lock()
            .observe(&heartbeat, Instant::now(), now_unix_ms());
        match observation {
            Observation::New | Observation::Changed => {
                if observation == Observation::New {
                    info!(agent = %heartbeat.agent_address, class = %heartbeat.agent_class, "new agent");
                }
                self.changed.insert(heartbeat.agent_address.to_owned());
            }
            Observation::Refreshed => {}
            Observation::Resynced => {
                self.metrics.seq_resyncs.inc();
                warn!(
                    agent = %heartbeat.agent_address,
                    seq = heartbeat.seq,
                    "accepted a heartbeat with an out-of-range seq after its incarnation fell silent (an earlier beat carried a forged or corrupt seq)"
                );
                self.changed.insert(heartbeat.agent_address.to_owned());
            }
            Observation::Stale => self.drop_heartbeat(
                DropReason::stale,
                subject,
                &format!("seq {}", heartbeat.seq),
            ),
            Observation::SeqJump => self.drop_heartbeat(
                DropReason::seq_jump,
                subject,
                &format!("seq {} runs too far ahead", heartbeat.seq),
            ),
            Observation::TableFull => {
                self.drop_heartbeat(DropReason::table_full, subject, &"table full")
            }
            Observation::InvalidIncarnation => {
                self.drop_heartbeat(DropReason::invalid, subject, &"incarnation is not a UUID")
            }
            Observation::RateLimited => self.drop_heartbeat(
                DropReason::rate_limited,
                subject,
                &format!(
                    "faster than {} per second",
                    self.settings.table.max_heartbeat_rate
                ),
            ),
            Observation::Conflict { new } => {
                self.metrics.conflicting_heartbeats.inc();
                if new {
                    warn!(
                        agent = %heartbeat.agent_address,
                        incarnation = %heartbeat.incarnation,
                        host = %heartbeat.host,
                        pid = heartbeat.pid,
                        "two incarnations heartbeat at this address: the instance runs twice"
                    );
                    self.changed.insert(heartbeat.agent_address.to_owned());
                }
            }
        }
    }

    fn expire_and_forget(&mut self) {
        let now = Instant::now();
        let (expiries, forgotten) = {
            let mut table = self.table.lock();
            (table.expire_due(now, now_unix_ms()), table.forget_due(now))
        };
        if expiries.hold_exhausted {
            self.metrics.holds_exhausted.inc();
            warn!(
                max_hold = ?self.settings.table.max_hold,
                "self-preservation reached its maximum: the agents still silent expire now"
            );
        }
        self.changed.extend(expiries.unverified);
        self.expired_deadlines.extend(expiries.deadlines);
        for address in expiries.expired {
            warn!(agent = %address, "agent expired");
            self.metrics.expiries.inc();
            self.changed.insert(address);
        }
        for address in forgotten {
            info!(agent = %address, "agent forgotten");
            self.metrics.forgotten.inc();
            self.changed.remove(&address);
            self.forgotten.push(address);
        }
    }

    fn envelope(
        &mut self,
        agents: Vec<proto::AgentRecord>,
        forgotten: Vec<String>,
    ) -> proto::AgentOperations {
        self.seq += 1;
        proto::AgentOperations {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            registry_address: self.settings.address.to_string(),
            snapshot: false,
            agents,
            forgotten,
            seq: self.seq,
            sent_at_unix_ms: now_unix_ms(),
            registry_incarnation: self.incarnation.clone(),
            snapshot_id: 0,
            snapshot_part: 0,
            snapshot_parts: 0,
            lease_term: lease::term(&self.settings.lease),
        }
    }

    async fn publish(&self, message: &proto::AgentOperations, kind: &'static str) -> bool {
        publish_feed(
            &self.client,
            &self.feed_subject,
            &self.metrics,
            message,
            kind,
        )
        .await
    }

    /// Whether a snapshot's parts are still on their way out: changes wait
    /// for them, so that no part cloned earlier lands after a newer change.
    fn snapshot_publishing(&mut self) -> bool {
        match &self.snapshot_in_flight {
            Some(in_flight) if !in_flight.done() => true,
            Some(_) => {
                self.snapshot_in_flight = None;
                false
            }
            None => false,
        }
    }

    fn leads(&self) -> bool {
        lease::leads(&self.settings.lease)
    }

    /// Takes back what a predecessor stored; announces it with a snapshot.
    fn restore(&mut self, stored: Vec<proto::StoredAgent>) {
        let now = Instant::now();
        let now_unix = now_unix_ms();
        let restored = {
            let mut table = self.table.lock();
            stored
                .into_iter()
                .map(|stored| table.restore(stored, now, now_unix))
                .filter(|restored| *restored)
                .count()
        };
        self.metrics.restored.inc_by(restored as u64);
        info!(
            restored,
            "took back the stored agent records; live agents get a fresh timeout"
        );
    }

    /// Queues every record for writing: a new leader makes the bucket match what it knows.
    fn store_all(&mut self) {
        let table = self.table.lock();
        queue_writes(&self.pending_writes, &table, table.addresses());
    }

    /// Publishes the records that changed since the last call, at once, and
    /// queues them for the KV bucket.
    async fn publish_changes(&mut self) {
        if (self.changed.is_empty() && self.forgotten.is_empty()) || self.snapshot_publishing() {
            return;
        }
        {
            let table = self.table.lock();
            let mut summary = self.summary.lock();
            for address in self.changed.iter().chain(&self.forgotten) {
                summary.update(&table, address);
            }
        }
        if !self.leads() {
            // The leader publishes and stores; a standby only keeps its table current.
            self.changed.clear();
            self.forgotten.clear();
            return;
        }
        queue_writes(
            &self.pending_writes,
            &self.table.lock(),
            self.changed.iter().map(String::as_str),
        );
        for address in &self.forgotten {
            self.pending_writes.delete(address);
        }
        let changed: Vec<String> = std::mem::take(&mut self.changed).into_iter().collect();
        let records: Vec<proto::AgentRecord> = {
            let table = self.table.lock();
            changed
                .iter()
                .filter_map(|address| table.record(address))
                .collect()
        };
        let mut forgotten = std::mem::take(&mut self.forgotten);
        if records.is_empty() {
            let message = self.envelope(Vec::new(), forgotten);
            self.publish(&message, "change").await;
            return;
        }
        for chunk in records.chunks(RECORDS_PER_MESSAGE) {
            let message = self.envelope(chunk.to_vec(), std::mem::take(&mut forgotten));
            // A failed change is repaired by the next snapshot, which lists every agent.
            self.publish(&message, "change").await;
        }
    }

    /// How long after their deadlines the expiries just published went out;
    /// a standby publishes nothing, so only the leader measures.
    fn note_expiry_lateness(&mut self) {
        if self.snapshot_publishing() {
            // Not published yet: they wait for the snapshot.
            return;
        }
        let published = Instant::now();
        let leads = self.leads();
        for deadline in self.expired_deadlines.drain(..) {
            if leads {
                let late = published.saturating_duration_since(deadline);
                self.metrics.expiry_lateness.observe(late.as_secs_f64());
            }
        }
    }

    /// Publishes every record, in parts if needed, so late subscribers catch up.
    ///
    /// The records are copied at once, so the parts agree with each other,
    /// and sent by a task of their own: encoding and sending 100,000 records
    /// in the loop held heartbeats up for long enough that the client's
    /// buffer overflowed. Heartbeats and expiries go on meanwhile; the
    /// changes they make are published when the last part is out (see
    /// [`MainProcess::snapshot_publishing`]).
    /// Whether a snapshot would tell the truth: it says "these and no
    /// others", so a registry that has neither taken back its stored records
    /// nor listened for a whole timeout would tell every consumer to drop the
    /// agents it has not heard yet (a restarted leader did, in the fault
    /// campaign's seed 542534).
    fn knows_the_fleet(&self, now: Instant) -> bool {
        self.records_back.is_some()
            || now.duration_since(self.listening_since) >= self.settings.table.agent_timeout
    }

    async fn publish_snapshot(&mut self) {
        if !self.knows_the_fleet(Instant::now()) {
            debug!(
                "no snapshot yet: the stored records are not back and the first timeout has not passed"
            );
            return;
        }
        if let Some(in_flight) = self.snapshot_in_flight.take() {
            // One snapshot at a time, in order.
            let _ = in_flight.task.await;
        }
        let records = {
            let table = self.table.lock();
            // Every snapshot also recounts, so the summary cannot drift for long.
            self.summary.lock().rebuild(&table);
            if !self.leads() {
                return;
            }
            table.records()
        };
        let count = records.len().div_ceil(RECORDS_PER_MESSAGE).max(1);
        let snapshot_id = self.seq + 1;
        let mut records = records.into_iter();
        let messages: Vec<proto::AgentOperations> = (0..count)
            .map(|part| {
                let chunk: Vec<proto::AgentRecord> =
                    records.by_ref().take(RECORDS_PER_MESSAGE).collect();
                let mut message = self.envelope(chunk, Vec::new());
                message.snapshot = true;
                message.snapshot_id = snapshot_id;
                message.snapshot_part = part as u32;
                message.snapshot_parts = count as u32;
                message
            })
            .collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, subject, metrics) = (
            self.client.clone(),
            self.feed_subject.clone(),
            self.metrics.clone(),
        );
        let finished = done.clone();
        let wake = self.snapshot_sent.clone();
        let task = tokio::spawn(async move {
            for message in &messages {
                publish_feed(&client, &subject, &metrics, message, "snapshot").await;
            }
            finished.store(true, std::sync::atomic::Ordering::Release);
            wake.notify_one();
        });
        self.snapshot_in_flight = Some(SnapshotInFlight { task, done });
    }
}
