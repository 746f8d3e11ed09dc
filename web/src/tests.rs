//! The board's access rules through its router, without a browser or a
//! NATS server: who gets which page, and which requests are refused before
//! any agent is asked.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use parking_lot::Mutex;
use tower_service::Service;

use crate::access::{AccessSettings, CSRF_HEADER, SESSION_COOKIE, WebState};
use crate::metrics::WebMetrics;
use crate::sessions::Sessions;
use crate::users::{Users, hash_password};

/// A board whose NATS connection never comes up (nothing here reaches an agent).
async fn board(trusted_user_header: Option<&str>) -> WebState {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    let users = format!(
        "alice:operator:{}\nbob:viewer:{}\nproxied:operator:-\n",
        hash_password("alice's password"),
        hash_password("bob's password")
    );
    let (_, fleet) = ocs_fleet::fleet::small_fleet();
    WebState {
        fleet: Arc::new(Mutex::new(fleet)),
        changes: tokio::sync::watch::channel(0).1,
        client: ocs_agent::OcsClient::new(client, ocs_protocol::AddressRoot::default()),
        users: Arc::new(Users::parse(std::path::Path::new("users"), &users).unwrap()),
        sessions: Arc::new(Mutex::new(Sessions::new(Duration::from_secs(60), 10))),
        metrics: Arc::new(WebMetrics::new()),
        settings: Arc::new(AccessSettings {
            trusted_user_header: trusted_user_header.map(|name| name.try_into().unwrap()),
            secure_cookies: true,
            session_lifetime: Duration::from_secs(60),
            stale_after: Duration::from_secs(30),
            max_viewers: 4,
        }),
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

async fn call(state: &WebState, request: Request<Body>) -> axum::response::Response {
    crate::router(state.clone()).call(request).await.unwrap()
}

fn cookie_of(response: &axum::response::Response) -> String {
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}

async fn log_in(state: &WebState, user: &str, password: &str) -> axum::response::Response {
    let form = format!(
        "user={user}&password={}",
        password.replace(' ', "+").replace('\'', "%27")
    );
    call(
        state,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap(),
    )
    .await
}

fn start_request(cookie: Option<&str>, csrf: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/agents/faker1/ops/delay_task/start")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if let Some(csrf) = csrf {
        request = request.header(CSRF_HEADER, csrf);
    }
    request
        .body(Body::from(r#"{"params": {"delay": 1}}"#))
        .unwrap()
}

fn csrf_of(state: &WebState, cookie: &str) -> String {
    let token = cookie.trim_start_matches(&format!("{SESSION_COOKIE}="));
    state
        .sessions
        .lock()
        .get(token, tokio::time::Instant::now())
        .unwrap()
        .csrf
        .clone()
}

#[tokio::test]
async fn pages_and_data_need_a_login() {
    let state = board(None).await;
    let page = call(&state, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[header::LOCATION], "/login");
    for path in [
        "/api/me",
        "/api/events",
        "/api/agents/faker1",
        "/api/agents/faker1/ping",
    ] {
        let response = call(&state, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let login = call(&state, Request::get("/login").body(Body::empty()).unwrap()).await;
    assert_eq!(login.status(), StatusCode::OK);
    assert!(
        login.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let asset = call(
        &state,
        Request::get("/static/nothing.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(asset.status(), StatusCode::NOT_FOUND);
    let health = call(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        health.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no feed message yet"
    );
}

#[tokio::test]
async fn a_wrong_password_is_sent_back_and_counted() {
    let state = board(None).await;
    for (user, password) in [
        ("alice", "bob's password"),
        ("nobody", "alice's password"),
        ("proxied", ""),
    ] {
        let response = log_in(&state, user, password).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/login?failed=1");
        assert!(response.headers().get(header::SET_COOKIE).is_none());
    }
    let metrics = ocs_service::exposition::render(state.metrics.families(), None).1;
    assert!(
        metrics.contains("ocs_web_logins_total{outcome=\"refused\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn only_an_operator_with_the_csrf_token_gets_past_the_checks() {
    let state = board(None).await;
    let refused = |response: axum::response::Response| response.status();
    assert_eq!(
        refused(call(&state, start_request(None, None)).await),
        StatusCode::UNAUTHORIZED
    );

    let viewer = cookie_of(&log_in(&state, "bob", "bob's password").await);
    let viewer_csrf = csrf_of(&state, &viewer);
    assert_eq!(
        refused(call(&state, start_request(Some(&viewer), Some(&viewer_csrf))).await),
        StatusCode::FORBIDDEN,
        "a viewer may not start"
    );

    let operator = cookie_of(&log_in(&state, "alice", "alice's password").await);
    let operator_csrf = csrf_of(&state, &operator);
    assert_eq!(
        refused(call(&state, start_request(Some(&operator), None)).await),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        refused(call(&state, start_request(Some(&operator), Some(&viewer_csrf))).await),
        StatusCode::FORBIDDEN,
        "another session's token"
    );
    // With its own token the operator's start goes to the agent, which is
    // unreachable here: the board says so instead of refusing.
    assert_eq!(
        refused(call(&state, start_request(Some(&operator), Some(&operator_csrf))).await),
        StatusCode::BAD_GATEWAY
    );
    let metrics = ocs_service::exposition::render(state.metrics.families(), None).1;
    assert!(
        metrics.contains("ocs_web_actions_total{outcome=\"refused\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ocs_web_actions_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );

    // Logging out needs the token too, and ends the session.
    let logout = |csrf: Option<String>| {
        let mut request = Request::post("/logout").header(header::COOKIE, &operator);
        if let Some(csrf) = csrf {
            request = request.header(CSRF_HEADER, csrf);
        }
        request.body(Body::empty()).unwrap()
    };
    assert_eq!(
        call(&state, logout(None)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&state, logout(Some(operator_csrf))).await.status(),
        StatusCode::NO_CONTENT
    );
    let me = Request::get("/api/me")
        .header(header::COOKIE, &operator)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&state, me).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn behind_a_trusted_proxy_its_header_names_the_user() {
    let state = board(Some("x-remote-user")).await;
    let page = call(
        &state,
        Request::get("/")
            .header("x-remote-user", "proxied")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let cookie = cookie_of(&page);
    let me = |user: &str| {
        Request::get("/api/me")
            .header(header::COOKIE, &cookie)
            .header("x-remote-user", user)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(call(&state, me("proxied")).await.status(), StatusCode::OK);
    assert_eq!(
        call(&state, me("alice")).await.status(),
        StatusCode::UNAUTHORIZED,
        "the session is the proxied user's, not whoever the header names next"
    );
    let stranger = call(
        &state,
        Request::get("/")
            .header("x-remote-user", "mallory")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        stranger.status(),
        StatusCode::SEE_OTHER,
        "not in the users file"
    );
    assert_eq!(state.sessions.lock().len(), 1);
}
