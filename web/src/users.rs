//! The users file: who may log in to the board, and as what.
//!
//! One user a line, `name:role:hash`: the role `viewer` (sees everything,
//! controls nothing) or `operator` (also starts, stops, aborts and waits);
//! the hash an Argon2id PHC string, as `ocs-web hash-password` prints it, or
//! `-` for a user who only arrives through a trusted reverse proxy. Blank
//! lines and lines starting with `#` are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees every agent and session; controls nothing.
    Viewer,
    /// Also starts, stops, aborts and waits for operations.
    Operator,
}

impl Role {
    /// Whether this role may control operations.
    pub fn may_control(self) -> bool {
        self == Role::Operator
    }
}

/// One user of the file.
#[derive(Debug, Clone)]
pub struct User {
    /// The login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The PHC hash of the password, or `None` for proxy-only users.
    hash: Option<String>,
}

/// A users file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct UsersError {
    /// The file.
    pub file: PathBuf,
    /// The line (1-based; 0 when the file cannot be read).
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Every user, by name.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: BTreeMap<String, User>,
}

/// Verified against when the name is unknown, so that a wrong name costs as
/// long as a wrong password and names cannot be probed by timing.
static UNKNOWN_USER_HASH: LazyLock<String> = LazyLock::new(|| hash_password("no such user"));

impl Users {
    /// Reads and checks the users file at `path`.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|err| UsersError {
            file: path.to_owned(),
            line: 0,
            reason: format!("cannot read: {err}"),
        })?;
        Users::parse(path, &text)
    }

    /// Parses the text of a users file; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Users, UsersError> {
        let mut by_name = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let fail = |reason: String| UsersError {
                file: file.to_owned(),
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(fail("expected name:role:hash".into()));
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            {
                return Err(fail(format!(
                    "user name {name:?}: letters, digits and . _ - @ only"
                )));
            }
            let role = match role {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => return Err(fail(format!("role {other:?}: viewer or operator"))),
            };
            let hash = match hash {
                "-" => None,
                phc => {
                    PasswordHash::new(phc).map_err(|err| {
                        fail(format!("the hash of {name:?} is not a PHC string ({err}); make one with `ocs-web hash-password`"))
                    })?;
                    Some(phc.to_owned())
                }
            };
            let user = User {
                name: name.to_owned(),
                role,
                hash,
            };
            if by_name.insert(name.to_owned(), user).is_some() {
                return Err(fail(format!("user {name:?} is listed twice")));
            }
        }
        Ok(Users { by_name })
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// The user, if `password` is theirs. Deliberately slow (Argon2id),
    /// whether or not the user exists.
    pub fn verify(&self, name: &str, password: &str) -> Option<&User> {
        let user = self.by_name.get(name);
        let hash = user
            .and_then(|user| user.hash.as_deref())
            .unwrap_or(UNKNOWN_USER_HASH.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        user.filter(|user| matches && user.hash.is_some())
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there is nobody.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The PHC string of `password` with a fresh salt, for the users file.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with its default parameters hashes any password")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let text = format!(
            "# site users\n\nalice:operator:{}\nbob:viewer:{}\nproxied:viewer:-\n",
            hash_password("alice's secret"),
            hash_password("bob's secret")
        );
        Users::parse(Path::new("users"), &text).unwrap()
    }

    #[test]
    fn passwords_are_checked_against_their_hashes() {
        let users = users();
        assert_eq!(users.len(), 3);
        assert_eq!(
            users.verify("alice", "alice's secret").unwrap().role,
            Role::Operator
        );
        assert_eq!(
            users.verify("bob", "bob's secret").unwrap().role,
            Role::Viewer
        );
        assert!(users.verify("alice", "bob's secret").is_none());
        assert!(users.verify("nobody", "alice's secret").is_none());
        assert!(
            users.verify("proxied", "").is_none(),
            "no password login for proxy users"
        );
        assert_eq!(users.get("proxied").unwrap().role, Role::Viewer);
        assert!(Role::Operator.may_control() && !Role::Viewer.may_control());
    }

    #[test]
    fn a_bad_line_is_reported_with_file_line_and_reason() {
        let error = |text: &str| {
            Users::parse(Path::new("/etc/ocs/users"), text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("alice:operator"),
            "/etc/ocs/users:1: expected name:role:hash"
        );
        assert_eq!(
            error("# x\nalice:admin:-"),
            "/etc/ocs/users:2: role \"admin\": viewer or operator"
        );
        assert!(
            error("alice:viewer:plaintext")
                .starts_with("/etc/ocs/users:1: the hash of \"alice\" is not a PHC string")
        );
        assert_eq!(
            error("a:viewer:-\na:operator:-"),
            "/etc/ocs/users:2: user \"a\" is listed twice"
        );
        assert!(error("a b:viewer:-").contains("letters, digits"));
    }
}
