//! The server's refusals as a client sees them: a permissions violation
//! comes back as an asynchronous server error, and a refused subscription
//! stays silent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use crate::eventually;

/// The server errors a client has been sent, in order.
pub type ServerErrors = Arc<Mutex<Vec<String>>>;

/// Connects with `options`, noting every server error sent to the client.
pub async fn connect_noting_server_errors(
    url: &str,
    options: async_nats::ConnectOptions,
) -> (async_nats::Client, ServerErrors) {
    let errors = ServerErrors::default();
    let seen = errors.clone();
    let client = options
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    seen.lock().unwrap().push(err.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
    (client, errors)
}

/// Waits until the server has refused a publish to `subject`.
pub async fn publish_refused(errors: &Mutex<Vec<String>>, subject: &str) {
    let refusal = format!("Publish to \"{subject}\"");
    violation(errors, &refusal).await;
}

/// Waits until the server has refused the subscription to `subject`, then
/// holds that nothing arrives on it.
pub async fn subscription_refused(
    errors: &Mutex<Vec<String>>,
    subject: &str,
    subscription: &mut async_nats::Subscriber,
) {
    violation(errors, &format!("Subscription to \"{subject}\"")).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), subscription.next())
            .await
            .map_or(true, |message| message.is_none()),
        "a message arrived on {subject}, whose subscription was refused"
    );
}

async fn violation(errors: &Mutex<Vec<String>>, refusal: &str) {
    eventually(
        Duration::from_secs(5),
        &format!("a permissions violation: {refusal}"),
        || async {
            errors
                .lock()
                .unwrap()
                .iter()
                .any(|err| err.contains("Permissions Violation") && err.contains(refusal))
                .then_some(())
        },
    )
    .await;
}
