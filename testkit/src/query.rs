//! Asking agents and the registry what they know, as a client script would.

use std::time::Duration;

use ocs_agent::OcsClient;
use ocs_protocol::{Action, AddressRoot, InstanceId, OpName};
use serde_json::{Map, Value};

/// A client on `nats_url` (comma-separated URLs allowed) that retries its
/// connection like a service.
pub async fn client(nats_url: &str) -> OcsClient {
    let nats_client = ocs_service::connect::connect_service(nats_url, "test-client")
        .await
        .unwrap();
    OcsClient::new(nats_client, AddressRoot::default())
}

/// `status` of `op` on `instance_id` as OCS-shaped JSON; `None` when it does
/// not answer within 2 s.
pub async fn status(client: &OcsClient, instance_id: &str, op: &str) -> Option<Value> {
    let reply = client
        .operation(
            &InstanceId::new(instance_id).unwrap(),
            &OpName::new(op).unwrap(),
            Action::Status,
            Vec::new(),
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
    ocs_protocol::json::reply(&reply).ok()
}

/// The registry's `main` session data, complete at any fleet size: agent
/// address → OCS record; `None` when it does not answer within 2 s.
pub async fn registry_agents(client: &OcsClient) -> Option<Map<String, Value>> {
    let reply = client
        .registry_status(
            &InstanceId::new("registry").unwrap(),
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
    ocs_protocol::json::reply(&reply).ok()?["session"]["data"]
        .as_object()
        .cloned()
}

/// The registry's record of the agent at `address`.
pub async fn record(client: &OcsClient, address: &str) -> Option<Value> {
    registry_agents(client).await?.get(address).cloned()
}
