//! Validated names: address roots, instance ids, operation and feed names.
//!
//! Each is one NATS subject token, so that an address can never inject extra
//! tokens or wildcards into a subject.

use std::fmt;

/// Longest accepted token; NATS has no limit, but ours keeps subjects readable and bounded.
pub const MAX_TOKEN_LEN: usize = 128;

/// Default address root, as in OCS.
pub const DEFAULT_ADDRESS_ROOT: &str = "observatory";

/// Why a name is not a valid token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What the name names (e.g. "instance id").
        kind: &'static str,
    },
    /// The name is longer than [`MAX_TOKEN_LEN`].
    #[error("{kind} {name:?} is longer than {MAX_TOKEN_LEN} characters")]
    TooLong {
        /// What the name names.
        kind: &'static str,
        /// The rejected name.
        name: String,
    },
    /// The name holds a character that is not allowed in a NATS token.
    #[error(
        "{kind} {name:?} contains {bad:?}; use letters, digits, '-' and '_' only (no dots, spaces or wildcards)"
    )]
    BadCharacter {
        /// What the name names.
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// The first offending character.
        bad: char,
    },
    /// An address does not have the form `{root}.{instance_id}`.
    #[error("agent address {0:?} is not of the form <address-root>.<instance-id>")]
    BadAddress(String),
}

/// Checks that `name` is a single subject token of letters, digits, `-` and `_`.
///
/// This is stricter than NATS itself: it keeps names portable to Prometheus
/// labels, file names and OCS field names.
pub fn validate_token(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_TOKEN_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
            bad,
        });
    }
    Ok(())
}

macro_rules! token_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// What an error calls such a name.
            pub const KIND: &'static str = $kind;

            /// Validates and wraps `name`.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate_token(Self::KIND, &name)?;
                Ok(Self(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

token_newtype!(
    /// The first token of every address (`observatory` by default).
    AddressRoot,
    "address root"
);
token_newtype!(
    /// The name of one agent instance, unique within an address root.
    InstanceId,
    "instance id"
);
token_newtype!(
    /// The name of a task or process.
    OpName,
    "operation name"
);
token_newtype!(
    /// The name of a feed.
    FeedName,
    "feed name"
);

impl Default for AddressRoot {
    fn default() -> Self {
        Self(DEFAULT_ADDRESS_ROOT.to_owned())
    }
}

/// `{address_root}.{instance_id}`, the identity of an agent on the bus.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentAddress {
    full: String,
    root_len: usize,
}

impl AgentAddress {
    /// Joins a root and an instance id.
    pub fn new(root: &AddressRoot, instance_id: &InstanceId) -> Self {
        Self {
            full: format!("{root}.{instance_id}"),
            root_len: root.as_str().len(),
        }
    }

    /// Parses `{root}.{instance_id}`, validating both tokens.
    pub fn parse(address: &str) -> Result<Self, NameError> {
        let root_len = Self::check(address)?;
        Ok(Self {
            full: address.to_owned(),
            root_len,
        })
    }

    /// Checks that `address` is `{root}.{instance_id}` with both tokens
    /// valid, without copying it (every heartbeat the registry receives is
    /// checked); returns the root's length.
    pub fn check(address: &str) -> Result<usize, NameError> {
        let (root, instance_id) = address
            .split_once('.')
            .ok_or_else(|| NameError::BadAddress(address.to_owned()))?;
        validate_token(AddressRoot::KIND, root)?;
        validate_token(InstanceId::KIND, instance_id)?;
        Ok(root.len())
    }

    /// The full address.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The address root part.
    pub fn root(&self) -> &str {
        &self.full[..self.root_len]
    }

    /// The instance id part.
    pub fn instance_id(&self) -> &str {
        &self.full[self.root_len + 1..]
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ocs_style_names() {
        for name in ["faker", "fake-hk-agent-01", "LS240_1", "a"] {
            assert!(InstanceId::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_dots_spaces_wildcards_and_empty() {
        let cases = [
            (
                "",
                NameError::Empty {
                    kind: "instance id",
                },
            ),
            (
                "a.b",
                NameError::BadCharacter {
                    kind: "instance id",
                    name: "a.b".into(),
                    bad: '.',
                },
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(InstanceId::new(name).unwrap_err(), expected);
        }
        for name in ["a b", "*", ">", "a*", "x>y", "tab\t", "é"] {
            assert!(
                matches!(InstanceId::new(name), Err(NameError::BadCharacter { .. })),
                "{name:?}"
            );
        }
        assert!(matches!(
            InstanceId::new("x".repeat(MAX_TOKEN_LEN + 1)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn address_round_trips() {
        let address = AgentAddress::parse("observatory.faker").unwrap();
        assert_eq!(address.root(), "observatory");
        assert_eq!(address.instance_id(), "faker");
        assert_eq!(address.to_string(), "observatory.faker");
        assert!(matches!(
            AgentAddress::parse("observatory"),
            Err(NameError::BadAddress(_))
        ));
        assert!(AgentAddress::parse("observatory.a.b").is_err());
    }
}
