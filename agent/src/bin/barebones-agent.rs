//! `ocs-barebones-agent`: the smallest useful agent (OCS's BarebonesAgent).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ocs_agent::{Agent, AgentArgs, OpContext, OpResult, Params, run_agent};
use ocs_protocol::InstanceId;
use ocs_service::{ServiceArgs, ServiceIdentity};
use serde::Deserialize;

/// A minimal agent with one process and one task.
#[derive(Parser)]
#[command(version, args_override_self = true)]
struct Config {
    #[command(flatten)]
    agent: AgentArgs,
    /// This agent's instance id.
    #[arg(long, env = "INSTANCE_ID", default_value = "barebones")]
    instance_id: InstanceId,
}

impl ServiceArgs for Config {
    fn identity(&self) -> Result<ServiceIdentity<'_>, String> {
        Ok(self.agent.identity(&self.instance_id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountParams {
    #[serde(default = "default_interval")]
    interval: f64,
}

fn default_interval() -> f64 {
    1.0
}

impl Params for CountParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![("interval", "seconds between increments (default 1)")]
    }
    fn validate(&self) -> Result<(), String> {
        if !(0.01..=3600.0).contains(&self.interval) {
            return Err(format!("interval={} is outside 0.01..=3600", self.interval));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrintParams {
    text: String,
}

impl Params for PrintParams {
    fn describe() -> Vec<(&'static str, &'static str)> {
        vec![("text", "the text to log in the session")]
    }
}

async fn count(ctx: OpContext, params: CountParams) -> OpResult {
    let mut value = 0u64;
    while !ctx
        .sleep_or_stop(Duration::from_secs_f64(params.interval))
        .await
    {
        value += 1;
        ctx.update_data(|data| {
            data.insert("value".into(), value.into());
        });
    }
    Ok(format!("Stopped counting at {value}"))
}

async fn print(ctx: OpContext, params: PrintParams) -> OpResult {
    ctx.log(params.text);
    Ok("Printed message".into())
}

fn main() -> ExitCode {
    run_agent(|_: &Config| {
        Agent::builder("BarebonesAgent")
            .process(
                "count",
                "Increment a counter every `interval` seconds until stopped.",
                count,
            )
            .task("print", "Log `text` in the session.", print)
    })
}
