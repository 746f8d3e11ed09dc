//! The site config: one YAML file that describes the hub and, per host, the
//! agent instances the host manager runs, in the spirit of OCS's site config.
//!
//! ```yaml
//! hub:
//!   nats-url: nats://10.10.10.3:4222
//!   address-root: observatory
//! agent-classes:               # site agent classes: class -> program, or program and its first arguments
//!   Lakeshore240Agent: /opt/site/bin/lakeshore240-agent
//!   PyFakeDataAgent: [python3, -m, ocs_nats.agents.fake_data]
//! hosts:
//!   host-1:                    # matched to --site-host or the host name; 'localhost' is the fallback
//!     agent-instances:
//!       - agent-class: FakeDataAgent
//!         instance-id: faker1
//!         arguments: [[--mode, acq]]
//!         manage: up           # up, down or ignore (OCS's host/up, host/down, yes, no too)
//!         restart: {delay: 1, max-delay: 60, stable-after: 60, crash-loop: 5, stop-grace: 5}
//!         schedule:
//!           - {operation: count, every: 60}
//!           - {operation: delay_task, cron: "0 */5 * * * *", params: {delay: 1}}
//! ```
//!
//! Parsing has no I/O besides [`SiteConfig::load`] reading the file; every
//! error names the file, the line and the reason ([`SiteError`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ocs_protocol::{AddressRoot, InstanceId, OpName};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

/// Environment variable naming the site file, as in OCS.
pub const SITE_FILE_ENV: &str = "OCS_SITE_FILE";
/// Environment variable naming this host in the site file.
pub const SITE_HOST_ENV: &str = "OCS_SITE_HOST";

/// The agent classes every site knows, with the program that runs each.
pub const BUILTIN_CLASSES: [(&str, &str); 5] = [
    ("FakeDataAgent", "ocs-fake-data-agent"),
    ("BarebonesAgent", "ocs-barebones-agent"),
    ("RegistryAgent", "ocs-registry"),
    ("OperationMonitor", "ocs-operation-monitor"),
    ("HostManager", "ocs-host-manager"),
];

/// A site file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct SiteError {
    /// The site file.
    pub file: PathBuf,
    /// 1-based line of the offending entry (0 when the file could not be read).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// A parsed and validated site file.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    /// Where it was read from.
    pub file: PathBuf,
    /// How to reach NATS.
    pub hub: Hub,
    /// Agent class → the program that runs it, then the arguments that come
    /// before the instance's own (built-in classes plus the site's own).
    pub classes: BTreeMap<String, Vec<String>>,
    /// Host name → its instances.
    pub hosts: BTreeMap<String, Vec<InstanceConfig>>,
}

/// The `hub` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hub {
    /// NATS server URL(s), comma-separated.
    pub nats_url: Option<String>,
    /// A NATS credentials file for the site's clients (a reference; never inlined).
    pub credentials: Option<PathBuf>,
    /// The address root.
    pub address_root: Option<AddressRoot>,
}

/// What the host manager does with an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manage {
    /// Keep it running.
    Up,
    /// Keep it stopped.
    Down,
    /// Leave it alone (it runs elsewhere, or by hand).
    Ignore,
}

/// How an instance is restarted and stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the first restart; doubled after every further failure.
    pub delay: Duration,
    /// Longest delay between restarts.
    pub max_delay: Duration,
    /// Running this long counts as stable: the delay starts over.
    pub stable_after: Duration,
    /// This many failures in a row without a stable run is a crash loop.
    pub crash_loop: u32,
    /// Time given to SIGINT, then to SIGTERM, before the next signal.
    pub stop_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            crash_loop: 5,
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// When a scheduled operation starts.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// Every so often, from the moment the instance is up.
    Every(Duration),
    /// A cron expression (with seconds), in UTC.
    Cron(String),
}

/// An operation the host manager starts on an instance on a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The task or process to start.
    pub operation: OpName,
    /// When.
    pub when: When,
    /// Params of the `start` request.
    pub params: Map<String, Value>,
}

/// One agent instance of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    /// The agent class.
    pub agent_class: String,
    /// The instance id (unique in the site).
    pub instance_id: InstanceId,
    /// Command-line arguments for the agent.
    pub arguments: Vec<String>,
    /// What the host manager does with it.
    pub manage: Manage,
    /// Restart and stop settings.
    pub restart: RestartPolicy,
    /// Operations started on a schedule.
    pub schedule: Vec<Schedule>,
    /// Line of the entry in the site file.
    pub line: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSite {
    #[serde(default)]
    hub: RawHub,
    #[serde(default)]
    agent_classes: BTreeMap<String, Spanned<RawProgram>>,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
}

/// A class's program: a path, or the program and its first arguments
/// (`[python3, -m, module]`, for interpreters).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawProgram {
    Path(String),
    Command(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHub {
    nats_url: Option<String>,
    credentials: Option<PathBuf>,
    address_root: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    #[serde(default)]
    agent_instances: Vec<Spanned<RawInstance>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInstance {
    agent_class: Spanned<String>,
    instance_id: Spanned<String>,
    #[serde(default)]
    arguments: Vec<Value>,
    manage: Option<Spanned<String>>,
    #[serde(default)]
    restart: Option<Spanned<RawRestart>>,
    #[serde(default)]
    schedule: Vec<Spanned<RawSchedule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRestart {
    delay: Option<f64>,
    max_delay: Option<f64>,
    stable_after: Option<f64>,
    crash_loop: Option<u32>,
    stop_grace: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSchedule {
    operation: String,
    every: Option<f64>,
    cron: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
}

impl SiteConfig {
    /// Reads and validates the site file at `path`.
    pub fn load(path: &Path) -> Result<SiteConfig, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|err| SiteError {
            file: path.to_owned(),
            line: 0,
            reason: format!("cannot read the site file: {err}"),
        })?;
        SiteConfig::parse(path, &text)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<SiteConfig, SiteError> {
        let error = |line: u64, reason: String| SiteError {
            file: file.to_owned(),
            line,
            reason,
        };
        let raw: RawSite = serde_saphyr::from_str(text).map_err(|err| {
            let line = err.location().map(|at| at.line()).unwrap_or(0);
            // The crate's message may quote the source and repeats the place;
            // keep the reason from its first line.
            let message = err.to_string();
            let first = message.lines().next().unwrap_or("invalid YAML");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let reason = match first
                .strip_prefix("line ")
                .and_then(|rest| rest.split_once(": "))
            {
                Some((_place, reason)) => reason,
                None => first,
            };
            error(line, reason.to_owned())
        })?;

        let address_root = raw
            .hub
            .address_root
            .map(|root| {
                AddressRoot::new(root.value.as_str())
                    .map_err(|err| error(root.referenced.line(), err.to_string()))
            })
            .transpose()?;
        let mut classes: BTreeMap<String, Vec<String>> = BUILTIN_CLASSES
            .iter()
            .map(|(class, program)| ((*class).to_owned(), vec![(*program).to_owned()]))
            .collect();
        for (class, program) in raw.agent_classes {
            let command = match program.value {
                RawProgram::Path(path) => vec![path],
                RawProgram::Command(words) => words,
            };
            if command
                .first()
                .is_none_or(|program| program.trim().is_empty())
            {
                return Err(error(
                    program.referenced.line(),
                    format!("agent class {class:?} has no program"),
                ));
            }
            classes.insert(class, command);
        }

        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut hosts = BTreeMap::new();
        for (host, raw_host) in raw.hosts {
            let mut instances = Vec::new();
            for entry in raw_host.agent_instances {
                let line = entry.referenced.line();
                let instance = entry.value;
                let id_line = instance.instance_id.referenced.line();
                let instance_id = InstanceId::new(instance.instance_id.value.as_str())
                    .map_err(|err| error(id_line, err.to_string()))?;
                if let Some(first) = seen.insert(instance_id.to_string(), id_line) {
                    return Err(error(
                        id_line,
                        format!("duplicate instance id \"{instance_id}\" (first at line {first})"),
                    ));
                }
                let agent_class = instance.agent_class.value;
                if !classes.contains_key(&agent_class) {
                    return Err(error(
                        instance.agent_class.referenced.line(),
                        format!(
                            "unknown agent class {agent_class:?}: declare its program under agent-classes, or use one of {}",
                            BUILTIN_CLASSES.map(|(class, _)| class).join(", ")
                        ),
                    ));
                }
                let arguments = flatten_arguments(&instance.arguments)
                    .map_err(|reason| error(line, format!("{instance_id}: {reason}")))?;
                let manage = match &instance.manage {
                    // The host manager never manages itself (as in OCS).
                    _ if agent_class == "HostManager" => Manage::Ignore,
                    None => Manage::Up,
                    Some(manage) => parse_manage(&manage.value)
                        .map_err(|reason| error(manage.referenced.line(), reason))?,
                };
                let restart = match instance.restart {
                    None => RestartPolicy::default(),
                    Some(restart) => restart_policy(restart.value)
                        .map_err(|reason| error(restart.referenced.line(), reason))?,
                };
                let schedule = instance
                    .schedule
                    .into_iter()
                    .map(|entry| {
                        let line = entry.referenced.line();
                        schedule(entry.value).map_err(|reason| error(line, reason))
                    })
                    .collect::<Result<_, _>>()?;
                instances.push(InstanceConfig {
                    agent_class,
                    instance_id,
                    arguments,
                    manage,
                    restart,
                    schedule,
                    line,
                });
            }
            hosts.insert(host, instances);
        }
        Ok(SiteConfig {
            file: file.to_owned(),
            hub: Hub {
                nats_url: raw.hub.nats_url,
                credentials: raw.hub.credentials,
                address_root,
            },
            classes,
            hosts,
        })
    }

    /// The instances of `host`, or of `localhost` when the file has no such
    /// host (OCS's fallback); `None` when neither is there.
    pub fn host(&self, host: &str) -> Option<(&str, &[InstanceConfig])> {
        [host, "localhost"].into_iter().find_map(|name| {
            self.hosts
                .get_key_value(name)
                .map(|(name, instances)| (name.as_str(), instances.as_slice()))
        })
    }

    /// The instance `instance_id`, on whichever host.
    pub fn instance(&self, instance_id: &str) -> Option<&InstanceConfig> {
        self.hosts
            .values()
            .flatten()
            .find(|instance| instance.instance_id.as_str() == instance_id)
    }

    /// The program that runs `agent_class`.
    pub fn program(&self, agent_class: &str) -> Option<&str> {
        self.classes
            .get(agent_class)
            .and_then(|command| command.first())
            .map(String::as_str)
    }

    /// The arguments `agent_class`'s program takes before the instance's own
    /// (`-m module` for `[python3, -m, module]`); empty for a plain path.
    pub fn program_arguments(&self, agent_class: &str) -> &[String] {
        self.classes
            .get(agent_class)
            .map_or(&[], |command| command.get(1..).unwrap_or(&[]))
    }

    /// Arguments for the instance `instance_id` from this file: the hub's
    /// settings, then the instance's own arguments.
    pub fn arguments_for(&self, instance_id: &str) -> Vec<String> {
        let mut arguments = Vec::new();
        if let Some(url) = &self.hub.nats_url {
            arguments.extend(["--nats-url".to_owned(), url.clone()]);
        }
        if let Some(root) = &self.hub.address_root {
            arguments.extend(["--address-root".to_owned(), root.to_string()]);
        }
        if let Some(instance) = self.instance(instance_id) {
            arguments.extend(instance.arguments.iter().cloned());
        }
        arguments
    }
}

fn parse_manage(text: &str) -> Result<Manage, String> {
    match text {
        "up" | "host/up" | "host" | "yes" => Ok(Manage::Up),
        "down" | "host/down" => Ok(Manage::Down),
        "ignore" | "no" => Ok(Manage::Ignore),
        "docker" | "docker/up" | "docker/down" => Err(format!(
            "manage: {text:?}: containers are managed by docker compose, not by the host manager; use ignore"
        )),
        other => Err(format!("manage: {other:?} is not one of up, down, ignore")),
    }
}

fn seconds(name: &str, value: Option<f64>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(seconds) => {
            crate::seconds::positive(seconds).map_err(|reason| format!("{name}: {reason}"))
        }
    }
}

fn restart_policy(raw: RawRestart) -> Result<RestartPolicy, String> {
    let default = RestartPolicy::default();
    let policy = RestartPolicy {
        delay: seconds("restart.delay", raw.delay, default.delay)?,
        max_delay: seconds("restart.max-delay", raw.max_delay, default.max_delay)?,
        stable_after: seconds(
            "restart.stable-after",
            raw.stable_after,
            default.stable_after,
        )?,
        crash_loop: raw.crash_loop.unwrap_or(default.crash_loop).max(1),
        stop_grace: seconds("restart.stop-grace", raw.stop_grace, default.stop_grace)?,
    };
    if policy.max_delay < policy.delay {
        return Err("restart.max-delay is shorter than restart.delay".to_owned());
    }
    Ok(policy)
}

fn schedule(raw: RawSchedule) -> Result<Schedule, String> {
    let operation = OpName::new(raw.operation.as_str()).map_err(|err| err.to_string())?;
    let when = match (raw.every, raw.cron) {
        (Some(every), None) => When::Every(seconds("every", Some(every), Duration::ZERO)?),
        (None, Some(cron)) => {
            parse_cron(&cron)?;
            When::Cron(cron)
        }
        _ => {
            return Err(format!(
                "schedule of {operation}: give exactly one of every (seconds) or cron"
            ));
        }
    };
    Ok(Schedule {
        operation,
        when,
        params: raw.params,
    })
}

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    expression
        .parse::<croner::Cron>()
        .map_err(|err| format!("cron {expression:?}: {err}"))
}

/// OCS's nested argument lists flattened (`[[--mode, idle], --verbose]` →
/// `--mode idle --verbose`); numbers and booleans become text.
fn flatten_arguments(values: &[Value]) -> Result<Vec<String>, String> {
    let mut arguments = Vec::new();
    for value in values {
        match value {
            Value::Array(items) => arguments.extend(flatten_arguments(items)?),
            Value::String(text) => arguments.push(text.clone()),
            Value::Number(number) => arguments.push(number.to_string()),
            Value::Bool(flag) => arguments.push(flag.to_string()),
            Value::Null | Value::Object(_) => {
                return Err(format!(
                    "arguments: {value} is not text, a number or a list"
                ));
            }
        }
    }
    Ok(arguments)
}

/// The process's command line with the site file's arguments for this
/// instance put first, so that arguments given on the command line override
/// them (the binary's clap command must set `args_override_self`).
///
/// The site file comes from `--site-file` or `OCS_SITE_FILE`, the instance id
/// from `--instance-id` or `INSTANCE_ID`; without both the command line is
/// returned as it is.
pub fn with_site_arguments(
    args: impl IntoIterator<Item = OsString>,
) -> Result<Vec<OsString>, SiteError> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let site_file = option_value(&args, "--site-file")
        .or_else(|| std::env::var_os(SITE_FILE_ENV).filter(|value| !value.is_empty()));
    let instance_id = option_value(&args, "--instance-id")
        .or_else(|| std::env::var_os("INSTANCE_ID").filter(|value| !value.is_empty()));
    let (Some(site_file), Some(instance_id)) = (site_file, instance_id) else {
        return Ok(args);
    };
    let site = SiteConfig::load(Path::new(&site_file))?;
    let from_site = site.arguments_for(&instance_id.to_string_lossy());
    let program = if args.is_empty() {
        OsString::new()
    } else {
        args.remove(0)
    };
    Ok(std::iter::once(program)
        .chain(from_site.into_iter().map(OsString::from))
        .chain(args)
        .collect())
}

fn option_value(args: &[OsString], name: &str) -> Option<OsString> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == name {
            return iter.next().cloned();
        }
        if let Some(value) = text.strip_prefix(&format!("{name}=")) {
            return Some(value.into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "\
hub:
  nats-url: nats://10.0.0.3:4222
  address-root: lab
agent-classes:
  ThermometerAgent: /opt/site/thermometer
hosts:
  host-1:
    agent-instances:
      - agent-class: FakeDataAgent
        instance-id: faker1
        arguments: [[--mode, idle], [--frequency, 2.5], --verbose]
        restart: {delay: 0.5, max-delay: 10, crash-loop: 3}
        schedule:
          - {operation: count, every: 30}
          - {operation: delay_task, cron: '*/5 * * * *', params: {delay: 1}}
      - agent-class: ThermometerAgent
        instance-id: thermo1
        manage: host/down
      - agent-class: HostManager
        instance-id: hm-host-1
  localhost:
    agent-instances:
      - agent-class: BarebonesAgent
        instance-id: bare
        manage: no
";

    fn parse(text: &str) -> Result<SiteConfig, SiteError> {
        SiteConfig::parse(Path::new("site.yaml"), text)
    }

    fn error_at(text: &str) -> (u64, String) {
        let err = parse(text).unwrap_err();
        assert_eq!(err.file, Path::new("site.yaml"));
        (err.line, err.reason)
    }

    #[test]
    fn a_site_file_parses_with_ocs_conventions() {
        let site = parse(SITE).unwrap();
        assert_eq!(site.hub.nats_url.as_deref(), Some("nats://10.0.0.3:4222"));
        let (name, instances) = site.host("host-1").unwrap();
        assert_eq!(name, "host-1");
        let faker = &instances[0];
        assert_eq!(
            faker.arguments,
            ["--mode", "idle", "--frequency", "2.5", "--verbose"]
        );
        assert_eq!(faker.manage, Manage::Up);
        assert_eq!(faker.line, 9);
        assert_eq!(faker.restart.delay, Duration::from_millis(500));
        assert_eq!(faker.restart.crash_loop, 3);
        assert_eq!(
            faker.restart.stop_grace,
            RestartPolicy::default().stop_grace
        );
        assert_eq!(faker.schedule.len(), 2);
        assert_eq!(faker.schedule[0].when, When::Every(Duration::from_secs(30)));
        assert_eq!(faker.schedule[1].params["delay"], 1);
        assert_eq!(instances[1].manage, Manage::Down);
        assert_eq!(
            instances[2].manage,
            Manage::Ignore,
            "the host manager never manages itself"
        );
        assert_eq!(
            site.program("ThermometerAgent"),
            Some("/opt/site/thermometer")
        );
        assert_eq!(site.program("FakeDataAgent"), Some("ocs-fake-data-agent"));
        assert!(site.program_arguments("ThermometerAgent").is_empty());
        // Unknown hosts fall back to localhost, as in OCS.
        let (name, instances) = site.host("elsewhere").unwrap();
        assert_eq!((name, instances[0].manage), ("localhost", Manage::Ignore));
        assert_eq!(
            site.arguments_for("faker1"),
            [
                "--nats-url",
                "nats://10.0.0.3:4222",
                "--address-root",
                "lab",
                "--mode",
                "idle",
                "--frequency",
                "2.5",
                "--verbose"
            ]
        );
    }

    #[test]
    fn a_class_may_name_a_program_with_its_first_arguments() {
        let site = parse(&SITE.replace(
            "ThermometerAgent: /opt/site/thermometer",
            "ThermometerAgent: [python3, -m, site_agents.thermometer]",
        ))
        .unwrap();
        assert_eq!(site.program("ThermometerAgent"), Some("python3"));
        assert_eq!(
            site.program_arguments("ThermometerAgent"),
            ["-m", "site_agents.thermometer"]
        );
        for empty in ["[]", "''", "['', -m, x]"] {
            let (line, reason) = error_at(&SITE.replace("/opt/site/thermometer", empty));
            assert_eq!(
                (line, reason.as_str()),
                (5, "agent class \"ThermometerAgent\" has no program")
            );
        }
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let duplicate = SITE.replace("instance-id: thermo1", "instance-id: faker1");
        let (line, reason) = error_at(&duplicate);
        assert_eq!(line, 17);
        assert_eq!(
            reason,
            "duplicate instance id \"faker1\" (first at line 10)"
        );

        let (line, reason) =
            error_at(&SITE.replace("agent-class: BarebonesAgent", "agent-class: Nope"));
        assert_eq!(line, 23);
        assert!(
            reason.starts_with("unknown agent class \"Nope\""),
            "{reason}"
        );

        let (line, reason) =
            error_at(&SITE.replace("instance-id: thermo1", "instance-id: 'thermo 1'"));
        assert_eq!(line, 17);
        assert!(reason.contains("thermo 1"), "{reason}");

        let (line, reason) = error_at(&SITE.replace("manage: host/down", "manage: sideways"));
        assert_eq!(
            (line, reason.as_str()),
            (18, "manage: \"sideways\" is not one of up, down, ignore")
        );

        let (line, reason) =
            error_at(&SITE.replace("cron: '*/5 * * * *'", "cron: 'every tuesday'"));
        assert_eq!(line, 15);
        assert!(reason.starts_with("cron \"every tuesday\""), "{reason}");

        let (line, _) = error_at(&SITE.replace("restart: {delay: 0.5", "restart: {delay: -1"));
        assert_eq!(line, 12);

        let (line, reason) = error_at(&SITE.replace("        restart:", "        restrat:"));
        assert_eq!(line, 12);
        assert!(reason.contains("restrat"), "{reason}");

        let (line, _) = error_at("hosts:\n  host-1:\n    agent-instances: [\n");
        assert!(line >= 3, "a syntax error names its line, got {line}");
        let (line, reason) = error_at("hub:\n  address-root: a.b\n");
        assert_eq!(line, 2);
        assert!(reason.contains("a.b"), "{reason}");
    }

    #[test]
    fn command_line_arguments_come_after_the_site_file_ones() {
        let dir = std::env::temp_dir().join(format!("ocs-site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("site.yaml");
        std::fs::write(&file, SITE).unwrap();
        let args: Vec<OsString> = [
            "agent",
            "--site-file",
            file.to_str().unwrap(),
            "--instance-id",
            "faker1",
            "--mode",
            "acq",
            "--site-host=host-1",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let merged = with_site_arguments(args).unwrap();
        let merged: Vec<_> = merged
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            merged,
            [
                "agent",
                "--nats-url",
                "nats://10.0.0.3:4222",
                "--address-root",
                "lab",
                "--mode",
                "idle",
                "--frequency",
                "2.5",
                "--verbose",
                "--site-file",
                file.to_str().unwrap(),
                "--instance-id",
                "faker1",
                "--mode",
                "acq",
                "--site-host=host-1"
            ]
        );
        let err = with_site_arguments(
            [
                "agent",
                "--site-file",
                "/nonexistent/site.yaml",
                "--instance-id",
                "x",
            ]
            .map(OsString::from),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/site.yaml:0: cannot read the site file"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
