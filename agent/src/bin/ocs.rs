//! `ocs`: the command-line client, mirroring OCS's `OCSClient` and `ocs-client-cli`.
//!
//! Exit codes: 0 the call was carried out (OK); 1 the agent refused it (ERROR);
//! 3 a `wait` timed out (TIMEOUT); 2 the call could not be made (bad usage,
//! NATS unreachable, no such agent, no answer in time).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use ocs_agent::OcsClient;
use ocs_agent::process::{CommonArgs, connect_client};
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, to_msgpack};
use ocs_protocol::{Action, InstanceId, OpName, ResponseCode, json, proto, subject};
use serde_json::{Map, Value};

/// Standard output could not be written (a full disk, `/dev/full`). A closed
/// pipe (`ocs … | head`) is not this: it silences the rest of the output.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
struct StdoutError(std::io::Error);

/// Set once a reader closed standard output.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard output. After the reader went away the
/// command carries on silently, so its exit code still tells the result.
fn write_line(line: std::fmt::Arguments) -> Result<(), StdoutError> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => Err(StdoutError(err)),
    }
}

/// `println!` that reports a failed write instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

/// Control and inspect OCS agents over NATS.
///
/// `ocs <instance-id> <operation> <action> [key=value ...]` calls an operation,
/// e.g. `ocs registry main status` or `ocs faker delay_task start delay=2`.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = false)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List agents: those the registry knows, or those heard heartbeating.
    Scan {
        /// Listen to heartbeats directly for this many seconds instead of asking the registry.
        #[arg(long, value_name = "SECONDS")]
        listen: Option<f64>,
        /// Also list every operation with its op code.
        #[arg(long)]
        details: bool,
        /// Instance id of the registry.
        #[arg(long, env = "OCS_REGISTRY", default_value = "registry")]
        registry: InstanceId,
        /// Seconds to wait for the registry.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show an agent's identity and operations with their docs.
    Api {
        /// The agent's instance id.
        instance_id: InstanceId,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check that an agent answers: its incarnation, uptime and version, and
    /// the round trip, without touching its operations.
    Ping {
        /// The agent's instance id.
        instance_id: InstanceId,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print messages on feed subjects as JSON lines, e.g. `observatory.*.feeds.heartbeat`.
    Listen {
        /// NATS subject pattern (`*` one token, `>` the rest).
        pattern: String,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Ask a host manager to bring instances up or down, or to freeze or thaw
    /// them: `ocs host up faker1 faker2`, `ocs host down --all`.
    Host {
        /// up, down, freeze or thaw.
        #[arg(value_parser = ["up", "down", "freeze", "thaw"])]
        action: String,
        /// Instance ids managed by that host manager.
        #[arg(required_unless_present = "all")]
        instances: Vec<String>,
        /// Every instance of the host manager.
        #[arg(long, conflicts_with = "instances")]
        all: bool,
        /// The host manager's instance id (default: hm-<this host's name>).
        #[arg(long, env = "OCS_HOST_MANAGER")]
        manager: Option<InstanceId>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Print `{"status", "message", "session"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an HTTP endpoint such as `/healthz` and exit 0 on a 2xx answer, 1
    /// otherwise: container healthchecks need no curl or wget in the image.
    Probe {
        /// The URL, e.g. `http://127.0.0.1:9463/healthz` (plain HTTP only).
        url: hyper::Uri,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    #[command(external_subcommand)]
    Operation(Vec<String>),
}

/// `ocs <instance-id> <operation> <action> [key=value ...]`
#[derive(Parser)]
#[command(name = "ocs", no_binary_name = true)]
struct OperationCall {
    /// The agent's instance id.
    instance_id: InstanceId,
    /// The task or process.
    op_name: OpName,
    /// start, stop, abort, wait or status.
    action: String,
    /// Params for `start`, as key=value; values are JSON if they parse as JSON, else text.
    params: Vec<String>,
    /// Seconds to wait for the answer; for `wait`, how long the operation may take.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print `{"status", "message", "session"}` as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let connect = || async {
        connect_client(&cli.common.nats_url, &cli.common.nats_auth)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", cli.common.nats_url))
    };
    match cli.command {
        Command::Operation(args) => {
            let call = OperationCall::try_parse_from(args)
                .map_err(|err| anyhow!("{}", err.to_string().trim_end()))?;
            let client = OcsClient::new(connect().await?, cli.common.address_root.clone());
            operation(&client, call).await
        }
        Command::Scan {
            listen,
            details,
            registry,
            timeout,
            json,
        } => {
            let client = OcsClient::new(connect().await?, cli.common.address_root.clone());
            let agents = match listen {
                Some(seconds) => listen_for_heartbeats(&client, &cli.common, seconds).await?,
                None => registered_agents(&client, &registry, timeout).await?,
            };
            print_scan(&agents, listen.is_some(), details, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Api {
            instance_id,
            timeout,
            json,
        } => {
            let client = OcsClient::new(connect().await?, cli.common.address_root.clone());
            let api = client.api(&instance_id, seconds(timeout)?).await?;
            print_api(&api, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping {
            instance_id,
            timeout,
            json,
        } => {
            let client = OcsClient::new(connect().await?, cli.common.address_root.clone());
            let sent = std::time::Instant::now();
            let ping = client.ping(&instance_id, seconds(timeout)?).await?;
            let round_trip_ms = sent.elapsed().as_secs_f64() * 1000.0;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "agent_address": ping.agent_address,
                        "incarnation": ping.incarnation,
                        "uptime": ping.uptime_ms as f64 / 1000.0,
                        "version": ping.agent_version,
                        "round_trip_ms": round_trip_ms,
                    })
                )?;
            } else {
                outln!(
                    "{}: incarnation {}, up {:.1} s, version {}, {round_trip_ms:.1} ms",
                    ping.agent_address,
                    ping.incarnation,
                    ping.uptime_ms as f64 / 1000.0,
                    ping.agent_version
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Listen { pattern, duration } => {
            let client = connect().await?;
            listen(&client, &pattern, duration).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Host {
            action,
            instances,
            all,
            manager,
            timeout,
            json,
        } => {
            let manager = match manager {
                Some(manager) => manager,
                None => {
                    let host = ocs_agent::process::hostname()
                        .ok_or_else(|| anyhow!("cannot read this host's name: give --manager"))?;
                    InstanceId::new(format!("hm-{host}"))?
                }
            };
            let names = if all {
                vec!["all".to_owned()]
            } else {
                instances
            };
            let requests: Vec<(String, String)> = names
                .into_iter()
                .map(|name| (name, action.clone()))
                .collect();
            let client = OcsClient::new(connect().await?, cli.common.address_root.clone());
            let update = OpName::new("update")?;
            let call = |action: &str| OperationCall {
                instance_id: manager.clone(),
                op_name: update.clone(),
                action: action.to_owned(),
                params: Vec::new(),
                timeout,
                json,
            };
            let mut start = call("start");
            start.params = vec![format!("requests={}", serde_json::to_string(&requests)?)];
            let started = call_operation(&client, start).await?;
            if started.status != ResponseCode::Ok as i32 {
                bail!("{manager} refused the update: {}", started.message);
            }
            // The update task's own outcome is what the operator asked about.
            let reply = json::reply(&call_operation(&client, call("wait")).await?)?;
            if json {
                outln!("{reply}")?;
            } else {
                print_reply(&reply)?;
            }
            Ok(if reply["session"]["success"] == Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Probe { url, timeout } => {
            let status = tokio::time::timeout(seconds(timeout)?, probe(&url))
                .await
                .map_err(|_| anyhow!("no answer from {url} within {timeout} s"))??;
            outln!("{url}: {status}")?;
            Ok(if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// One GET over a fresh HTTP/1.1 connection; the body is read and discarded so
/// the server sees a complete exchange.
async fn probe(url: &hyper::Uri) -> anyhow::Result<hyper::StatusCode> {
    use http_body_util::{BodyExt, Empty};
    if url.scheme_str() != Some("http") {
        bail!("{url}: only http:// URLs can be probed");
    }
    let authority = url
        .authority()
        .ok_or_else(|| anyhow!("{url}: no host in the URL"))?;
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(url.clone())
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

fn seconds(value: f64) -> anyhow::Result<Duration> {
    ocs_agent::seconds::positive(value).map_err(|reason| anyhow!("invalid timeout: {reason}"))
}

fn parse_params(params: &[String]) -> anyhow::Result<Map<String, Value>> {
    params
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("param {pair:?} is not of the form key=value"))?;
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
            Ok((key.to_owned(), value))
        })
        .collect()
}

async fn operation(client: &OcsClient, call: OperationCall) -> anyhow::Result<ExitCode> {
    let json = call.json;
    let reply = call_operation(client, call).await?;
    let value = json::reply(&reply)?;
    if json {
        outln!("{value}")?;
    } else {
        print_reply(&value)?;
    }
    Ok(match ResponseCode::from_value(reply.status) {
        Some(ResponseCode::Ok) => ExitCode::SUCCESS,
        Some(ResponseCode::Timeout) => ExitCode::from(3),
        _ => ExitCode::from(1),
    })
}

async fn call_operation(
    client: &OcsClient,
    call: OperationCall,
) -> anyhow::Result<proto::OperationReply> {
    let action = Action::parse(&call.action).ok_or_else(|| {
        anyhow!(
            "unknown action {:?}: use start, stop, abort, wait or status",
            call.action
        )
    })?;
    let params = parse_params(&call.params)?;
    if action != Action::Start && !params.is_empty() {
        bail!("params are only accepted by start");
    }
    let params = if params.is_empty() {
        Vec::new()
    } else {
        to_msgpack(&params)?
    };
    let wait_timeout = (action == Action::Wait).then_some(call.timeout);
    let request_timeout = seconds(call.timeout)?;
    let reply = client
        .operation(
            &call.instance_id,
            &call.op_name,
            action,
            params,
            wait_timeout,
            request_timeout,
        )
        .await?;
    Ok(reply)
}

fn now_seconds() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

fn status_name(status: i64) -> &'static str {
    i32::try_from(status)
        .ok()
        .and_then(ResponseCode::from_value)
        .map_or("?", ResponseCode::name)
}

fn print_reply(reply: &Value) -> Result<(), StdoutError> {
    outln!(
        "{} : {}",
        status_name(reply["status"].as_i64().unwrap_or(-1)),
        reply["message"].as_str().unwrap_or("")
    )?;
    let session = &reply["session"];
    if session.as_object().is_none_or(Map::is_empty) {
        return Ok(());
    }
    let start = session["start_time"].as_f64().unwrap_or(0.0);
    let end = session["end_time"].as_f64().unwrap_or_else(now_seconds);
    outln!(
        "  {}[session={}]; status={} for {:.1} s; op_code={}; success={}",
        session["op_name"].as_str().unwrap_or("?"),
        session["session_id"],
        session["status"].as_str().unwrap_or("?"),
        end - start,
        json::op_code_name(session["op_code"].as_i64().unwrap_or(0)),
        session["success"],
    )?;
    if let Some(agents) = registry_data(&session["data"]) {
        print_agent_table(&agents)?;
    } else if session["data"]
        .as_object()
        .is_some_and(|data| !data.is_empty())
    {
        outln!("  data: {}", session["data"])?;
    }
    if let Some(messages) = session["messages"].as_array() {
        outln!("  messages:")?;
        for message in messages.iter().rev().take(10).rev() {
            let at = message[0].as_f64().unwrap_or(0.0);
            let at = chrono::DateTime::from_timestamp_micros((at * 1e6) as i64)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            outln!("    {at} {}", message[1].as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

/// The registry's `main` session data: a map of address → record.
fn registry_data(data: &Value) -> Option<BTreeMap<String, Value>> {
    let map = data.as_object()?;
    let is_registry = !map.is_empty()
        && map.values().all(|record| {
            record.get("agent_address").is_some() && record.get("op_codes").is_some()
        });
    is_registry.then(|| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn print_agent_table(agents: &BTreeMap<String, Value>) -> Result<(), StdoutError> {
    let now = now_seconds();
    let width = agents.keys().map(String::len).max().unwrap_or(7).max(7);
    outln!(
        "  {:<width$}  {:<20}  {:<7}  {:>8}  OPERATIONS",
        "ADDRESS",
        "CLASS",
        "STATE",
        "HB AGE"
    )?;
    for (address, record) in agents {
        let age = record["last_updated"]
            .as_f64()
            .map_or("-".to_owned(), |t| format!("{:.1}s", (now - t).max(0.0)));
        let ops: Vec<String> = record["op_codes"]
            .as_object()
            .map(|ops| {
                ops.iter()
                    .map(|(op, code)| {
                        format!("{op}={}", json::op_code_name(code.as_i64().unwrap_or(0)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        outln!(
            "  {address:<width$}  {:<20}  {:<7}  {age:>8}  {}",
            record["agent_class"].as_str().unwrap_or("?"),
            record["state"]
                .as_str()
                .unwrap_or(if record["expired"] == Value::Bool(true) {
                    "expired"
                } else {
                    "alive"
                }),
            ops.join(" ")
        )?;
    }
    Ok(())
}

async fn registered_agents(
    client: &OcsClient,
    registry: &InstanceId,
    timeout: f64,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let main = OpName::new("main")?;
    let reply = client
        .operation(registry, &main, Action::Status, Vec::new(), None, seconds(timeout)?)
        .await
        .with_context(|| format!("cannot reach the registry at {}; the registry must be running for \"scan\" (or use --listen)", client.address(registry)))?;
    let value = json::reply(&reply)?;
    let data = value["session"]["data"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Ok(data.into_iter().collect())
}

async fn listen_for_heartbeats(
    client: &OcsClient,
    common: &CommonArgs,
    seconds_to_listen: f64,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut heartbeats = client
        .nats()
        .subscribe(subject::all_heartbeats(&common.address_root))
        .await?;
    let mut agents = BTreeMap::new();
    let deadline = tokio::time::sleep(seconds(seconds_to_listen)?);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(message) = heartbeats.next() => {
                if let Ok(heartbeat) = codec::decode_heartbeat(&message.payload, MAX_MESSAGE_BYTES) {
                    let mut record = json::heartbeat(&heartbeat);
                    record["state"] = Value::from(if heartbeat.leaving { "left" } else { "alive" });
                    record["last_updated"] = Value::from(now_seconds());
                    agents.insert(heartbeat.agent_address.clone(), record);
                }
            }
        }
    }
    Ok(agents)
}

fn print_scan(
    agents: &BTreeMap<String, Value>,
    listened: bool,
    details: bool,
    as_json: bool,
) -> Result<(), StdoutError> {
    if as_json {
        outln!("{}", Value::Object(agents.clone().into_iter().collect()))?;
        return Ok(());
    }
    let heading = if listened { "Detected" } else { "Registered" };
    outln!("List of {heading} Agents: ({})", agents.len())?;
    for (address, record) in agents {
        let instance_id = address
            .split_once('.')
            .map_or(address.as_str(), |(_, iid)| iid);
        outln!("  {instance_id}")?;
        if details && let Some(ops) = record["op_codes"].as_object() {
            for (op, code) in ops {
                outln!(
                    "    {op:<20} {}",
                    json::op_code_name(code.as_i64().unwrap_or(0))
                )?;
            }
        }
    }
    Ok(())
}

fn print_api(api: &proto::ApiReply, as_json: bool) -> anyhow::Result<()> {
    let operations: Vec<Value> = api
        .operations
        .iter()
        .map(|op| -> anyhow::Result<Value> {
            Ok(serde_json::json!({
                "op_name": op.op_name,
                "op_type": op.op_type,
                "docstring": op.docstring,
                "blocking": op.blocking,
                "abortable": op.abortable,
                "params": op.params.iter().map(|p| serde_json::json!({"name": p.name, "description": p.description})).collect::<Vec<_>>(),
                "session": op.session.as_ref().map(json::session).transpose()?,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    if as_json {
        let value = serde_json::json!({
            "agent_address": api.agent_address,
            "agent_class": api.agent_class,
            "instance_hostname": api.host,
            "instance_pid": api.pid,
            "version": api.agent_version,
            "incarnation": api.incarnation,
            "uptime": api.uptime_ms as f64 / 1000.0,
            "feeds": api.feeds,
            "operations": operations,
        });
        outln!("{value}")?;
        return Ok(());
    }
    outln!(
        "{} ({}) on {} pid {}, version {}, up {:.0} s",
        api.agent_address,
        api.agent_class,
        api.host,
        api.pid,
        api.agent_version,
        api.uptime_ms as f64 / 1000.0
    )?;
    outln!("incarnation {}", api.incarnation)?;
    if !api.feeds.is_empty() {
        outln!("feeds: {}", api.feeds.join(", "))?;
    }
    for op in &api.operations {
        let code = op.session.as_ref().map_or(1, |session| session.op_code);
        outln!(
            "{} {} [{}]: {}",
            op.op_type,
            op.op_name,
            json::op_code_name(code.into()),
            op.docstring
        )?;
        for param in &op.params {
            outln!("    {}: {}", param.name, param.description)?;
        }
    }
    Ok(())
}

async fn listen(
    client: &async_nats::Client,
    pattern: &str,
    duration: Option<f64>,
) -> anyhow::Result<()> {
    // The server answers a bad subject only with an asynchronous error, and
    // the subscription would wait forever for nothing.
    subject::validate_pattern(pattern).map_err(|reason| anyhow!("invalid subject: {reason}"))?;
    let mut messages = client.subscribe(pattern.to_owned()).await?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(seconds(d).unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        let message = tokio::select! {
            _ = &mut deadline => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            message = messages.next() => match message { Some(m) => m, None => return Ok(()) },
        };
        let decoded = decode_feed(&message.subject, &message.payload);
        let line = match decoded {
            Ok(value) => serde_json::json!({"subject": message.subject.as_str(), "message": value}),
            Err(err) => {
                serde_json::json!({"subject": message.subject.as_str(), "error": err.to_string()})
            }
        };
        outln!("{line}")?;
        // A closed pipe (`ocs listen ... | head`) ends the listening quietly.
        if STDOUT_CLOSED.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn decode_feed(subject_name: &str, payload: &[u8]) -> Result<Value, ocs_protocol::CodecError> {
    if subject_name.ends_with(&format!(".feeds.{}", subject::HEARTBEAT_FEED)) {
        Ok(json::heartbeat(&codec::decode_heartbeat(
            payload,
            MAX_MESSAGE_BYTES,
        )?))
    } else if subject_name.ends_with(&format!(".feeds.{}", subject::AGENT_OPERATIONS_FEED)) {
        Ok(json::agent_operations(&codec::decode(
            payload,
            MAX_MESSAGE_BYTES,
        )?))
    } else {
        json::feed_message(&codec::decode(payload, MAX_MESSAGE_BYTES)?)
    }
}
