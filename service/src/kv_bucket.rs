//! The JetStream KV buckets the services keep state in: each declared once
//! with its limits ([`BucketSpec`]), opened or created by one function, and
//! created again if it vanished under a running service.
//!
//! Every bucket has a byte limit and a value limit. JetStream reserves a
//! stream's byte limit in the server's store, so one bucket filled (by a
//! runaway or hostile writer) cannot starve another: the registry's records
//! stay writable whatever agents put in their journal.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tracing::warn;

/// Bounds every call that opens a bucket.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How a bucket is made. The names are in `ocs_protocol::subject`.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    /// The bucket (stream `KV_<name>`).
    pub name: &'static str,
    /// Shown by `nats kv ls`.
    pub description: &'static str,
    /// Values kept per key.
    pub history: i64,
    /// How long a value is kept after its last write (zero: for ever).
    pub max_age: Duration,
    /// The whole bucket's size in bytes; writes past it are refused.
    pub max_bytes: i64,
    /// The largest value.
    pub max_value_size: i32,
    /// Whether `Nats-Rollup` headers (and so KV purges) are honoured. A
    /// rollup of "all" wipes every key of the bucket in one publish, so a
    /// bucket that several users write must refuse them.
    pub allow_rollup: bool,
    /// Copies kept by a NATS cluster.
    pub replicas: usize,
    /// File, or memory for state that may be lost with the server (a lease).
    pub storage: stream::StorageType,
}

impl BucketSpec {
    /// The stream behind the bucket, as async-nats lays out a KV stream, with
    /// this spec's limits and rollup policy.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: format!("KV_{}", self.name),
            description: Some(self.description.to_owned()),
            subjects: vec![format!("$KV.{}.>", self.name)],
            max_messages_per_subject: self.history.max(1),
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            max_message_size: self.max_value_size,
            storage: self.storage,
            num_replicas: self.replicas.max(1),
            allow_rollup: self.allow_rollup,
            deny_delete: true,
            deny_purge: !self.allow_rollup,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    /// What differs between this spec and a bucket's stream as found.
    fn differences(&self, found: &stream::Config) -> Vec<String> {
        /// The settings compared, each as it reads in a warning.
        fn settings(config: &stream::Config) -> [(&'static str, String); 5] {
            [
                ("history", config.max_messages_per_subject.to_string()),
                ("max_bytes", config.max_bytes.to_string()),
                ("max_value_size", config.max_message_size.to_string()),
                ("max_age", format!("{:?}", config.max_age)),
                ("allow_rollup", config.allow_rollup.to_string()),
            ]
        }
        settings(&self.stream_config())
            .into_iter()
            .zip(settings(found))
            .filter(|((_, wanted), (_, found))| wanted != found)
            .map(|((what, wanted), (_, found))| format!("{what} {found} (wanted {wanted})"))
            .collect()
    }
}

/// Buckets this process has warned about: a bucket with other settings is
/// reopened every few seconds, and one warning says it all.
static WARNED: parking_lot::Mutex<Vec<&'static str>> = parking_lot::Mutex::new(Vec::new());

/// Whether `bucket` is warned about for the first time in this process.
fn first_warning_about(bucket: &'static str) -> bool {
    let mut warned = WARNED.lock();
    if warned.contains(&bucket) {
        return false;
    }
    warned.push(bucket);
    true
}

/// Opens the bucket of `spec`, creating it if it is missing; gives up after a
/// bounded wait, so a caller without JetStream can carry on and retry.
///
/// A bucket found with other settings (made by an older release or another
/// implementation) is used as it is, with a warning naming the differences,
/// once per process and bucket:
/// changing a shared bucket under other services is an operator's decision.
pub async fn open_kv_bucket(
    client: &async_nats::Client,
    spec: &BucketSpec,
) -> Result<kv::Store, String> {
    let context = jetstream::new(client.clone());
    tokio::time::timeout(TIMEOUT, async {
        if let Ok(store) = context.get_key_value(spec.name).await {
            let differences = spec.differences(&store.stream.cached_info().config);
            if !differences.is_empty() && first_warning_about(spec.name) {
                warn!(
                    bucket = spec.name,
                    differences = %differences.join(", "),
                    "the KV bucket exists with other settings than this release makes; using it as it is"
                );
            }
            return Ok(store);
        }
        context
            .create_stream(spec.stream_config())
            .await
            .map_err(|err| format!("cannot create the KV bucket {}: {err}", spec.name))?;
        context
            .get_key_value(spec.name)
            .await
            .map_err(|err| format!("cannot open the KV bucket {}: {err}", spec.name))
    })
    .await
    .map_err(|_| "JetStream did not answer".to_owned())?
}

/// Opens `store`'s bucket again, creating it if it vanished. Returns whether
/// it is another stream than the one `store` wrote to (the JetStream store
/// was wiped, and this or another service created the bucket anew): then
/// whatever the caller keeps there must be put back.
pub async fn reopen_kv_bucket(
    client: &async_nats::Client,
    spec: &BucketSpec,
    store: &mut kv::Store,
) -> Result<bool, String> {
    let before = store.stream.cached_info().created;
    let reopened = open_kv_bucket(client, spec).await?;
    let replaced = reopened.stream.cached_info().created != before;
    *store = reopened;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: BucketSpec = BucketSpec {
        name: "test",
        description: "a test bucket",
        history: 5,
        max_age: Duration::from_secs(60),
        max_bytes: 1 << 20,
        max_value_size: 1024,
        allow_rollup: false,
        replicas: 1,
        storage: stream::StorageType::File,
    };

    #[test]
    fn the_stream_is_a_kv_stream_with_the_limits_and_no_rollups() {
        let config = SPEC.stream_config();
        assert_eq!(config.name, "KV_test");
        assert_eq!(config.subjects, ["$KV.test.>"]);
        assert_eq!(config.max_messages_per_subject, 5);
        assert_eq!(config.max_bytes, 1 << 20);
        assert_eq!(config.max_message_size, 1024);
        assert!(!config.allow_rollup && config.deny_purge && config.deny_delete);
        assert!(config.allow_direct);
        assert_eq!(config.discard, stream::DiscardPolicy::New);
        assert!(SPEC.differences(&config).is_empty());
    }

    #[test]
    fn a_bucket_is_warned_about_once() {
        assert!(first_warning_about("ocs_test_warned"));
        assert!(!first_warning_about("ocs_test_warned"));
        assert!(first_warning_about("ocs_test_other"));
    }

    #[test]
    fn differences_name_each_setting() {
        let mut found = SPEC.stream_config();
        found.allow_rollup = true;
        found.max_bytes = -1;
        assert_eq!(
            SPEC.differences(&found),
            [
                "max_bytes -1 (wanted 1048576)",
                "allow_rollup true (wanted false)"
            ]
        );
    }
}
