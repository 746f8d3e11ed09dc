//! Logged-in browsers: a random session token in a cookie maps to the user,
//! their role and the CSRF token every action must carry. No I/O but the
//! operating system's random numbers; callers pass the monotonic `now`.

use std::collections::HashMap;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::users::Role;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub user: String,
    /// What they may do.
    pub role: Role,
    /// The token actions carry in `X-CSRF-Token`; the page reads it from
    /// `/api/me`, which another site cannot read.
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether `token` is this session's CSRF token (in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// Every live session, by cookie token.
#[derive(Debug)]
pub struct Sessions {
    by_token: HashMap<String, Session>,
    lifetime: Duration,
    most: usize,
}

impl Sessions {
    /// Sessions that last `lifetime` from login, at most `most` at once (the
    /// oldest go first).
    pub fn new(lifetime: Duration, most: usize) -> Self {
        Sessions {
            by_token: HashMap::new(),
            lifetime,
            most: most.max(1),
        }
    }

    /// Opens a session for `user`; returns its cookie token.
    pub fn open(&mut self, user: &str, role: Role, now: Instant) -> String {
        self.by_token.retain(|_, session| session.expires > now);
        while self.by_token.len() >= self.most {
            let oldest = self
                .by_token
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(token, _)| token.clone())
                .expect("not empty");
            self.by_token.remove(&oldest);
        }
        let token = random_token();
        self.by_token.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                role,
                csrf: random_token(),
                expires: now + self.lifetime,
            },
        );
        token
    }

    /// The session of `token`, while it has not expired.
    pub fn get(&self, token: &str, now: Instant) -> Option<&Session> {
        self.by_token
            .get(token)
            .filter(|session| session.expires > now)
    }

    /// Ends the session of `token`.
    pub fn close(&mut self, token: &str) {
        self.by_token.remove(token);
    }

    /// How many sessions are open (expired ones included until the next login).
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

/// 256 random bits from the operating system, as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random numbers");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_it_expires_or_is_closed() {
        let mut sessions = Sessions::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let token = sessions.open("alice", Role::Operator, now);
        assert_eq!(token.len(), 64);
        let session = sessions.get(&token, now).unwrap();
        assert_eq!(
            (session.user.as_str(), session.role),
            ("alice", Role::Operator)
        );
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(
            !session.csrf_matches(&token),
            "the cookie is not the CSRF token"
        );
        assert!(
            sessions
                .get(&token, now + Duration::from_secs(61))
                .is_none()
        );
        let other = sessions.open("bob", Role::Viewer, now);
        sessions.close(&other);
        assert!(sessions.get(&other, now).is_none());
        assert!(sessions.get("guess", now).is_none());
    }

    #[test]
    fn the_oldest_session_goes_when_too_many_are_open() {
        let mut sessions = Sessions::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        let first = sessions.open("a", Role::Viewer, now);
        let second = sessions.open("b", Role::Viewer, now + Duration::from_secs(1));
        let third = sessions.open("c", Role::Viewer, now + Duration::from_secs(2));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.get(&first, now).is_none());
        assert!(sessions.get(&second, now).is_some() && sessions.get(&third, now).is_some());
    }
}
