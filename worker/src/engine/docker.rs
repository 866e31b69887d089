//! The node's Docker engine, as the engine needs it: a workload's running containers
//! (label `volsnap.workload=<id>`), stop, start, and waiting until they run (and are
//! healthy where a healthcheck exists) — and stay running: a restart after a quiesce
//! first waits out any stop still pending in the engine (see
//! [`Docker::restart_after_quiesce`]).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, StartContainerOptions, StopContainerOptions,
};
use volsnap_shared::failure;
use volsnap_shared::ids::WorkloadId;

use super::error::Failure;

/// The label that ties a container to its workload.
pub const WORKLOAD_LABEL: &str = "volsnap.workload";

/// How long a started container must stay up before [`Docker::confirm_running`]
/// counts it as back.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How many times a container that went down right after its start is started again.
pub const CONFIRM_ROUNDS: u32 = 3;

#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    /// Seconds Docker waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// How long a redeploy waits for containers to be running (and healthy).
    pub start_timeout: Duration,
}

fn docker_failure(what: String, e: bollard::errors::Error) -> Failure {
    Failure::internal(failure::DOCKER, what, e)
}

impl Docker {
    /// Connect with the local defaults (`DOCKER_HOST` or the unix socket) and agree on
    /// an API version with the engine.
    pub async fn connect(
        stop_timeout: Duration,
        start_timeout: Duration,
    ) -> anyhow::Result<Docker> {
        let client = bollard::Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        Ok(Docker {
            client,
            stop_timeout,
            start_timeout,
        })
    }

    /// Ids of the workload's containers that are running now, sorted.
    pub async fn running_containers(&self, workload: WorkloadId) -> Result<Vec<String>, Failure> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_owned(),
            vec![format!("{WORKLOAD_LABEL}={workload}")],
        );
        filters.insert("status".to_owned(), vec!["running".to_owned()]);
        let list = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_failure("listing the workload's containers failed".into(), e))?;
        let mut ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        ids.sort();
        Ok(ids)
    }

    pub async fn stop(&self, id: &str) -> Result<(), Failure> {
        let t = self.stop_timeout.as_secs().min(i32::MAX as u64) as i32;
        match self
            .client
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Gone already: nothing left to stop.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(docker_failure(
                format!("stopping container {}", short(id)),
                e,
            )),
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), Failure> {
        self.client
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|e| {
                Failure::internal(
                    failure::REDEPLOY_FAILED,
                    format!("starting container {} failed", short(id)),
                    e,
                )
            })
    }

    /// Start every container (already running ones are fine), wait until all run and
    /// are healthy where they have a healthcheck, then confirm they stay up
    /// ([`Docker::confirm_running`]).
    pub async fn start_all_and_wait(&self, ids: &[String]) -> Result<(), Failure> {
        self.start_each(ids).await?;
        self.wait_running(ids).await?;
        self.confirm_running(ids).await
    }

    async fn start_each(&self, ids: &[String]) -> Result<(), Failure> {
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.start(id).await {
                tracing::error!(container = %short(id), error = %e, "container did not start");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Bring back containers that a quiesce stopped — or may still be stopping: a
    /// worker killed while `docker stop` waited for a slow container leaves that stop
    /// running in the Docker engine, and a container "started" meanwhile (a no-op, it
    /// is still running) is killed moments later by it. So first stop each container
    /// again and wait for it (at once when it is already stopped; otherwise this waits
    /// out the pending stop too), then start them, wait until they run (and are
    /// healthy), and confirm they stay up.
    pub async fn restart_after_quiesce(&self, ids: &[String]) -> Result<(), Failure> {
        let stops = futures::future::join_all(ids.iter().map(|id| self.stop(id))).await;
        for (id, r) in ids.iter().zip(&stops) {
            if let Err(e) = r {
                // Starting it is still the best we can do; the confirmation below
                // catches a stop that lands later.
                tracing::warn!(container = %short(id), error = %e, "stopping before the restart failed");
            }
        }
        self.start_all_and_wait(ids).await
    }

    /// After containers were seen running: wait [`SETTLE`], look again, and start any
    /// that a late stop (or a crash on start) took down, up to [`CONFIRM_ROUNDS`] times.
    pub async fn confirm_running(&self, ids: &[String]) -> Result<(), Failure> {
        if ids.is_empty() {
            return Ok(());
        }
        for round in 1..=CONFIRM_ROUNDS {
            tokio::time::sleep(SETTLE).await;
            let mut down = vec![];
            for id in ids {
                if !self.is_running(id).await? {
                    down.push(id.clone());
                }
            }
            if down.is_empty() {
                return Ok(());
            }
            tracing::warn!(
                round,
                containers = ?down.iter().map(|d| short(d)).collect::<Vec<_>>(),
                "containers went down after they were started; starting them again"
            );
            self.start_each(&down).await?;
            self.wait_running(&down).await?;
        }
        for id in ids {
            if !self.is_running(id).await? {
                return Err(Failure::new(
                    failure::REDEPLOY_FAILED,
                    format!("container {} keeps stopping after it is started", short(id)),
                ));
            }
        }
        Ok(())
    }

    async fn is_running(&self, id: &str) -> Result<bool, Failure> {
        let state = self
            .client
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| {
                Failure::internal(
                    failure::REDEPLOY_FAILED,
                    format!("container {} cannot be inspected", short(id)),
                    e,
                )
            })?
            .state
            .unwrap_or_default();
        Ok(state.running == Some(true) || state.restarting == Some(true))
    }

    pub async fn wait_running(&self, ids: &[String]) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + self.start_timeout;
        for id in ids {
            loop {
                let state = self
                    .client
                    .inspect_container(id, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| {
                        Failure::internal(
                            failure::REDEPLOY_FAILED,
                            format!("container {} cannot be inspected", short(id)),
                            e,
                        )
                    })?
                    .state
                    .unwrap_or_default();
                let running = state.running == Some(true);
                let health = state.health.as_ref().and_then(|h| h.status);
                let healthy = matches!(
                    health,
                    None | Some(HealthStatusEnum::HEALTHY)
                        | Some(HealthStatusEnum::NONE)
                        | Some(HealthStatusEnum::EMPTY)
                );
                if running && healthy {
                    break;
                }
                let dead = matches!(
                    state.status,
                    Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD)
                ) && state.restarting != Some(true);
                if dead {
                    return Err(Failure::new(
                        failure::REDEPLOY_FAILED,
                        format!(
                            "container {} exited (code {}) after start",
                            short(id),
                            state.exit_code.unwrap_or(-1)
                        ),
                    ));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Failure::new(
                        failure::REDEPLOY_FAILED,
                        format!(
                            "container {} was not running{} within {:?}",
                            short(id),
                            if health.is_some() { " and healthy" } else { "" },
                            self.start_timeout
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

/// The 12-character form Docker shows.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
