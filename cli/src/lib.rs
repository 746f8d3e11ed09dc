//! The `ocs` command-line client, mirroring OCS's `OCSClient` and
//! `ocs-client-cli`: [`render`] turns replies into the text it prints,
//! [`output`] writes it; the binary (`src/main.rs`) parses the command line
//! and makes the calls.

pub mod output;
pub mod render;
