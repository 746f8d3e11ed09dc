//! What every service binary of ocs-nats shares: the registry, the operation
//! monitor, the host manager, every agent and the `ocs` client start, connect,
//! log, serve their endpoints and stop the same way, from this crate.
//!
//! - [`skeleton`]: the one `main` of every service ([`skeleton::run`]);
//! - [`args`]: the common command line, NATS authentication, site-file arguments;
//! - [`connect`]: NATS connections for services (retrying) and clients (once);
//! - [`lifecycle`]: logging, signals, systemd notification, stopping with a host manager;
//! - [`endpoints`]: serving `/metrics` and `/healthz` with bounded time and concurrency;
//! - [`exposition`]: Prometheus text and OpenMetrics from one registry;
//! - [`kv_bucket`]: JetStream KV buckets declared once with their limits;
//! - [`seconds`]: the one parser of durations;
//! - [`site`]: the site file.
//!
//! Environment variables read by every binary built on this crate:
//!
//! | Variable | Purpose | Default |
//! |---|---|---|
//! | `NATS_URL` | NATS server URL(s) | `nats://127.0.0.1:4222` |
//! | `OCS_ADDRESS_ROOT` | first token of addresses | `observatory` |
//! | `INSTANCE_ID` | this instance's id | per binary |
//! | `OCS_SITE_FILE` | site file the instance's arguments come from | none |
//! | `LOG_FORMAT` | `text` or `json` | `text` |
//! | `RUST_LOG` | log filter | `info` |

pub mod args;
pub mod connect;
pub mod endpoints;
pub mod exposition;
pub mod kv_bucket;
pub mod lifecycle;
pub mod seconds;
pub mod site;
pub mod skeleton;

pub use args::{CommonArgs, LogFormat, NatsAuth, parse_with_site};
pub use kv_bucket::{BucketSpec, open_kv_bucket, reopen_kv_bucket};
pub use skeleton::{ServiceArgs, ServiceIdentity, StartError, Started};
