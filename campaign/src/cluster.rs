//! The campaign's hosts: containers on a private Docker network, started,
//! struck and removed through the `docker` command.
//!
//! Three NATS servers in one cluster with JetStream, the registry's replicas
//! (`--ha`, records and lease kept on three servers), the operation monitor,
//! and agent hosts, each a host manager running fake-data agents from one
//! site file. Every client is given all three servers and fails over between
//! them. The campaign reaches the servers, the registries and the monitor
//! through ports published on 127.0.0.1.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;
use tracing::{debug, warn};

use crate::schedule::{Target, Topology};

/// The images the containers run.
#[derive(Debug, Clone, clap::Args)]
pub struct Images {
    /// The project's image (deploy/docker/Dockerfile or prebuilt.Dockerfile):
    /// ocs-registry, ocs-operation-monitor, ocs-host-manager and the agents.
    #[arg(long = "image", env = "OCS_CAMPAIGN_IMAGE", value_name = "IMAGE")]
    pub ocs: String,
    /// nats-server's image.
    #[arg(
        long = "nats-image",
        env = "OCS_CAMPAIGN_NATS_IMAGE",
        value_name = "IMAGE"
    )]
    pub nats: String,
}

/// A running campaign cluster, removed when dropped (or by [`Cluster::remove`]).
pub struct Cluster {
    project: String,
    network: String,
    dir: PathBuf,
    topology: Topology,
    /// Published client port of each NATS server.
    pub nats_ports: Vec<u16>,
    /// Published `/metrics` port of each registry replica.
    pub registry_ports: Vec<u16>,
    /// Published `/metrics` port of the operation monitor.
    pub monitor_port: u16,
}

/// Runs `docker args`, bounded in time; its stdout, or why it failed.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    debug!(?args, "docker");
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new("docker")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("docker {} did not finish in 90 s", args.join(" ")))?
    .context("cannot run docker")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

impl Cluster {
    /// The network alias (and host name) of a NATS server, a registry
    /// replica, an agent host or the monitor.
    pub fn alias(target: Target) -> String {
        match target {
            Target::Nats(node) => format!("nats{node}"),
            Target::Registry(replica) => format!("registry{replica}"),
            Target::Host(host) => format!("host{host}"),
            Target::Monitor => "monitor".to_owned(),
            Target::LeadingRegistry => unreachable!("resolved to a replica before it is struck"),
        }
    }

    /// The container's name.
    pub fn container(&self, target: Target) -> String {
        format!("{}-{}", self.project, Self::alias(target))
    }

    fn nats_urls(&self) -> String {
        (1..=self.topology.nats_nodes)
            .map(|node| format!("nats://nats{node}:4222"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Creates the network and starts every container.
    pub async fn start(
        project: &str,
        topology: &Topology,
        images: &Images,
    ) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(project);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut cluster = Cluster {
            project: project.to_owned(),
            network: format!("{project}-net"),
            dir,
            topology: topology.clone(),
            nats_ports: Vec::new(),
            registry_ports: Vec::new(),
            monitor_port: free_port()?,
        };
        docker(&["network", "create", &cluster.network]).await?;
        for node in 1..=topology.nats_nodes {
            let port = free_port()?;
            cluster.nats_ports.push(port);
            let config = cluster.write_nats_config(node)?;
            let mount = format!("{}:/etc/nats/nats.conf:ro", config.display());
            let publish = format!("127.0.0.1:{port}:4222");
            cluster
                .run(
                    Target::Nats(node),
                    &["-p", &publish, "-v", &mount],
                    &images.nats,
                    &["--config", "/etc/nats/nats.conf"],
                )
                .await?;
        }
        let nats_url = format!("NATS_URL={}", cluster.nats_urls());
        let timeout = format!("--agent-timeout={}", topology.agent_timeout.as_secs());
        for replica in 1..=topology.registries {
            let port = free_port()?;
            cluster.registry_ports.push(port);
            let publish = format!("127.0.0.1:{port}:9463");
            cluster
                .run(
                    Target::Registry(replica),
                    &["-p", &publish, "-e", &nats_url, "-e", "RUST_LOG=info"],
                    &images.ocs,
                    &[
                        "ocs-registry",
                        "--ha",
                        "--kv-replicas=3",
                        "--listen=0.0.0.0:9463",
                        "--wait-time=5",
                        &timeout,
                    ],
                )
                .await?;
        }
        let publish = format!("127.0.0.1:{}:9464", cluster.monitor_port);
        cluster
            .run(
                Target::Monitor,
                &["-p", &publish, "-e", &nats_url],
                &images.ocs,
                &[
                    "ocs-operation-monitor",
                    "--listen=0.0.0.0:9464",
                    "--probe-interval=2",
                ],
            )
            .await?;
        let site = cluster.write_site_file()?;
        let mount = format!("{}:/etc/ocs/site.yaml:ro", site.display());
        for host in 1..=topology.hosts {
            let site_host = format!("OCS_SITE_HOST=host{host}");
            let instance = format!("INSTANCE_ID={}", Topology::host_manager_id(host));
            cluster
                .run(
                    Target::Host(host),
                    &[
                        "-v",
                        &mount,
                        "-e",
                        "OCS_SITE_FILE=/etc/ocs/site.yaml",
                        "-e",
                        &site_host,
                        "-e",
                        &instance,
                        "-e",
                        &nats_url,
                    ],
                    &images.ocs,
                    &["ocs-host-manager"],
                )
                .await?;
        }
        Ok(cluster)
    }

    async fn run(
        &self,
        target: Target,
        options: &[&str],
        image: &str,
        command: &[&str],
    ) -> anyhow::Result<()> {
        let name = self.container(target);
        let alias = Self::alias(target);
        let mut args = vec![
            "run",
            "--detach",
            "--name",
            &name,
            "--hostname",
            &alias,
            "--network",
            &self.network,
            "--network-alias",
            &alias,
            "--label",
            "ocs-campaign=1",
        ];
        args.extend_from_slice(options);
        args.push(image);
        args.extend_from_slice(command);
        docker(&args).await.map(drop)
    }

    fn write_nats_config(&self, node: u8) -> anyhow::Result<PathBuf> {
        let routes = (1..=self.topology.nats_nodes)
            .filter(|other| *other != node)
            .map(|other| format!("nats-route://nats{other}:6222"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            // Pings every 2 s (not NATS's 2 min): a route cut off silently by a
            // partition is otherwise held open for minutes after the partition
            // heals, and the healed server takes clients it cannot route for
            // (the first campaign found this). Busy connections are not pinged.
            "server_name: nats{node}\nport: 4222\nhttp_port: 8222\nmax_payload: 1MB\nping_interval: \"2s\"\nping_max: 3\n\
             jetstream {{ store_dir: /data/jetstream, max_file_store: 256MB, max_memory_store: 64MB }}\n\
             cluster {{ name: ocs-campaign, port: 6222, routes: [{routes}] }}\n"
        );
        let path = self.dir.join(format!("nats{node}.conf"));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    fn write_site_file(&self) -> anyhow::Result<PathBuf> {
        let mut site = format!(
            "hub:\n  nats-url: {}\n  address-root: {}\nhosts:\n",
            self.nats_urls(),
            Topology::ROOT
        );
        for host in 1..=self.topology.hosts {
            let _ = writeln!(site, "  host{host}:\n    agent-instances:");
            for index in 1..=self.topology.agents_per_host {
                let _ = writeln!(
                    site,
                    "      - agent-class: FakeDataAgent\n        instance-id: {}\n        arguments: [[--mode, idle]]\n        \
                     restart: {{delay: 0.5, max-delay: 2, stable-after: 10, crash-loop: 1000, stop-grace: 2}}",
                    Topology::instance_id(host, index)
                );
            }
        }
        let path = self.dir.join("site.yaml");
        std::fs::write(&path, site).with_context(|| format!("write {}", path.display()))?;
        // The containers run as nonroot.
        set_readable(&path)?;
        for node in 1..=self.topology.nats_nodes {
            set_readable(&self.dir.join(format!("nats{node}.conf")))?;
        }
        Ok(path)
    }

    /// SIGKILL the container.
    pub async fn kill(&self, target: Target) -> anyhow::Result<()> {
        docker(&["kill", &self.container(target)]).await.map(drop)
    }

    /// Stops the container gracefully: SIGTERM, SIGKILL after `grace`.
    pub async fn stop(&self, target: Target, grace: Duration) -> anyhow::Result<()> {
        let grace = grace.as_secs().to_string();
        docker(&["stop", "--time", &grace, &self.container(target)])
            .await
            .map(drop)
    }

    /// Starts a stopped or killed container again.
    pub async fn start_again(&self, target: Target) -> anyhow::Result<()> {
        docker(&["start", &self.container(target)]).await.map(drop)
    }

    /// Freezes every process in the container.
    pub async fn pause(&self, target: Target) -> anyhow::Result<()> {
        docker(&["pause", &self.container(target)]).await.map(drop)
    }

    /// Thaws a paused container.
    pub async fn unpause(&self, target: Target) -> anyhow::Result<()> {
        docker(&["unpause", &self.container(target)])
            .await
            .map(drop)
    }

    /// Takes the container off the network.
    pub async fn disconnect(&self, target: Target) -> anyhow::Result<()> {
        docker(&[
            "network",
            "disconnect",
            &self.network,
            &self.container(target),
        ])
        .await
        .map(drop)
    }

    /// Puts it back on the network under its alias.
    pub async fn reconnect(&self, target: Target) -> anyhow::Result<()> {
        let alias = Self::alias(target);
        docker(&[
            "network",
            "connect",
            "--alias",
            &alias,
            &self.network,
            &self.container(target),
        ])
        .await
        .map(drop)
    }

    /// SIGKILL the agents `instance_ids` on `host`, found by their command
    /// line; returns how many processes were killed.
    pub async fn kill_agents(&self, host: u8, instance_ids: &[String]) -> anyhow::Result<usize> {
        self.signal_agents(host, instance_ids, "KILL").await
    }

    /// Sends `signal` (KILL, TERM) to the agents `instance_ids` on `host`.
    pub async fn signal_agents(
        &self,
        host: u8,
        instance_ids: &[String],
        signal: &str,
    ) -> anyhow::Result<usize> {
        let signal = format!("-{signal}");
        let listing = docker(&[
            "top",
            &self.container(Target::Host(host)),
            "-eo",
            "pid,args",
        ])
        .await?;
        let mut killed = 0;
        for line in listing.lines().skip(1) {
            let mut words = line.split_whitespace();
            let Some(pid) = words.next() else { continue };
            let args: Vec<&str> = words.collect();
            let is_target = args.windows(2).any(|pair| {
                pair[0] == "--instance-id" && instance_ids.iter().any(|id| id == pair[1])
            });
            if is_target {
                let status = Command::new("kill")
                    .args([signal.as_str(), pid])
                    .status()
                    .await?;
                if status.success() {
                    killed += 1;
                }
            }
        }
        if killed < instance_ids.len() {
            bail!("signalled {killed} of the agents {instance_ids:?} on host{host}");
        }
        Ok(killed)
    }

    /// Resident memory (KiB) of the process in `target` whose command is
    /// `program`, as the host sees it, and its anonymous part where the
    /// host's `/proc` shows it.
    pub async fn resident_kib(
        &self,
        target: Target,
        program: &str,
    ) -> anyhow::Result<(u64, Option<u64>)> {
        // Docker needs the pid column to map processes to the container.
        let listing = docker(&["top", &self.container(target), "-eo", "pid,rss,args"]).await?;
        let (pid, rss) = listing
            .lines()
            .skip(1)
            .find_map(|line| {
                let mut words = line.split_whitespace();
                let pid: u32 = words.next()?.parse().ok()?;
                let rss = words.next()?.parse().ok()?;
                let command = words.next()?;
                command.ends_with(program).then_some((pid, rss))
            })
            .with_context(|| format!("no {program} process in {}", Self::alias(target)))?;
        // The pid is the host's: its status shows the anonymous part (the
        // rest of the resident set is code and libraries, paged in from files).
        let anonymous = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("RssAnon:"))
                    .and_then(|value| value.split_whitespace().next()?.parse().ok())
            });
        Ok((rss, anonymous))
    }

    /// Writes every container's log to `dir`.
    pub async fn save_logs(&self, dir: &std::path::Path) {
        let mut targets: Vec<Target> = (1..=self.topology.nats_nodes).map(Target::Nats).collect();
        targets.extend((1..=self.topology.registries).map(Target::Registry));
        targets.extend((1..=self.topology.hosts).map(Target::Host));
        targets.push(Target::Monitor);
        for target in targets {
            let name = self.container(target);
            let output = Command::new("docker")
                .args(["logs", "--timestamps", &name])
                .output()
                .await;
            if let Ok(output) = output {
                let mut text = output.stdout;
                text.extend_from_slice(&output.stderr);
                let _ = std::fs::write(dir.join(format!("{}.log", Self::alias(target))), text);
            }
        }
    }

    /// Removes every container and the network.
    pub async fn remove(self) {
        // Dropping removes them; off the runtime's threads, as it blocks.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Also when a campaign fails or panics: no container is left behind.
        let filter = format!("name=^{}-", self.project);
        if let Ok(output) = std::process::Command::new("docker")
            .args(["ps", "--all", "--quiet", "--filter", &filter])
            .output()
        {
            let listing = String::from_utf8_lossy(&output.stdout).into_owned();
            let ids: Vec<&str> = listing.split_whitespace().collect();
            if !ids.is_empty() {
                let removed = std::process::Command::new("docker")
                    .args(["rm", "--force", "--volumes"])
                    .args(ids)
                    .output();
                if !removed.is_ok_and(|output| output.status.success()) {
                    warn!(project = %self.project, "cannot remove the campaign's containers");
                }
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_readable(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", path.display()))
}
