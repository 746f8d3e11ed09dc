//! The record's witnesses, outside the system under test: one feed
//! subscriber pinned to each NATS server (so each side of a partition is
//! heard), and a sampler of the operation monitor's `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use http_body_util::BodyExt;
use ocs_protocol::{AddressRoot, AgentAddress, InstanceId, codec, proto, subject};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::record::{Event, Record, Seen};
use crate::schedule::Topology;

/// The campaign's monotonic clock: seconds since it started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock that reads 0 now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    /// Seconds since the start.
    pub fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// The record, appended to by every witness and the nemesis.
pub type SharedRecord = Arc<Mutex<Record>>;

/// Appends `event` to `record` at the clock's time.
pub fn note(record: &SharedRecord, clock: Clock, event: Event) {
    record.lock().push(clock.now(), event);
}

/// `GET http://127.0.0.1:{port}{path}`, bounded by `timeout`: the body of a
/// 2xx answer.
pub async fn http_get(port: u16, path: &str, timeout: Duration) -> anyhow::Result<String> {
    tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("GET {path}: {}", response.status());
        }
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .with_context(|| format!("GET :{port}{path}: no answer within {timeout:?}"))?
}

fn registry_address() -> AgentAddress {
    let root = AddressRoot::new(Topology::ROOT).expect("a valid root");
    AgentAddress::new(
        &root,
        &InstanceId::new("registry").expect("a valid instance id"),
    )
}

/// Subscribes to the feed on the NATS server at `127.0.0.1:{port}` only (no
/// failover to the cluster's other servers) and records every message as
/// received by `observer`, until `stop`.
pub fn observe_feed(
    observer: u8,
    port: u16,
    clock: Clock,
    record: SharedRecord,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let url = format!("nats://127.0.0.1:{port}");
        let connected = async_nats::ConnectOptions::new()
            .name(format!("campaign-observer-{}", observer + 1))
            .ignore_discovered_servers()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(1))
            .reconnect_delay_callback(|_| Duration::from_millis(250))
            .connect(url.as_str())
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(err) => {
                warn!(observer, error = %err, "observer cannot connect");
                return;
            }
        };
        let mut feed = match client
            .subscribe(subject::agent_operations(&registry_address()))
            .await
        {
            Ok(feed) => feed,
            Err(err) => {
                warn!(observer, error = %err, "observer cannot subscribe");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                message = feed.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let at = clock.now();
            match codec::decode::<proto::AgentOperations>(
                &message.payload,
                codec::MAX_MESSAGE_BYTES,
            ) {
                Ok(decoded) => record.lock().push(at, feed_event(observer, decoded)),
                Err(err) => warn!(observer, error = %err, "undecodable feed message"),
            }
        }
    })
}

fn feed_event(observer: u8, message: proto::AgentOperations) -> Event {
    Event::Feed {
        observer,
        registry_incarnation: message.registry_incarnation,
        term: message.lease_term,
        seq: message.seq,
        sent_at_ms: message.sent_at_unix_ms,
        snapshot: message.snapshot,
        parts: message.snapshot_parts,
        agents: message
            .agents
            .into_iter()
            .map(|agent| Seen {
                expired: agent.expired,
                address: agent.agent_address,
                incarnation: agent.incarnation,
            })
            .collect(),
        forgotten: message.forgotten,
    }
}

/// Reads the operation monitor's `/metrics` every second until `stop`.
pub fn sample_monitor(
    port: u16,
    clock: Clock,
    record: SharedRecord,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let expired = http_get(port, "/metrics", Duration::from_millis(900))
                .await
                .ok()
                .map(|body| expired_by_agent(&body));
            note(&record, clock, Event::Monitor { expired });
        }
    })
}

/// `ocs_agent_expired` by agent, from an exposition.
pub fn expired_by_agent(exposition: &str) -> BTreeMap<String, bool> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("ocs_agent_expired{"))
        .filter_map(|line| {
            let (labels, value) = line.rsplit_once("} ")?;
            let agent = labels.split("agent=\"").nth(1)?.split('"').next()?;
            Some((agent.to_owned(), value.trim() != "0"))
        })
        .collect()
}

/// Whether the registry replica whose `/metrics` is on `port` leads.
pub async fn leads(port: u16) -> bool {
    http_get(port, "/metrics", Duration::from_secs(1))
        .await
        .is_ok_and(|body| {
            body.lines()
                .any(|line| line.trim() == "ocs_registry_leader 1")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expired_flag_is_read_by_agent() {
        let exposition = "# HELP ocs_agent_expired 1 while ...\n# TYPE ocs_agent_expired gauge\n\
            ocs_agent_expired{agent=\"observatory.h1a1\",agent_class=\"FakeDataAgent\"} 0\n\
            ocs_agent_expired{agent_class=\"FakeDataAgent\",agent=\"observatory.h1a2\"} 1\n\
            ocs_agent_expired_total 3\n";
        let expired = expired_by_agent(exposition);
        assert_eq!(
            expired,
            [
                ("observatory.h1a1".to_owned(), false),
                ("observatory.h1a2".to_owned(), true)
            ]
            .into()
        );
    }
}
