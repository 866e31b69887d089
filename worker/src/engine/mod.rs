//! The engine: capture and restore jobs, and journal recovery. (Being built: issue 4.)

use std::path::PathBuf;

use sqlx::PgPool;
use volsnap_shared::failure;
use volsnap_shared::queue::worker::{JobContext, JobHandler, JobOutcome};

/// Where the engine keeps its files and finds volumes.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: String,
    pub state_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    pub volumes_root: PathBuf,
}

pub struct Engine {
    #[allow(dead_code)]
    pool: PgPool,
    #[allow(dead_code)]
    cfg: EngineConfig,
}

impl Engine {
    pub async fn new(pool: PgPool, cfg: EngineConfig) -> anyhow::Result<Engine> {
        Ok(Engine { pool, cfg })
    }
}

impl JobHandler for Engine {
    async fn startup_recovery(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn run(&self, _ctx: JobContext) -> JobOutcome {
        JobOutcome::failed(failure::INTERNAL, "this worker build has no engine yet")
    }
}
