//! The `ocs` command-line client, mirroring OCS's `OCSClient` and
//! `ocs-client-cli`: [`render`] turns replies into the text it prints,
//! [`output`] writes it. The binary's `main` parses the command line and
//! calls one function per command (`src/commands.rs`), which makes the
//! calls and prints what `render` makes of the replies. [`conformance`]
//! holds what a live agent did to the protocol's rules.

pub mod conformance;
pub mod output;
pub mod render;
