//! The commands of `ocs`, one function each: they make the calls and print
//! what [`render`] makes of the replies. `main` parses the command line and
//! calls one of them.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser};
use futures::StreamExt;
use ocs_agent::OcsClient;
use ocs_cli::{output, render};
use ocs_protocol::codec::{self, MAX_MESSAGE_BYTES, to_msgpack};
use ocs_protocol::{Action, InstanceId, OpName, ResponseCode, heartbeat, json, proto, subject};
use ocs_service::CommonArgs;
use ocs_service::connect::{Refusal, Refusals, connect_client};
use serde_json::{Map, Value};

/// The NATS connection a command makes when it needs one.
pub(crate) struct Nats<'a>(pub(crate) &'a CommonArgs);

impl Nats<'_> {
    async fn client(&self) -> anyhow::Result<(async_nats::Client, Refusals)> {
        connect_client(&self.0.nats_url, &self.0.nats_auth)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", self.0.nats_url))
    }

    pub(crate) async fn ocs(&self) -> anyhow::Result<OcsClient> {
        let (client, refusals) = self.client().await?;
        Ok(OcsClient::new(client, self.0.address_root.clone()).with_refusals(refusals))
    }
}

/// `ocs <instance-id> <operation> <action> [key=value ...]`
#[derive(Parser)]
#[command(name = "ocs", no_binary_name = true)]
pub(crate) struct OperationCall {
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
    #[command(flatten)]
    records: RecordsFilterArgs,
}

/// Filters of `ocs registry main status`; with any of them the session's
/// `data` holds only the matching records (or their summary).
#[derive(Args, Default)]
pub(crate) struct RecordsFilterArgs {
    /// Registry status only: counts of agents by state and class instead of the records.
    #[arg(long)]
    summary: bool,
    /// Registry status only: agents in this state (alive, expired, left,
    /// conflict, flapping, unverified); repeat for several.
    #[arg(long = "state", value_name = "STATE")]
    states: Vec<String>,
    /// Registry status only: agents of this class; repeat for several.
    #[arg(long = "class", value_name = "CLASS")]
    classes: Vec<String>,
    /// Registry status only: agents whose address matches this pattern
    /// (`*` any run of characters, `?` one), e.g. 'observatory.lakeshore*'.
    #[arg(long = "agent", value_name = "PATTERN")]
    agent_pattern: Option<String>,
}

impl RecordsFilterArgs {
    /// The query these filters make, if any is given.
    fn query(&self) -> Option<proto::RecordsQuery> {
        let filtered = self.summary
            || !self.states.is_empty()
            || !self.classes.is_empty()
            || self.agent_pattern.is_some();
        filtered.then(|| proto::RecordsQuery {
            summary_only: self.summary,
            states: self.states.clone(),
            classes: self.classes.clone(),
            agent_pattern: self.agent_pattern.clone().unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// Options of `ocs scan`.
#[derive(Args)]
pub(crate) struct ScanArgs {
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
}

/// Options of `ocs api` and `ocs ping`.
#[derive(Args)]
pub(crate) struct AgentQuery {
    /// The agent's instance id.
    instance_id: InstanceId,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `ocs listen`.
#[derive(Args)]
pub(crate) struct ListenArgs {
    /// NATS subject pattern (`*` one token, `>` the rest).
    pattern: String,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

/// Options of `ocs host`.
#[derive(Args)]
pub(crate) struct HostArgs {
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
}

/// Options of `ocs probe`.
#[derive(Args)]
pub(crate) struct ProbeArgs {
    /// The URL, e.g. `http://127.0.0.1:9463/healthz` (plain HTTP only).
    url: hyper::Uri,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

/// `ocs <instance-id> <operation> <action> ...`
pub(crate) async fn operation(nats: &Nats<'_>, args: Vec<String>) -> anyhow::Result<ExitCode> {
    let call = OperationCall::try_parse_from(args)
        .map_err(|err| anyhow!("{}", err.to_string().trim_end()))?;
    let client = nats.ocs().await?;
    let json = call.json;
    let reply = call_operation(&client, call).await?;
    let value = json::reply(&reply)?;
    if json {
        outln!("{value}")?;
    } else {
        output::write_text(&render::reply(&value, ocs_agent::now_unix()))?;
    }
    Ok(match ResponseCode::from_value(reply.status) {
        Some(ResponseCode::Ok) => ExitCode::SUCCESS,
        Some(ResponseCode::Timeout) => ExitCode::from(3),
        _ => ExitCode::from(1),
    })
}

/// `ocs scan`
pub(crate) async fn scan(nats: &Nats<'_>, args: ScanArgs) -> anyhow::Result<ExitCode> {
    let client = nats.ocs().await?;
    let agents = match args.listen {
        Some(seconds) => listen_for_heartbeats(&client, nats.0, seconds).await?,
        None => registered_agents(&client, &args.registry, args.timeout).await?,
    };
    if args.json {
        outln!("{}", Value::Object(agents.into_iter().collect()))?;
    } else {
        output::write_text(&render::scan(&agents, args.listen.is_some(), args.details))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ocs api`
pub(crate) async fn api(nats: &Nats<'_>, args: AgentQuery) -> anyhow::Result<ExitCode> {
    let client = nats.ocs().await?;
    let api = client
        .api(&args.instance_id, seconds(args.timeout)?)
        .await?;
    output::write_text(&render::api(&api, args.json)?)?;
    Ok(ExitCode::SUCCESS)
}

/// `ocs ping`
pub(crate) async fn ping(nats: &Nats<'_>, args: AgentQuery) -> anyhow::Result<ExitCode> {
    let client = nats.ocs().await?;
    let sent = std::time::Instant::now();
    let ping = client
        .ping(&args.instance_id, seconds(args.timeout)?)
        .await?;
    let round_trip = sent.elapsed();
    output::write_text(&render::ping(&ping, round_trip, args.json))?;
    Ok(ExitCode::SUCCESS)
}

/// `ocs listen`
pub(crate) async fn listen(nats: &Nats<'_>, args: ListenArgs) -> anyhow::Result<ExitCode> {
    let (client, refusals) = nats.client().await?;
    let refused = refusals.first(|refusal| {
        matches!(&refusal, Refusal::Subscription(refused) if *refused == args.pattern).then_some(())
    });
    tokio::select! {
        printed = print_messages(&client, &args.pattern, args.duration) => printed?,
        () = refused => bail!("not permitted: this NATS user may not subscribe to {}", args.pattern),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ocs host`
pub(crate) async fn host(nats: &Nats<'_>, args: HostArgs) -> anyhow::Result<ExitCode> {
    let manager = match args.manager {
        Some(manager) => manager,
        None => {
            let host = ocs_service::lifecycle::hostname()
                .ok_or_else(|| anyhow!("cannot read this host's name: give --manager"))?;
            InstanceId::new(format!("hm-{host}"))?
        }
    };
    let names = if args.all {
        vec!["all".to_owned()]
    } else {
        args.instances
    };
    let requests: Vec<(String, String)> = names
        .into_iter()
        .map(|name| (name, args.action.clone()))
        .collect();
    let client = nats.ocs().await?;
    let update = OpName::new("update")?;
    let call = |action: &str| OperationCall {
        instance_id: manager.clone(),
        op_name: update.clone(),
        action: action.to_owned(),
        params: Vec::new(),
        timeout: args.timeout,
        json: args.json,
        records: RecordsFilterArgs::default(),
    };
    let mut start = call("start");
    start.params = vec![format!("requests={}", serde_json::to_string(&requests)?)];
    let started = call_operation(&client, start).await?;
    if started.status != ResponseCode::Ok as i32 {
        bail!("{manager} refused the update: {}", started.message);
    }
    // The update task's own outcome is what the operator asked about.
    let reply = json::reply(&call_operation(&client, call("wait")).await?)?;
    if args.json {
        outln!("{reply}")?;
    } else {
        output::write_text(&render::reply(&reply, ocs_agent::now_unix()))?;
    }
    Ok(if reply["session"]["success"] == Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ocs probe`
pub(crate) async fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let url = &args.url;
    let status = tokio::time::timeout(seconds(args.timeout)?, get(url))
        .await
        .map_err(|_| anyhow!("no answer from {url} within {} s", args.timeout))??;
    outln!("{url}: {status}")?;
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One GET over a fresh HTTP/1.1 connection; the body is read and discarded so
/// the server sees a complete exchange.
async fn get(url: &hyper::Uri) -> anyhow::Result<hyper::StatusCode> {
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

pub(crate) fn seconds(value: f64) -> anyhow::Result<Duration> {
    ocs_service::seconds::positive(value).map_err(|reason| anyhow!("invalid timeout: {reason}"))
}

pub(crate) fn parse_params(params: &[String]) -> anyhow::Result<Map<String, Value>> {
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
    let request_timeout = seconds(call.timeout)?;
    let filter = call.records.query();
    if action == Action::Status && call.op_name.as_str() == "main" {
        // The registry's status: complete however large the fleet, and filtered when asked.
        return Ok(client
            .registry_status(&call.instance_id, filter, request_timeout)
            .await?);
    }
    if filter.is_some() {
        bail!("--summary, --state, --class and --agent are for `<registry> main status` only");
    }
    let params = if params.is_empty() {
        Vec::new()
    } else {
        to_msgpack(&params)?
    };
    let wait_timeout = (action == Action::Wait).then_some(call.timeout);
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

async fn registered_agents(
    client: &OcsClient,
    registry: &InstanceId,
    timeout: f64,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let reply = client
        .registry_status(registry, None, seconds(timeout)?)
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
                if let Ok(heartbeat) = heartbeat::decode(&message.payload, MAX_MESSAGE_BYTES) {
                    let mut record = json::heartbeat(&heartbeat);
                    record["state"] = Value::from(if heartbeat.leaving { "left" } else { "alive" });
                    record["last_updated"] = Value::from(ocs_agent::now_unix());
                    agents.insert(heartbeat.agent_address.clone(), record);
                }
            }
        }
    }
    Ok(agents)
}

async fn print_messages(
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
        if output::closed() {
            return Ok(());
        }
    }
}

fn decode_feed(subject_name: &str, payload: &[u8]) -> Result<Value, ocs_protocol::CodecError> {
    if subject_name.ends_with(&format!(".feeds.{}", subject::HEARTBEAT_FEED)) {
        Ok(json::heartbeat(&heartbeat::decode(
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
