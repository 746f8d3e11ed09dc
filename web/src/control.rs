//! An agent's page data (`api`, `ping`) and control of its operations:
//! start, stop, abort and wait for operators, with the CSRF token, each
//! logged as an audit line; `status` for everyone logged in.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use ocs_protocol::{Action, InstanceId, OpName, ResponseCode, codec, json};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::access::{Visitor, WebState};
use crate::metrics::Outcome;

/// How long an agent has to answer `api`, `ping`, `start`, `stop`, `abort`
/// and `status`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `wait` a page may ask for.
pub const MAX_WAIT: f64 = 3600.0;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Why a request is not answered, before any agent is asked.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn visitor(state: &WebState, jar: &CookieJar, headers: &HeaderMap) -> Result<Visitor, Refusal> {
    state
        .visitor(jar, headers)
        .ok_or_else(|| Refusal(StatusCode::UNAUTHORIZED, "log in first".into()))
}

/// The agent a logged-in visitor asks about.
fn readable_agent(
    state: &WebState,
    jar: &CookieJar,
    headers: &HeaderMap,
    instance_id: &str,
) -> Result<InstanceId, Refusal> {
    visitor(state, jar, headers)?;
    InstanceId::new(instance_id).map_err(|err| Refusal(StatusCode::BAD_REQUEST, err.to_string()))
}

/// `GET /api/agents/{instance_id}`: the agent's `api` (identity, operations
/// with their docs and params, each with its last session).
pub async fn api(
    State(state): State<WebState>,
    Path(instance_id): Path<String>,
    jar: CookieJar,
    headers: HeaderMap,
) -> Response {
    let instance_id = match readable_agent(&state, &jar, &headers, &instance_id) {
        Ok(instance_id) => instance_id,
        Err(refusal) => return refusal.into_response(),
    };
    match state.client.api(&instance_id, REQUEST_TIMEOUT).await {
        Ok(reply) => match json::api(&reply) {
            Ok(value) => Json(value).into_response(),
            Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
        },
        Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

/// `GET /api/agents/{instance_id}/ping`: round trip, incarnation, uptime, version.
pub async fn ping(
    State(state): State<WebState>,
    Path(instance_id): Path<String>,
    jar: CookieJar,
    headers: HeaderMap,
) -> Response {
    let instance_id = match readable_agent(&state, &jar, &headers, &instance_id) {
        Ok(instance_id) => instance_id,
        Err(refusal) => return refusal.into_response(),
    };
    let sent = Instant::now();
    match state.client.ping(&instance_id, REQUEST_TIMEOUT).await {
        Ok(reply) => Json(serde_json::json!({
            "round_trip_ms": sent.elapsed().as_secs_f64() * 1000.0,
            "agent_address": reply.agent_address,
            "incarnation": reply.incarnation,
            "uptime": reply.uptime_ms as f64 / 1000.0,
            "version": reply.agent_version,
        }))
        .into_response(),
        Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

/// The body of an action.
#[derive(Debug, Default, Deserialize)]
pub struct ActionBody {
    /// `start`'s params.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// `wait`'s limit in seconds (10 when absent).
    pub timeout: Option<f64>,
}

/// `POST /api/agents/{instance_id}/ops/{op_name}/{action}`: the agent's reply
/// as OCS shapes it (`status`, `message`, `session`).
pub async fn operation(
    State(state): State<WebState>,
    Path((instance_id, op_name, action)): Path<(String, String, String)>,
    jar: CookieJar,
    headers: HeaderMap,
    body: Option<Json<ActionBody>>,
) -> Response {
    let visitor = match visitor(&state, &jar, &headers) {
        Ok(visitor) => visitor,
        Err(refusal) => {
            state.metrics.action(Outcome::refused);
            warn!(target: "ocs_web::audit", agent = %instance_id, operation = %op_name, action = %action, "action refused: not logged in");
            return refusal.into_response();
        }
    };
    let Json(body) = body.unwrap_or_default();
    let params = Value::Object(body.params.clone());
    let audit_refusal = |reason: &str| {
        state.metrics.action(Outcome::refused);
        warn!(target: "ocs_web::audit", user = %visitor.user(), role = ?visitor.role(), agent = %instance_id,
              operation = %op_name, action = %action, params = %params, "action refused: {reason}");
    };
    let Some(parsed_action) = Action::parse(&action) else {
        audit_refusal("unknown action");
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown action {action:?}: start, stop, abort, wait or status"),
        );
    };
    if parsed_action != Action::Status && !visitor.role().may_control() {
        audit_refusal("the user is a viewer");
        return error(StatusCode::FORBIDDEN, "viewers may not control operations");
    }
    if !WebState::csrf_ok(&visitor, &headers) {
        audit_refusal("no or a wrong CSRF token");
        return error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: reload the page",
        );
    }
    let (instance, op) = match (
        InstanceId::new(instance_id.as_str()),
        OpName::new(op_name.as_str()),
    ) {
        (Ok(instance), Ok(op)) => (instance, op),
        (Err(err), _) | (_, Err(err)) => {
            audit_refusal("bad name");
            return error(StatusCode::BAD_REQUEST, err.to_string());
        }
    };
    if parsed_action != Action::Start && !body.params.is_empty() {
        audit_refusal("params for an action other than start");
        return error(StatusCode::BAD_REQUEST, "params are only accepted by start");
    }
    let encoded = if body.params.is_empty() {
        Vec::new()
    } else {
        match codec::to_msgpack(&body.params) {
            Ok(encoded) => encoded,
            Err(err) => {
                audit_refusal("unencodable params");
                return error(StatusCode::BAD_REQUEST, err.to_string());
            }
        }
    };
    let wait =
        (parsed_action == Action::Wait).then(|| body.timeout.unwrap_or(10.0).clamp(0.0, MAX_WAIT));
    let result = state
        .client
        .operation(
            &instance,
            &op,
            parsed_action,
            encoded,
            wait,
            REQUEST_TIMEOUT,
        )
        .await;
    match result.map_err(|err| err.to_string()).and_then(|reply| {
        json::reply(&reply)
            .map(|value| (reply.status, reply.message, value))
            .map_err(|err| err.to_string())
    }) {
        Ok((status, message, value)) => {
            state.metrics.action(Outcome::ok);
            let result = ResponseCode::from_value(status).map_or("?", ResponseCode::name);
            info!(target: "ocs_web::audit", user = %visitor.user(), role = ?visitor.role(), agent = %instance_id,
                  operation = %op_name, action = %action, params = %params, result, message = %message, "action");
            Json(value).into_response()
        }
        Err(reason) => {
            state.metrics.action(Outcome::failed);
            warn!(target: "ocs_web::audit", user = %visitor.user(), role = ?visitor.role(), agent = %instance_id,
                  operation = %op_name, action = %action, params = %params, error = %reason, "action failed");
            error(StatusCode::BAD_GATEWAY, reason)
        }
    }
}
