//! A randomised fault campaign in the manner of Jepsen: containers on a
//! private Docker network stand for the hosts of a site, a nemesis strikes
//! them on a schedule drawn from a seed, witnesses outside the system record
//! what happened, and a checker holds the system's promises against that
//! record.
//!
//! Pure logic (no I/O): [`schedule`] draws the faults, [`record`] holds what
//! happened, [`checker`] judges it. I/O: [`cluster`] runs the containers,
//! [`nemesis`] strikes them, [`observe`] records the feed and the monitor,
//! [`campaign`] runs one seed from start to verdicts; [`soak`] churns a large fleet and samples memory.

pub mod campaign;
pub mod checker;
pub mod cluster;
pub mod nemesis;
pub mod observe;
pub mod record;
pub mod schedule;
pub mod soak;
