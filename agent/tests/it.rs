//! Agent runtime against a real nats-server: OCS action semantics over the
//! wire, heartbeats under load, NATS outages and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ocs_agent::{Agent, NoParams, OcsClient, OpContext, OpResult, Params};
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, to_msgpack};
use ocs_protocol::{
    Action, AddressRoot, AgentAddress, InstanceId, OpCode, OpName, heartbeat, json, proto,
};
use ocs_testkit::{NatsServer, eventually};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    seconds: f64,
    #[serde(default)]
    succeed: Option<bool>,
}

impl Params for SleepParams {
    fn validate(&self) -> Result<(), String> {
        if self.seconds < 0.0 {
            return Err("seconds must not be negative".into());
        }
        Ok(())
    }
}

async fn sleep_task(ctx: OpContext, params: SleepParams) -> OpResult {
    if ctx
        .sleep_or_stop(Duration::from_secs_f64(params.seconds))
        .await
    {
        return Err("aborted".into());
    }
    match params.succeed {
        Some(false) => Err("failed as asked".into()),
        _ => Ok("slept".into()),
    }
}

async fn loop_process(ctx: OpContext, _: NoParams) -> OpResult {
    let mut n = 0;
    while !ctx.sleep_or_stop(Duration::from_millis(50)).await {
        n += 1;
        ctx.update_data(|data| {
            data.insert("n".into(), n.into());
        });
    }
    Ok("loop stopped".into())
}

fn spin(ctx: OpContext, params: SleepParams) -> OpResult {
    // Blocks its thread without ever yielding, like careless driver code.
    let end = std::time::Instant::now() + Duration::from_secs_f64(params.seconds);
    while std::time::Instant::now() < end && !ctx.is_stopping() {
        std::hint::spin_loop();
    }
    Ok("spun".into())
}

async fn spin_async(_: OpContext, params: SleepParams) -> OpResult {
    // Worse: an async function that never awaits, occupying a worker of its runtime.
    let end = std::time::Instant::now() + Duration::from_secs_f64(params.seconds);
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
    Ok("spun".into())
}

fn test_agent() -> ocs_agent::AgentBuilder {
    Agent::builder("TestAgent")
        .task("sleep", "Sleep, then succeed or fail.", sleep_task)
        .process("loop", "Count until stopped.", loop_process)
        .blocking_task("spin", "Spin on a thread.", spin)
        .task("spin_async", "Spin without awaiting.", spin_async)
        .shutdown_grace(Duration::from_secs(2))
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    client: OcsClient,
}

async fn run_agent(nats: &NatsServer, instance_id: &str) -> Running {
    let address = AgentAddress::new(
        &AddressRoot::default(),
        &InstanceId::new(instance_id).unwrap(),
    );
    let agent = test_agent().build(address).unwrap();
    let agent_client = ocs_service::connect::connect_service(&nats.url(), instance_id)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { agent.run(agent_client, token).await.unwrap() });
    let client = OcsClient::new(
        async_nats::connect(nats.url()).await.unwrap(),
        AddressRoot::default(),
    );
    let probe = client.clone();
    let id = InstanceId::new(instance_id).unwrap();
    eventually(Duration::from_secs(5), "agent answering", || {
        let (probe, id) = (probe.clone(), id.clone());
        async move { probe.api(&id, Duration::from_millis(500)).await.ok() }
    })
    .await;
    Running {
        shutdown,
        task,
        client,
    }
}

/// `(status, message, session)` of one call, as OCS JSON.
async fn call(
    client: &OcsClient,
    op: &str,
    action: Action,
    params: Value,
    wait: Option<f64>,
) -> (i32, String, Value) {
    let params = if params == json!({}) {
        Vec::new()
    } else {
        to_msgpack(&params).unwrap()
    };
    let reply = client
        .operation(
            &InstanceId::new("tester").unwrap(),
            &OpName::new(op).unwrap(),
            action,
            params,
            wait,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let value = json::reply(&reply).unwrap();
    (reply.status, reply.message, value["session"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocs_action_semantics_over_the_wire() {
    let nats = NatsServer::start();
    let agent = run_agent(&nats, "tester").await;
    let c = &agent.client;

    assert_eq!(
        call(c, "sleep", Action::Status, json!({}), None).await.1,
        "No session active."
    );
    assert_eq!(
        call(c, "sleep", Action::Wait, json!({}), Some(1.0)).await.1,
        "Idle."
    );
    let (status, message, _) = call(c, "sleep", Action::Start, json!({"seconds": "x"}), None).await;
    assert_eq!(status, -1);
    assert!(
        message.starts_with("Param error for \"sleep\""),
        "{message}"
    );
    let (status, message, _) = call(
        c,
        "sleep",
        Action::Start,
        json!({"seconds": 1, "bogus": 1}),
        None,
    )
    .await;
    assert_eq!(
        (status, message.contains("unknown field")),
        (-1, true),
        "{message}"
    );
    let (status, message, _) = call(c, "sleep", Action::Start, json!({"seconds": -1}), None).await;
    assert_eq!(
        (status, message.as_str()),
        (
            -1,
            "Param error for \"sleep\": seconds must not be negative"
        )
    );

    let (status, message, session) = call(
        c,
        "sleep",
        Action::Start,
        json!({"seconds": 0.4, "succeed": false}),
        None,
    )
    .await;
    assert_eq!((status, message.as_str()), (0, "Started task \"sleep\"."));
    assert_eq!(session["status"], "starting");
    let (status, message, session) =
        call(c, "sleep", Action::Start, json!({"seconds": 1}), None).await;
    assert_eq!(
        (status, message.as_str(), session["op_name"].as_str()),
        (
            -1,
            "Operation \"sleep\" already in progress.",
            Some("sleep")
        )
    );
    let (status, message, _) = call(c, "sleep", Action::Wait, json!({}), Some(-1.0)).await;
    assert_eq!(
        (status, message.as_str()),
        (1, "Operation \"sleep\" still running; wait timed out.")
    );
    let (status, message, session) = call(c, "sleep", Action::Wait, json!({}), Some(5.0)).await;
    assert_eq!(
        (status, message.as_str()),
        (0, "Operation \"sleep\" is currently not running (FAILED).")
    );
    assert_eq!(
        (session["success"].clone(), session["op_code"].clone()),
        (json!(false), json!(6))
    );
    let texts: Vec<&str> = session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[1].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "Status is now \"starting\".",
            "Status is now \"running\".",
            "failed as asked",
            "Status is now \"done\"."
        ]
    );

    call(c, "loop", Action::Start, json!({}), None).await;
    eventually(Duration::from_secs(3), "the loop counting", || async {
        call(c, "loop", Action::Status, json!({}), None).await.2["data"]["n"].as_i64()
    })
    .await;
    assert_eq!(
        call(c, "loop", Action::Abort, json!({}), None).await.1,
        "Cannot \"abort\" \"loop\" because it is a \"process\"."
    );
    let (status, message, session) = call(c, "loop", Action::Stop, json!({}), None).await;
    assert_eq!(
        (status, message.as_str(), session["status"].as_str()),
        (0, "Requested stop on process \"loop\".", Some("stopping"))
    );
    let (_, _, session) = call(c, "loop", Action::Wait, json!({}), Some(5.0)).await;
    assert_eq!(session["op_code"], 5, "a cleanly stopped process succeeded");
    assert!(session["data"]["n"].as_i64().unwrap() >= 1);
    assert_eq!(
        call(c, "loop", Action::Stop, json!({}), None).await.1,
        "The operation is already done"
    );

    call(c, "sleep", Action::Start, json!({"seconds": 30}), None).await;
    assert_eq!(
        call(c, "sleep", Action::Stop, json!({}), None).await.1,
        "Cannot \"stop\" \"sleep\" because it is a \"task\"."
    );
    assert_eq!(
        call(c, "sleep", Action::Abort, json!({}), None).await.1,
        "Requested abort on task \"sleep\"."
    );
    let (_, message, _) = call(c, "sleep", Action::Wait, json!({}), Some(5.0)).await;
    assert_eq!(
        message,
        "Operation \"sleep\" is currently not running (FAILED)."
    );

    assert_eq!(
        call(c, "nope", Action::Start, json!({}), None).await.1,
        "No task or process called \"nope\""
    );
    assert_eq!(
        call(c, "nope", Action::Stop, json!({}), None).await.1,
        "No operation called \"nope\"."
    );
    assert_eq!(
        call(c, "nope", Action::Wait, json!({}), None).await.1,
        "Unknown operation \"nope\"."
    );
    // An unknown action on the wire (a client newer than the agent).
    let reply = c
        .nats()
        .request(
            "observatory.tester.ops.launch.sleep",
            codec::encode(&proto::OperationRequest {
                protocol_version: 1,
                ..Default::default()
            })
            .into(),
        )
        .await
        .unwrap();
    let reply: proto::OperationReply = codec::decode(&reply.payload, MAX_MESSAGE_BYTES).unwrap();
    assert_eq!(
        (reply.status, reply.message.as_str()),
        (-1, "No implementation for \"sleep\"")
    );

    // A wait timeout that is no number of seconds is refused, not a panic
    // that leaves the caller without a reply.
    for timeout in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let (status, message, _) = call(c, "sleep", Action::Wait, json!({}), Some(timeout)).await;
        assert_eq!(status, -1, "{timeout}: {message}");
        assert!(message.contains("finite number of seconds"), "{message}");
    }
    // OCS: a negative timeout returns at once (TIMEOUT while running).
    call(c, "sleep", Action::Start, json!({"seconds": 5.0}), None).await;
    let (status, message, _) = call(c, "sleep", Action::Wait, json!({}), Some(-1.0)).await;
    assert_eq!(status, 1, "{message}");
    call(c, "sleep", Action::Abort, json!({}), None).await;

    agent.shutdown.cancel();
    agent.task.await.unwrap();
}

/// Collects `(arrival, heartbeat)` of one agent.
async fn heartbeats(
    nats: &NatsServer,
    instance_id: &str,
) -> Arc<std::sync::Mutex<Vec<(Instant, proto::Heartbeat)>>> {
    let client = ocs_service::connect::connect_service(&nats.url(), "listener")
        .await
        .unwrap();
    let mut subscription = client
        .subscribe(format!("observatory.{instance_id}.feeds.heartbeat"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let log: Arc<std::sync::Mutex<Vec<(Instant, proto::Heartbeat)>>> = Arc::default();
    let sink = log.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscription.next().await {
            let heartbeat = heartbeat::decode(&message.payload, MAX_MESSAGE_BYTES).unwrap();
            sink.lock().unwrap().push((Instant::now(), heartbeat));
        }
    });
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_coming_while_operations_block_and_spin() {
    let nats = NatsServer::start();
    let log = heartbeats(&nats, "tester").await;
    let agent = run_agent(&nats, "tester").await;
    let c = &agent.client;
    // Both operation threads busy: one blocking task and one async task that never yields.
    call(c, "spin", Action::Start, json!({"seconds": 3.5}), None).await;
    call(
        c,
        "spin_async",
        Action::Start,
        json!({"seconds": 3.5}),
        None,
    )
    .await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: Vec<Instant> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| *at > from)
        .collect();
    // A 1 s period gives three beats in 3 s; a stalled heartbeat would give none.
    assert!(
        during.len() >= 2,
        "only {} heartbeats while operations spun",
        during.len()
    );
    let (_, message, _) = call(c, "spin_async", Action::Wait, json!({}), Some(5.0)).await;
    assert!(message.ends_with("(SUCCEEDED)."));
    agent.shutdown.cancel();
    agent.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_is_version_1_and_another_version_is_refused_by_name() {
    let nats = NatsServer::start();
    let agent = run_agent(&nats, "tester").await;
    let bus = agent.client.nats();
    let ask = |payload: Vec<u8>| async move {
        let reply = bus
            .request("observatory.tester.ops.status.sleep", payload.into())
            .await
            .unwrap();
        let reply: proto::OperationReply =
            codec::decode(&reply.payload, MAX_MESSAGE_BYTES).unwrap();
        (reply.status, reply.message)
    };
    assert_eq!(ask(Vec::new()).await, (0, "No session active.".to_owned()));
    let future = proto::OperationRequest {
        protocol_version: 2,
        ..Default::default()
    };
    assert_eq!(
        ask(codec::encode(&future)).await,
        (
            -1,
            "malformed request: unsupported protocol version 2 (this build reads 1..=1)".to_owned()
        )
    );
    let (status, message) = ask(vec![0xff, 0xff, 0xff]).await;
    assert_eq!(status, -1);
    assert!(message.starts_with("malformed request: "), "{message}");
    agent.shutdown.cancel();
    agent.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_op_code_change_sends_an_early_heartbeat() {
    let nats = NatsServer::start();
    let log = heartbeats(&nats, "tester").await;
    let agent = run_agent(&nats, "tester").await;
    let c = &agent.client;
    let beats_since = |from: Instant| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at > from)
            .count()
    };
    // Forty refused aborts and stops (nothing runs) change no op code.
    let from = Instant::now();
    for _ in 0..20 {
        let (status, _, _) = call(c, "sleep", Action::Abort, json!({}), None).await;
        assert_eq!(status, -1);
        let (status, _, _) = call(c, "loop", Action::Stop, json!({}), None).await;
        assert_eq!(status, -1);
    }
    let elapsed = from.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The 1 s cadence alone: at most one beat per started second, plus one.
    let allowed = elapsed.as_secs() as usize + 2;
    let sent = beats_since(from);
    assert!(
        sent <= allowed,
        "{sent} heartbeats in {elapsed:?} of refused calls"
    );
    // A start changes an op code: a beat follows at once, carrying it.
    let from = Instant::now();
    call(c, "loop", Action::Start, json!({}), None).await;
    eventually(
        Duration::from_millis(500),
        "an early beat with loop running",
        || async {
            log.lock()
                .unwrap()
                .iter()
                .filter(|(at, _)| *at > from)
                .find(|(_, beat)| {
                    beat.op_codes
                        .iter()
                        .any(|op| op.op_name == "loop" && op.op_code == OpCode::Running.value())
                })
                .map(|_| ())
        },
    )
    .await;
    agent.shutdown.cancel();
    agent.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_and_heartbeats_survive_a_nats_outage() {
    let mut nats = NatsServer::start();
    let agent = run_agent(&nats, "tester").await;
    call(&agent.client, "loop", Action::Start, json!({}), None).await;
    let before = heartbeats(&nats, "tester").await;
    eventually(Duration::from_secs(3), "a heartbeat", || async {
        before.lock().unwrap().last().map(|(_, hb)| hb.clone())
    })
    .await;
    let last_before = before.lock().unwrap().last().unwrap().1.clone();
    nats.kill();
    // Longer than OCS's 10 s default would allow for some agents, but bounded for the test.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart();
    let after = heartbeats(&nats, "tester").await;
    let resumed = eventually(
        Duration::from_secs(10),
        "heartbeats after the outage",
        || async { after.lock().unwrap().last().map(|(_, hb)| hb.clone()) },
    )
    .await;
    assert_eq!(
        resumed.incarnation, last_before.incarnation,
        "same process, same incarnation"
    );
    assert!(resumed.seq > last_before.seq);
    // Beats skipped while disconnected are not numbered (PROTOCOL.md): three
    // seconds without NATS leave at most the beat lost at the kill as a gap.
    let first_after = after.lock().unwrap()[0].1.seq;
    assert!(
        first_after <= last_before.seq + 2,
        "seq jumped from {} to {first_after} over the outage",
        last_before.seq
    );
    let loop_code = resumed
        .op_codes
        .iter()
        .find(|op| op.op_name == "loop")
        .unwrap()
        .op_code;
    assert_eq!(loop_code, 3, "the process kept running through the outage");
    let client = OcsClient::new(
        async_nats::connect(nats.url()).await.unwrap(),
        AddressRoot::default(),
    );
    let (_, message, _) = call(&client, "loop", Action::Status, json!({}), None).await;
    assert_eq!(message, "Session active.");
    agent.shutdown.cancel();
    agent.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_operations_then_says_goodbye() {
    let nats = NatsServer::start();
    let log = heartbeats(&nats, "tester").await;
    let agent = run_agent(&nats, "tester").await;
    call(&agent.client, "loop", Action::Start, json!({}), None).await;
    call(
        &agent.client,
        "sleep",
        Action::Start,
        json!({"seconds": 60}),
        None,
    )
    .await;
    agent.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), agent.task)
        .await
        .expect("shutdown within the grace period")
        .unwrap();
    let leaving = eventually(Duration::from_secs(2), "leaving heartbeat", || async {
        log.lock()
            .unwrap()
            .iter()
            .map(|(_, hb)| hb.clone())
            .find(|hb| hb.leaving)
    })
    .await;
    let code = |name: &str| {
        leaving
            .op_codes
            .iter()
            .find(|op| op.op_name == name)
            .unwrap()
            .op_code
    };
    assert_eq!(code("loop"), 5, "the process was stopped cleanly");
    assert_eq!(code("sleep"), 6, "the task was aborted");
}
