//! The board's own metrics, beside the feed's (`ocs_web_feed_…`).

use std::sync::Arc;

use ocs_fleet::FeedMetrics;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricFamilies;

/// How a login or an action ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Done (for an action: the agent answered, whatever it answered).
    ok,
    /// Wrong name or password; no session; not allowed for the role; no or
    /// a wrong CSRF token.
    refused,
    /// The agent did not answer, or the request was malformed.
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

/// Every family `/metrics` serves.
#[derive(Debug)]
pub struct WebMetrics {
    families: MetricFamilies,
    feed: Arc<FeedMetrics>,
    logins: Family<OutcomeLabel, Counter>,
    actions: Family<OutcomeLabel, Counter>,
    viewers: Gauge,
}

impl WebMetrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut families = MetricFamilies::default();
        let feed = Arc::new(FeedMetrics::register("ocs_web", &mut families));
        let logins = Family::<OutcomeLabel, Counter>::default();
        let actions = Family::<OutcomeLabel, Counter>::default();
        let viewers = Gauge::default();
        families.register(
            "ocs_web_logins",
            "Login attempts, by outcome",
            logins.clone(),
        );
        families.register(
            "ocs_web_actions",
            "Control actions (start, stop, abort, wait), by outcome",
            actions.clone(),
        );
        families.register(
            "ocs_web_viewers",
            "Browsers following the board now",
            viewers.clone(),
        );
        for outcome in [Outcome::ok, Outcome::refused, Outcome::failed] {
            let _ = logins.get_or_create(&OutcomeLabel { outcome });
            let _ = actions.get_or_create(&OutcomeLabel { outcome });
        }
        WebMetrics {
            families,
            feed,
            logins,
            actions,
            viewers,
        }
    }

    /// What the feed loop reports.
    pub fn feed(&self) -> Arc<FeedMetrics> {
        self.feed.clone()
    }

    /// Counts a login attempt.
    pub fn login(&self, outcome: Outcome) {
        self.logins.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a control action.
    pub fn action(&self, outcome: Outcome) {
        self.actions.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The gauge of browsers following the board.
    pub fn viewers(&self) -> &Gauge {
        &self.viewers
    }

    /// Every family, for rendering.
    pub fn families(&self) -> &MetricFamilies {
        &self.families
    }
}

impl Default for WebMetrics {
    fn default() -> Self {
        Self::new()
    }
}
