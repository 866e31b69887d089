//! End-to-end test support.

pub mod chaos;
pub mod engine;
pub mod procs;
