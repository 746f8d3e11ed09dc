//! `ocs-fake-data-agent`: OCS's FakeDataAgent, a source of fake housekeeping
//! data and a test bed for operation states.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ocs_agent::{Agent, AgentArgs, OpContext, OpResult, Params, run_agent};
use ocs_protocol::InstanceId;
use ocs_service::{ServiceArgs, ServiceIdentity};
use serde::Deserialize;
use serde_json::json;

/// Fake data and controllable operations, for demos and tests.
#[derive(Parser)]
#[command(version, args_override_self = true)]
struct Config {
    #[command(flatten)]
    agent: AgentArgs,
    /// This agent's instance id.
    #[arg(long, env = "INSTANCE_ID", default_value = "faker")]
    instance_id: InstanceId,
    /// Number of fake channels.
    #[arg(long, env = "FAKE_NUM_CHANNELS", default_value_t = 2)]
    num_channels: usize,
    /// Samples per second published by `acq`.
    #[arg(long, env = "FAKE_SAMPLE_RATE", default_value_t = 10.0, value_parser = sample_rate)]
    sample_rate: f64,
    /// `acq` starts `acq` at startup; `idle` waits for a request.
    #[arg(long, env = "FAKE_MODE", value_enum, default_value_t = Mode::Acq)]
    mode: Mode,
}

impl ServiceArgs for Config {
    fn identity(&self) -> Result<ServiceIdentity<'_>, String> {
        Ok(self.agent.identity(&self.instance_id))
    }
}

fn sample_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1000.0 => Ok(rate),
        _ => Err(format!(
            "{text} is not a rate in (0, 1000] samples per second"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Idle,
    Acq,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcqParams {
    /// Stop after one sample (OCS's `test_mode`).
    #[serde(default)]
    test_mode: bool,
}

impl Params for AcqParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![("test_mode", "publish one sample and stop (default false)")]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountParams {
    #[serde(default = "default_target")]
    target: u64,
    #[serde(default = "default_interval")]
    interval: f64,
}

fn default_target() -> u64 {
    10
}

fn default_interval() -> f64 {
    1.0
}

impl Params for CountParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![
            ("target", "count up to this number (default 10)"),
            ("interval", "seconds between counts (default 1)"),
        ]
    }
    fn validate(&self) -> Result<(), String> {
        if !(0.001..=3600.0).contains(&self.interval) {
            return Err(format!(
                "interval={} is outside 0.001..=3600",
                self.interval
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatParams {
    heartbeat: bool,
}

impl Params for HeartbeatParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![("heartbeat", "true to send heartbeats, false to stop them")]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayParams {
    #[serde(default = "default_delay")]
    delay: f64,
    #[serde(default = "default_succeed")]
    succeed: bool,
    /// Burn CPU instead of sleeping, to show that heartbeats keep their period.
    #[serde(default)]
    busy: bool,
}

fn default_delay() -> f64 {
    5.0
}

fn default_succeed() -> bool {
    true
}

impl Params for DelayParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![
            ("delay", "seconds to take (default 5)"),
            ("succeed", "end with success (default true) or failure"),
            ("busy", "spin the CPU instead of sleeping (default false)"),
        ]
    }
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=86400.0).contains(&self.delay) {
            return Err(format!("delay={} is outside 0..=86400", self.delay));
        }
        Ok(())
    }
}

/// A deterministic, smooth fake reading per channel.
fn reading(channel: usize, t: f64) -> f64 {
    let phase = channel as f64 * 0.7;
    (t * 0.5 + phase).sin() + channel as f64
}

async fn acq(ctx: OpContext, params: AcqParams, num_channels: usize, sample_rate: f64) -> OpResult {
    let period = Duration::from_secs_f64(1.0 / sample_rate);
    let mut samples = 0u64;
    let mut dropped = 0u64;
    loop {
        let t = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let data: serde_json::Map<String, serde_json::Value> = (0..num_channels)
            .map(|channel| (format!("channel_{channel:02}"), json!(reading(channel, t))))
            .collect();
        let message = json!({"block_name": "temps", "timestamp": t, "data": data});
        if ctx.publish("false_temperatures", &message).await.is_err() {
            dropped += 1;
        }
        samples += 1;
        ctx.set_data(
            json!({"fields": data, "timestamp": t, "samples": samples, "dropped": dropped}),
        );
        if params.test_mode || ctx.sleep_or_stop(period).await {
            break;
        }
    }
    Ok(format!(
        "Acquisition exited cleanly after {samples} samples."
    ))
}

async fn count(ctx: OpContext, params: CountParams) -> OpResult {
    for value in 1..=params.target {
        if ctx
            .sleep_or_stop(Duration::from_secs_f64(params.interval))
            .await
        {
            return Err(format!("Aborted at {value}").into());
        }
        ctx.update_data(|data| {
            data.insert("counter".into(), value.into());
        });
    }
    Ok(format!("Counted to {}", params.target))
}

async fn set_heartbeat(ctx: OpContext, params: HeartbeatParams) -> OpResult {
    ctx.set_heartbeat(params.heartbeat);
    Ok(format!("Set heartbeat_on: {}.", params.heartbeat))
}

async fn delay_task(ctx: OpContext, params: DelayParams) -> OpResult {
    let delay = Duration::from_secs_f64(params.delay);
    if params.busy {
        // Deliberately never yields: this is the misbehaving operation that
        // must not stop the agent's heartbeat.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < delay && !ctx.is_stopping() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
    } else if ctx.sleep_or_stop(delay).await {
        return Err("Aborted after a partial delay.".into());
    }
    if ctx.is_stopping() {
        return Err("Aborted after a partial delay.".into());
    }
    if params.succeed {
        Ok("Exited after a delay.".into())
    } else {
        Err("Failed after a delay, as requested.".into())
    }
}

fn main() -> ExitCode {
    run_agent(|config: &Config| {
        let (num_channels, sample_rate) = (config.num_channels, config.sample_rate);
        let builder = Agent::builder("FakeDataAgent")
            .feed("false_temperatures")
            .process(
                "acq",
                "Publish fake temperatures on the false_temperatures feed until stopped.",
                move |ctx, params| acq(ctx, params, num_channels, sample_rate),
            )
            .task(
                "count",
                "Count up to `target`, one step per `interval` seconds.",
                count,
            )
            .task(
                "set_heartbeat",
                "Turn this agent's heartbeat on or off (to simulate a hung agent).",
                set_heartbeat,
            )
            .task(
                "delay_task",
                "Take `delay` seconds, then succeed or fail as asked.",
                delay_task,
            );
        if config.mode == Mode::Acq {
            builder.startup("acq", json!({}))
        } else {
            builder
        }
    })
}
