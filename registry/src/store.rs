//! The registry's memory: agent records in the JetStream KV bucket
//! `ocs_registry`, so a restarted or newly elected registry knows every agent
//! its predecessor knew (see [`crate::table::AgentTable::restore`]).
//!
//! Writes never hold up the heartbeat loop: the loop only queues the latest
//! value of each changed record in [`PendingWrites`] (so a record that changes
//! ten times while JetStream is slow is written once), and [`write_loop`]
//! drains it. A failed write stays queued and is retried; a newer value
//! replaces it. Records change on state transitions, not on every heartbeat,
//! so the write rate is the rate of changes, not of heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use ocs_protocol::{AgentAddress, codec, proto, subject};
use ocs_service::{BucketSpec, open_kv_bucket, reopen_kv_bucket};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::RegistryMetrics;

/// Bounds each KV call.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Writes in flight at once.
const CONCURRENT_WRITES: usize = 64;
/// Pause after a failed round before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One registry's records in the bucket.
#[derive(Clone)]
pub(crate) struct AgentStore {
    client: async_nats::Client,
    replicas: usize,
    store: kv::Store,
    registry: AgentAddress,
}

/// The registry's records: one writer (the leading registry), so rollups stay
/// allowed (forgetting an agent purges its record). Sized for the largest
/// fleet a registry tracks (--max-agents 100,000 records of under 1 KiB).
fn records_bucket(replicas: usize) -> BucketSpec {
    BucketSpec {
        name: subject::REGISTRY_BUCKET,
        description: "What registries know of every agent",
        history: 1,
        max_age: Duration::ZERO,
        max_bytes: 128 * 1024 * 1024,
        max_value_size: 256 * 1024,
        allow_rollup: true,
        replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
    }
}

impl AgentStore {
    /// Opens (or creates) the bucket with `replicas` copies of each record.
    pub(crate) async fn open(
        client: &async_nats::Client,
        registry: &AgentAddress,
        replicas: usize,
    ) -> Result<AgentStore, String> {
        let store = open_kv_bucket(client, &records_bucket(replicas)).await?;
        Ok(AgentStore {
            client: client.clone(),
            replicas,
            store,
            registry: registry.clone(),
        })
    }

    /// Opens the bucket again, creating it if it vanished (a JetStream store
    /// wiped under the running registry); if it is a new bucket, tells
    /// `recreated`, so that every record is put back.
    async fn check_bucket(&mut self, recreated: &Notify) {
        let spec = records_bucket(self.replicas);
        if reopen_kv_bucket(&self.client, &spec, &mut self.store).await == Ok(true) {
            warn!(
                "the agent records' bucket is new (the JetStream store was lost?): writing every record anew"
            );
            recreated.notify_one();
        }
    }

    /// Every record this registry stored. Unreadable records are skipped
    /// and counted in the returned number.
    pub(crate) async fn load(&self) -> Result<(Vec<proto::StoredAgent>, usize), String> {
        let prefix = subject::registry_records_prefix(&self.registry);
        let keys: Vec<String> = tokio::time::timeout(TIMEOUT * 5, async {
            self.store
                .keys()
                .await
                .map_err(|err| err.to_string())?
                .try_filter(|key| std::future::ready(key.starts_with(&prefix)))
                .try_collect()
                .await
                .map_err(|err| err.to_string())
        })
        .await
        .map_err(|_| "listing the stored records timed out".to_owned())??;
        let values: Vec<Result<Option<Bytes>, String>> = futures::stream::iter(keys)
            .map(|key| async move {
                tokio::time::timeout(TIMEOUT, self.store.get(key))
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|err| err.to_string())
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut records = Vec::with_capacity(values.len());
        let mut unreadable = 0;
        for value in values {
            match value? {
                // Deleted between listing and reading: forgotten meanwhile.
                None => {}
                Some(bytes) => {
                    match codec::decode::<proto::StoredAgent>(&bytes, codec::MAX_MESSAGE_BYTES) {
                        Ok(stored) if stored.record.is_some() => records.push(stored),
                        _ => unreadable += 1,
                    }
                }
            }
        }
        Ok((records, unreadable))
    }

    async fn write(&self, agent: &str, value: Option<Bytes>) -> Result<(), String> {
        let key = subject::registry_record_key(&self.registry, agent);
        let write = async {
            match value {
                Some(value) => self
                    .store
                    .put(key, value)
                    .await
                    .map(drop)
                    .map_err(|err| err.to_string()),
                None => self.store.purge(key).await.map_err(|err| err.to_string()),
            }
        };
        tokio::time::timeout(TIMEOUT, write)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// The latest unwritten value of each changed record (`None`: delete it).
#[derive(Default)]
pub(crate) struct PendingWrites {
    writes: Mutex<BTreeMap<String, Option<Bytes>>>,
    queued: Notify,
}

impl PendingWrites {
    /// Queues `stored` as the value of its agent's record.
    pub(crate) fn put(&self, stored: &proto::StoredAgent) {
        let Some(record) = &stored.record else {
            return;
        };
        self.writes.lock().insert(
            record.agent_address.clone(),
            Some(codec::encode(stored).into()),
        );
        self.queued.notify_one();
    }

    /// Queues the deletion of `agent`'s record.
    pub(crate) fn delete(&self, agent: &str) {
        self.writes.lock().insert(agent.to_owned(), None);
        self.queued.notify_one();
    }

    fn take(&self) -> BTreeMap<String, Option<Bytes>> {
        std::mem::take(&mut *self.writes.lock())
    }

    /// Puts back what failed, unless a newer value was queued meanwhile.
    fn requeue(&self, failed: Vec<(String, Option<Bytes>)>) {
        let mut writes = self.writes.lock();
        for (agent, value) in failed {
            writes.entry(agent).or_insert(value);
        }
    }

    /// Records waiting to be written.
    pub(crate) fn len(&self) -> usize {
        self.writes.lock().len()
    }
}

/// How often the registry makes sure its bucket still exists.
const BUCKET_CHECK: Duration = Duration::from_secs(10);

/// Writes what is queued until `stop`, and what is still queued then, within
/// [`TIMEOUT`]. Every [`BUCKET_CHECK`], and after a failed round, looks
/// whether the bucket is still there; when it had to create it again,
/// `recreated` tells the main loop to queue every record anew.
pub(crate) async fn write_loop(
    mut store: AgentStore,
    pending: Arc<PendingWrites>,
    metrics: Arc<RegistryMetrics>,
    recreated: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut failing = false;
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + BUCKET_CHECK, BUCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = stop.is_cancelled();
        if !stopping {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = pending.queued.notified() => {}
                _ = check.tick() => {
                    store.check_bucket(&recreated).await;
                    continue;
                }
            }
        }
        let batch: Vec<(String, Option<Bytes>)> = pending.take().into_iter().collect();
        let results: Vec<(String, Option<Bytes>, Result<(), String>)> =
            futures::stream::iter(batch)
                .map(|(agent, value)| {
                    let store = &store;
                    async move {
                        let result = store.write(&agent, value.clone()).await;
                        (agent, value, result)
                    }
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
        let mut failed = Vec::new();
        let mut first_error = None;
        for (agent, value, result) in results {
            match result {
                Ok(()) => {
                    metrics.store_writes.inc();
                }
                Err(err) => {
                    metrics.store_failures.inc();
                    first_error.get_or_insert(err);
                    failed.push((agent, value));
                }
            }
        }
        match first_error {
            Some(err) => {
                if !failing {
                    warn!(failed = failed.len(), error = %err, "cannot write agent records to JetStream KV; retrying");
                }
                failing = true;
                metrics.store_failing.set(1);
                pending.requeue(failed);
                if stopping {
                    warn!(
                        unwritten = pending.len(),
                        "stopping with agent records unwritten"
                    );
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
                // The bucket may have vanished: the retry goes to a new one.
                store.check_bucket(&recreated).await;
                pending.queued.notify_one();
            }
            None => {
                if failing {
                    info!("agent records are written to JetStream KV again");
                }
                failing = false;
                metrics.store_failing.set(0);
                if stopping {
                    return;
                }
            }
        }
    }
}
