//! The nemesis's plan: a schedule of faults drawn from a seed, so that the
//! same seed replays the same campaign. No I/O.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What runs in the campaign, and the addresses its agents take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// NATS servers in one cluster, each with JetStream.
    pub nats_nodes: u8,
    /// Registry replicas (`--ha`).
    pub registries: u8,
    /// Agent hosts, each a host manager running `agents_per_host` agents.
    pub hosts: u8,
    /// Fake-data agents per host.
    pub agents_per_host: u8,
    /// The registry's agent timeout.
    pub agent_timeout: Duration,
}

impl Topology {
    /// The campaign's and the soak's site: three NATS servers, two registry
    /// replicas, a 5 s agent timeout, and `hosts` hosts of `agents_per_host`.
    pub fn site(hosts: u8, agents_per_host: u8) -> Self {
        Topology {
            nats_nodes: 3,
            registries: 2,
            hosts,
            agents_per_host,
            agent_timeout: Duration::from_secs(5),
        }
    }

    /// The instance id of agent `index` (from 1) on host `host` (from 1).
    pub fn instance_id(host: u8, index: u8) -> String {
        format!("h{host}a{index}")
    }

    /// The address root every component uses.
    pub const ROOT: &'static str = "observatory";

    /// The instance id of host `host`'s host manager, itself an agent.
    pub fn host_manager_id(host: u8) -> String {
        format!("hm-host{host}")
    }

    /// `(host, address)` of every agent, the host managers among them.
    pub fn agents(&self) -> Vec<(u8, String)> {
        (1..=self.hosts)
            .flat_map(|host| {
                (1..=self.agents_per_host)
                    .map(move |index| Self::instance_id(host, index))
                    .chain([Self::host_manager_id(host)])
                    .map(move |id| (host, format!("{}.{id}", Self::ROOT)))
            })
            .collect()
    }

    /// The host an agent address belongs to.
    pub fn host_of(&self, address: &str) -> Option<u8> {
        self.agents()
            .into_iter()
            .find(|(_, known)| known == address)
            .map(|(host, _)| host)
    }
}

/// A component the nemesis can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// NATS server `n` (from 1).
    Nats(u8),
    /// Registry replica `n` (from 1).
    Registry(u8),
    /// Whichever registry replica leads when the fault starts.
    LeadingRegistry,
    /// Agent host `n` (from 1): its host manager and every agent it runs.
    Host(u8),
    /// The operation monitor.
    Monitor,
}

impl Target {
    /// Whether the target is part of the bus or the registry (the
    /// infrastructure) rather than an agent host or the monitor.
    pub fn is_infrastructure(self) -> bool {
        matches!(
            self,
            Target::Nats(_) | Target::Registry(_) | Target::LeadingRegistry
        )
    }
}

/// What the nemesis does to its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL the whole container; start it again when the fault heals.
    Kill,
    /// Freeze every process in it (the cgroup freezer, as SIGSTOP for a whole
    /// host); thaw it when the fault heals.
    Pause,
    /// Take it off the network; put it back when the fault heals.
    Partition,
    /// Stop it gracefully (SIGTERM, then SIGKILL after the grace period) and
    /// start it again.
    Restart,
    /// SIGKILL these agents (by index on the host); the host manager restarts them.
    KillAgents(Vec<u8>),
}

impl Action {
    /// A short name for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Partition => "partition",
            Action::Restart => "restart",
            Action::KillAgents(_) => "kill agents",
        }
    }
}

/// One fault: from `at` after the campaign's start, for `hold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Its number in the schedule, from 1.
    pub id: u32,
    /// Seconds after the start of the faults.
    pub at: f64,
    /// Seconds until it heals (0: nothing to heal).
    pub hold: f64,
    /// What it strikes.
    pub target: Target,
    /// What it does.
    pub action: Action,
}

impl Fault {
    /// The name of the fault's kind in tables: "kill registry", "pause host".
    pub fn kind(&self) -> String {
        let target = match self.target {
            Target::Nats(_) => "nats",
            Target::Registry(_) => "registry",
            Target::LeadingRegistry => "leading registry",
            Target::Host(_) => "host",
            Target::Monitor => "monitor",
        };
        match &self.action {
            Action::KillAgents(_) => "kill agents".to_owned(),
            action => format!("{} {target}", action.kind()),
        }
    }

    /// When it heals, in seconds after the start of the faults.
    pub fn heals_at(&self) -> f64 {
        self.at + self.hold
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} at {:.1} s for {:.1} s: {:?} {:?}",
            self.id, self.at, self.hold, self.action, self.target
        )
    }
}

/// Every fault of one campaign, in order of start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The faults, by start.
    pub faults: Vec<Fault>,
}

/// How long after every fault has healed the system gets to settle before
/// the next one: the checker's convergence bound plus a margin.
pub const QUIET: (f64, f64) = (12.0, 18.0);

impl Schedule {
    /// Draws faults for `span` from `seed`. At most one NATS server, one
    /// registry and one agent host are struck at a time, and two faults
    /// overlap only when one strikes the infrastructure and the other a host
    /// or the monitor: a second NATS server down would take JetStream's
    /// quorum, and two of three hosts silent at once is the registry's
    /// "cut off" case, in which it deliberately holds expiries.
    pub fn generate(seed: u64, topology: &Topology, span: Duration) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed);
        let timeout = topology.agent_timeout.as_secs_f64();
        let mut faults = Vec::new();
        let mut t = 2.0;
        while t < span.as_secs_f64() {
            let first = draw(&mut rng, topology, timeout, None);
            let mut end = t + first.1;
            let first_infrastructure = first.0.is_infrastructure();
            faults.push((t, first));
            if rng.f64() < 0.35 {
                let second = draw(&mut rng, topology, timeout, Some(!first_infrastructure));
                // Within the first fault's hold, so that the two overlap.
                let at = t + rng.f64() * 0.8 * faults.last().map_or(0.0, |(_, (_, hold, _))| *hold);
                end = end.max(at + second.1);
                faults.push((at, second));
            }
            t = end + QUIET.0 + rng.f64() * (QUIET.1 - QUIET.0);
        }
        faults.sort_by(|a, b| a.0.total_cmp(&b.0));
        Schedule {
            seed,
            faults: faults
                .into_iter()
                .enumerate()
                .map(|(index, (at, (target, hold, action)))| Fault {
                    id: index as u32 + 1,
                    at: round(at),
                    hold: round(hold),
                    target,
                    action,
                })
                .collect(),
        }
    }

    /// When the last fault heals, in seconds after the start of the faults.
    pub fn ends_at(&self) -> f64 {
        self.faults.iter().map(Fault::heals_at).fold(0.0, f64::max)
    }
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// One fault: target, hold and action. `infrastructure` says which side to
/// strike, or either when `None`.
fn draw(
    rng: &mut fastrand::Rng,
    topology: &Topology,
    timeout: f64,
    infrastructure: Option<bool>,
) -> (Target, f64, Action) {
    let infrastructure = infrastructure.unwrap_or_else(|| rng.f64() < 0.5);
    if infrastructure {
        let hold = 1.0 + rng.f64() * 2.0 * timeout;
        if rng.bool() {
            let node = rng.u8(1..=topology.nats_nodes);
            let action = pick(
                rng,
                &[
                    Action::Kill,
                    Action::Pause,
                    Action::Partition,
                    Action::Restart,
                ],
            );
            (Target::Nats(node), hold, action)
        } else {
            let target = if rng.bool() {
                Target::LeadingRegistry
            } else {
                Target::Registry(rng.u8(1..=topology.registries))
            };
            let action = pick(rng, &[Action::Kill, Action::Pause, Action::Partition]);
            (target, hold, action)
        }
    } else if rng.f64() < 0.1 {
        (Target::Monitor, 1.0 + rng.f64() * timeout, Action::Kill)
    } else {
        let host = rng.u8(1..=topology.hosts);
        // Either well inside the timeout (no agent may be expired) or well
        // past it (every agent must be).
        let hold = if rng.bool() {
            0.5 + rng.f64() * (timeout * 0.5)
        } else {
            timeout * 2.0 + rng.f64() * timeout
        };
        match rng.u8(0..4) {
            0 => (Target::Host(host), hold, Action::Kill),
            1 => (Target::Host(host), hold, Action::Pause),
            2 => (Target::Host(host), hold, Action::Partition),
            _ => {
                let mut agents: Vec<u8> = (1..=topology.agents_per_host).collect();
                rng.shuffle(&mut agents);
                agents.truncate(rng.usize(1..=2.min(agents.len())));
                agents.sort_unstable();
                (Target::Host(host), 0.0, Action::KillAgents(agents))
            }
        }
    }
}

fn pick(rng: &mut fastrand::Rng, actions: &[Action]) -> Action {
    actions[rng.usize(..actions.len())].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn topology() -> Topology {
        Topology::site(3, 4)
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let span = Duration::from_secs(300);
        let one = Schedule::generate(7, &topology(), span);
        assert_eq!(one, Schedule::generate(7, &topology(), span));
        assert_ne!(one.faults, Schedule::generate(8, &topology(), span).faults);
        assert!(one.faults.len() >= 8, "{} faults", one.faults.len());
    }

    #[test]
    fn faults_overlap_only_across_sides_and_leave_quiet_time_between() {
        for seed in 0..200 {
            let schedule = Schedule::generate(seed, &topology(), Duration::from_secs(600));
            for (index, fault) in schedule.faults.iter().enumerate() {
                for other in &schedule.faults[index + 1..] {
                    let overlaps = other.at < fault.heals_at().max(fault.at + 0.1);
                    if overlaps {
                        assert_ne!(
                            fault.target.is_infrastructure(),
                            other.target.is_infrastructure(),
                            "seed {seed}: {fault} and {other}"
                        );
                    }
                }
                let later_start = schedule.faults[index + 1..]
                    .iter()
                    .map(|other| other.at)
                    .find(|at| *at >= fault.heals_at() + 0.1);
                if let Some(next) = later_start {
                    assert!(
                        next - fault.heals_at() >= QUIET.0 - 0.2,
                        "seed {seed}: {fault} then {next}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kind_of_fault_is_drawn() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..50 {
            for fault in Schedule::generate(seed, &topology(), Duration::from_secs(300)).faults {
                kinds.insert(fault.kind());
            }
        }
        for kind in [
            "kill nats",
            "pause nats",
            "partition nats",
            "restart nats",
            "kill registry",
            "pause registry",
            "partition registry",
            "kill leading registry",
            "kill host",
            "pause host",
            "partition host",
            "kill agents",
            "kill monitor",
        ] {
            assert!(kinds.contains(kind), "{kind} never drawn: {kinds:?}");
        }
    }

    #[test]
    fn addresses_follow_hosts() {
        let topology = topology();
        assert_eq!(topology.agents().len(), 15);
        assert_eq!(topology.host_of("observatory.hm-host3"), Some(3));
        assert_eq!(topology.host_of("observatory.h2a3"), Some(2));
        assert_eq!(topology.host_of("observatory.h9a1"), None);
    }
}
