//! What each role may do on the bus, as permission templates the server
//! fills in with the user's name (`{{name()}}`) when the user connects.
//!
//! These are the rules of `deploy/nats/permissions.conf` with the user's
//! name in place of the hand-written one, so that one credential per agent
//! can be minted without editing the server's configuration; a unit test
//! holds the two to the same subjects.

use ocs_protocol::subject::{REGISTRY_BUCKET, REGISTRY_LEASE_BUCKET, SESSIONS_BUCKET};
use ocs_protocol::{AddressRoot, InstanceId};

/// Where the server puts the connecting user's name (the JWT's `name`).
pub const NAME: &str = "{{name()}}";

/// A kind of user of the bus; each has a scoped signing key of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// One agent instance, named by its instance id: its own subjects only.
    Agent,
    /// A registry replica, named by the registry's instance id.
    Registry,
    /// The operation monitor.
    Monitor,
    /// The web board.
    Web,
    /// A person or script who reads but never starts, stops or aborts.
    Viewer,
    /// A person or script who controls every agent.
    Operator,
    /// A host manager: watches the heartbeats of the agents it runs.
    HostManager,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 7] = [
        Role::Agent,
        Role::Registry,
        Role::Monitor,
        Role::Web,
        Role::Viewer,
        Role::Operator,
        Role::HostManager,
    ];

    /// The role's name on the command line and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Registry => "registry",
            Role::Monitor => "monitor",
            Role::Web => "web",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::HostManager => "host-manager",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The permissions of one role, with [`NAME`] where the user's name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Subjects the user may publish to.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether the user may answer requests made to it (one reply each),
    /// whatever their reply subject.
    pub answers_requests: bool,
}

/// The site the templates are written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// First token of every agent address.
    pub root: AddressRoot,
    /// The instance id of the registry whose feed and records are read.
    pub registry: InstanceId,
}

impl Site {
    /// The permissions of `role` at this site.
    pub fn template(&self, role: Role) -> Template {
        let root = self.root.as_str();
        let registry = format!("{root}.{}", self.registry.as_str());
        let own = format!("{root}.{NAME}");
        let inbox = format!("_INBOX.{NAME}.>");
        let any = format!("{root}.*");
        match role {
            Role::Agent => Template {
                publish: [
                    vec![
                        format!("{own}.>"),
                        format!("$KV.{SESSIONS_BUCKET}.{own}.>"),
                        "$JS.API.INFO".to_owned(),
                    ],
                    own_bucket_api(SESSIONS_BUCKET),
                    vec![own_direct_get(SESSIONS_BUCKET, &own)],
                ]
                .concat(),
                subscribe: vec![
                    format!("{own}.ops.>"),
                    format!("{own}.api"),
                    format!("{own}.ping"),
                    inbox,
                ],
                answers_requests: true,
            },
            Role::Registry => Template {
                publish: [
                    vec![
                        format!("{own}.>"),
                        format!("$KV.{REGISTRY_BUCKET}.{own}.>"),
                        format!("$KV.{REGISTRY_LEASE_BUCKET}.{own}.>"),
                        format!("$KV.{SESSIONS_BUCKET}.{own}.>"),
                        "$JS.API.INFO".to_owned(),
                    ],
                    own_bucket_api(REGISTRY_BUCKET),
                    vec![
                        format!("$JS.API.DIRECT.GET.KV_{REGISTRY_BUCKET}.>"),
                        format!("$JS.API.CONSUMER.CREATE.KV_{REGISTRY_BUCKET}"),
                        format!("$JS.API.CONSUMER.CREATE.KV_{REGISTRY_BUCKET}.>"),
                    ],
                    own_bucket_api(REGISTRY_LEASE_BUCKET),
                    vec![format!("$JS.API.DIRECT.GET.KV_{REGISTRY_LEASE_BUCKET}.>")],
                    own_bucket_api(SESSIONS_BUCKET),
                    vec![own_direct_get(SESSIONS_BUCKET, &own)],
                ]
                .concat(),
                subscribe: vec![
                    format!("{any}.feeds.heartbeat"),
                    format!("{own}.ops.>"),
                    format!("{own}.api"),
                    format!("{own}.ping"),
                    format!("{own}.snapshot"),
                    format!("{own}.records"),
                    inbox,
                ],
                answers_requests: true,
            },
            Role::Monitor => Template {
                publish: vec![format!("{registry}.snapshot"), format!("{registry}.ping")],
                subscribe: vec![format!("{registry}.feeds.agent_operations"), inbox],
                answers_requests: false,
            },
            Role::Web => Template {
                publish: vec![
                    format!("{registry}.snapshot"),
                    format!("{registry}.ping"),
                    format!("{any}.ops.>"),
                    format!("{any}.api"),
                    format!("{any}.ping"),
                ],
                subscribe: vec![format!("{registry}.feeds.agent_operations"), inbox],
                answers_requests: false,
            },
            Role::Viewer => Template {
                publish: vec![
                    format!("{any}.ops.status.*"),
                    format!("{any}.ops.wait.*"),
                    format!("{any}.api"),
                    format!("{any}.ping"),
                    format!("{registry}.records"),
                ],
                subscribe: vec![format!("{any}.feeds.>"), inbox],
                answers_requests: false,
            },
            Role::Operator => Template {
                publish: vec![
                    format!("{any}.ops.>"),
                    format!("{any}.api"),
                    format!("{any}.ping"),
                    format!("{registry}.snapshot"),
                    format!("{registry}.records"),
                ],
                subscribe: vec![format!("{any}.feeds.>"), inbox],
                answers_requests: false,
            },
            Role::HostManager => Template {
                publish: Vec::new(),
                subscribe: vec![format!("{any}.feeds.heartbeat"), inbox],
                answers_requests: false,
            },
        }
    }
}

/// Looking up and creating a KV bucket's stream (creating one that exists
/// with the same settings is how clients open a bucket).
fn own_bucket_api(bucket: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.KV_{bucket}"),
        format!("$JS.API.STREAM.CREATE.KV_{bucket}"),
    ]
}

/// Reading one's own keys of `bucket` only: a direct get's subject ends
/// with the key.
fn own_direct_get(bucket: &str, own: &str) -> String {
    format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{own}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            root: AddressRoot::new("observatory").unwrap(),
            registry: InstanceId::new("registry").unwrap(),
        }
    }

    /// The quoted subjects of one `ROLE_… = { … }` block of the shipped
    /// permissions, publish first, then subscribe.
    fn shipped_block(role: &str) -> (Vec<String>, Vec<String>, bool) {
        let conf = include_str!("../../deploy/nats/permissions.conf");
        let start = conf
            .find(&format!("\n{role} = {{"))
            .unwrap_or_else(|| panic!("{role} is not in permissions.conf"));
        let block = &conf[start + 1..];
        let block = &block[..block.find("\n}").expect("block ends")];
        let subscribe_at = block.find("subscribe:").expect("subscribe rules");
        let quoted = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .flat_map(|line| line.split('"').skip(1).step_by(2))
                .map(str::to_owned)
                .collect()
        };
        (
            quoted(&block[..subscribe_at]),
            quoted(&block[subscribe_at..]),
            block.contains("allow_responses: true"),
        )
    }

    fn filled(template: &Template, name: &str) -> (Vec<String>, Vec<String>, bool) {
        let fill = |subjects: &[String]| {
            subjects
                .iter()
                .map(|subject| subject.replace(NAME, name))
                .collect()
        };
        (
            fill(&template.publish),
            fill(&template.subscribe),
            template.answers_requests,
        )
    }

    #[test]
    fn templates_grant_what_the_shipped_permissions_grant() {
        let site = site();
        for (role, block, name) in [
            (Role::Agent, "ROLE_AGENT_FAKER1", "faker1"),
            (Role::Agent, "ROLE_AGENT_PYFAKER", "pyfaker"),
            (Role::Registry, "ROLE_REGISTRY", "registry"),
            (Role::Monitor, "ROLE_MONITOR", "operation-monitor"),
            (Role::Web, "ROLE_WEB", "web"),
            (Role::Viewer, "ROLE_VIEWER", "viewer"),
            (Role::Operator, "ROLE_OPERATOR", "operator"),
        ] {
            assert_eq!(
                filled(&site.template(role), name),
                shipped_block(block),
                "{role} as {name}"
            );
        }
    }

    #[test]
    fn an_agent_is_confined_to_its_own_name() {
        let template = site().template(Role::Agent);
        for subject in template.publish.iter().chain(&template.subscribe) {
            assert!(
                subject.contains(NAME) || subject == "$JS.API.INFO" || !subject.contains('>'),
                "{subject} reaches beyond the agent's own subjects"
            );
            assert!(!subject.contains('*'), "{subject} has a wildcard token");
        }
    }

    #[test]
    fn the_site_is_written_into_the_templates() {
        let site = Site {
            root: AddressRoot::new("lab").unwrap(),
            registry: InstanceId::new("reg2").unwrap(),
        };
        let monitor = site.template(Role::Monitor);
        assert_eq!(
            monitor.subscribe[0], "lab.reg2.feeds.agent_operations",
            "{monitor:?}"
        );
        assert!(site.template(Role::Agent).publish[0].starts_with("lab.{{name()}}."));
    }
}
