//! `ocs-operation-monitor`: thin entry point; see the library for the logic.

/// jemalloc, built to give freed memory back (see `.cargo/config.toml`):
/// after a wave of addresses or records is forgotten the resident set
/// returns to its resting size, where glibc's allocator kept and fragmented
/// it (BENCHMARKS.md, "Memory under churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use ocs_operation_monitor::Config;
use ocs_service::skeleton;

fn main() -> ExitCode {
    skeleton::run(|config: Config, started| ocs_operation_monitor::run(config, started))
}
