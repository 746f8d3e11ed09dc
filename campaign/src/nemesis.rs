//! Carries out a [`Schedule`] against a [`Cluster`], logging each fault as
//! it starts and heals: the record's ground truth of what was done.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::observe::{Clock, SharedRecord, leads, note};
use crate::record::Event;
use crate::schedule::{Action, Fault, Schedule, Target, Topology};

/// How long a graceful stop may take before Docker kills.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs every fault of `schedule`, each at `offset` + its time on `clock`;
/// returns once the last has healed.
pub async fn run(
    schedule: &Schedule,
    cluster: Arc<Cluster>,
    topology: &Topology,
    clock: Clock,
    record: SharedRecord,
    offset: f64,
) {
    let mut strikes = Vec::new();
    for fault in &schedule.faults {
        let due = offset + fault.at - clock.now();
        if due > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(due)).await;
        }
        strikes.push(tokio::spawn(strike(
            fault.clone(),
            cluster.clone(),
            topology.clone(),
            clock,
            record.clone(),
        )));
    }
    for strike in strikes {
        let _ = strike.await;
    }
}

/// The replica `target` names: the leader, when it names whichever leads.
async fn resolve(target: Target, cluster: &Cluster) -> Target {
    if target != Target::LeadingRegistry {
        return target;
    }
    for (index, port) in cluster.registry_ports.iter().enumerate() {
        if leads(*port).await {
            return Target::Registry(index as u8 + 1);
        }
    }
    // None leads right now (a failover in progress): strike the first.
    Target::Registry(1)
}

/// The agent addresses a fault silences or kills.
fn silenced(fault: &Fault, topology: &Topology) -> Vec<String> {
    match (&fault.action, fault.target) {
        (Action::KillAgents(indices), Target::Host(host)) => indices
            .iter()
            .map(|index| format!("{}.{}", Topology::ROOT, Topology::instance_id(host, *index)))
            .collect(),
        (
            Action::Kill | Action::Pause | Action::Partition | Action::Restart,
            Target::Host(host),
        ) => topology
            .agents()
            .into_iter()
            .filter(|(on, _)| *on == host)
            .map(|(_, address)| address)
            .collect(),
        _ => Vec::new(),
    }
}

async fn strike(
    fault: Fault,
    cluster: Arc<Cluster>,
    topology: Topology,
    clock: Clock,
    record: SharedRecord,
) {
    let target = resolve(fault.target, &cluster).await;
    let agents = silenced(&fault, &topology);
    info!(fault = %fault, struck = %Cluster::alias(target), "strike");
    note(
        &record,
        clock,
        Event::FaultStarted {
            fault: fault.clone(),
            struck: Cluster::alias(target),
            agents,
        },
    );
    let started = clock.now();
    let struck = match &fault.action {
        Action::Kill => cluster.kill(target).await,
        Action::Pause => cluster.pause(target).await,
        Action::Partition => cluster.disconnect(target).await,
        Action::Restart => cluster.stop(target, STOP_GRACE).await,
        Action::KillAgents(indices) => {
            let Target::Host(host) = target else {
                unreachable!("the schedule kills agents on hosts only")
            };
            let ids: Vec<String> = indices
                .iter()
                .map(|index| Topology::instance_id(host, *index))
                .collect();
            cluster.kill_agents(host, &ids).await.map(drop)
        }
    };
    if let Err(err) = struck {
        warn!(fault = %fault, error = %err, "the nemesis could not strike");
        note(
            &record,
            clock,
            Event::NemesisError {
                id: fault.id,
                error: err.to_string(),
            },
        );
    }
    if fault.hold == 0.0 {
        return;
    }
    let left = fault.hold - (clock.now() - started);
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left)).await;
    }
    let healed = match &fault.action {
        Action::Kill | Action::Restart => cluster.start_again(target).await,
        Action::Pause => cluster.unpause(target).await,
        Action::Partition => cluster.reconnect(target).await,
        Action::KillAgents(_) => Ok(()),
    };
    match healed {
        Ok(()) => note(&record, clock, Event::FaultHealed { id: fault.id }),
        Err(err) => {
            warn!(fault = %fault, error = %err, "the nemesis could not heal");
            note(
                &record,
                clock,
                Event::NemesisError {
                    id: fault.id,
                    error: format!("heal: {err}"),
                },
            );
        }
    }
}
