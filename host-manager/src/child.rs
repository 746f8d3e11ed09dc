//! One managed agent instance: where it is, where it should be, and what to
//! do next. Sans-I/O: every method takes `now`, and randomness (restart
//! jitter) comes in as an argument, so the whole policy is unit-tested.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use ocs_service::site::{InstanceConfig, Manage};

/// Where an instance should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Running.
    Up,
    /// Not running.
    Down,
}

impl Target {
    /// The target a site-file entry asks for; `None` for `manage: ignore`.
    pub fn from_manage(manage: Manage) -> Option<Target> {
        match manage {
            Manage::Up => Some(Target::Up),
            Manage::Down => Some(Target::Down),
            Manage::Ignore => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Target::Up => "up",
            Target::Down => "down",
        }
    }
}

/// The signals of a stop, in order of escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: the agent stops its operations and says goodbye.
    Interrupt,
    /// SIGTERM, for one that ignored SIGINT.
    Terminate,
    /// SIGKILL, for one that ignored both.
    Kill,
}

/// What the shell must do for this child now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Check that nobody else runs the instance, then start the process.
    Launch,
    /// Send a signal to the process group.
    Signal(StopSignal),
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Not running, nothing pending.
    Down,
    /// A launch was requested; waiting for the shell to report the pid.
    Launching,
    /// Running as `pid` since `since`.
    Up { pid: u32, since: Instant },
    /// Crashed; restart at `at`.
    Backoff { at: Instant },
    /// Another incarnation runs this address elsewhere; look again at `at`.
    Refused { reason: String, at: Instant },
    /// Being stopped: `signal` was sent, the next one goes at `deadline`.
    Stopping {
        pid: u32,
        signal: StopSignal,
        deadline: Instant,
    },
}

/// How often a refused instance is checked again.
const REFUSED_RETRY: Duration = Duration::from_secs(10);
/// OCS's stability measure: failures within this window count.
const STABILITY_WINDOW: Duration = Duration::from_secs(120);

/// A managed instance.
#[derive(Debug, Clone)]
pub struct Child {
    config: InstanceConfig,
    target: Target,
    frozen: bool,
    state: State,
    /// Restart the process when it is down (its configuration changed).
    restart_requested: bool,
    restarts: u64,
    consecutive_failures: u32,
    failures: VecDeque<Instant>,
    last_exit: Option<Exit>,
    stderr_tail: Vec<String>,
    messages: Vec<String>,
}

impl Child {
    /// A child for `config`, starting out down with `target`.
    pub fn new(config: InstanceConfig, target: Target) -> Child {
        Child {
            config,
            target,
            frozen: false,
            state: State::Down,
            restart_requested: false,
            restarts: 0,
            consecutive_failures: 0,
            failures: VecDeque::new(),
            last_exit: None,
            stderr_tail: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// The instance's site-file entry.
    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    /// The target state.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Changes the target state; a frozen child keeps it for when it thaws.
    pub fn set_target(&mut self, target: Target) {
        if self.target != target {
            self.target = target;
            self.consecutive_failures = 0;
            if let State::Refused { .. } | State::Backoff { .. } = self.state
                && target == Target::Down
            {
                self.state = State::Down;
            }
        }
    }

    /// Freezes (leave the process alone: no restart, no stop) or thaws it.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// Whether it is frozen.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Takes a new site-file entry; a running process whose launch settings
    /// changed is restarted, an untouched one is left running.
    pub fn reconfigure(&mut self, config: InstanceConfig) {
        let relaunch = config.agent_class != self.config.agent_class
            || config.arguments != self.config.arguments;
        self.config = config;
        if relaunch && self.pid().is_some() {
            self.restart_requested = true;
            self.messages
                .push("configuration changed: restarting".to_owned());
        }
    }

    /// The running process, if any.
    pub fn pid(&self) -> Option<u32> {
        match self.state {
            State::Up { pid, .. } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Whether the process is gone and nothing is pending.
    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down)
    }

    /// Whether the instance fails again and again without a stable run.
    pub fn crash_loop(&self) -> bool {
        self.consecutive_failures >= self.config.restart.crash_loop
    }

    /// Restarts after crashes so far.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Messages for the manager's session since the last call.
    pub fn take_messages(&mut self) -> Vec<String> {
        std::mem::take(&mut self.messages)
    }

    /// What to do now, and the state change it implies.
    pub fn poll(&mut self, now: Instant) -> Option<Command> {
        if self.frozen {
            return None;
        }
        let want_up = self.target == Target::Up && !self.restart_requested;
        match self.state.clone() {
            State::Down if self.target == Target::Up => {
                self.restart_requested = false;
                self.state = State::Launching;
                Some(Command::Launch)
            }
            State::Backoff { at } | State::Refused { at, .. } if at <= now => {
                if self.target == Target::Up {
                    self.state = State::Launching;
                    Some(Command::Launch)
                } else {
                    self.state = State::Down;
                    None
                }
            }
            State::Up { pid, since } => {
                if !want_up {
                    self.messages
                        .push(format!("stopping {} (SIGINT)", self.config.instance_id));
                    self.state = State::Stopping {
                        pid,
                        signal: StopSignal::Interrupt,
                        deadline: now + self.config.restart.stop_grace,
                    };
                    return Some(Command::Signal(StopSignal::Interrupt));
                }
                if self.consecutive_failures > 0
                    && now.duration_since(since) >= self.config.restart.stable_after
                {
                    self.consecutive_failures = 0;
                    self.messages.push(format!(
                        "{} is stable again; restart delays start over",
                        self.config.instance_id
                    ));
                }
                None
            }
            State::Stopping {
                pid,
                signal,
                deadline,
            } if deadline <= now => {
                let next = match signal {
                    StopSignal::Interrupt => StopSignal::Terminate,
                    StopSignal::Terminate | StopSignal::Kill => StopSignal::Kill,
                };
                self.messages.push(format!(
                    "{} ignored {}; sending {}",
                    self.config.instance_id,
                    signal_name(signal),
                    signal_name(next)
                ));
                self.state = State::Stopping {
                    pid,
                    signal: next,
                    deadline: now + self.config.restart.stop_grace,
                };
                Some(Command::Signal(next))
            }
            _ => None,
        }
    }

    /// When [`Child::poll`] next has something to do (besides events).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.frozen {
            return None;
        }
        match self.state {
            State::Backoff { at } | State::Refused { at, .. } => Some(at),
            State::Stopping { deadline, .. } => Some(deadline),
            State::Up { since, .. } if self.consecutive_failures > 0 => {
                Some(since + self.config.restart.stable_after)
            }
            _ => None,
        }
    }

    /// The shell started the process.
    pub fn launched(&mut self, pid: u32, now: Instant) {
        self.state = State::Up { pid, since: now };
        self.messages
            .push(format!("launched {} (pid {pid})", self.config.instance_id));
    }

    /// The shell did not start the process: another incarnation heartbeats
    /// at this address.
    pub fn refused(&mut self, reason: String, now: Instant) {
        self.messages.push(format!(
            "not starting {}: {reason}",
            self.config.instance_id
        ));
        self.state = State::Refused {
            reason,
            at: now + REFUSED_RETRY,
        };
    }

    /// The process could not be started, or ended. `jitter` in [0, 1)
    /// spreads restarts of many crashing children apart.
    pub fn exited(&mut self, exit: Exit, stderr_tail: Vec<String>, now: Instant, jitter: f64) {
        let deliberate = matches!(self.state, State::Stopping { .. });
        self.last_exit = Some(exit.clone());
        if deliberate {
            self.messages
                .push(format!("{} has stopped", self.config.instance_id));
            self.state = State::Down;
            return;
        }
        self.stderr_tail = stderr_tail;
        self.restarts += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.failures.push_back(now);
        let delay = self.restart_delay(jitter);
        let mut message = format!(
            "{} exited unexpectedly ({}); restarting in {:.1} s",
            self.config.instance_id,
            describe(&exit),
            delay.as_secs_f64()
        );
        if self.crash_loop() {
            message.push_str(&format!(
                "; crash loop: {} failures in a row",
                self.consecutive_failures
            ));
        }
        self.messages.push(message);
        self.state = if self.target == Target::Up {
            State::Backoff { at: now + delay }
        } else {
            State::Down
        };
    }

    /// The delay before the next restart: doubling from `delay` with every
    /// failure in a row, capped at `max_delay`, then shortened by up to a
    /// fifth at random.
    fn restart_delay(&self, jitter: f64) -> Duration {
        let policy = &self.config.restart;
        let doublings = self.consecutive_failures.saturating_sub(1).min(30);
        let delay = policy
            .delay
            .saturating_mul(1 << doublings)
            .min(policy.max_delay);
        delay.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
    }

    /// OCS's stability: 1 − Σ 5 s / (age of each failure in the last 120 s), at least 0.
    pub fn stability(&mut self, now: Instant) -> f64 {
        while self
            .failures
            .front()
            .is_some_and(|failure| now.duration_since(*failure) > STABILITY_WINDOW)
        {
            self.failures.pop_front();
        }
        let penalty: f64 = self
            .failures
            .iter()
            .map(|failure| 5.0 / now.duration_since(*failure).as_secs_f64().max(5.0))
            .sum();
        (1.0 - penalty).max(0.0)
    }

    /// The state's name, as the session data and metrics show it.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Down => "down",
            State::Launching => "starting",
            State::Up { .. } => "up",
            State::Backoff { .. } if self.crash_loop() => "crash-loop",
            State::Backoff { .. } => "restarting",
            State::Refused { .. } => "conflict",
            State::Stopping { .. } => "stopping",
        }
    }

    /// The child's entry in the manager's session data, borrowing from the
    /// child: it is encoded straight to MessagePack, so the crash report is
    /// never copied into an intermediate value.
    pub fn report(&mut self, now: Instant) -> ChildReport<'_> {
        let stability = (self.stability(now) * 100.0).round() / 100.0;
        let next_restart_in = match self.state {
            State::Backoff { at } | State::Refused { at, .. } => {
                Some(at.saturating_duration_since(now).as_secs_f64())
            }
            _ => None,
        };
        ChildReport {
            instance_id: self.config.instance_id.as_str(),
            agent_class: &self.config.agent_class,
            target_state: self.target.as_str(),
            state: self.state_name(),
            frozen: self.frozen,
            pid: self.pid(),
            restarts: self.restarts,
            crash_loop: self.crash_loop(),
            consecutive_failures: self.consecutive_failures,
            stability,
            next_restart_in,
            conflict: match &self.state {
                State::Refused { reason, .. } => Some(reason.as_str()),
                _ => None,
            },
            last_exit_code: self.last_exit.as_ref().and_then(|exit| exit.code),
            last_exit_signal: self.last_exit.as_ref().and_then(|exit| exit.signal),
            stderr_tail: &self.stderr_tail,
        }
    }
}

/// One child's entry in the manager's session data (`child_states`).
#[derive(Debug, Serialize)]
pub struct ChildReport<'a> {
    /// The instance's address suffix.
    pub instance_id: &'a str,
    /// Its agent class.
    pub agent_class: &'a str,
    /// "up" or "down".
    pub target_state: &'static str,
    /// What [`Child::state_name`] says.
    pub state: &'static str,
    /// Frozen: the manager neither starts nor stops it.
    pub frozen: bool,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// Unexpected exits so far.
    pub restarts: u64,
    /// Failing too often to be restarted at once.
    pub crash_loop: bool,
    /// Unexpected exits without a stable run between them.
    pub consecutive_failures: u32,
    /// OCS's stability, to two decimals.
    pub stability: f64,
    /// Seconds until the next start attempt, while one is pending.
    pub next_restart_in: Option<f64>,
    /// Why the last start was refused (another incarnation heartbeats).
    pub conflict: Option<&'a str>,
    /// The last exit's code, if it exited.
    pub last_exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub last_exit_signal: Option<i32>,
    /// The end of stderr from the last unexpected exit, oldest line first.
    pub stderr_tail: &'a [String],
}

fn signal_name(signal: StopSignal) -> &'static str {
    match signal {
        StopSignal::Interrupt => "SIGINT",
        StopSignal::Terminate => "SIGTERM",
        StopSignal::Kill => "SIGKILL",
    }
}

fn describe(exit: &Exit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "could not start".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocs_protocol::InstanceId;
    use ocs_service::site::RestartPolicy;

    fn config() -> InstanceConfig {
        InstanceConfig {
            agent_class: "FakeDataAgent".to_owned(),
            instance_id: InstanceId::new("faker").unwrap(),
            arguments: vec![],
            manage: Manage::Up,
            restart: RestartPolicy {
                delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(8),
                stable_after: Duration::from_secs(30),
                crash_loop: 3,
                stop_grace: Duration::from_secs(5),
            },
            schedule: vec![],
            line: 1,
        }
    }

    fn crash(child: &mut Child, now: Instant) {
        child.exited(
            Exit {
                code: Some(1),
                signal: None,
            },
            vec!["boom".to_owned()],
            now,
            0.0,
        );
    }

    fn up(child: &mut Child, now: Instant) {
        assert_eq!(child.poll(now), Some(Command::Launch));
        child.launched(42, now);
        assert_eq!(child.state_name(), "up");
    }

    #[test]
    fn crashes_restart_with_doubling_capped_delays_and_a_crash_loop_is_named() {
        let start = Instant::now();
        let mut child = Child::new(config(), Target::Up);
        let mut now = start;
        let mut delays = Vec::new();
        for _ in 0..6 {
            up(&mut child, now);
            crash(&mut child, now);
            let at = child.next_deadline().unwrap();
            delays.push(at.duration_since(now).as_secs());
            assert_eq!(
                child.poll(at - Duration::from_millis(1)),
                None,
                "not before the delay"
            );
            now = at;
        }
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        assert!(child.crash_loop());
        assert_eq!(child.state_name(), "crash-loop");
        assert_eq!(child.restarts(), 6);
        assert_eq!(child.report(now).stderr_tail[0], "boom");

        // A stable run resets the delays and the crash loop.
        up(&mut child, now);
        let stable_at = child.next_deadline().unwrap();
        assert_eq!(stable_at, now + Duration::from_secs(30));
        assert_eq!(child.poll(stable_at), None);
        assert!(!child.crash_loop());
        crash(&mut child, stable_at);
        assert_eq!(
            child.next_deadline(),
            Some(stable_at + Duration::from_secs(1))
        );
    }

    #[test]
    fn jitter_only_shortens_the_delay_by_up_to_a_fifth() {
        let now = Instant::now();
        let mut child = Child::new(config(), Target::Up);
        up(&mut child, now);
        child.exited(Exit::default(), vec![], now, 0.999);
        let delay = child.next_deadline().unwrap().duration_since(now);
        assert!(
            delay > Duration::from_millis(800) && delay <= Duration::from_secs(1),
            "{delay:?}"
        );
    }

    #[test]
    fn stopping_escalates_from_sigint_to_sigterm_to_sigkill() {
        let mut now = Instant::now();
        let mut child = Child::new(config(), Target::Up);
        up(&mut child, now);
        child.set_target(Target::Down);
        assert_eq!(
            child.poll(now),
            Some(Command::Signal(StopSignal::Interrupt))
        );
        assert_eq!(child.poll(now), None);
        now += Duration::from_secs(5);
        assert_eq!(
            child.poll(now),
            Some(Command::Signal(StopSignal::Terminate))
        );
        now += Duration::from_secs(5);
        assert_eq!(child.poll(now), Some(Command::Signal(StopSignal::Kill)));
        child.exited(
            Exit {
                code: None,
                signal: Some(9),
            },
            vec![],
            now,
            0.0,
        );
        assert!(child.is_down());
        assert_eq!(child.restarts(), 0, "a requested stop is no crash");
        assert_eq!(child.poll(now + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_frozen_child_is_neither_restarted_nor_stopped() {
        let now = Instant::now();
        let mut child = Child::new(config(), Target::Up);
        up(&mut child, now);
        child.set_frozen(true);
        child.set_target(Target::Down);
        assert_eq!(child.poll(now), None);
        crash(&mut child, now);
        assert_eq!(child.poll(now + Duration::from_secs(60)), None);
        assert_eq!(child.next_deadline(), None);
        child.set_frozen(false);
        // Thawed, it follows its target again: down, so no restart.
        assert_eq!(child.poll(now + Duration::from_secs(60)), None);
        assert!(child.is_down());
    }

    #[test]
    fn a_refused_launch_is_retried_later_and_a_new_config_restarts_a_running_child() {
        let now = Instant::now();
        let mut child = Child::new(config(), Target::Up);
        assert_eq!(child.poll(now), Some(Command::Launch));
        child.refused("already heartbeating".to_owned(), now);
        assert_eq!(child.state_name(), "conflict");
        assert_eq!(child.poll(now + Duration::from_secs(9)), None);
        assert_eq!(child.poll(now + REFUSED_RETRY), Some(Command::Launch));
        child.launched(7, now + REFUSED_RETRY);

        let mut unchanged = config();
        unchanged.schedule = vec![];
        child.reconfigure(unchanged);
        assert_eq!(
            child.poll(now + REFUSED_RETRY),
            None,
            "untouched agents keep running"
        );
        let mut changed = config();
        changed.arguments = vec!["--mode".to_owned(), "idle".to_owned()];
        child.reconfigure(changed);
        let later = now + REFUSED_RETRY;
        assert_eq!(
            child.poll(later),
            Some(Command::Signal(StopSignal::Interrupt))
        );
        child.exited(
            Exit {
                code: Some(0),
                signal: None,
            },
            vec![],
            later,
            0.0,
        );
        assert_eq!(
            child.poll(later),
            Some(Command::Launch),
            "relaunched with the new arguments"
        );
    }

    #[test]
    fn a_report_carries_ocs_child_state_fields_on_the_wire() {
        let now = Instant::now();
        let mut child = Child::new(config(), Target::Up);
        up(&mut child, now);
        crash(&mut child, now);
        let encoded = ocs_protocol::codec::to_msgpack(&child.report(now)).unwrap();
        let report: serde_json::Value = ocs_protocol::codec::from_msgpack(&encoded).unwrap();
        let mut keys: Vec<&str> = report
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "agent_class",
                "conflict",
                "consecutive_failures",
                "crash_loop",
                "frozen",
                "instance_id",
                "last_exit_code",
                "last_exit_signal",
                "next_restart_in",
                "pid",
                "restarts",
                "stability",
                "state",
                "stderr_tail",
                "target_state",
            ]
        );
        assert_eq!(report["instance_id"], "faker");
        assert_eq!(report["state"], "restarting");
        assert_eq!(report["last_exit_code"], 1);
        assert_eq!(report["last_exit_signal"], serde_json::Value::Null);
        assert_eq!(report["conflict"], serde_json::Value::Null);
        assert_eq!(report["stderr_tail"], serde_json::json!(["boom"]));
        assert_eq!(report["next_restart_in"], 1.0);
    }
}
