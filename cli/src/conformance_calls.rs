//! The calls `ocs conformance` makes to a live agent, and the rules each
//! answer is held to (in `ocs_cli::conformance`). Without `--exercise` only
//! calls that change nothing are made; `--exercise OP` also runs OP, an
//! operation the operator names as safe to run, through its states.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Args;
use futures::StreamExt;
use ocs_cli::conformance::{self, Beat, Check};
use ocs_cli::output;
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, to_msgpack};
use ocs_protocol::{AgentAddress, InstanceId, ResponseCode, proto, subject};

use crate::commands::{Nats, parse_params, seconds};

/// Options of `ocs conformance`.
#[derive(Args)]
pub(crate) struct ConformanceArgs {
    /// The agent's instance id.
    instance_id: InstanceId,
    /// Seconds to listen to its heartbeats.
    #[arg(long, default_value_t = 3.5)]
    listen: f64,
    /// Also run this operation through its states (start, a second start,
    /// wait, and stop or abort): name only one that is safe to run.
    #[arg(long, value_name = "OPERATION")]
    exercise: Option<String>,
    /// Params of the exercised operation's start, as key=value.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// The agent's process id: it is then sent --signal, and must say it
    /// is leaving in a last heartbeat.
    #[arg(long)]
    pid: Option<i32>,
    /// The signal sent to --pid.
    #[arg(long, default_value = "TERM", value_parser = ["TERM", "INT"])]
    signal: String,
    /// Seconds to wait for each answer, for an exercised operation to end,
    /// and for the leaving heartbeat.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `ocs conformance`: exit 0 when the agent keeps every rule, 1 otherwise.
pub(crate) async fn conformance(
    nats: &Nats<'_>,
    args: ConformanceArgs,
) -> anyhow::Result<ExitCode> {
    let client = nats.ocs().await?;
    let address = client.address(&args.instance_id);
    let timeout = seconds(args.timeout)?;
    let mut heartbeats = client
        .nats()
        .subscribe(subject::heartbeat(&address))
        .await?;
    let began = Instant::now();
    let beats = collect_beats(&mut heartbeats, began, seconds(args.listen)?, false).await;
    let mut checks = conformance::heartbeats(&address, &beats);
    if let Some(last) = beats.last().map(|beat| &beat.heartbeat) {
        match client.api(&args.instance_id, timeout).await {
            Ok(api) => checks.extend(conformance::api(&api, last)),
            Err(err) => checks.push(Check::new("api: answers", false, err.to_string())),
        }
        match client.ping(&args.instance_id, timeout).await {
            Ok(ping) => checks.push(conformance::ping(&ping, last)),
            Err(err) => checks.push(Check::new("ping: answers", false, err.to_string())),
        }
        let agent = Requests {
            bus: client.nats(),
            address: &address,
            timeout,
        };
        checks.extend(reply_table(&agent, last).await);
        if let Some(op) = &args.exercise {
            let op_type = last
                .op_codes
                .iter()
                .find(|code| &code.op_name == op)
                .map(|code| code.op_type.clone())
                .ok_or_else(|| anyhow!("--exercise {op}: the agent has no such operation"))?;
            let params = parse_params(&args.params)?;
            let params = if params.is_empty() {
                Vec::new()
            } else {
                to_msgpack(&params)?
            };
            checks.extend(exercise(&agent, op, &op_type, params).await);
        }
    }
    if let Some(pid) = args.pid {
        let signal = match args.signal.as_str() {
            "INT" => rustix::process::Signal::INT,
            _ => rustix::process::Signal::TERM,
        };
        let pid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| anyhow!("--pid {pid} is not a process id"))?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("cannot signal process {}", pid.as_raw_nonzero()))?;
        let after = collect_beats(&mut heartbeats, Instant::now(), timeout, true).await;
        checks.push(conformance::leaving(&args.signal, &after));
    }
    output::write_text(&conformance::render(address.as_str(), &checks, args.json))?;
    Ok(if checks.iter().all(|check| check.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The heartbeats that arrive within `duration` (until the first leaving
/// one, if `until_leaving`).
async fn collect_beats(
    heartbeats: &mut async_nats::Subscriber,
    began: Instant,
    duration: Duration,
    until_leaving: bool,
) -> Vec<Beat> {
    let mut beats = Vec::new();
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(message) = heartbeats.next() => {
                // Decoded, not validated: the rules are checked and reported.
                if let Ok(heartbeat) = codec::decode::<proto::Heartbeat>(&message.payload, MAX_MESSAGE_BYTES) {
                    let leaving = heartbeat.leaving;
                    beats.push(Beat { at: began.elapsed(), heartbeat });
                    if leaving && until_leaving {
                        break;
                    }
                }
            }
        }
    }
    beats
}

/// Operation requests to one agent, each bounded in time.
struct Requests<'a> {
    bus: &'a async_nats::Client,
    address: &'a AgentAddress,
    timeout: Duration,
}

impl Requests<'_> {
    /// `action` on `op` with a version-1 request carrying `params` and a
    /// wait `timeout`, bounded by the request timeout (plus the wait's).
    async fn ask(
        &self,
        action: &str,
        op: &str,
        params: Vec<u8>,
        wait: Option<f64>,
    ) -> Result<proto::OperationReply, String> {
        let body = codec::encode(&proto::OperationRequest {
            protocol_version: ocs_protocol::PROTOCOL_VERSION,
            params,
            timeout: wait,
        });
        self.ask_raw(action, op, body, wait.unwrap_or(0.0)).await
    }

    async fn ask_raw(
        &self,
        action: &str,
        op: &str,
        body: Vec<u8>,
        longer: f64,
    ) -> Result<proto::OperationReply, String> {
        let subject = format!("{}.ops.{action}.{op}", self.address);
        let bound = self.timeout + Duration::from_secs_f64(longer.max(0.0));
        match tokio::time::timeout(bound, self.bus.request(subject, body.into())).await {
            Ok(Ok(message)) => {
                codec::decode(&message.payload, MAX_MESSAGE_BYTES).map_err(|err| err.to_string())
            }
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    }
}

/// A row of the reply table: the answer's status and exact message.
fn row(
    case: &str,
    answer: Result<proto::OperationReply, String>,
    status: ResponseCode,
    message: &str,
) -> Check {
    conformance::answered(format!("reply: {case}"), answer, |reply| {
        reply.status == status.value() && reply.message == message
    })
}

/// The rows of the reply table that a call changing nothing can reach,
/// the request versions, and `status` of every operation.
async fn reply_table(agent: &Requests<'_>, heartbeat: &proto::Heartbeat) -> Vec<Check> {
    const NOBODY: &str = "ocs_conformance_no_such_operation";
    let unknown = format!("No task or process called \"{NOBODY}\"");
    let mut checks = vec![
        row(
            "status of an unknown operation",
            agent.ask("status", NOBODY, Vec::new(), None).await,
            ResponseCode::Error,
            &unknown,
        ),
        row(
            "start of an unknown operation",
            agent.ask("start", NOBODY, Vec::new(), None).await,
            ResponseCode::Error,
            &unknown,
        ),
        row(
            "stop of an unknown operation",
            agent.ask("stop", NOBODY, Vec::new(), None).await,
            ResponseCode::Error,
            &format!("No operation called \"{NOBODY}\"."),
        ),
        row(
            "wait on an unknown operation",
            agent.ask("wait", NOBODY, Vec::new(), None).await,
            ResponseCode::Error,
            &format!("Unknown operation \"{NOBODY}\"."),
        ),
    ];
    for op in &heartbeat.op_codes {
        let name = op.op_name.as_str();
        checks.push(row(
            &format!("an unknown action on {name}"),
            agent.ask("frobnicate", name, Vec::new(), None).await,
            ResponseCode::Error,
            &format!("No implementation for \"{name}\""),
        ));
        let (wrong, kind) = if op.op_type == "task" {
            ("stop", "task")
        } else {
            ("abort", "process")
        };
        checks.push(row(
            &format!("{wrong} of the {kind} {name}"),
            agent.ask(wrong, name, Vec::new(), None).await,
            ResponseCode::Error,
            &format!("Cannot \"{wrong}\" \"{name}\" because it is a \"{kind}\"."),
        ));
        checks.push(match agent.ask("status", name, Vec::new(), None).await {
            Ok(reply) => conformance::status(name, &reply),
            Err(err) => Check::new(format!("status {name}: answers"), false, err),
        });
    }
    if let Some(op) = heartbeat.op_codes.first() {
        let name = op.op_name.as_str();
        checks.push(conformance::answered(
            "request: an empty body is version 1".into(),
            agent.ask_raw("status", name, Vec::new(), 0.0).await,
            |reply| reply.status == ResponseCode::Ok.value(),
        ));
        let newer = ocs_protocol::PROTOCOL_VERSION + 1;
        let body = codec::encode(&proto::OperationRequest {
            protocol_version: newer,
            ..Default::default()
        });
        let refusal = format!("malformed request: unsupported protocol version {newer}");
        checks.push(conformance::answered(
            "request: another version is refused, naming it".into(),
            agent.ask_raw("status", name, body, 0.0).await,
            |reply| {
                reply.status == ResponseCode::Error.value() && reply.message.starts_with(&refusal)
            },
        ));
    }
    checks
}

/// Runs `op` through its states and holds every answer to the reply table.
async fn exercise(agent: &Requests<'_>, op: &str, op_type: &str, params: Vec<u8>) -> Vec<Check> {
    let limit = agent.timeout.as_secs_f64();
    let mut checks = Vec::new();
    let started = agent.ask("start", op, params.clone(), None).await;
    let running = started
        .as_ref()
        .ok()
        .and_then(|reply| reply.session.as_ref())
        .is_some_and(|session| session.status != "done");
    checks.push(conformance::with_session(
        row(
            &format!("start of {op}"),
            started.clone(),
            ResponseCode::Ok,
            &format!("Started {op_type} \"{op}\"."),
        ),
        op,
        started,
    ));
    if running {
        let again = agent.ask("start", op, params, None).await;
        checks.push(row(
            &format!("a second start of the running {op}"),
            again,
            ResponseCode::Error,
            &format!("Operation \"{op}\" already in progress."),
        ));
    }
    if op_type == "process" {
        let waited = agent.ask("wait", op, Vec::new(), Some(0.2)).await;
        checks.push(row(
            &format!("a short wait on the running {op}"),
            waited,
            ResponseCode::Timeout,
            &format!("Operation \"{op}\" still running; wait timed out."),
        ));
        let stopped = agent.ask("stop", op, Vec::new(), None).await;
        checks.push(conformance::with_session(
            row(
                &format!("stop of the running {op}"),
                stopped.clone(),
                ResponseCode::Ok,
                &format!("Requested stop on process \"{op}\"."),
            ),
            op,
            stopped,
        ));
    }
    let waited = agent.ask("wait", op, Vec::new(), Some(limit)).await;
    let not_running = format!("Operation \"{op}\" is currently not running (");
    checks.push(conformance::with_session(
        conformance::answered(
            format!("wait until {op} is done"),
            waited.clone(),
            |reply| {
                reply.status == ResponseCode::Ok.value() && reply.message.starts_with(&not_running)
            },
        ),
        op,
        waited,
    ));
    let action = if op_type == "process" {
        "stop"
    } else {
        "abort"
    };
    checks.push(row(
        &format!("{action} of the finished {op}"),
        agent.ask(action, op, Vec::new(), None).await,
        ResponseCode::Error,
        "The operation is already done",
    ));
    checks
}
