//! `/api/events`: the board as server-sent events. A `fleet` event with the
//! whole fleet first, then one with what changed (changes arriving together
//! are sent together, at most every [`COALESCE`]), and a `health` event
//! every second saying whether the board's data can be trusted.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use futures::Stream;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use crate::access::WebState;
use crate::board::BoardUpdate;

/// Changes within this time of the first one are sent in one event: a page
/// keeps up with thousands of changes a second at a few events a second.
pub const COALESCE: Duration = Duration::from_millis(200);
/// How often the page hears whether its data is fresh.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Whether the board's data can be trusted, and the server's clock (the
/// page ages heartbeats against it, not against its own).
#[derive(Debug, Serialize)]
pub struct Health {
    /// Unix seconds on the server.
    pub now: f64,
    /// Seconds since the last feed message, if any came.
    pub feed_age: Option<f64>,
    /// Whether the registry answered its last probe.
    pub registry_reachable: bool,
    /// Whether the board is connected to NATS.
    pub nats_connected: bool,
    /// Whether the board should say its data is stale.
    pub stale: bool,
}

fn health(state: &WebState) -> Health {
    let now = tokio::time::Instant::now();
    let (feed_age, fresh) = {
        let fleet = state.fleet.lock();
        (
            fleet
                .last_message()
                .map(|at| now.duration_since(at).as_secs_f64()),
            fleet.freshness(now, state.settings.stale_after).is_ok(),
        )
    };
    let feed = state.metrics.feed();
    let registry_reachable = feed.registry_reachable();
    let nats_connected = feed.nats_connected();
    Health {
        now: chrono::Utc::now().timestamp_micros() as f64 / 1e6,
        feed_age,
        registry_reachable,
        nats_connected,
        stale: !registry_reachable || !nats_connected || !fresh,
    }
}

/// The `fleet` event a page that has seen `seen` needs, if any, and the
/// revision it brings the page to.
fn fleet_event(state: &WebState, seen: Option<u64>) -> Option<(u64, Event)> {
    let fleet = state.fleet.lock();
    let update = BoardUpdate::since(&fleet, seen)?;
    let event = Event::default()
        .event("fleet")
        .json_data(&update)
        .expect("a board update serialises");
    Some((update.revision, event))
}

fn health_event(state: &WebState) -> Event {
    Event::default()
        .event("health")
        .json_data(health(state))
        .expect("health serialises")
}

/// One browser following the board; counted in the viewers gauge while it lasts.
struct Follower {
    state: WebState,
    changes: watch::Receiver<u64>,
    seen: Option<u64>,
    health_ticks: Option<Interval>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.state.metrics.viewers().dec();
    }
}

impl Follower {
    fn new(state: WebState) -> Self {
        state.metrics.viewers().inc();
        Follower {
            changes: state.changes.clone(),
            state,
            seen: None,
            health_ticks: None,
        }
    }

    /// The next event, or `None` at shutdown.
    async fn next(&mut self) -> Option<Event> {
        let Some(ticks) = self.health_ticks.as_mut() else {
            // First the whole fleet, then health every second.
            self.changes.borrow_and_update();
            let (revision, event) =
                fleet_event(&self.state, None).expect("a first update is always sent");
            self.seen = Some(revision);
            let mut ticks = tokio::time::interval(HEALTH_EVERY);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.health_ticks = Some(ticks);
            return Some(event);
        };
        loop {
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                _ = ticks.tick() => return Some(health_event(&self.state)),
                changed = self.changes.changed() => {
                    changed.ok()?;
                    tokio::time::sleep(COALESCE).await;
                    self.changes.borrow_and_update();
                    if let Some((revision, event)) = fleet_event(&self.state, self.seen) {
                        self.seen = Some(revision);
                        return Some(event);
                    }
                }
            }
        }
    }
}

fn stream(state: WebState) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Follower::new(state), |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok(event), follower))
    })
}

/// `GET /api/events`.
pub async fn events(State(state): State<WebState>, jar: CookieJar, headers: HeaderMap) -> Response {
    if state.visitor(&jar, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if state.metrics.viewers().get() >= state.settings.max_viewers as i64 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many browsers follow the board\n",
        )
            .into_response();
    }
    Sse::new(stream(state))
        .keep_alive(KeepAlive::default())
        .into_response()
}
