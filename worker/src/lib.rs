//! volsnap-worker: the data-plane agent of one node. It claims its node's jobs from the
//! Postgres queue and runs the engine (capture, restore, recovery) against the node's
//! Docker engine and disks.

pub mod cli;
pub mod config;
pub mod engine;
pub mod failpoints;
pub mod metrics;
