//! `ocs-registry`: thin entry point; see the library for the logic.

/// jemalloc, built to give freed memory back (see `.cargo/config.toml`):
/// after a wave of addresses or records is forgotten the resident set
/// returns to its resting size, where glibc's allocator kept and fragmented
/// it (BENCHMARKS.md, "Memory under churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;
use std::sync::Arc;

use ocs_registry::{Config, RegistryMetrics};
use ocs_service::skeleton::{self, Started};

fn main() -> ExitCode {
    skeleton::run(|config: Config, started: Started| {
        ocs_registry::run(config, started, Arc::new(RegistryMetrics::new()))
    })
}
