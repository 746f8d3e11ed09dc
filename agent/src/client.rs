//! [`OcsClient`]: request/reply to agents, every call bounded by a timeout.

use std::time::Duration;

use async_nats::RequestErrorKind;
use async_nats::client::Request;
use ocs_protocol::codec;
use ocs_protocol::{
    Action, AddressRoot, AgentAddress, CodecError, InstanceId, OpName, json, proto, subject,
};
use ocs_service::connect::{Refusal, Refusals};

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the agent's subject: it is not running (or not reachable).
    #[error("no agent answers at {address} (is it running?)")]
    NoAgent {
        /// The agent's address.
        address: String,
    },
    /// The agent did not answer in time.
    #[error("{address} did not answer within {timeout:?}")]
    TimedOut {
        /// The agent's address.
        address: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The request could not be sent.
    #[error("request to {address} failed: {reason}")]
    Request {
        /// The agent's address.
        address: String,
        /// The client's error.
        reason: String,
    },
    /// The agent answered, but refused the request.
    #[error("{address} refused the request: {reason}")]
    Refused {
        /// The agent's address.
        address: String,
        /// Its reason.
        reason: String,
    },
    /// The server's permissions refused the request or its reply, at once:
    /// this NATS user may not make the call.
    #[error("not permitted: this NATS user may not {what}")]
    NotPermitted {
        /// The agent's address.
        address: String,
        /// What the server refused, e.g. `publish to <subject>`.
        what: String,
    },
    /// The answer was not a valid reply.
    #[error("malformed reply from {address}: {source}")]
    Decode {
        /// The agent's address.
        address: String,
        /// The decoding error.
        source: CodecError,
    },
}

/// Talks to agents by instance id, like OCS's `OCSClient`.
#[derive(Clone)]
pub struct OcsClient {
    client: async_nats::Client,
    root: AddressRoot,
    refusals: Option<Refusals>,
}

impl OcsClient {
    /// A client for agents under `root`.
    pub fn new(client: async_nats::Client, root: AddressRoot) -> Self {
        OcsClient {
            client,
            root,
            refusals: None,
        }
    }

    /// This client, failing a call at once when the server refuses it
    /// (see [`ocs_service::connect::connect_client`]).
    pub fn with_refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = Some(refusals);
        self
    }

    /// The underlying NATS client.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// The largest message the server carries; a reply may be as large.
    fn max_payload(&self) -> usize {
        ocs_service::connect::max_payload(&self.client)
    }

    /// The address of `instance_id` under this client's root.
    pub fn address(&self, instance_id: &InstanceId) -> AgentAddress {
        AgentAddress::new(&self.root, instance_id)
    }

    async fn request(
        &self,
        address: &AgentAddress,
        subject: String,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, ClientError> {
        let request = Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        // Listening before sending: the refusal may come back before the
        // request's future is first polled.
        let refused = self.refusals.as_ref().map(|refusals| {
            let subject = subject.clone();
            refusals.first(move |refusal| match refusal {
                Refusal::Publish(refused) if refused == subject => {
                    Some(format!("publish to {refused}"))
                }
                // Where the reply would come.
                Refusal::Subscription(refused) if refused.starts_with("_INBOX") => {
                    Some(format!("subscribe to {refused}, its replies"))
                }
                _ => None,
            })
        });
        let reply = self.client.send_request(subject, request);
        let reply = match refused {
            None => reply.await,
            Some(refused) => tokio::select! {
                reply = reply => reply,
                what = refused => {
                    return Err(ClientError::NotPermitted {
                        address: address.to_string(),
                        what,
                    });
                }
            },
        };
        match reply {
            Ok(message) => Ok(message.payload),
            Err(err) => Err(match err.kind() {
                RequestErrorKind::NoResponders => ClientError::NoAgent {
                    address: address.to_string(),
                },
                RequestErrorKind::TimedOut => ClientError::TimedOut {
                    address: address.to_string(),
                    timeout,
                },
                _ => ClientError::Request {
                    address: address.to_string(),
                    reason: err.to_string(),
                },
            }),
        }
    }

    /// Calls `action` on operation `op_name` of `instance_id`.
    ///
    /// `params` is a MessagePack map (start only); `wait_timeout` is the
    /// seconds a `wait` may take on the agent's side. The whole call is bounded
    /// by `timeout`, which for `wait` is extended by `wait_timeout`.
    pub async fn operation(
        &self,
        instance_id: &InstanceId,
        op_name: &OpName,
        action: Action,
        params: Vec<u8>,
        wait_timeout: Option<f64>,
        timeout: Duration,
    ) -> Result<proto::OperationReply, ClientError> {
        let address = self.address(instance_id);
        let request = proto::OperationRequest {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            params,
            timeout: wait_timeout,
        };
        let timeout = match (action, wait_timeout) {
            (Action::Wait, Some(seconds)) if seconds > 0.0 => {
                timeout + Duration::from_secs_f64(seconds.min(1e6))
            }
            _ => timeout,
        };
        let payload = self
            .request(
                &address,
                subject::operation(&address, action, op_name),
                codec::encode(&request),
                timeout,
            )
            .await?;
        codec::decode(&payload, self.max_payload()).map_err(|source| ClientError::Decode {
            address: address.to_string(),
            source,
        })
    }

    /// Pings an agent: who answers, since when, at which version.
    pub async fn ping(
        &self,
        instance_id: &InstanceId,
        timeout: Duration,
    ) -> Result<proto::PingReply, ClientError> {
        let address = self.address(instance_id);
        let payload = self
            .request(&address, subject::ping(&address), Vec::new(), timeout)
            .await?;
        codec::decode(&payload, self.max_payload()).map_err(|source| ClientError::Decode {
            address: address.to_string(),
            source,
        })
    }

    /// OCS `get_api`: the agent's identity and operations.
    pub async fn api(
        &self,
        instance_id: &InstanceId,
        timeout: Duration,
    ) -> Result<proto::ApiReply, ClientError> {
        let address = self.address(instance_id);
        let payload = self
            .request(&address, subject::api(&address), Vec::new(), timeout)
            .await?;
        codec::decode(&payload, self.max_payload()).map_err(|source| ClientError::Decode {
            address: address.to_string(),
            source,
        })
    }
}

/// What a records query of the registry returned, all pages together.
#[derive(Debug, Clone, Default)]
pub struct RegistryRecords {
    /// The records, in address order.
    pub records: Vec<proto::AgentRecord>,
    /// Counts of the agents that matched, by state and class.
    pub summary: Option<proto::RecordsSummary>,
}

impl OcsClient {
    /// `registry main status` of the registry `registry` with every record
    /// (or, given `filter`, those it selects, or only their summary) in the
    /// session's `data`, as OCS shapes it, however large the fleet: when the
    /// registry says its records come in pages, or a filter is given, they
    /// are read with [`Self::registry_records`] and put in `data`.
    pub async fn registry_status(
        &self,
        registry: &InstanceId,
        filter: Option<proto::RecordsQuery>,
        timeout: Duration,
    ) -> Result<proto::OperationReply, ClientError> {
        let main = OpName::new("main").expect("a valid operation name");
        let mut reply = self
            .operation(registry, &main, Action::Status, Vec::new(), None, timeout)
            .await?;
        let Some(session) = reply.session.as_mut() else {
            return Ok(reply);
        };
        let paged = json::records_in_pages(&session.data);
        if !paged && filter.is_none() {
            return Ok(reply);
        }
        let query = filter.unwrap_or_default();
        let summary_only = query.summary_only;
        let found = self.registry_records(registry, query, timeout).await?;
        let data = if summary_only {
            codec::to_msgpack(&json::records_summary(&found.summary.unwrap_or_default()))
        } else {
            codec::to_msgpack(&json::AgentRecords(&found.records))
        };
        session.data = data.map_err(|source| ClientError::Decode {
            address: self.address(registry).to_string(),
            source,
        })?;
        Ok(reply)
    }

    /// The records of the registry `registry` that `query` selects (or only
    /// their summary), read page after page from `{registry}.records`, each
    /// page under the server's `max_payload`: works at any fleet size.
    /// `timeout` bounds each page.
    pub async fn registry_records(
        &self,
        registry: &InstanceId,
        mut query: proto::RecordsQuery,
        timeout: Duration,
    ) -> Result<RegistryRecords, ClientError> {
        let address = self.address(registry);
        query.protocol_version = ocs_protocol::PROTOCOL_VERSION;
        query.after.clear();
        let mut all = RegistryRecords::default();
        loop {
            let payload = self
                .request(
                    &address,
                    subject::registry_records(&address),
                    codec::encode(&query),
                    timeout,
                )
                .await?;
            let page: proto::RecordsPage =
                codec::decode(&payload, self.max_payload()).map_err(|source| {
                    ClientError::Decode {
                        address: address.to_string(),
                        source,
                    }
                })?;
            if !page.error.is_empty() {
                return Err(ClientError::Refused {
                    address: address.to_string(),
                    reason: page.error,
                });
            }
            if page.summary.is_some() {
                all.summary = page.summary;
            }
            all.records.extend(page.records);
            if page.next_after.is_empty() {
                return Ok(all);
            }
            // A page that does not move past the last one would loop for ever.
            if page.next_after <= query.after {
                return Err(ClientError::Refused {
                    address: address.to_string(),
                    reason: format!("records pages stopped advancing at {:?}", page.next_after),
                });
            }
            query.after = page.next_after;
        }
    }
}
