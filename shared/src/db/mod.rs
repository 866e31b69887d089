//! Data access for the API's resources (workloads, snapshots, tokens, job listings).
//! Queue mutations (enqueue, claim, finish, cancel) live in `crate::queue`.
