//! Tests of the HTTP API against a real PostgreSQL (one database per test) and the
//! real router: `tower::ServiceExt::oneshot`, or a server on port 0 where concurrency
//! over real connections matters.

mod common;

mod auth;
mod batch;
mod cli;
mod concurrency;
mod containment;
mod jobs;
mod ops;
mod restore_matrix;
mod snapshots;
mod wait;
mod whoami;
mod workloads;
