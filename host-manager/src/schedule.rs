//! Operations the host manager starts on its instances on a schedule (an
//! interval, or a cron expression in UTC), through ordinary `start` requests,
//! so the agent handles them as any other (and refuses them the same way).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ocs_protocol::{Action, AddressRoot, ResponseCode, codec};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::child::Child;
use super::launch::Event;
use ocs_agent::{OcsClient, OpContext};
use ocs_service::site::{Schedule, When, parse_cron};

/// How long a scheduled `start` request may take.
const START_TIMEOUT: Duration = Duration::from_secs(5);

struct Entry {
    instance_id: String,
    schedule: Schedule,
    next: Option<(Instant, DateTime<Utc>)>,
    runs: u64,
    last_started: Option<DateTime<Utc>>,
    last_result: Option<Result<String, String>>,
}

/// Every schedule of this host's managed instances.
pub struct Scheduler {
    entries: Vec<Entry>,
    root: AddressRoot,
    events: mpsc::Sender<Event>,
}

/// The next time `when` is due after `now` (monotonic, and wall-clock for display).
fn next_time(when: &When, now: Instant) -> Option<(Instant, DateTime<Utc>)> {
    let wall = Utc::now();
    match when {
        When::Every(every) => Some((now + *every, wall + *every)),
        When::Cron(expression) => {
            let cron = parse_cron(expression).ok()?;
            let next = cron.find_next_occurrence(&wall, false).ok()?;
            let wait = (next - wall).to_std().unwrap_or_default();
            Some((now + wait, next))
        }
    }
}

impl Scheduler {
    /// An empty scheduler; results come back on `events`.
    pub fn new(root: AddressRoot, events: mpsc::Sender<Event>) -> Scheduler {
        Scheduler {
            entries: Vec::new(),
            root,
            events,
        }
    }

    /// Takes the schedules of `children` (after a load or reload); an entry
    /// that did not change keeps its next time and history.
    pub fn configure(&mut self, children: &BTreeMap<String, Child>, now: Instant) {
        let mut old = std::mem::take(&mut self.entries);
        for (instance_id, child) in children {
            for schedule in &child.config().schedule {
                let kept = old.iter().position(|entry| {
                    entry.instance_id == *instance_id && entry.schedule == *schedule
                });
                let entry = match kept {
                    Some(index) => old.swap_remove(index),
                    None => Entry {
                        instance_id: instance_id.clone(),
                        next: next_time(&schedule.when, now),
                        schedule: schedule.clone(),
                        runs: 0,
                        last_started: None,
                        last_result: None,
                    },
                };
                self.entries.push(entry);
            }
        }
    }

    /// When the next schedule is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|entry| entry.next.map(|(at, _)| at))
            .min()
    }

    /// Starts every due operation whose instance is up; one that is not up
    /// misses this turn (and says so).
    pub fn run_due(&mut self, children: &BTreeMap<String, Child>, ctx: &OpContext, now: Instant) {
        for entry in &mut self.entries {
            let Some((at, _)) = entry.next else { continue };
            if at > now {
                continue;
            }
            entry.next = next_time(&entry.schedule.when, now);
            let child = children.get(&entry.instance_id);
            let Some(child) = child.filter(|child| child.state_name() == "up") else {
                entry.last_result = Some(Err(format!(
                    "skipped: {} is {}",
                    entry.instance_id,
                    child.map_or("not managed", Child::state_name)
                )));
                continue;
            };
            entry.runs += 1;
            entry.last_started = Some(Utc::now());
            let client = OcsClient::new(ctx.client().clone(), self.root.clone());
            let events = self.events.clone();
            let instance_id = child.config().instance_id.clone();
            let operation = entry.schedule.operation.clone();
            let params = entry.schedule.params.clone();
            tokio::spawn(async move {
                let result = async {
                    let params = if params.is_empty() {
                        Vec::new()
                    } else {
                        codec::to_msgpack(&params).map_err(|err| err.to_string())?
                    };
                    let reply = client
                        .operation(
                            &instance_id,
                            &operation,
                            Action::Start,
                            params,
                            None,
                            START_TIMEOUT,
                        )
                        .await
                        .map_err(|err| err.to_string())?;
                    if reply.status == ResponseCode::Ok as i32 {
                        Ok(reply.message)
                    } else {
                        Err(reply.message)
                    }
                }
                .await;
                let _ = events
                    .send(Event::ScheduleResult {
                        instance_id: instance_id.to_string(),
                        operation: operation.to_string(),
                        result,
                    })
                    .await;
            });
        }
    }

    /// Records the answer to a scheduled start of `operation` on `instance_id`.
    pub fn record(&mut self, instance_id: &str, operation: &str, result: Result<String, String>) {
        for entry in &mut self.entries {
            if entry.instance_id == instance_id && entry.schedule.operation.as_str() == operation {
                entry.last_result = Some(result.clone());
            }
        }
    }

    /// The schedules in the manager's session data.
    pub fn report(&self, now: Instant) -> Value {
        self.entries
            .iter()
            .map(|entry| {
                let when = match &entry.schedule.when {
                    When::Every(every) => json!({"every": every.as_secs_f64()}),
                    When::Cron(expression) => json!({"cron": expression}),
                };
                let (ok, message) = match &entry.last_result {
                    Some(Ok(message)) => (Some(true), Some(message.clone())),
                    Some(Err(message)) => (Some(false), Some(message.clone())),
                    None => (None, None),
                };
                json!({
                    "instance_id": entry.instance_id,
                    "operation": entry.schedule.operation.as_str(),
                    "when": when,
                    "next_run": entry.next.map(|(_, wall)| wall.to_rfc3339()),
                    "next_run_in": entry.next.map(|(at, _)| at.saturating_duration_since(now).as_secs_f64()),
                    "runs": entry.runs,
                    "last_started": entry.last_started.map(|at| at.to_rfc3339()),
                    "last_ok": ok,
                    "last_message": message,
                })
            })
            .collect()
    }
}
