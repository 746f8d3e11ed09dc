//! What the manager is told at start: its site file, host, address root and
//! timings. Shared by the manager's loop and the launcher, so it sits below
//! both.

use std::path::PathBuf;
use std::time::Duration;

use super::metrics;

/// What the manager needs besides the site file's contents.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The site file, re-read on SIGHUP and when it changes.
    pub site_file: PathBuf,
    /// This host's name in the site file.
    pub host: String,
    /// The address root of the managed agents (the manager's own).
    pub address_root: ocs_protocol::AddressRoot,
    /// Where programs named without a path are looked for first (then `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// How long to listen for another incarnation's heartbeat before a launch.
    pub duplicate_check: Duration,
    /// How often the site file is checked for changes.
    pub reload_interval: Duration,
    /// Where the manager's passes are reported for `/metrics` and `/healthz`.
    pub report: metrics::ManagerReport,
}
