//! The host manager's `/metrics` and `/healthz`: every child's state,
//! restarts and crash loop, encoded at scrape time from the manager's last
//! report (children taken out of the site file leave no series).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ocs_service::exposition::{encode_gauges, render};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Every state a child can be in, for the state gauge.
pub const CHILD_STATES: [&str; 7] = [
    "down",
    "starting",
    "up",
    "restarting",
    "crash-loop",
    "conflict",
    "stopping",
];

/// One child as the metrics show it.
#[derive(Debug, Clone)]
pub struct ChildSample {
    /// Instance id.
    pub instance_id: String,
    /// Agent class.
    pub agent_class: String,
    /// One of [`CHILD_STATES`].
    pub state: &'static str,
    /// Target up (true) or down.
    pub target_up: bool,
    /// Left alone for maintenance.
    pub frozen: bool,
    /// Restarts after crashes.
    pub restarts: u64,
    /// Failing again and again.
    pub crash_loop: bool,
}

#[derive(Debug, Default)]
struct Report {
    children: Vec<ChildSample>,
    config_ok: bool,
    at: Option<Instant>,
}

/// What the manager last reported; shared with the HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct ManagerReport(Arc<Mutex<Report>>);

impl ManagerReport {
    /// Replaces the report (the manager does it on every pass).
    pub fn update(&self, children: Vec<ChildSample>, config_ok: bool) {
        *self.0.lock() = Report {
            children,
            config_ok,
            at: Some(Instant::now()),
        };
    }
}

#[derive(Debug)]
struct ChildrenCollector(ManagerReport);

impl Collector for ChildrenCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.0.0.lock();
        let labels = |child: &ChildSample| {
            vec![
                ("instance", child.instance_id.clone()),
                ("agent_class", child.agent_class.clone()),
            ]
        };
        encode_gauges(
            &mut encoder,
            "ocs_host_manager_child_state",
            "1 for each managed instance's current state (down, starting, up, restarting, crash-loop, conflict, stopping), 0 for the others",
            report.children.iter().flat_map(|child| {
                CHILD_STATES.iter().map(move |state| {
                    let mut labels = labels(child);
                    labels.push(("state", (*state).to_owned()));
                    (labels, i64::from(child.state == *state))
                })
            }),
        )?;
        encode_gauges(
            &mut encoder,
            "ocs_host_manager_child_crash_loop",
            "1 while the instance fails again and again without a stable run",
            report
                .children
                .iter()
                .map(|child| (labels(child), i64::from(child.crash_loop))),
        )?;
        encode_gauges(
            &mut encoder,
            "ocs_host_manager_child_target_up",
            "1 when the instance should run, 0 when it should be stopped",
            report
                .children
                .iter()
                .map(|child| (labels(child), i64::from(child.target_up))),
        )?;
        encode_gauges(
            &mut encoder,
            "ocs_host_manager_child_frozen",
            "1 while the instance is frozen (neither restarted nor stopped)",
            report
                .children
                .iter()
                .map(|child| (labels(child), i64::from(child.frozen))),
        )?;
        let mut restarts = encoder.encode_descriptor(
            "ocs_host_manager_child_restarts",
            "Restarts of the instance after it exited unexpectedly",
            None,
            MetricType::Counter,
        )?;
        for child in &report.children {
            ConstCounter::new(child.restarts).encode(restarts.encode_family(&labels(child))?)?;
        }
        encode_gauges(
            &mut encoder,
            "ocs_host_manager_config_ok",
            "1 while the last site-file load succeeded, 0 while the manager runs on the last good one",
            std::iter::once((Vec::new(), i64::from(report.config_ok))),
        )
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    report: ManagerReport,
}

/// How long the manager may go without a pass before `/healthz` fails.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// `/metrics` (classic text, or OpenMetrics when asked) and `/healthz` (200
/// while the manager process runs and reports, 503 otherwise).
pub fn router(report: ManagerReport) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ChildrenCollector(report.clone())));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(HttpState {
            registry: Arc::new(registry),
            report,
        })
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = render(&state.registry, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.report.0.lock().at {
        Some(at) if at.elapsed() <= STALE_AFTER => (StatusCode::OK, "ok\n"),
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the manager process has stopped reporting\n",
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the manager process is not running\n",
        ),
    }
}
