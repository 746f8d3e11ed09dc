//! The host manager's I/O: checking the bus for a duplicate, starting a child
//! in its own process group, keeping the tail of its stderr, reporting its
//! exit, and signalling its process group.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use futures::StreamExt;
use ocs_protocol::{AgentAddress, codec, heartbeat, subject};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

use super::child::{Child, Command, Exit, StopSignal};
use super::settings::Settings;
use super::stderr_tail::StderrTail;
use ocs_agent::OpContext;
use ocs_service::lifecycle::PARENT_PID_ENV;
use ocs_service::site::{SITE_FILE_ENV, SiteConfig};

/// Set on every child: the address of the manager that started it, so that a
/// later incarnation of that manager finds what a killed one left behind.
pub const MANAGER_ENV: &str = "OCS_HOST_MANAGER_ADDRESS";

/// Process groups started by an earlier incarnation of the manager at
/// `manager_address` that outlived it (it was killed with SIGKILL and the
/// program does not die with its parent): `(pid, command line)`.
pub fn orphans(manager_address: &str) -> Vec<(u32, String)> {
    let own = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // Other users' processes are unreadable: they are not ours anyway.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let variable = |name: &str| {
            environ
                .split(|byte| *byte == 0)
                .find_map(|pair| pair.strip_prefix(format!("{name}=").as_bytes()))
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        let ours = variable(MANAGER_ENV).as_deref() == Some(manager_address);
        // Orphaned: the manager that started it is gone, so it was reparented
        // (a live one, even another manager at this address, keeps its children).
        let from_earlier = variable(PARENT_PID_ENV)
            .is_some_and(|parent| parent != own && Some(parent) != parent_pid(pid));
        // The group leader stands for its group (children run in their own).
        let leader = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|pid| rustix::process::getpgid(Some(pid)).ok())
            .is_some_and(|group| group.as_raw_nonzero().get() as u32 == pid);
        if ours && from_earlier && leader && !is_zombie(pid) {
            let command = std::fs::read(entry.path().join("cmdline"))
                .map(|bytes| {
                    String::from_utf8_lossy(&bytes)
                        .replace('\0', " ")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            found.push((pid, command));
        }
    }
    found
}

/// The current parent of `pid`, from `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "(comm)": state, then the parent's pid.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Stops the orphans' process groups: SIGTERM, then SIGKILL after `grace`.
pub async fn reap_orphans(orphans: &[(u32, String)], grace: std::time::Duration) {
    let groups: Vec<rustix::process::Pid> = orphans
        .iter()
        .filter_map(|(pid, _)| rustix::process::Pid::from_raw(*pid as i32))
        .collect();
    for group in &groups {
        let _ = rustix::process::kill_process_group(*group, rustix::process::Signal::TERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && orphans.iter().any(|(pid, _)| !is_zombie(*pid))
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for group in &groups {
        let _ = rustix::process::kill_process_group(*group, rustix::process::Signal::KILL);
    }
}

/// What the launch tasks tell the manager loop.
#[derive(Debug)]
pub enum Event {
    /// The process runs.
    Launched {
        /// Which instance.
        instance_id: String,
        /// Its pid (and process group).
        pid: u32,
    },
    /// Not started: another incarnation heartbeats at the address.
    Refused {
        /// Which instance.
        instance_id: String,
        /// Who runs it.
        reason: String,
    },
    /// The process ended, or could not be started.
    Exited {
        /// Which instance.
        instance_id: String,
        /// How it ended.
        exit: Exit,
        /// Its last lines of stderr.
        stderr_tail: Vec<String>,
    },
    /// A scheduled operation's start request was answered.
    ScheduleResult {
        /// The instance.
        instance_id: String,
        /// The operation started.
        operation: String,
        /// The reply's message, or the error.
        result: Result<String, String>,
    },
}

/// Starts and signals children; events come back on a channel.
pub struct Launcher {
    ctx: OpContext,
    settings: Arc<Settings>,
    events: mpsc::Sender<Event>,
}

impl Launcher {
    pub fn new(ctx: OpContext, settings: Arc<Settings>, events: mpsc::Sender<Event>) -> Launcher {
        Launcher {
            ctx,
            settings,
            events,
        }
    }

    /// Carries out `command` for `child`, whose program `site` names.
    pub fn execute(&self, child: &Child, command: Command, site: &SiteConfig) {
        let instance_id = child.config().instance_id.to_string();
        match command {
            Command::Launch => {
                let program = self.program(site, &child.config().agent_class);
                // The arguments of the manager's last good config, not the
                // file as it is now: a bad edit must not stop restarts.
                let program_arguments =
                    site.program_arguments(&child.config().agent_class).to_vec();
                let arguments = site.arguments_for(&instance_id);
                let address =
                    AgentAddress::new(&self.settings.address_root, &child.config().instance_id);
                tokio::spawn(launch(
                    self.ctx.client().clone(),
                    self.settings.clone(),
                    self.events.clone(),
                    Spawn {
                        instance_id,
                        address,
                        program,
                        program_arguments,
                        arguments,
                        manager_address: self.ctx.address().to_string(),
                    },
                ));
            }
            Command::Signal(signal) => {
                let Some(pid) = child.pid() else { return };
                let signal = match signal {
                    StopSignal::Interrupt => rustix::process::Signal::INT,
                    StopSignal::Terminate => rustix::process::Signal::TERM,
                    StopSignal::Kill => rustix::process::Signal::KILL,
                };
                let Some(group) = rustix::process::Pid::from_raw(pid as i32) else {
                    return;
                };
                // ESRCH: it is already gone; its exit event is on its way.
                if let Err(err) = rustix::process::kill_process_group(group, signal)
                    && err != rustix::io::Errno::SRCH
                {
                    tracing::warn!(instance = %instance_id, pid, error = %err, "cannot signal");
                }
            }
        }
    }

    /// The program of `agent_class`: a path as given, a bare name from
    /// `--bin-dir` when it is there, else from `PATH`.
    fn program(&self, site: &SiteConfig, agent_class: &str) -> PathBuf {
        // Validated with the site file: every class there has a program.
        let program = PathBuf::from(site.program(agent_class).unwrap_or(agent_class));
        if program.components().count() > 1 {
            return program;
        }
        match &self.settings.bin_dir {
            Some(dir) if dir.join(&program).is_file() => dir.join(program),
            _ => program,
        }
    }
}

/// One child process to start.
struct Spawn {
    instance_id: String,
    address: AgentAddress,
    program: PathBuf,
    /// What the class's program takes first (`-m module` for an interpreter).
    program_arguments: Vec<String>,
    arguments: Vec<String>,
    manager_address: String,
}

async fn launch(
    client: async_nats::Client,
    settings: Arc<Settings>,
    events: mpsc::Sender<Event>,
    spawn: Spawn,
) {
    let Spawn {
        instance_id,
        address,
        program,
        program_arguments,
        arguments,
        manager_address,
    } = spawn;
    if let Some(reason) = someone_else_runs(&client, &address, &settings).await {
        let _ = events
            .send(Event::Refused {
                instance_id,
                reason,
            })
            .await;
        return;
    }
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&program_arguments)
        .arg("--instance-id")
        .arg(&instance_id)
        .args(&arguments)
        // The child must not re-read the site file (see above).
        .env_remove(SITE_FILE_ENV)
        .env_remove("INSTANCE_ID")
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .env(MANAGER_ENV, &manager_address)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a stop reaches everything it started, and a
        // Ctrl-C at the manager's terminal reaches only the manager.
        .process_group(0)
        .kill_on_drop(false);
    let mut process = match command.spawn() {
        Ok(process) => process,
        Err(err) => {
            let _ = events
                .send(Event::Exited {
                    instance_id,
                    exit: Exit::default(),
                    stderr_tail: vec![format!("cannot start {}: {err}", program.display())],
                })
                .await;
            return;
        }
    };
    let pid = process.id().unwrap_or(0);
    let _ = events
        .send(Event::Launched {
            instance_id: instance_id.clone(),
            pid,
        })
        .await;
    // Stderr is read beside the wait, not before it: a program that forks
    // into the background hands its stderr to the forked process, and EOF
    // would only come when that one ends, long after the exit we must report.
    let tail = Tail::default();
    let mut forwarding = process
        .stderr
        .take()
        .map(|stderr| tokio::spawn(forward_stderr(instance_id.clone(), stderr, tail.clone())));
    let exit = match process.wait().await {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Exit {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(err) => {
            tail.lock()
                .push(&format!("cannot wait for the process: {err}"));
            Exit::default()
        }
    };
    // The process that was started is the agent: once it ended, whatever it
    // left in its process group (a daemonised copy, a stray helper) goes too,
    // as systemd stops a service's remaining processes after its main one.
    if let Some(group) = rustix::process::Pid::from_raw(pid as i32)
        && rustix::process::kill_process_group(group, rustix::process::Signal::TERM).is_ok()
    {
        tracing::warn!(instance = %instance_id, pid, "the process exited but left others in its process group; stopping them");
        if let Some(task) = forwarding.as_mut()
            // Their stderr closes when they are gone.
            && tokio::time::timeout(LEFTOVER_GRACE, task).await.is_ok()
        {
            forwarding = None;
        }
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    if let Some(mut task) = forwarding {
        // Whatever was still buffered in the pipe, briefly.
        if tokio::time::timeout(std::time::Duration::from_millis(200), &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!(instance = %instance_id, "stderr still open after the exit; no longer forwarded");
        }
    }
    let tail = tail.lock().take();
    let _ = events
        .send(Event::Exited {
            instance_id,
            exit,
            stderr_tail: tail,
        })
        .await;
}

/// How long what a child left in its process group gets to end after SIGTERM.
const LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

type Tail = Arc<parking_lot::Mutex<StderrTail>>;

/// The longest stderr line forwarded; a longer one is replaced by a note (a
/// child writing megabytes without a newline must not fill the manager).
const MAX_STDERR_LINE: usize = 16 * 1024;

/// Forwards a child's stderr to the manager's, prefixed with the instance,
/// so the manager's log (journald) holds every child's; keeps the tail for
/// the crash report. Reads to the end whatever comes, bytes that are not
/// UTF-8 and overlong lines included: a reader that gave up would lose the
/// rest and leave the child writing to a closed pipe (SIGPIPE or EPIPE).
async fn forward_stderr(instance_id: String, mut stderr: tokio::process::ChildStderr, tail: Tail) {
    let mut lines =
        AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_STDERR_LINE);
    let mut buffer = bytes::BytesMut::with_capacity(4096);
    let mut ended = false;
    loop {
        let decoded = if ended {
            lines.decode_eof(&mut buffer)
        } else {
            lines.decode(&mut buffer)
        };
        let line = match decoded {
            Ok(Some(line)) => {
                String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned()
            }
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                format!("(a line longer than {MAX_STDERR_LINE} bytes, not shown)")
            }
            Err(AnyDelimiterCodecError::Io(_)) | Ok(None) if ended => break,
            Err(AnyDelimiterCodecError::Io(_)) | Ok(None) => {
                ended = !matches!(stderr.read_buf(&mut buffer).await, Ok(read) if read > 0);
                continue;
            }
        };
        eprintln!("[{instance_id}] {line}");
        tail.lock().push(&line);
    }
}

/// Listens to the address's heartbeats for a while: a live (not leaving)
/// heartbeat means another incarnation runs this instance.
async fn someone_else_runs(
    client: &async_nats::Client,
    address: &AgentAddress,
    settings: &Settings,
) -> Option<String> {
    let mut heartbeats = match client.subscribe(subject::heartbeat(address)).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(%address, error = %err, "cannot check for a duplicate; starting anyway");
            return None;
        }
    };
    let deadline = tokio::time::sleep(settings.duplicate_check);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return None,
            message = heartbeats.next() => {
                let message = message?;
                let Ok(heartbeat) = heartbeat::decode(&message.payload, codec::MAX_MESSAGE_BYTES) else {
                    continue;
                };
                if !heartbeat.leaving {
                    return Some(format!(
                        "{address} already heartbeats from incarnation {} on host {} (pid {})",
                        heartbeat.incarnation, heartbeat.host, heartbeat.pid
                    ));
                }
            }
        }
    }
}
