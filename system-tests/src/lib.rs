//! End-to-end tests of the whole system, in `tests/`: a real nats-server,
//! the registry, real agent processes and the real `ocs` binary.
//!
//! - `registry.rs`: agents appear, change and expire on the record and the
//!   feed; bad heartbeats; the `ocs` client; NATS users, role permissions
//!   and TLS;
//! - `never_lie.rs`: the registry's truth under duplicates, forged
//!   heartbeats, mass silence, a lost or full JetStream store;
//! - `faults.rs`: the fault matrix (`harness = false`), one fault at a time;
//! - `common/`: the registry in-process and a recorder of its feed.
//!
//! Launchers of the binaries and queries of the registry are in `ocs_testkit`.
