//! What each NATS role may do to each JetStream bucket, tried for real.
//!
//! Against a nats-server with the shipped permissions
//! (deploy/nats/permissions.conf) and the buckets as the registry and an
//! agent create them, every role tries every write, read (direct get),
//! rollup, purge, update and delete on each bucket and the stream behind it.
//! The outcomes are held against the table in deploy/nats/README.md
//! ("JetStream, role by role"), so the documentation and the server agree.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use ocs_testkit::eventually;
use ocs_testkit::launch::{nats_with_role_permissions, registry_and_fakers_as_users};

const BUCKETS: [&str; 3] = ["ocs_registry", "ocs_registry_leases", "ocs_sessions"];

/// `(NATS user, role's password variable)`: one user per role; `faker1`
/// stands for every agent.
const ROLES: [(&str, &str); 6] = [
    ("faker1", "FAKER1"),
    ("registry", "REGISTRY"),
    ("operation-monitor", "MONITOR"),
    ("web", "WEB"),
    ("viewer", "VIEWER"),
    ("operator", "OPERATOR"),
];

/// Every attempt, in the table's column order.
const ATTEMPTS: [&str; 8] = [
    "write own key",
    "write another's key",
    "read own key",
    "read another's key",
    "rollup",
    "purge",
    "update stream",
    "delete stream",
];

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// JetStream did it (or, for a read, answered).
    Yes,
    /// The server's permissions dropped the request: no answer.
    Denied,
    /// Permitted by the server, refused by the bucket's own settings.
    RefusedByBucket,
}

impl Outcome {
    fn cell(self) -> &'static str {
        match self {
            Outcome::Yes => "yes",
            Outcome::Denied => "no",
            Outcome::RefusedByBucket => "no (bucket)",
        }
    }
}

/// The address whose keys the user writes as its own.
fn own_prefix(user: &str) -> String {
    format!("observatory.{user}")
}

/// Someone else's keys: faker2's (faker1's for faker2).
fn other_prefix(user: &str) -> &'static str {
    if user == "faker2" {
        "observatory.faker1"
    } else {
        "observatory.faker2"
    }
}

async fn connect(url: &str, user: &str, role: &str) -> async_nats::Client {
    ocs_testkit::launch::login(user, role)
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("connect as {user}: {err}"))
}

/// A request whose answer says whether JetStream acted: `None` when nothing
/// answered within the deadline (the server dropped it).
async fn ask(
    client: &async_nats::Client,
    subject: String,
    headers: Option<HeaderMap>,
    payload: &str,
) -> Option<async_nats::Message> {
    let request = async_nats::Request::new()
        .payload(Bytes::from(payload.to_owned()))
        .timeout(Some(Duration::from_secs(1)));
    let request = match headers {
        Some(headers) => request.headers(headers),
        None => request,
    };
    client.send_request(subject, request).await.ok()
}

/// A write or API answer: done, or refused by JetStream.
fn acted(answer: Option<async_nats::Message>) -> Outcome {
    let Some(answer) = answer else {
        return Outcome::Denied;
    };
    let body: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    if body.get("error").is_some() || body.get("success") == Some(&serde_json::Value::Bool(false)) {
        Outcome::RefusedByBucket
    } else {
        Outcome::Yes
    }
}

/// A direct get: any answer (the record, or "not found") means the read was permitted.
fn answered(answer: Option<async_nats::Message>) -> Outcome {
    if answer.is_some() {
        Outcome::Yes
    } else {
        Outcome::Denied
    }
}

/// The stream's current configuration, as its owner reads it.
async fn stream_config(owner: &async_nats::Client, bucket: &str) -> serde_json::Value {
    let info = owner
        .request(format!("$JS.API.STREAM.INFO.KV_{bucket}"), Bytes::new())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    info["config"].clone()
}

/// Every attempt of `user` on `bucket`, in [`ATTEMPTS`]' order. Destructive
/// attempts come last and touch only test keys, so that a role wrongly
/// allowed one does not spoil the others' results.
async fn attempts(
    client: &async_nats::Client,
    user: &str,
    bucket: &str,
    config: &serde_json::Value,
) -> Vec<Outcome> {
    let own = format!("$KV.{bucket}.{}.perm-test", own_prefix(user));
    let other = format!("$KV.{bucket}.{}.perm-test", other_prefix(user));
    let direct = |key: &str| format!("$JS.API.DIRECT.GET.KV_{bucket}.{key}");
    let write_own = acted(ask(client, own.clone(), None, "x").await);
    let write_other = acted(ask(client, other.clone(), None, "x").await);
    let read_own = answered(ask(client, direct(&own), None, "").await);
    let read_other = answered(ask(client, direct(&other), None, "").await);
    let mut rollup = HeaderMap::new();
    rollup.insert("Nats-Rollup", "sub");
    let rollup = acted(ask(client, own.clone(), Some(rollup), "x").await);
    let purge = acted(
        ask(
            client,
            format!("$JS.API.STREAM.PURGE.KV_{bucket}"),
            None,
            &serde_json::json!({ "filter": own }).to_string(),
        )
        .await,
    );
    // The same configuration back: harmless if it were allowed.
    let update = acted(
        ask(
            client,
            format!("$JS.API.STREAM.UPDATE.KV_{bucket}"),
            None,
            &config.to_string(),
        )
        .await,
    );
    let delete = acted(
        ask(
            client,
            format!("$JS.API.STREAM.DELETE.KV_{bucket}"),
            None,
            "",
        )
        .await,
    );
    vec![
        write_own,
        write_other,
        read_own,
        read_other,
        rollup,
        purge,
        update,
        delete,
    ]
}

/// The table in deploy/nats/README.md: `(user, bucket) -> cells`.
fn documented() -> BTreeMap<(String, String), Vec<String>> {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nats/README.md"
    ))
    .unwrap();
    let section = readme
        .split("## JetStream, role by role")
        .nth(1)
        .expect("deploy/nats/README.md has a section \"JetStream, role by role\"");
    let mut table = BTreeMap::new();
    let mut header_checked = false;
    for line in section.lines().take_while(|line| !line.starts_with("## ")) {
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<String> = row
            .split('|')
            .map(|cell| cell.trim().trim_matches('`').to_owned())
            .collect();
        let cells = &cells[..cells.len() - 1];
        if cells[0] == "user" {
            let columns: Vec<&str> = cells[2..].iter().map(String::as_str).collect();
            assert_eq!(columns, ATTEMPTS, "the table's columns");
            header_checked = true;
            continue;
        }
        if cells[0].starts_with('-') {
            continue;
        }
        table.insert((cells[0].clone(), cells[1].clone()), cells[2..].to_vec());
    }
    assert!(
        header_checked,
        "the table has a header row starting with `user`"
    );
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_may_do_to_each_bucket_what_the_nats_readme_says_and_nothing_more() {
    let dir = ocs_testkit::TempDir::new("ocs-js-perms");
    let nats = nats_with_role_permissions(&dir);
    let url = nats.url();
    // The buckets, made as the registry (with replicas, so its lease bucket
    // too) and an agent make them.
    let (_registry, agents) = registry_and_fakers_as_users(&url, &["--ha"]);
    let owner = connect(&url, "registry", "REGISTRY").await;
    for bucket in BUCKETS {
        eventually(
            Duration::from_secs(20),
            &format!("the bucket {bucket}"),
            || {
                let owner = owner.clone();
                async move {
                    let info = owner
                        .request(format!("$JS.API.STREAM.INFO.KV_{bucket}"), Bytes::new())
                        .await
                        .ok()?;
                    let info: serde_json::Value = serde_json::from_slice(&info.payload).ok()?;
                    info.get("config").map(drop)
                }
            },
        )
        .await;
    }
    // Another's key to read, where its owner may write one.
    let faker2 = connect(&url, "faker2", "FAKER2").await;
    assert_eq!(
        acted(
            ask(
                &faker2,
                "$KV.ocs_sessions.observatory.faker2.perm-test".into(),
                None,
                "x"
            )
            .await
        ),
        Outcome::Yes
    );

    // A denied attempt costs its whole deadline: every role and bucket at once.
    let mut configs = BTreeMap::new();
    for bucket in BUCKETS {
        configs.insert(bucket, stream_config(&owner, bucket).await);
    }
    let mut trials = Vec::new();
    for (user, role) in ROLES {
        let client = connect(&url, user, role).await;
        for bucket in BUCKETS {
            let (client, config) = (client.clone(), configs[bucket].clone());
            trials.push(async move {
                let outcomes = attempts(&client, user, bucket, &config).await;
                ((user.to_owned(), bucket.to_owned()), outcomes)
            });
        }
    }
    let found: BTreeMap<(String, String), Vec<Outcome>> = futures::future::join_all(trials)
        .await
        .into_iter()
        .collect();
    // Printed as the README's table, so a deliberate change is pasted, reviewed, in one step.
    let mut printed = format!(
        "| user | bucket | {} |\n|{}\n",
        ATTEMPTS.join(" | "),
        "---|".repeat(ATTEMPTS.len() + 2)
    );
    for ((user, bucket), outcomes) in &found {
        let cells: Vec<&str> = outcomes.iter().map(|outcome| outcome.cell()).collect();
        printed.push_str(&format!(
            "| `{user}` | `{bucket}` | {} |\n",
            cells.join(" | ")
        ));
    }
    println!("{printed}");
    let documented = documented();
    let found_cells: BTreeMap<(String, String), Vec<String>> = found
        .iter()
        .map(|(key, outcomes)| {
            (
                key.clone(),
                outcomes
                    .iter()
                    .map(|outcome| outcome.cell().to_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        found_cells, documented,
        "the server's answers differ from deploy/nats/README.md's table (found above)"
    );
    // No attempt deleted or reconfigured a bucket.
    for bucket in BUCKETS {
        let config = stream_config(&owner, bucket).await;
        assert_eq!(config["name"], format!("KV_{bucket}"), "{bucket} is gone");
    }
    drop(agents);
}
