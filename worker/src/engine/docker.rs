//! The node's Docker engine, as the engine needs it: a workload's running containers
//! (label `volsnap.workload=<id>`), stop, start, and waiting until they run (and are
//! healthy where a healthcheck exists).

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

    /// Start every container (already running ones are fine), then wait until all run
    /// and are healthy where they have a healthcheck.
    pub async fn start_all_and_wait(&self, ids: &[String]) -> Result<(), Failure> {
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.start(id).await {
                tracing::error!(container = %short(id), error = %e, "container did not start");
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.wait_running(ids).await
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
