//! Leadership among registry replicas (`--ha`): a lease in the JetStream KV
//! bucket `ocs_registry_leases`, whose entries expire after the lease's time
//! to live.
//!
//! Every replica tracks every agent; only the holder of the lease publishes
//! the feed, writes the records and heartbeats for the registry's address.
//! The holder renews the lease with a compare-and-set on its revision; the
//! others try to create it, which succeeds only once it has expired or been
//! released. A replica leads while its last renewal, as sent, is younger
//! than the time to live less a margin, measured on its own monotonic clock:
//! the server expires the entry no earlier than that, so two replicas never
//! both believe they lead, even when the leader is frozen (SIGSTOP) and
//! thawed, because a frozen process finds its lease stale before it speaks.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use ocs_protocol::{AgentAddress, subject};
use ocs_service::{BucketSpec, open_kv_bucket};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One replica's view of the lease; no I/O.
#[derive(Debug)]
pub struct Lease {
    ttl: Duration,
    /// While leading: until when, and the revision of our entry.
    held: Option<(Instant, u64)>,
    /// The revision at which this replica last won the lease: its term.
    /// KV revisions only grow, so a later leader always has a larger term.
    term: u64,
    /// Without `--ha` the only registry always leads.
    always: bool,
}

impl Lease {
    /// A lease contested among replicas, each entry living `ttl`.
    pub fn contested(ttl: Duration) -> Self {
        Lease {
            ttl,
            held: None,
            term: 0,
            always: false,
        }
    }

    /// The lease of a registry without replicas: always held.
    pub fn uncontested() -> Self {
        Lease {
            ttl: Duration::MAX,
            held: None,
            term: 0,
            always: true,
        }
    }

    /// Whether this replica leads at `now`.
    pub fn leads(&self, now: Instant) -> bool {
        self.always || self.held.is_some_and(|(until, _)| now < until)
    }

    /// The revision to renew, if this replica still leads at `now`.
    pub fn revision(&self, now: Instant) -> Option<u64> {
        self.held
            .filter(|(until, _)| now < *until)
            .map(|(_, revision)| revision)
    }

    /// The term this replica publishes under at `now`: the revision at which
    /// it won the lease, or 0 when it does not lead or has no rivals. Feed
    /// messages carry it so that consumers can ignore a deposed leader.
    pub fn term(&self, now: Instant) -> u64 {
        if self.revision(now).is_some() {
            self.term
        } else {
            0
        }
    }

    /// Creating the lease, sent at `sent_at`, succeeded with `revision`: a new term.
    pub fn won(&mut self, sent_at: Instant, revision: u64) {
        self.term = revision;
        self.acquired(sent_at, revision);
    }

    /// A write of the lease sent at `sent_at` succeeded with `revision`.
    pub fn acquired(&mut self, sent_at: Instant, revision: u64) {
        // A quarter of the time to live covers the time between sending and
        // the server storing the entry, and clock rate differences.
        self.held = Some((sent_at + self.ttl - self.ttl / 4, revision));
    }

    /// Another replica holds the lease, or ours could not be renewed.
    pub fn lost(&mut self) {
        self.held = None;
    }

    /// How often to renew or try to acquire: several times per time to live.
    pub fn poll_interval(&self) -> Duration {
        self.ttl / 5
    }
}

/// Shared between the election loop, the main loop and the heartbeat gate.
pub type SharedLease = Arc<Mutex<Lease>>;

/// Whether `lease` is held now.
pub fn leads(lease: &SharedLease) -> bool {
    with(lease, |lease| lease.leads(Instant::now()))
}

/// The term `lease` is held under now (see [`Lease::term`]).
pub fn term(lease: &SharedLease) -> u64 {
    with(lease, |lease| lease.term(Instant::now()))
}

fn with<T>(lease: &SharedLease, f: impl FnOnce(&mut Lease) -> T) -> T {
    f(&mut lease.lock())
}

/// Contends for the lease of `registry`'s replicas until `stop`, then
/// releases it if held, so a successor takes over at once. Leadership
/// changes are sent on `leading`.
pub async fn elect(
    client: async_nats::Client,
    registry: AgentAddress,
    holder: String,
    replicas: usize,
    lease: SharedLease,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let ttl = with(&lease, |lease| lease.ttl);
    let poll = with(&lease, |lease| lease.poll_interval());
    let key = subject::registry_lease_key(&registry);
    let mut store: Option<kv::Store> = None;
    let mut complained = false;
    loop {
        if store.is_none() {
            let spec = BucketSpec {
                name: subject::REGISTRY_LEASE_BUCKET,
                description: "Which registry replica publishes the feed",
                history: 1,
                max_age: ttl,
                max_bytes: 1024 * 1024,
                max_value_size: 1024,
                allow_rollup: false,
                replicas,
                storage: async_nats::jetstream::stream::StorageType::Memory,
            };
            match open_kv_bucket(&client, &spec).await {
                Ok(opened) => store = Some(opened),
                Err(err) if !complained => {
                    warn!(error = %err, "cannot open the lease bucket; no replica can lead until JetStream answers");
                    complained = true;
                }
                Err(_) => {}
            }
        }
        let mut store_lost = false;
        if let Some(store) = &store {
            let sent_at = Instant::now();
            let held = with(&lease, |lease| lease.revision(sent_at));
            let value = bytes::Bytes::from(holder.clone());
            // The error, and whether it only says that someone else holds the lease.
            let attempt = match held {
                Some(revision) => tokio::time::timeout(poll, store.update(&key, value, revision))
                    .await
                    .map(|result| {
                        result.map_err(|err| {
                            let contested = err.kind() == kv::UpdateErrorKind::WrongLastRevision;
                            (err.to_string(), contested)
                        })
                    }),
                None => tokio::time::timeout(poll, store.create(&key, value))
                    .await
                    .map(|result| {
                        result.map_err(|err| {
                            let contested = err.kind() == kv::CreateErrorKind::AlreadyExists;
                            (err.to_string(), contested)
                        })
                    }),
            };
            match attempt {
                Ok(Ok(revision)) => {
                    if held.is_none() {
                        with(&lease, |lease| lease.won(sent_at, revision));
                        info!(%holder, term = revision, "acquired the registry lease: this replica publishes the feed");
                    } else {
                        with(&lease, |lease| lease.acquired(sent_at, revision));
                    }
                    complained = false;
                }
                // Someone else holds it, or ours expired and was taken.
                Ok(Err((err, true))) => {
                    if held.is_some() {
                        warn!(error = %err, "lost the registry lease");
                    }
                    with(&lease, Lease::lost);
                }
                // Not a rival: JetStream cannot answer for the bucket (its stream
                // between leaders after a partition, or a wiped store). As with
                // no answer, a held lease stays ours until it lapses on its own,
                // which no rival can beat: a JetStream back within that time
                // takes our renewal and the feed never stops. Opening the
                // bucket again creates it if it is gone.
                Ok(Err((err, false))) => {
                    if !complained {
                        warn!(error = %err, "cannot renew or take the registry lease");
                        complained = true;
                    }
                    store_lost = true;
                }
                // No answer in time: keep the revision; the lease lapses on its own.
                Err(_) => {
                    if !complained {
                        warn!("the lease bucket did not answer in time");
                        complained = true;
                    }
                }
            }
        }
        if store_lost {
            store = None;
        }
        leading.send_if_modified(|leading| {
            let now = leads(&lease);
            std::mem::replace(leading, now) != now
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    let held = with(&lease, |lease| lease.revision(Instant::now()));
    with(&lease, Lease::lost);
    leading.send_replace(false);
    if let (Some(store), Some(revision)) = (store, held) {
        match tokio::time::timeout(
            Duration::from_secs(1),
            store.delete_expect_revision(&key, Some(revision)),
        )
        .await
        {
            Ok(Ok(())) => info!("released the registry lease"),
            _ => warn!("could not release the registry lease; it lapses by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_is_the_revision_that_won_the_lease_and_renewals_keep_it() {
        let t0 = Instant::now();
        let mut lease = Lease::contested(Duration::from_secs(2));
        assert_eq!(lease.term(t0), 0);
        lease.won(t0, 41);
        lease.acquired(t0 + Duration::from_millis(400), 57);
        assert_eq!(lease.term(t0 + Duration::from_millis(500)), 41);
        // Lapsed: no term until it is won again, under a later revision.
        assert_eq!(lease.term(t0 + Duration::from_secs(10)), 0);
        lease.won(t0 + Duration::from_secs(10), 90);
        assert_eq!(lease.term(t0 + Duration::from_secs(10)), 90);
        assert_eq!(Lease::uncontested().term(t0), 0);
    }

    #[test]
    fn a_lease_is_held_for_less_than_its_time_to_live_from_sending() {
        let t0 = Instant::now();
        let mut lease = Lease::contested(Duration::from_secs(2));
        assert!(!lease.leads(t0));
        lease.acquired(t0, 7);
        assert!(lease.leads(t0 + Duration::from_millis(1499)));
        assert_eq!(lease.revision(t0 + Duration::from_millis(1499)), Some(7));
        // A replica frozen past its lease finds it stale before it speaks.
        assert!(!lease.leads(t0 + Duration::from_millis(1500)));
        assert_eq!(lease.revision(t0 + Duration::from_secs(60)), None);
        lease.acquired(t0 + Duration::from_secs(60), 9);
        lease.lost();
        assert_eq!(lease.term(t0 + Duration::from_secs(60)), 0);
        assert!(!lease.leads(t0 + Duration::from_secs(60)));
        assert!(Lease::uncontested().leads(t0 + Duration::from_secs(3600)));
    }
}
