//! NATS credentials for ocs-nats in NATS's decentralised model: an operator
//! the server trusts, an account with one scoped signing key per role, and
//! one credential per user (an agent, a registry, a person) minted without
//! touching the server's configuration.
//!
//! - [`role`]: what each role may do, as templates filled with the user's
//!   name by the server (no I/O).
//! - [`authority`]: the keys, the account and operator JWTs, the server's
//!   configuration, and minting (no I/O).
//! - [`store`]: the authority's directory on disk.

pub mod authority;
pub mod role;
pub mod store;

pub use authority::{Authority, Credential};
pub use role::{Role, Site, Template};
