//! The workspace's binaries as tests start them: agents, the `ocs` client,
//! and a nats-server logged into by role with the shipped permissions.

use std::path::Path;
use std::process::Command;

use crate::{NatsServer, Process, TempDir, workspace_binary};

/// An agent binary of the workspace on `nats_url` as `instance_id`, with
/// further arguments; logs warnings and errors only.
pub fn agent(nats_url: &str, binary: &str, instance_id: &str, extra: &[&str]) -> Process {
    let mut command = Command::new(workspace_binary(binary));
    command
        .args(["--nats-url", nats_url, "--instance-id", instance_id])
        .args(extra)
        .env("RUST_LOG", "warn");
    Process::spawn(instance_id, command)
}

/// A fake-data agent whose `acq` waits for a request (`--mode idle`).
pub fn idle_faker(nats_url: &str, instance_id: &str) -> Process {
    agent(
        nats_url,
        "ocs-fake-data-agent",
        instance_id,
        &["--mode", "idle"],
    )
}

/// The registry on `nats_url`, serving `/metrics` and `/healthz` on
/// `http_port` (0: any free port), with further arguments; outside any site
/// file, logging errors only.
pub fn registry(nats_url: &str, http_port: u16, extra: &[&str]) -> Process {
    let mut command = Command::new(workspace_binary("ocs-registry"));
    command
        .args(["--nats-url", nats_url])
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(extra)
        .env("RUST_LOG", "error")
        .env_remove("OCS_SITE_FILE")
        .env_remove("INSTANCE_ID");
    Process::spawn("ocs-registry", command)
}

/// What a command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// The `ocs` client on `nats_url` with `args`, ready for more settings.
pub fn ocs_command(nats_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(workspace_binary("ocs"));
    command
        .args(args)
        .env("NATS_URL", nats_url)
        .env_remove("NATS_USER")
        .env_remove("NATS_PASSWORD");
    command
}

/// Runs `command` to its end.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `ocs` on `nats_url` with `args`, run to its end.
pub fn ocs(nats_url: &str, args: &[&str]) -> Output {
    run(&mut ocs_command(nats_url, args))
}

/// `ocs` logged in as `user` with the password of `role` (see
/// [`nats_with_role_permissions`]).
pub fn ocs_as(nats_url: &str, user: &str, role: &str, args: &[&str]) -> Output {
    let mut command = ocs_command(nats_url, args);
    as_user(&mut command, user, role);
    run(&mut command)
}

/// The roles of `deploy/nats/permissions.conf` that tests log in as; each
/// has the password `pw-<ROLE>`.
pub const ROLES: [&str; 8] = [
    "REGISTRY", "MONITOR", "FAKER1", "FAKER2", "PYFAKER", "WEB", "OPERATOR", "VIEWER",
];

/// A nats-server with the shipped role permissions, a password per role.
pub fn nats_with_role_permissions(dir: &TempDir) -> NatsServer {
    nats_with_role_permissions_and(dir, "")
}

/// [`nats_with_role_permissions`] with further server configuration.
pub fn nats_with_role_permissions_and(dir: &TempDir, extra: &str) -> NatsServer {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/permissions.conf");
    let mut conf = String::new();
    for role in ROLES {
        conf.push_str(&format!("OCS_NATS_PASSWORD_{role}: \"pw-{role}\"\n"));
    }
    // Variables do not cross an include, so the shipped text is inlined after them.
    conf.push_str(&std::fs::read_to_string(shipped).unwrap());
    conf.push_str(extra);
    let path = dir.path().join("nats.conf");
    std::fs::write(&path, conf).unwrap();
    NatsServer::start_with(&["-c", path.to_str().unwrap()])
}

/// Connect options logged in as `user` with the password of `role`, its
/// replies in its own inboxes, as our clients take them.
pub fn login(user: &str, role: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_user_and_password(user.into(), format!("pw-{role}"))
        .custom_inbox_prefix(ocs_protocol::subject::inbox_prefix(user).expect("a token"))
}

/// Logs `command` in as `user` with the password of `role`.
pub fn as_user(command: &mut Command, user: &str, role: &str) {
    command
        .env("NATS_USER", user)
        .env("NATS_PASSWORD", format!("pw-{role}"));
}

/// The registry (with `registry_args`) and the idle agents faker1 and
/// faker2 on `url`, each logged in as its own user with its role's password
/// (see [`nats_with_role_permissions`]).
pub fn registry_and_fakers_as_users(url: &str, registry_args: &[&str]) -> (Process, Vec<Process>) {
    let mut registry = Command::new(workspace_binary("ocs-registry"));
    registry
        .args(["--nats-url", url, "--listen", "127.0.0.1:0"])
        .args(registry_args)
        .env("RUST_LOG", "warn");
    as_user(&mut registry, "registry", "REGISTRY");
    let registry = Process::spawn("ocs-registry", registry);
    let agents = [("faker1", "FAKER1"), ("faker2", "FAKER2")]
        .into_iter()
        .map(|(iid, role)| {
            let mut agent = Command::new(workspace_binary("ocs-fake-data-agent"));
            agent
                .args(["--nats-url", url, "--instance-id", iid, "--mode", "idle"])
                .env("RUST_LOG", "warn");
            as_user(&mut agent, iid, role);
            Process::spawn(iid, agent)
        })
        .collect();
    (registry, agents)
}
