//! Every NATS subject of the system. Nothing else in the workspace formats a subject.
//!
//! | Subject | Direction | Message | Encoding |
//! |---|---|---|---|
//! | `{root}.{iid}.feeds.heartbeat` | agent → all | [`Heartbeat`](crate::proto::Heartbeat) | protobuf |
//! | `{root}.*.feeds.heartbeat` | registry, `ocs scan --listen` subscribe | (wildcard of the above) | |
//! | `{root}.{iid}.feeds.{feed}` | agent → all | [`FeedMessage`](crate::proto::FeedMessage), payload MessagePack | protobuf |
//! | `{root}.{registry}.feeds.agent_operations` | registry → monitor, clients | [`AgentOperations`](crate::proto::AgentOperations) | protobuf |
//! | `{root}.{iid}.ops.{action}.{op}` | client → agent, request/reply | [`OperationRequest`](crate::proto::OperationRequest) → [`OperationReply`](crate::proto::OperationReply) | protobuf, params/data MessagePack |
//! | `{root}.{iid}.api` | client → agent, request/reply | empty → [`ApiReply`](crate::proto::ApiReply) | protobuf |
//! | `{root}.{iid}.ping` | client → agent, request/reply | empty → [`PingReply`](crate::proto::PingReply) | protobuf |
//! | KV `ocs_sessions`, key `{root}.{iid}.{op}` | agent writes, next incarnation reads | [`StoredSession`](crate::proto::StoredSession) | protobuf |
//! | `{root}.{registry}.snapshot` | monitor → registry, request/reply | empty → empty; the registry publishes a snapshot on its feed at once | |
//! | `{root}.{registry}.records` | client → registry, request/reply | [`RecordsQuery`](crate::proto::RecordsQuery) → [`RecordsPage`](crate::proto::RecordsPage), one page per request | protobuf |
//! | `_INBOX.{user}.…` | replies to a client logged in as `user` | (the reply of its request) | |
//!
//! The action comes before the operation name in operation subjects so that a
//! NATS permission such as `observatory.*.ops.status.>` can be granted to every
//! user while `observatory.*.ops.start.>` stays with operators.

use crate::address::{AddressRoot, AgentAddress, FeedName, OpName};
use crate::opcode::Action;

/// The feed name of heartbeats.
pub const HEARTBEAT_FEED: &str = "heartbeat";
/// The feed name of the registry's aggregated operation states.
pub const AGENT_OPERATIONS_FEED: &str = "agent_operations";

/// `{address}.feeds.heartbeat`: where an agent publishes its heartbeat.
pub fn heartbeat(address: &AgentAddress) -> String {
    format!("{address}.feeds.{HEARTBEAT_FEED}")
}

/// `{root}.*.feeds.heartbeat`: the heartbeats of every agent under `root`.
pub fn all_heartbeats(root: &AddressRoot) -> String {
    format!("{root}.*.feeds.{HEARTBEAT_FEED}")
}

/// `_INBOX.{user}`: the inbox prefix of a client logged in as `user`, so
/// that the server's permissions can give each user its own replies
/// (`_INBOX.{user}.>`) and no one else's. `None` when the name is not a
/// subject token: such a user keeps the default prefix `_INBOX`.
pub fn inbox_prefix(user: &str) -> Option<String> {
    let token = !user.is_empty()
        && !user
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'));
    token.then(|| format!("_INBOX.{user}"))
}

/// `{address}.feeds.{feed}`: one feed of one agent.
pub fn feed(address: &AgentAddress, feed: &FeedName) -> String {
    format!("{address}.feeds.{feed}")
}

/// `{root}.*.feeds.>`: every feed of every agent under `root`.
pub fn all_feeds(root: &AddressRoot) -> String {
    format!("{root}.*.feeds.>")
}

/// `{registry}.feeds.agent_operations`: the registry's aggregated feed.
pub fn agent_operations(registry: &AgentAddress) -> String {
    format!("{registry}.feeds.{AGENT_OPERATIONS_FEED}")
}

/// `{address}.ops.{action}.{op}`: one action on one operation.
pub fn operation(address: &AgentAddress, action: Action, op_name: &OpName) -> String {
    format!("{address}.ops.{}.{op_name}", action.as_str())
}

/// `{address}.ops.>`: every operation request addressed to one agent.
pub fn all_operations(address: &AgentAddress) -> String {
    format!("{address}.ops.>")
}

/// `{address}.api`: the agent's description of itself (OCS `get_api`).
pub fn api(address: &AgentAddress) -> String {
    format!("{address}.api")
}

/// The JetStream KV bucket holding the last sessions of every operation.
pub const SESSIONS_BUCKET: &str = "ocs_sessions";

/// The key of `op_name`'s last session in [`SESSIONS_BUCKET`]:
/// `{root}.{instance_id}.{op_name}` (tokens are KV-safe by validation).
pub fn session_key(address: &AgentAddress, op_name: &str) -> String {
    format!("{address}.{op_name}")
}

/// The JetStream KV bucket where registries keep their agent records.
pub const REGISTRY_BUCKET: &str = "ocs_registry";

/// The key prefix of one registry's records in [`REGISTRY_BUCKET`]:
/// `{registry}.agents.`.
pub fn registry_records_prefix(registry: &AgentAddress) -> String {
    format!("{registry}.agents.")
}

/// The key of `agent`'s record kept by `registry` in [`REGISTRY_BUCKET`].
pub fn registry_record_key(registry: &AgentAddress, agent: &str) -> String {
    format!("{registry}.agents.{agent}")
}

/// The JetStream KV bucket of registry leases: its entries expire by
/// themselves, so a leader that dies releases its lease.
pub const REGISTRY_LEASE_BUCKET: &str = "ocs_registry_leases";

/// The key of the lease of the replicas of `registry`: its holder publishes the feed.
pub fn registry_lease_key(registry: &AgentAddress) -> String {
    format!("{registry}.leader")
}

/// `{address}.ping`: a liveness check answered without touching operations.
pub fn ping(address: &AgentAddress) -> String {
    format!("{address}.ping")
}

/// `{registry}.snapshot`: asks the registry to publish a full snapshot on its feed now.
pub fn snapshot_request(registry: &AgentAddress) -> String {
    format!("{registry}.snapshot")
}

/// `{registry}.records`: a page of the registry's table, filtered, for fleets
/// too large for `registry main status` to carry in one message.
pub fn registry_records(registry: &AgentAddress) -> String {
    format!("{registry}.records")
}

/// Checks a subscription pattern as nats-server does, so that a client can
/// refuse a bad one with a reason instead of subscribing to nothing (the
/// server only answers an invalid subject with an asynchronous error).
///
/// Tokens are separated by `.`, none empty or holding whitespace; `*` and `>`
/// are wildcards only as whole tokens, and `>` only as the last one.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("the subject is empty".into());
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "{pattern:?} has an empty token (a leading, trailing or doubled '.')"
            ));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(format!("{pattern:?} holds whitespace"));
        }
        if *token == ">" && index + 1 != tokens.len() {
            return Err(format!(
                "{pattern:?}: '>' matches the rest of a subject, so it must be the last token"
            ));
        }
        if token.len() > 1 && (token.contains('>') || token.contains('*')) {
            return Err(format!(
                "{pattern:?}: wildcards '*' and '>' must be whole tokens, not part of {token:?}"
            ));
        }
    }
    Ok(())
}

/// The instance id in a heartbeat subject `{root}.{iid}.feeds.heartbeat`, if
/// `subject` is one under `root`.
pub fn instance_id_of_heartbeat<'s>(root: &AddressRoot, subject: &'s str) -> Option<&'s str> {
    let rest = subject.strip_prefix(root.as_str())?.strip_prefix('.')?;
    let instance_id = rest.strip_suffix(HEARTBEAT_FEED)?.strip_suffix(".feeds.")?;
    (!instance_id.is_empty() && !instance_id.contains('.')).then_some(instance_id)
}

/// The action and operation name of an operation subject under `address`.
pub fn parse_operation<'s>(address: &AgentAddress, subject: &'s str) -> Option<(&'s str, &'s str)> {
    let rest = subject
        .strip_prefix(address.as_str())?
        .strip_prefix(".ops.")?;
    let (action, op_name) = rest.split_once('.')?;
    (!op_name.contains('.')).then_some((action, op_name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_user_gets_an_inbox_prefix_of_its_own() {
        assert_eq!(inbox_prefix("operator").as_deref(), Some("_INBOX.operator"));
        assert_eq!(
            inbox_prefix("operation-monitor").as_deref(),
            Some("_INBOX.operation-monitor")
        );
        for not_a_token in ["", "a.b", "a b", "*", "a>"] {
            assert_eq!(inbox_prefix(not_a_token), None, "{not_a_token:?}");
        }
    }

    #[test]
    fn a_registry_record_key_is_the_registry_address_agents_and_the_agent_address() {
        let registry = crate::AgentAddress::parse("observatory.registry").unwrap();
        assert_eq!(
            super::registry_record_key(&registry, "observatory.faker1"),
            "observatory.registry.agents.observatory.faker1"
        );
    }

    #[test]
    fn patterns_are_checked_as_the_server_does() {
        for good in [
            "observatory.>",
            "observatory.*.feeds.heartbeat",
            "a",
            "*",
            ">",
        ] {
            assert_eq!(super::validate_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "observatory.>.x",
            "a..b",
            ".a",
            "a.",
            "a b",
            "obs*.x",
            "a.b>",
        ] {
            assert!(super::validate_pattern(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;
    use crate::address::InstanceId;

    /// A minimal NATS subject matcher (`*` one token, `>` the rest) to check
    /// that concrete subjects fall under the wildcards we subscribe to.
    fn matches(pattern: &str, subject: &str) -> bool {
        let mut pattern_tokens = pattern.split('.');
        let mut subject_tokens = subject.split('.');
        loop {
            match (pattern_tokens.next(), subject_tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn faker() -> AgentAddress {
        AgentAddress::new(&AddressRoot::default(), &InstanceId::new("faker").unwrap())
    }

    #[test]
    fn concrete_subjects_match_their_wildcards() {
        let root = AddressRoot::default();
        let address = faker();
        let op = OpName::new("acq").unwrap();
        assert_eq!(heartbeat(&address), "observatory.faker.feeds.heartbeat");
        assert!(matches(&all_heartbeats(&root), &heartbeat(&address)));
        let feed_name = FeedName::new("fake_data").unwrap();
        assert!(matches(&all_feeds(&root), &feed(&address, &feed_name)));
        assert!(matches(&all_feeds(&root), &heartbeat(&address)));
        for action in Action::ALL {
            let subject = operation(&address, action, &op);
            assert!(matches(&all_operations(&address), &subject));
            assert_eq!(
                parse_operation(&address, &subject),
                Some((action.as_str(), "acq"))
            );
        }
        assert_eq!(
            operation(&address, Action::Status, &op),
            "observatory.faker.ops.status.acq"
        );
        assert!(!matches(&all_heartbeats(&root), &api(&address)));
        assert_eq!(ping(&address), "observatory.faker.ping");
        assert!(!matches(&all_operations(&address), &ping(&address)));
    }

    #[test]
    fn heartbeat_subject_parsing() {
        let root = AddressRoot::default();
        assert_eq!(
            instance_id_of_heartbeat(&root, "observatory.faker.feeds.heartbeat"),
            Some("faker")
        );
        for subject in [
            "observatory..feeds.heartbeat",
            "other.faker.feeds.heartbeat",
            "observatory.a.b.feeds.heartbeat",
            "observatory.faker.feeds.data",
            "observatoryx.faker.feeds.heartbeat",
        ] {
            assert_eq!(instance_id_of_heartbeat(&root, subject), None, "{subject}");
        }
    }
}
