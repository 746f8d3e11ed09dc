//! Who is asking: the board's shared state, and the visitor a request
//! comes from (its session cookie, or a trusted proxy's header).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use ocs_agent::client::OcsClient;
use ocs_fleet::SharedFleet;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::WebMetrics;
use crate::sessions::{Session, Sessions};
use crate::users::{Role, Users};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ocs_session";
/// The header an action carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Everything the handlers share.
#[derive(Clone)]
pub struct WebState {
    /// The fleet, kept current by the feed loop.
    pub fleet: SharedFleet,
    /// The fleet's revision after each change.
    pub changes: watch::Receiver<u64>,
    /// Requests to agents.
    pub client: OcsClient,
    /// Who may log in.
    pub users: Arc<Users>,
    /// Who is logged in.
    pub sessions: Arc<Mutex<Sessions>>,
    /// Metrics, the feed's among them.
    pub metrics: Arc<WebMetrics>,
    /// Settings the handlers need.
    pub settings: Arc<AccessSettings>,
    /// Cancelled at shutdown: open event streams end.
    pub shutdown: CancellationToken,
}

/// The access settings of [`crate::Config`].
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The trusted proxy's user header, if the board is behind one.
    pub trusted_user_header: Option<HeaderName>,
    /// Whether the cookie is marked `Secure`.
    pub secure_cookies: bool,
    /// How long a login lasts.
    pub session_lifetime: Duration,
    /// Feed silence after which the board is stale.
    pub stale_after: Duration,
    /// Most browsers following the board.
    pub max_viewers: usize,
}

/// A request's authenticated visitor.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The session token (the cookie's value).
    pub token: String,
    /// The session.
    pub session: Session,
}

impl Visitor {
    /// The user's name.
    pub fn user(&self) -> &str {
        &self.session.user
    }

    /// The user's role.
    pub fn role(&self) -> Role {
        self.session.role
    }
}

impl WebState {
    /// The visitor of a request, if it carries a live session (whose user
    /// matches the trusted proxy's header, behind one).
    pub fn visitor(&self, jar: &CookieJar, headers: &HeaderMap) -> Option<Visitor> {
        let token = jar.get(SESSION_COOKIE)?.value().to_owned();
        let session = self.sessions.lock().get(&token, Instant::now())?.clone();
        if self.settings.trusted_user_header.is_some()
            && self.proxy_user(headers).as_deref() != Some(session.user.as_str())
        {
            return None;
        }
        Some(Visitor { token, session })
    }

    /// Behind a trusted proxy: the user its header names, if in the users file.
    pub fn proxy_user(&self, headers: &HeaderMap) -> Option<String> {
        let header = self.settings.trusted_user_header.as_ref()?;
        let name = headers.get(header)?.to_str().ok()?;
        self.users.get(name).map(|user| user.name.clone())
    }

    /// Opens a session for `user` and returns the cookie that carries it.
    pub fn open_session(&self, user: &str, role: Role) -> Cookie<'static> {
        let token = self.sessions.lock().open(user, role, Instant::now());
        Cookie::build((SESSION_COOKIE, token))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.settings.secure_cookies)
            // No expiry in the cookie: the server ends the session.
            .build()
    }

    /// Whether the request carries the session's CSRF token.
    pub fn csrf_ok(visitor: &Visitor, headers: &HeaderMap) -> bool {
        headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|token| visitor.session.csrf_matches(token))
    }
}
