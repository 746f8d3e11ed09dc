//! The pages, their assets, logging in and out, and `/healthz` and `/metrics`.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use serde::Deserialize;
use tracing::{info, warn};

use crate::access::{SESSION_COOKIE, WebState};
use crate::metrics::Outcome;

const BOARD_HTML: &str = include_str!("../assets/board.html");
const AGENT_HTML: &str = include_str!("../assets/agent.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const COMMON_JS: &str = include_str!("../assets/common.js");
const BOARD_JS: &str = include_str!("../assets/board.js");
const AGENT_JS: &str = include_str!("../assets/agent.js");

/// An HTML page with the headers that keep it from being framed, sniffed,
/// cached or fed scripts from elsewhere.
fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body,
    )
        .into_response()
}

/// A page for visitors with a session: behind a trusted proxy one is
/// opened for its user; anyone else is sent to log in.
fn page(state: &WebState, jar: CookieJar, headers: &HeaderMap, body: &'static str) -> Response {
    if state.visitor(&jar, headers).is_some() {
        return html(body);
    }
    if let Some(name) = state.proxy_user(headers)
        && let Some(user) = state.users.get(&name)
    {
        info!(target: "ocs_web::audit", user = %user.name, role = ?user.role, "session opened for the proxy's user");
        let cookie = state.open_session(&user.name, user.role);
        return (jar.add(cookie), html(body)).into_response();
    }
    Redirect::to("/login").into_response()
}

/// `/`: the board.
pub async fn board(State(state): State<WebState>, jar: CookieJar, headers: HeaderMap) -> Response {
    page(&state, jar, &headers, BOARD_HTML)
}

/// `/agent/{instance_id}`: one agent.
pub async fn agent(State(state): State<WebState>, jar: CookieJar, headers: HeaderMap) -> Response {
    page(&state, jar, &headers, AGENT_HTML)
}

/// `GET /login`.
pub async fn login_page() -> Response {
    html(LOGIN_HTML)
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
}

/// `POST /login`: a session cookie for the right password, back to the form otherwise.
pub async fn login(
    State(state): State<WebState>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Response {
    let users = state.users.clone();
    let name = form.user.clone();
    // Argon2 takes tens of milliseconds of CPU on purpose: off the async workers.
    let verified = tokio::task::spawn_blocking(move || {
        users
            .verify(&form.user, &form.password)
            .map(|user| (user.name.clone(), user.role))
    })
    .await
    .ok()
    .flatten();
    match verified {
        Some((user, role)) => {
            state.metrics.login(Outcome::ok);
            info!(target: "ocs_web::audit", user = %user, role = ?role, "logged in");
            let cookie = state.open_session(&user, role);
            (jar.add(cookie), Redirect::to("/")).into_response()
        }
        None => {
            state.metrics.login(Outcome::refused);
            warn!(target: "ocs_web::audit", user = %name, "login refused: wrong name or password");
            Redirect::to("/login?failed=1").into_response()
        }
    }
}

/// `POST /logout` (with the CSRF token).
pub async fn logout(State(state): State<WebState>, jar: CookieJar, headers: HeaderMap) -> Response {
    let Some(visitor) = state.visitor(&jar, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if !WebState::csrf_ok(&visitor, &headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    state.sessions.lock().close(&visitor.token);
    info!(target: "ocs_web::audit", user = %visitor.user(), "logged out");
    (
        jar.remove(Cookie::build(SESSION_COOKIE).path("/")),
        StatusCode::NO_CONTENT,
    )
        .into_response()
}

/// `/api/me`: who the page is logged in as, and the CSRF token its actions carry.
pub async fn me(State(state): State<WebState>, jar: CookieJar, headers: HeaderMap) -> Response {
    match state.visitor(&jar, &headers) {
        Some(visitor) => axum::Json(serde_json::json!({
            "user": visitor.user(),
            "role": visitor.role(),
            "may_control": visitor.role().may_control(),
            "csrf": visitor.session.csrf,
        }))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// `/static/{name}`: the pages' styles and scripts, built into the binary.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "common.js" => ("text/javascript; charset=utf-8", COMMON_JS),
        "board.js" => ("text/javascript; charset=utf-8", BOARD_JS),
        "agent.js" => ("text/javascript; charset=utf-8", AGENT_JS),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `/healthz`: 200 while a feed message arrived within the stale limit.
pub async fn healthz(State(state): State<WebState>) -> Response {
    let freshness = state
        .fleet
        .lock()
        .freshness(tokio::time::Instant::now(), state.settings.stale_after);
    match freshness {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// `/metrics`.
pub async fn metrics(State(state): State<WebState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = ocs_service::exposition::render(state.metrics.families(), accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
