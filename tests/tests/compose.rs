//! The docker-compose path, for real: deploy/build-images.sh builds every image from
//! Debian packages and this host's binaries (no registry), Debian's `docker-compose`
//! brings docker-compose.yml up, and through the stack's API a workload with a real
//! container is registered, captured, changed, restored with `?wait=`; the data is
//! checked on the host and in the container, and the restore is seen in the compose
//! Prometheus. The stack is torn down (with its volumes) however the test ends.
//!
//! Uses the compose file's default host ports (8080, 9090, 9091, 9093, 5433).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const IMAGE: &str = "volsnap-test-busybox:latest";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The compose project; `down -v` on drop.
struct Stack {
    project: String,
    env_file: PathBuf,
    containers: Vec<String>,
}

impl Stack {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("--env-file")
            .arg(&self.env_file)
            .args(["-p", &self.project, "--project-directory"])
            .arg(repo())
            .arg("-f")
            .arg(repo().join("docker-compose.yml"));
        c
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .compose()
                .args(["logs", "--no-color", "--tail", "40"])
                .status();
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = self
            .compose()
            .args(["down", "-v", "--timeout", "10"])
            .output();
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_registers_captures_restores_and_is_scraped() {
    let started = Instant::now();
    run(
        Command::new(repo().join("deploy/build-images.sh")).current_dir(repo()),
        "deploy/build-images.sh",
    );
    eprintln!("images ready after {:?}", started.elapsed());

    let dir = tempfile::Builder::new()
        .prefix("volsnap-compose-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let (vroot, state, snaps) = (d.join("volumes"), d.join("state"), d.join("snapshots"));
    for p in [&vroot, &state, &snaps] {
        std::fs::create_dir_all(p).unwrap();
    }
    let node = "compose-node";
    let env_file = d.join(".env");
    std::fs::write(
        &env_file,
        format!(
            "POSTGRES_PASSWORD=compose-test-pw\nVOLSNAP_NODE={node}\nVOLSNAP_VOLUMES_ROOT={}\n\
             VOLSNAP_STATE_DIR={}\nVOLSNAP_SNAPSHOT_DIR={}\n",
            vroot.display(),
            state.display(),
            snaps.display()
        ),
    )
    .unwrap();
    let mut stack = Stack {
        project: format!(
            "volsnapt{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        env_file,
        containers: vec![],
    };
    run(stack.compose().args(["up", "-d"]), "docker-compose up");
    let api = "http://127.0.0.1:8080";
    let http = reqwest::Client::new();
    wait_for("the API ready", Duration::from_secs(120), || async {
        http.get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    eprintln!("stack up after {:?}", started.elapsed());

    let out = run(
        stack
            .compose()
            .args(["exec", "-T", "api", "volsnap-api", "token", "create"])
            .args(["--name", "compose-test", "--role", "admin"]),
        "token create",
    );
    let token = out.lines().last().unwrap().trim().to_owned();

    // A workload with a real container on the stack's node.
    let r = http
        .post(format!("{api}/api/workloads"))
        .bearer_auth(&token)
        .json(&json!({
            "name": "web", "project": "proj", "stage": "prod", "node": node,
            "source_kind": "image", "image": IMAGE,
            "volumes": [{"scope": "stage", "source": "data", "target": "/data"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let w: Value = r.json().await.unwrap();
    let wid = w["id"].as_str().unwrap().to_owned();
    let host = vroot.join("proj/prod/data");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("state.txt"), "version one\n").unwrap();
    let cid = run(
        Command::new("docker").args([
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &format!("volsnap.workload={wid}"),
            "-v",
            &format!("{}:/data", host.display()),
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done",
        ]),
        "docker run",
    )
    .trim()
    .to_owned();
    stack.containers.push(cid.clone());

    // Capture.
    let r = http
        .post(format!("{api}/api/workloads/{wid}/snapshots"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    let cap: Value = r.json().await.unwrap();
    let sid = cap["snapshot_id"].as_str().unwrap().to_owned();
    let job_id = cap["job"]["id"].as_str().unwrap().to_owned();
    let job: Value = http
        .get(format!("{api}/api/jobs/{job_id}?wait=120"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "succeeded", "capture: {job}");

    // Change the data, then restore with ?wait=.
    std::fs::write(host.join("state.txt"), "version two\n").unwrap();
    std::fs::write(host.join("extra.txt"), "added later\n").unwrap();
    let r = http
        .post(format!(
            "{api}/api/workloads/{wid}/snapshots/{sid}/restore?wait=120"
        ))
        .bearer_auth(&token)
        .header("x-confirm-restore", &sid)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "restore: {body}");
    assert_eq!(
        std::fs::read_to_string(host.join("state.txt")).unwrap(),
        "version one\n"
    );
    assert!(
        !host.join("extra.txt").exists(),
        "the restore brought back the old tree"
    );
    let seen = run(
        Command::new("docker").args(["exec", &cid, "cat", "/data/state.txt"]),
        "docker exec",
    );
    assert_eq!(
        seen, "version one\n",
        "the running container sees the restored data"
    );

    // The compose Prometheus scrapes the API and the worker and sees the restore.
    let prom = "http://127.0.0.1:9090";
    let q = |query: &str| {
        let http = http.clone();
        let url = format!("{prom}/api/v1/query");
        let query = query.to_owned();
        async move {
            let v: Value = http
                .get(url)
                .query(&[("query", query)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        }
    };
    wait_for(
        "the compose Prometheus sees the succeeded restore",
        Duration::from_secs(90),
        || async {
            q(r#"volsnap_jobs_finished_total{kind="restore",outcome="succeeded"}"#)
                .await
                .as_deref()
                == Some("1")
        },
    )
    .await;
    wait_for("the worker target up", Duration::from_secs(60), || async {
        q(r#"up{job="volsnap-worker"}"#).await.as_deref() == Some("1")
    })
    .await;
    eprintln!("compose test done in {:?}", started.elapsed());
}
