//! Volume paths: resolve a workload's CURRENT volume config to host directories, and
//! refuse anything a destructive swap must never touch.
//!
//! The rules are `volsnap_shared::volume`'s, the same code the API applies at
//! registration: scope, lexical normalisation and lengths, the allow-list of
//! `VOLSNAP_ABSOLUTE_ROOTS`, system paths, volsnap's own directories, the volumes root's
//! parents, and no two volumes of the config overlapping. This module adds what only
//! the node can tell: the roots as they are on disk (canonical), and no symlinked
//! component below a volume's trusted base. [`refuse_overlaps`] compares the result
//! with the node's other workloads. A manifest's `source`/`scope` never reaches here.
//!
//! Failure messages name a volume by its container target; host paths go to the log.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use sqlx::PgPool;
use volsnap_shared::domain::{VolumeScope, VolumeSpec, Workload};
use volsnap_shared::failure;
use volsnap_shared::volume::{self, NodeRoots, VolumeRefusal};

use super::error::Failure;

/// The directories path resolution depends on.
#[derive(Debug, Clone)]
pub struct Roots {
    pub volumes_root: PathBuf,
    /// `VOLSNAP_ABSOLUTE_ROOTS`: where `absolute` volumes may live (empty: nowhere).
    pub absolute_roots: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub snapshot_dir: PathBuf,
}

/// One volume of a workload, resolved to a host directory that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub spec: VolumeSpec,
    /// Absolute, normalised, no symlinked component: `base.join(rel)`.
    pub path: PathBuf,
    /// The trusted base `path` lies under: the canonical volumes root (`project` and
    /// `stage` scopes) or the matching canonical `VOLSNAP_ABSOLUTE_ROOTS` entry.
    pub base: PathBuf,
    /// The normalised path below `base`: non-empty, no `..`, no `.`.
    pub rel: PathBuf,
}

/// `p` canonicalised when it exists, as given otherwise.
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Roots {
    /// The roots as the shared rules see them: canonical where they exist. The volumes
    /// root must exist when a `project`/`stage` volume needs it.
    fn on_disk(&self, workload: &Workload) -> Result<NodeRoots, Failure> {
        let volumes_root = match std::fs::canonicalize(&self.volumes_root) {
            Ok(p) => p,
            Err(e) => match workload
                .volumes
                .iter()
                .find(|v| v.scope != VolumeScope::Absolute)
            {
                Some(v) => {
                    return Err(Failure::internal(
                        failure::INVALID_VOLUME,
                        format!("volume {:?}: the volumes root is not accessible", v.target),
                        e,
                    ));
                }
                None => self.volumes_root.clone(),
            },
        };
        Ok(NodeRoots {
            volumes_root,
            absolute_roots: self.absolute_roots.iter().map(|r| canonical(r)).collect(),
            state_dir: canonical(&self.state_dir),
            snapshot_dir: canonical(&self.snapshot_dir),
        })
    }
}

/// A refused volume as a job failure; the spec's source goes to the log only.
fn refused(workload: &Workload, r: VolumeRefusal) -> Failure {
    let source = workload.volumes.get(r.index).map(|v| v.source.as_str());
    tracing::warn!(workload_id = %workload.id, target = %r.target, source = ?source,
        code = %r.code(), "volume refused");
    Failure::new(r.code(), r.to_string())
}

/// Resolve every volume of `workload` (all or nothing).
pub fn resolve_all(workload: &Workload, roots: &Roots) -> Result<Vec<HostVolume>, Failure> {
    if workload.volumes.is_empty() {
        return Err(Failure::new(
            failure::NO_VOLUMES,
            "the workload has no volumes",
        ));
    }
    let node = roots.on_disk(workload)?;
    let placed = volume::place_all(&workload.project, &workload.stage, &workload.volumes, &node)
        .map_err(|r| refused(workload, r))?;
    let mut out = Vec::with_capacity(placed.len());
    for (spec, p) in workload.volumes.iter().zip(placed) {
        let path = p.path();
        refuse_symlinks(&p.base, &p.rel, &spec.target).inspect_err(|f| {
            tracing::warn!(workload_id = %workload.id, target = %spec.target,
                host_path = %path.display(), code = %f.code, "volume refused");
        })?;
        out.push(HostVolume {
            spec: spec.clone(),
            path,
            base: p.base,
            rel: p.rel,
        });
    }
    Ok(out)
}

/// Refuse a workload whose resolved volumes (`host`, from [`resolve_all`]) equal,
/// contain or lie inside a volume of another workload of the same node, as the API
/// does at registration: configs can change in the database directly. Restore and
/// capture pre-flight call this right after [`resolve_all`].
pub async fn refuse_overlaps(
    pool: &PgPool,
    workload: &Workload,
    host: &[HostVolume],
    roots: &Roots,
) -> Result<(), Failure> {
    let others =
        volsnap_shared::db::workloads::others_on_node(pool, &workload.node, Some(workload.id))
            .await?;
    let vroot = canonical(&roots.volumes_root);
    let mine: Vec<(usize, String, PathBuf)> = host
        .iter()
        .enumerate()
        .map(|(i, h)| (i, h.spec.target.clone(), h.path.clone()))
        .collect();
    match volume::find_overlap(&mine, &others, Some(&vroot)) {
        None => Ok(()),
        Some(o) => {
            tracing::warn!(workload_id = %workload.id, other_workload_id = %o.other_id,
                host_path = %host[o.index].path.display(), "volume overlaps another workload's");
            Err(Failure::new(failure::VOLUME_OVERLAP, o.to_string()))
        }
    }
}

/// Every existing component of `rel` below `base` must be a real directory (the last
/// one may be missing: a restore creates it). `base` itself is trusted.
fn refuse_symlinks(base: &Path, rel: &Path, label: &str) -> Result<(), Failure> {
    let mut cur = base.to_path_buf();
    let comps: Vec<&OsStr> = rel.iter().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Failure::new(
                    failure::PATH_ESCAPES_BASE,
                    format!("volume {label:?}: a component of its host path is a symlink"),
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(Failure::new(
                    failure::INVALID_VOLUME,
                    format!("volume {label:?}: its host path is not a directory"),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if i + 1 < comps.len() {
                    return Err(Failure::new(
                        failure::INVALID_VOLUME,
                        format!(
                            "volume {label:?}: the parent of its host directory does not exist"
                        ),
                    ));
                }
            }
            Err(e) => {
                return Err(Failure::internal(
                    failure::IO,
                    format!("volume {label:?}: cannot inspect its host path"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use volsnap_shared::db::workloads::WorkloadFields;
    use volsnap_shared::domain::SourceKind;
    use volsnap_shared::ids::WorkloadId;

    fn workload(vols: Vec<VolumeSpec>) -> Workload {
        Workload {
            id: WorkloadId::new(),
            fields: WorkloadFields {
                name: "app".into(),
                project: "proj".into(),
                stage: "prod".into(),
                node: "n".into(),
                source_kind: SourceKind::Image,
                image: Some("x".into()),
                volumes: vols,
                stop_for_capture: false,
            },
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn vol(scope: VolumeScope, source: &str, target: &str) -> VolumeSpec {
        VolumeSpec {
            scope,
            source: source.into(),
            target: target.into(),
        }
    }

    fn roots(dir: &Path) -> Roots {
        std::fs::create_dir_all(dir.join("vols/proj/prod")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("abs")).unwrap();
        Roots {
            volumes_root: dir.join("vols"),
            absolute_roots: vec![dir.join("abs")],
            state_dir: dir.join("state"),
            snapshot_dir: dir.join("state/snapshots"),
        }
    }

    #[test]
    fn scopes_resolve_under_their_bases() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(d.path().join("vols/proj/shared")).unwrap();
        let w = workload(vec![
            vol(VolumeScope::Stage, "data", "/data"),
            vol(VolumeScope::Project, "./shared//x", "/shared"),
            vol(
                VolumeScope::Absolute,
                &format!("{}/abs/a/", root.display()),
                "/abs",
            ),
        ]);
        let v = resolve_all(&w, &r).unwrap();
        assert_eq!(v[0].path, root.join("vols/proj/prod/data"));
        assert_eq!(v[0].base, root.join("vols"));
        assert_eq!(v[0].rel, Path::new("proj/prod/data"));
        assert_eq!(v[1].path, root.join("vols/proj/shared/x"));
        assert_eq!(v[1].rel, Path::new("proj/shared/x"));
        assert_eq!(v[2].path, root.join("abs/a"));
        assert_eq!(v[2].base, root.join("abs"));
        assert_eq!(v[2].rel, Path::new("a"));
    }

    #[test]
    fn escapes_and_system_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        let code = |s: VolumeSpec| resolve_all(&workload(vec![s]), &r).unwrap_err().code;
        assert_eq!(
            code(vol(VolumeScope::Stage, "../x", "/d")),
            failure::PATH_ESCAPES_BASE
        );
        assert_eq!(
            code(vol(VolumeScope::Stage, "/etc", "/d")),
            failure::PATH_ESCAPES_BASE
        );
        assert_eq!(
            code(vol(VolumeScope::Stage, ".", "/d")),
            failure::INVALID_VOLUME
        );
        assert_eq!(
            code(vol(VolumeScope::Stage, &"x".repeat(300), "/d")),
            failure::INVALID_VOLUME
        );
        for sys in ["/etc", "/", "/run/x", "/var/lib/docker/volumes/x"] {
            assert_eq!(
                code(vol(VolumeScope::Absolute, sys, "/d")),
                failure::SYSTEM_PATH,
                "{sys}"
            );
        }
        assert_eq!(
            code(vol(VolumeScope::Absolute, "/usr/../etc", "/d")),
            failure::PATH_ESCAPES_BASE
        );
        assert_eq!(
            code(vol(VolumeScope::Absolute, "rel", "/d")),
            failure::INVALID_VOLUME
        );
        // The allow-list: outside VOLSNAP_ABSOLUTE_ROOTS, or none configured.
        let outside = d.path().join("elsewhere").display().to_string();
        assert_eq!(
            code(vol(VolumeScope::Absolute, &outside, "/d")),
            failure::ABSOLUTE_NOT_ALLOWED
        );
        let none = Roots {
            absolute_roots: vec![],
            ..r.clone()
        };
        let inside = d.path().join("abs/x").display().to_string();
        let f = resolve_all(
            &workload(vec![vol(VolumeScope::Absolute, &inside, "/d")]),
            &none,
        )
        .unwrap_err();
        assert_eq!(f.code, failure::ABSOLUTE_NOT_ALLOWED);
        assert!(f.message.contains("VOLSNAP_ABSOLUTE_ROOTS"), "{f}");
        // Own directories and the volumes root's parents, even under an allowing root.
        let wide = Roots {
            absolute_roots: vec![d.path().to_path_buf()],
            ..r.clone()
        };
        let code = |s: VolumeSpec| resolve_all(&workload(vec![s]), &wide).unwrap_err().code;
        let state = r.state_dir.join("x").display().to_string();
        assert_eq!(
            code(vol(VolumeScope::Absolute, &state, "/d")),
            failure::SYSTEM_PATH
        );
        let vroot = r.volumes_root.display().to_string();
        assert_eq!(
            code(vol(VolumeScope::Absolute, &vroot, "/d")),
            failure::SYSTEM_PATH
        );
    }

    /// `/run/x` is refused by the worker exactly as by the API: same rule, same text.
    #[test]
    fn run_is_refused_like_the_api_refuses_it() {
        let d = tempfile::tempdir().unwrap();
        let r = Roots {
            absolute_roots: vec!["/run".into()],
            ..roots(d.path())
        };
        let spec = vol(VolumeScope::Absolute, "/run/x", "/d");
        let f = resolve_all(&workload(vec![spec.clone()]), &r).unwrap_err();
        assert_eq!(f.code, failure::SYSTEM_PATH);
        let shared = volume::check_config("proj", "prod", &[spec], None).unwrap_err();
        assert_eq!(f.message, shared.to_string());
        assert!(!f.message.contains("/run/x"), "{f}");
    }

    #[test]
    fn symlinked_components_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        std::os::unix::fs::symlink("/etc", d.path().join("vols/proj/prod/link")).unwrap();
        let w = workload(vec![vol(VolumeScope::Stage, "link/x", "/d")]);
        assert_eq!(
            resolve_all(&w, &r).unwrap_err().code,
            failure::PATH_ESCAPES_BASE
        );
        let w = workload(vec![vol(VolumeScope::Stage, "link", "/d")]);
        let f = resolve_all(&w, &r).unwrap_err();
        assert_eq!(f.code, failure::PATH_ESCAPES_BASE);
        assert!(!f.message.contains(&d.path().display().to_string()), "{f}");
    }

    #[test]
    fn overlapping_volumes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        let w = workload(vec![
            vol(VolumeScope::Stage, "a", "/a"),
            vol(VolumeScope::Stage, "a/b", "/b"),
        ]);
        assert_eq!(
            resolve_all(&w, &r).unwrap_err().code,
            failure::INVALID_VOLUME
        );
    }

    async fn insert(pool: &PgPool, name: &str, stage: &str, vols: Vec<VolumeSpec>) -> Workload {
        volsnap_shared::db::workloads::insert(
            pool,
            &WorkloadFields {
                name: name.into(),
                project: "proj".into(),
                stage: stage.into(),
                node: "n".into(),
                source_kind: SourceKind::Image,
                image: Some("img:1".into()),
                volumes: vols,
                stop_for_capture: false,
            },
        )
        .await
        .unwrap()
    }

    /// A config changed in the database directly (bypassing the API's check) so that
    /// two workloads nest is refused at pre-flight, naming the other workload.
    #[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
    async fn direct_config_change_creating_an_overlap_is_refused(pool: PgPool) {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        let a = insert(
            &pool,
            "a",
            "prod",
            vec![vol(VolumeScope::Stage, "data", "/d")],
        )
        .await;
        let b = insert(
            &pool,
            "b",
            "prod",
            vec![vol(VolumeScope::Stage, "other", "/d")],
        )
        .await;
        let host = resolve_all(&a, &r).unwrap();
        refuse_overlaps(&pool, &a, &host, &r).await.unwrap();

        for (scope, source) in [
            (VolumeScope::Stage, "data/sub".to_owned()),
            (VolumeScope::Stage, "data".to_owned()),
            (VolumeScope::Project, "prod".to_owned()),
            (
                VolumeScope::Absolute,
                std::fs::canonicalize(&r.volumes_root)
                    .unwrap()
                    .join("proj/prod/data")
                    .display()
                    .to_string(),
            ),
        ] {
            sqlx::query("UPDATE workloads SET volumes = $2 WHERE id = $1")
                .bind(b.id)
                .bind(sqlx::types::Json(vec![vol(scope, &source, "/d")]))
                .execute(&pool)
                .await
                .unwrap();
            let f = refuse_overlaps(&pool, &a, &host, &r).await.unwrap_err();
            assert_eq!(f.code, failure::VOLUME_OVERLAP, "{source}");
            assert!(f.message.contains(&b.id.to_string()), "{f}");
            assert!(f.message.contains("proj/prod/b"), "{f}");
            assert!(!f.message.contains(&d.path().display().to_string()), "{f}");
        }
        // A sibling is fine; so is a workload of another node.
        sqlx::query("UPDATE workloads SET volumes = $2 WHERE id = $1")
            .bind(b.id)
            .bind(sqlx::types::Json(vec![vol(
                VolumeScope::Stage,
                "data2",
                "/d",
            )]))
            .execute(&pool)
            .await
            .unwrap();
        refuse_overlaps(&pool, &a, &host, &r).await.unwrap();
        sqlx::query("UPDATE workloads SET volumes = $2, node = 'other' WHERE id = $1")
            .bind(b.id)
            .bind(sqlx::types::Json(vec![vol(
                VolumeScope::Stage,
                "data",
                "/d",
            )]))
            .execute(&pool)
            .await
            .unwrap();
        refuse_overlaps(&pool, &a, &host, &r).await.unwrap();
    }
}
