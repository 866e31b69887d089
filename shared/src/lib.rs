//! volsnap-shared: what the API and the worker agree on — domain types, database
//! access, the job queue and telemetry. Neither volumes nor Docker are touched here.

pub mod database;
pub mod db;
pub mod domain;
pub mod failure;
pub mod ids;
pub mod queue;
pub mod scratch;
pub mod telemetry;
pub mod volume;

/// The schema migrations, applied by `volsnap-api migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
