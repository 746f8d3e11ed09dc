//! Sessions kept in JetStream KV, so that a session outlives its process.
//!
//! The agent puts each session's changes (start, running, done) under
//! `{root}.{iid}.{op}` in the bucket `ocs_sessions`, with a short history.
//! The next incarnation reads them back: a finished session is shown again by
//! `status`; one that was still running when its process died is marked
//! FAILED with that reason, so no one sees a dead run as still running.
//!
//! Without JetStream the agent runs as before, without the journal: it is
//! logged once, never fatal.

use std::time::Duration;

use async_nats::jetstream::kv;
use ocs_protocol::{AgentAddress, SessionStatus, codec, proto, subject};

use ocs_service::kv_bucket::{BucketSpec, open_kv_bucket, reopen_kv_bucket};

/// Past sessions kept per operation.
pub const HISTORY: i64 = 5;
/// Bounds every KV call: the journal must never hold up control work.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The bucket every agent journals into. Several writers share it, so it
/// refuses rollups (one `Nats-Rollup: all` would wipe everyone's sessions),
/// and its size is bounded so that no agent can fill JetStream for the rest.
pub const SESSIONS_BUCKET: BucketSpec = BucketSpec {
    name: subject::SESSIONS_BUCKET,
    description: "Last sessions of every operation of every agent",
    history: HISTORY,
    // A session is kept 90 days after its last change.
    max_age: Duration::from_secs(90 * 24 * 3600),
    max_bytes: 64 * 1024 * 1024,
    max_value_size: 256 * 1024,
    allow_rollup: false,
    replicas: 1,
    storage: async_nats::jetstream::stream::StorageType::File,
};

/// The agent's view of the bucket.
pub(crate) struct Journal {
    client: async_nats::Client,
    store: kv::Store,
    address: AgentAddress,
    incarnation: String,
}

impl Journal {
    /// Opens the bucket, creating it on first use.
    pub(crate) async fn open(
        client: &async_nats::Client,
        address: &AgentAddress,
        incarnation: String,
    ) -> Result<Journal, String> {
        let store = open_kv_bucket(client, &SESSIONS_BUCKET).await?;
        Ok(Journal {
            client: client.clone(),
            store,
            address: address.clone(),
            incarnation,
        })
    }

    /// Opens the bucket again, creating it if it vanished (a JetStream store
    /// wiped under the running agent). Returns whether it is a new bucket:
    /// then every session must be put back.
    pub(crate) async fn reopen(&mut self) -> Result<bool, String> {
        reopen_kv_bucket(&self.client, &SESSIONS_BUCKET, &mut self.store).await
    }

    /// The last stored session of `op_name`, if any.
    pub(crate) async fn last(&self, op_name: &str) -> Result<Option<proto::StoredSession>, String> {
        let key = subject::session_key(&self.address, op_name);
        let value = tokio::time::timeout(TIMEOUT, self.store.get(key))
            .await
            .map_err(|_| "JetStream did not answer".to_owned())?
            .map_err(|err| err.to_string())?;
        value
            .map(|bytes| {
                codec::decode(&bytes, codec::MAX_MESSAGE_BYTES).map_err(|err| err.to_string())
            })
            .transpose()
    }

    /// Stores `session` as this incarnation's.
    pub(crate) async fn record(&self, session: proto::Session) -> Result<(), String> {
        self.put(proto::StoredSession {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            incarnation: self.incarnation.clone(),
            session: Some(session),
        })
        .await
    }

    /// Stores `stored` as it is (a recovered session keeps its incarnation).
    pub(crate) async fn put(&self, stored: proto::StoredSession) -> Result<(), String> {
        let Some(session) = &stored.session else {
            return Ok(());
        };
        let key = subject::session_key(&self.address, &session.op_name);
        tokio::time::timeout(TIMEOUT, self.store.put(key, codec::encode(&stored).into()))
            .await
            .map_err(|_| "JetStream did not answer".to_owned())?
            .map(drop)
            .map_err(|err| err.to_string())
    }
}

/// What this incarnation makes of a stored session: one another incarnation
/// left unfinished is marked FAILED, because that process is gone. Returns the
/// session to show and whether it changed (and must be stored again).
pub(crate) fn recover(
    mut stored: proto::StoredSession,
    incarnation: &str,
    now_unix: f64,
) -> Option<(proto::StoredSession, bool)> {
    let session = stored.session.as_mut()?;
    let status = SessionStatus::parse(&session.status)?;
    if status == SessionStatus::Done || stored.incarnation == incarnation {
        return Some((stored, false));
    }
    let text = format!(
        "The agent died while this operation was {} (incarnation {}); marked failed by incarnation {incarnation}.",
        session.status, stored.incarnation
    );
    session.messages.push(proto::SessionMessage {
        timestamp: now_unix,
        text,
    });
    session.messages.push(proto::SessionMessage {
        timestamp: now_unix,
        text: format!("Status is now \"{}\".", SessionStatus::Done.as_str()),
    });
    session.status = SessionStatus::Done.as_str().to_owned();
    session.success = Some(false);
    session.end_time = Some(now_unix);
    session.op_code = SessionStatus::Done
        .op_code(session.degraded, Some(false))
        .value();
    Some((stored, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocs_protocol::OpCode;

    fn stored(status: &str, incarnation: &str) -> proto::StoredSession {
        proto::StoredSession {
            protocol_version: 1,
            incarnation: incarnation.to_owned(),
            session: Some(proto::Session {
                session_id: 4,
                op_name: "acq".to_owned(),
                op_code: 3,
                status: status.to_owned(),
                start_time: 100.0,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_run_left_unfinished_by_a_dead_incarnation_is_marked_failed() {
        let (recovered, changed) = recover(stored("running", "old"), "new", 200.0).unwrap();
        assert!(changed);
        let session = recovered.session.unwrap();
        assert_eq!(session.status, "done");
        assert_eq!(session.success, Some(false));
        assert_eq!(session.end_time, Some(200.0));
        assert_eq!(session.op_code, OpCode::Failed.value());
        assert!(
            session.messages[0]
                .text
                .starts_with("The agent died while this operation was running (incarnation old)")
        );
        assert_eq!(recovered.incarnation, "old", "the record says who ran it");
    }

    #[test]
    fn finished_runs_and_this_incarnations_own_are_kept_as_they_are() {
        let (done, changed) = recover(stored("done", "old"), "new", 200.0).unwrap();
        assert!(!changed);
        assert_eq!(done.session.unwrap().status, "done");
        let (own, changed) = recover(stored("running", "new"), "new", 200.0).unwrap();
        assert!(!changed);
        assert_eq!(own.session.unwrap().status, "running");
        assert!(recover(stored("bogus", "old"), "new", 200.0).is_none());
    }
}
