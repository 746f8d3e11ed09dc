//! Credentials minted per user in NATS's decentralised model
//! (`ocs-credentials`), against a real nats-server that trusts the site's
//! operator and nothing else: a new agent's credential is minted while the
//! server runs and works at once, and the server confines it to the
//! agent's own subjects whatever the agent tries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use ocs_protocol::{codec, proto};
use ocs_testkit::refusals::{connect_noting_server_errors, publish_refused, subscription_refused};
use ocs_testkit::{NatsServer, Process, TempDir, eventually, launch, workspace_binary};

/// A nats-server whose only authentication is `ocs-credentials init`'s
/// operator, and the authority's directory.
struct Site {
    dir: TempDir,
    nats: NatsServer,
}

impl Site {
    fn start() -> Self {
        let dir = TempDir::new("ocs-minted");
        credentials(&dir.path().join("auth"), &["init"]);
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, "include auth/server.conf\n").unwrap();
        let nats = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
        Site { dir, nats }
    }

    fn auth(&self) -> PathBuf {
        self.dir.path().join("auth")
    }

    /// Mints `name`'s credential in `role`; its path.
    fn mint(&self, role: &str, name: &str) -> PathBuf {
        let stdout = credentials(&self.auth(), &["mint", "--role", role, name]);
        PathBuf::from(stdout.trim())
    }

    /// An agent (idle fake-data agent) logged in with its credential.
    fn agent(&self, name: &str, creds: &Path) -> Process {
        let mut command = Command::new(workspace_binary("ocs-fake-data-agent"));
        command
            .args(["--nats-url", &self.nats.url(), "--instance-id", name])
            .args(["--mode", "idle"])
            .env("NATS_CREDS", creds)
            .env("RUST_LOG", "warn");
        Process::spawn(name, command)
    }

    /// `ocs` with a credential: `(exit code, stdout, stderr)`.
    fn ocs(&self, creds: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let output =
            launch::run(launch::ocs_command(&self.nats.url(), args).env("NATS_CREDS", creds));
        (output.code, output.stdout, output.stderr)
    }
}

/// `ocs-credentials --dir <auth> <args>`, however it ends.
fn run_credentials(auth: &Path, args: &[&str]) -> launch::Output {
    launch::run(
        Command::new(workspace_binary("ocs-credentials"))
            .arg("--dir")
            .arg(auth)
            .args(args),
    )
}

/// `ocs-credentials --dir <auth> <args>`; its stdout, after a success.
fn credentials(auth: &Path, args: &[&str]) -> String {
    let output = run_credentials(auth, args);
    assert_eq!(
        output.code,
        Some(0),
        "ocs-credentials {args:?}: {}",
        output.stderr
    );
    output.stdout
}

async fn connect_with(
    url: &str,
    creds: &Path,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap()
        .connect(url)
        .await
}

/// The `.creds` text with the JWT's `name` claim changed, its signature kept.
fn renamed(creds: &str, from: &str, to: &str) -> String {
    use data_encoding::BASE64URL_NOPAD;
    let jwt = creds.lines().nth(1).unwrap();
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let claims = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
    let forged = claims.replace(
        &format!("\"name\":\"{from}\""),
        &format!("\"name\":\"{to}\""),
    );
    assert_ne!(claims, forged, "no name {from} in {claims}");
    parts[1] = BASE64URL_NOPAD.encode(forged.as_bytes());
    creds.replace(jwt, &parts.join("."))
}

fn agents_in_status(stdout: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(stdout).unwrap()["session"]["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_minted_while_the_server_runs_joins_without_a_change_to_its_configuration() {
    let site = Site::start();
    let config = std::fs::read_to_string(site.auth().join("server.conf")).unwrap();
    let operator = site.mint("operator", "alice");
    let viewer = site.mint("viewer", "bob");
    let registry_creds = site.mint("registry", "registry");
    let mut registry = Command::new(workspace_binary("ocs-registry"));
    registry
        .args(["--nats-url", &site.nats.url(), "--listen", "127.0.0.1:0"])
        .env("NATS_CREDS", &registry_creds)
        .env("RUST_LOG", "warn");
    let _registry = Process::spawn("ocs-registry", registry);

    // A new agent: one command, while the server runs.
    let faker3 = site.mint("agent", "faker3");
    let _faker3 = site.agent("faker3", &faker3);
    assert_eq!(
        std::fs::read_to_string(site.auth().join("server.conf")).unwrap(),
        config,
        "minting changed the server's configuration"
    );
    let mode = std::fs::metadata(&faker3).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "a credential is readable by its owner only"
    );

    // The registry, logged in as itself, hears it; an operator reads it.
    eventually(
        Duration::from_secs(15),
        "faker3 alive in the registry",
        || async {
            let (code, stdout, _) = site.ocs(&operator, &["registry", "main", "status", "--json"]);
            (code == Some(0) && agents_in_status(&stdout)["observatory.faker3"]["expired"] == false)
                .then_some(())
        },
    )
    .await;
    // Its journal works (its own JetStream keys), and operators control it.
    let (code, stdout, stderr) = site.ocs(&operator, &["faker3", "acq", "start"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = site.ocs(&operator, &["faker3", "acq", "status", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"running\""), "{stdout}");
    // A viewer reads but is refused control.
    let (code, _, stderr) = site.ocs(&viewer, &["faker3", "acq", "stop"]);
    assert_ne!(code, Some(0), "a viewer stopped an operation: {stderr}");
    assert!(stderr.contains("not permitted"), "{stderr}");
    // Nor may it listen to an agent's operation requests; `ocs listen` says so.
    let (code, _, stderr) = site.ocs(&viewer, &["listen", "observatory.faker3.ops.>"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(
            "not permitted: this NATS user may not subscribe to observatory.faker3.ops.>"
        ),
        "{stderr}"
    );
    let (code, stdout, _) = site.ocs(&viewer, &["faker3", "acq", "status", "--json"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("\"running\""), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_agent_cannot_act_for_another_and_a_forged_credential_is_refused() {
    let site = Site::start();
    let url = site.nats.url();
    let faker1 = site.mint("agent", "faker1");
    let faker2 = site.mint("agent", "faker2");
    let operator = site.mint("operator", "alice");
    let _faker2 = site.agent("faker2", &faker2);

    // The operator watches every feed: what faker1 may publish arrives, what
    // it may not never does.
    let watcher = connect_with(&url, &operator).await.unwrap();
    let mut feeds = watcher.subscribe("observatory.*.feeds.>").await.unwrap();
    watcher.flush().await.unwrap();

    let options = async_nats::ConnectOptions::with_credentials_file(&faker1)
        .await
        .unwrap()
        .custom_inbox_prefix("_INBOX.faker1");
    let (spoofer, violations) = connect_noting_server_errors(&url, options).await;
    let spoof = proto::Heartbeat {
        leaving: true,
        ..ocs_testkit::heartbeat("observatory.faker2")
    };
    spoofer
        .publish(
            "observatory.faker2.feeds.heartbeat",
            codec::encode(&spoof).into(),
        )
        .await
        .unwrap();
    spoofer
        .publish("observatory.faker1.feeds.own", "mine".into())
        .await
        .unwrap();
    spoofer.flush().await.unwrap();
    publish_refused(&violations, "observatory.faker2.feeds.heartbeat").await;
    let own = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = feeds.next().await {
            assert!(
                message.payload != codec::encode(&spoof),
                "faker1's spoofed heartbeat of faker2 was delivered"
            );
            if message.subject.as_str() == "observatory.faker1.feeds.own" {
                return message;
            }
        }
        panic!("the operator's subscription ended")
    })
    .await
    .expect("faker1's own feed arrives");
    assert_eq!(&own.payload[..], b"mine");

    // Nor may it call, or listen to, another agent's operations.
    spoofer
        .publish("observatory.faker2.ops.start.acq", bytes::Bytes::new())
        .await
        .unwrap();
    let mut eavesdrop = spoofer.subscribe("observatory.faker2.ops.>").await.unwrap();
    let mut inboxes = spoofer.subscribe("_INBOX.alice.>").await.unwrap();
    spoofer.flush().await.unwrap();
    publish_refused(&violations, "observatory.faker2.ops.start.acq").await;
    subscription_refused(&violations, "observatory.faker2.ops.>", &mut eavesdrop).await;
    subscription_refused(&violations, "_INBOX.alice.>", &mut inboxes).await;

    // Nor write another agent's journal: the server drops the KV put.
    let put = |key: &str| {
        let spoofer = spoofer.clone();
        let subject = format!("$KV.ocs_sessions.{key}");
        async move {
            spoofer
                .send_request(
                    subject,
                    async_nats::Request::new()
                        .payload("x".into())
                        .timeout(Some(Duration::from_secs(1))),
                )
                .await
        }
    };
    eventually(
        Duration::from_secs(15),
        "faker2's journal bucket",
        || async { put("observatory.faker1.probe").await.ok() },
    )
    .await;
    assert!(
        put("observatory.faker2.acq").await.is_err(),
        "faker1 wrote faker2's session journal"
    );
    publish_refused(&violations, "$KV.ocs_sessions.observatory.faker2.acq").await;

    // A credential renamed to another agent breaks its signature; another
    // agent's JWT with one's own seed fails the server's challenge; a
    // credential from another site's authority is not trusted.
    let forged = site.dir.path().join("forged.creds");
    let text = std::fs::read_to_string(&faker1).unwrap();
    std::fs::write(&forged, renamed(&text, "faker1", "faker2")).unwrap();
    assert!(
        connect_with(&url, &forged).await.is_err(),
        "a renamed credential connected"
    );
    let borrowed = site.dir.path().join("borrowed.creds");
    let faker2_jwt = std::fs::read_to_string(&faker2)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let faker1_jwt = text.lines().nth(1).unwrap();
    std::fs::write(&borrowed, text.replace(faker1_jwt, &faker2_jwt)).unwrap();
    assert!(
        connect_with(&url, &borrowed).await.is_err(),
        "faker2's JWT connected with faker1's seed"
    );
    let elsewhere = TempDir::new("ocs-other-site");
    credentials(&elsewhere.path().join("auth"), &["init"]);
    let stranger = credentials(
        &elsewhere.path().join("auth"),
        &["mint", "--role", "agent", "faker1"],
    );
    assert!(
        connect_with(&url, Path::new(stranger.trim()))
            .await
            .is_err(),
        "another authority's credential connected"
    );
    // And through all of it, faker2 stayed itself.
    assert!(connect_with(&url, &faker2).await.is_ok());
}

/// `ocs-credentials revoke` and a reload: the server drops the revoked
/// user's connection and refuses its credential from then on; other users
/// stay, and a credential minted for the name afterwards works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_once_the_server_reloads() {
    let site = Site::start();
    let url = site.nats.url();
    let lost = site.mint("agent", "faker1");
    let kept = site.mint("agent", "faker2");
    let revoked_client = connect_with(&url, &lost).await.expect("faker1 connects");
    let kept_client = connect_with(&url, &kept).await.expect("faker2 connects");

    let stdout = credentials(&site.auth(), &["revoke", "faker1"]);
    assert!(
        stdout.contains("revoked 1 credential(s) of faker1"),
        "{stdout}"
    );
    // Revoking does nothing until the server reads its configuration again.
    assert!(connect_with(&url, &lost).await.is_ok());
    site.nats.signal("HUP");

    eventually(
        Duration::from_secs(10),
        "the revoked user's connection dropped",
        || async {
            (revoked_client.connection_state() != async_nats::connection::State::Connected)
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the revoked credential refused",
        || async { connect_with(&url, &lost).await.is_err().then_some(()) },
    )
    .await;
    assert_eq!(
        kept_client.connection_state(),
        async_nats::connection::State::Connected
    );
    kept_client
        .flush()
        .await
        .expect("faker2 still talks to the server");
    assert!(connect_with(&url, &kept).await.is_ok());

    // Revocations cover credentials issued up to their second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = site.dir.path().join("faker1-again.creds");
    credentials(
        &site.auth(),
        &[
            "mint",
            "--role",
            "agent",
            "faker1",
            "--out",
            again.to_str().unwrap(),
        ],
    );
    assert!(connect_with(&url, &again).await.is_ok());
    let unknown = run_credentials(&site.auth(), &["revoke", "nobody"]);
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown
            .stderr
            .contains("no credential was minted for nobody"),
        "{}",
        unknown.stderr
    );
}
