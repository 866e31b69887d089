//! Volume paths: resolve a workload's CURRENT volume config to host directories, and
//! refuse anything a destructive swap must never touch.
//!
//! The only way to get a [`HostVolume`] is [`resolve_all`], which checks, for every
//! volume of the config: the scope rule (DESIGN.md "Volume scopes"), lexical
//! containment in the base, no symlinked component below the base (nor anywhere for
//! `absolute` paths), the refused system paths and volsnap's own directories, and that
//! no two volumes overlap. A manifest's `source`/`scope` never reaches this module.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use volsnap_shared::domain::{VolumeScope, VolumeSpec, Workload};
use volsnap_shared::failure;

use super::error::Failure;

/// The directories path resolution depends on.
#[derive(Debug, Clone)]
pub struct Roots {
    pub volumes_root: PathBuf,
    pub state_dir: PathBuf,
    pub snapshot_dir: PathBuf,
}

/// One volume of a workload, resolved to a host directory that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub spec: VolumeSpec,
    /// Absolute, normalised, no symlinked component.
    pub path: PathBuf,
}

/// Trees a volume may never be, nor be inside of.
const REFUSED_TREES: &[&str] = &[
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/snap",
];

/// Directories a volume may never be (their subdirectories are fine).
const REFUSED_EXACT: &[&str] = &[
    "/", "/var", "/var/lib", "/var/log", "/var/tmp", "/home", "/root", "/tmp", "/srv", "/opt",
    "/mnt", "/media",
];

/// Resolve every volume of `workload` (all or nothing).
pub fn resolve_all(workload: &Workload, roots: &Roots) -> Result<Vec<HostVolume>, Failure> {
    if workload.volumes.is_empty() {
        return Err(Failure::new(
            failure::NO_VOLUMES,
            "the workload has no volumes",
        ));
    }
    let mut out: Vec<HostVolume> = Vec::with_capacity(workload.volumes.len());
    for spec in &workload.volumes {
        let path = resolve(workload, spec, roots)?;
        for other in &out {
            if other.spec.target == spec.target {
                return Err(Failure::new(
                    failure::INVALID_VOLUME,
                    format!("two volumes have the target {:?}", spec.target),
                ));
            }
            if path.starts_with(&other.path) || other.path.starts_with(&path) {
                return Err(Failure::new(
                    failure::INVALID_VOLUME,
                    format!(
                        "volumes {:?} and {:?} overlap on the host",
                        other.spec.target, spec.target
                    ),
                ));
            }
        }
        out.push(HostVolume {
            spec: spec.clone(),
            path,
        });
    }
    Ok(out)
}

/// Resolve one volume from the current config.
pub fn resolve(workload: &Workload, spec: &VolumeSpec, roots: &Roots) -> Result<PathBuf, Failure> {
    let label = &spec.target;
    if !spec.target.starts_with('/') {
        return Err(Failure::new(
            failure::INVALID_VOLUME,
            format!("volume target {label:?} is not an absolute container path"),
        ));
    }
    let path = match spec.scope {
        VolumeScope::Absolute => {
            let p = normalise(Path::new(&spec.source), true).map_err(|why| {
                Failure::new(
                    failure::PATH_ESCAPES_BASE,
                    format!("volume {label:?}: source {:?} {why}", spec.source),
                )
            })?;
            refuse_system_path(&p, roots, label)?;
            refuse_symlinks(Path::new("/"), &p, label)?;
            p
        }
        VolumeScope::Project | VolumeScope::Stage => {
            let root = std::fs::canonicalize(&roots.volumes_root).map_err(|e| {
                Failure::internal(
                    failure::INVALID_VOLUME,
                    format!("volume {label:?}: the volumes root is not accessible"),
                    e,
                )
            })?;
            let mut base = root.join(single_component(&workload.project, "project", label)?);
            if spec.scope == VolumeScope::Stage {
                base = base.join(single_component(&workload.stage, "stage", label)?);
            }
            let rel = normalise(Path::new(&spec.source), false).map_err(|why| {
                Failure::new(
                    failure::PATH_ESCAPES_BASE,
                    format!("volume {label:?}: source {:?} {why}", spec.source),
                )
            })?;
            if rel.as_os_str().is_empty() {
                return Err(Failure::new(
                    failure::INVALID_VOLUME,
                    format!("volume {label:?}: source must name a directory inside its base"),
                ));
            }
            let p = base.join(&rel);
            // Lexical containment (normalise already refused `..`; this is the proof).
            if !p.starts_with(&base) || p == base {
                return Err(Failure::new(
                    failure::PATH_ESCAPES_BASE,
                    format!("volume {label:?} resolves outside its base"),
                ));
            }
            refuse_system_path(&p, roots, label)?;
            refuse_symlinks(&root, &p, label)?;
            p
        }
    };
    Ok(path)
}

fn single_component<'a>(name: &'a str, what: &str, label: &str) -> Result<&'a str, Failure> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(name)
    } else {
        Err(Failure::new(
            failure::PATH_ESCAPES_BASE,
            format!(
                "volume {label:?}: the workload's {what} {name:?} is not a single path component"
            ),
        ))
    }
}

/// Lexically normalise: drop `.` and empty components, refuse `..` and NUL. `absolute`
/// selects whether the path must be absolute or relative.
fn normalise(p: &Path, absolute: bool) -> Result<PathBuf, &'static str> {
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut out = PathBuf::new();
    if absolute {
        out.push("/");
    }
    let mut first = true;
    for c in p.components() {
        match c {
            Component::RootDir if absolute && first => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(if absolute {
                    "is not a plain absolute path"
                } else {
                    "must be relative"
                });
            }
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::Normal(n) => {
                if absolute && first {
                    return Err("must be absolute");
                }
                out.push(n);
            }
        }
        first = false;
    }
    if absolute && first {
        return Err("is empty");
    }
    Ok(out)
}

fn refuse_system_path(p: &Path, roots: &Roots, label: &str) -> Result<(), Failure> {
    let refused = |why: String| {
        Err(Failure::new(
            failure::SYSTEM_PATH,
            format!("volume {label:?} resolves to {why}, which volsnap never restores onto"),
        ))
    };
    for t in REFUSED_TREES {
        if p.starts_with(t) {
            return refused(format!("a path under the system directory {t}"));
        }
    }
    for e in REFUSED_EXACT {
        if p == Path::new(e) {
            return refused(format!("the system directory {e}"));
        }
    }
    for own in [&roots.state_dir, &roots.snapshot_dir] {
        let own = std::fs::canonicalize(own).unwrap_or_else(|_| own.clone());
        if p.starts_with(&own) || own.starts_with(p) {
            return refused("volsnap's own state or snapshot directory".into());
        }
    }
    let vroot =
        std::fs::canonicalize(&roots.volumes_root).unwrap_or_else(|_| roots.volumes_root.clone());
    if vroot.starts_with(p) {
        return refused("the volumes root or one of its parents".into());
    }
    Ok(())
}

/// Every existing component of `p` below `base` must be a real directory (the last
/// one may be missing: a restore creates it). `base` itself is trusted.
fn refuse_symlinks(base: &Path, p: &Path, label: &str) -> Result<(), Failure> {
    let rel = p.strip_prefix(base).map_err(|_| {
        Failure::new(
            failure::PATH_ESCAPES_BASE,
            format!("volume {label:?} resolves outside its base"),
        )
    })?;
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
    use volsnap_shared::domain::SourceKind;
    use volsnap_shared::ids::WorkloadId;

    fn workload(vols: Vec<VolumeSpec>) -> Workload {
        Workload {
            id: WorkloadId::new(),
            name: "app".into(),
            project: "proj".into(),
            stage: "prod".into(),
            node: "n".into(),
            source_kind: SourceKind::Image,
            image: Some("x".into()),
            volumes: vols,
            stop_for_capture: false,
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
        Roots {
            volumes_root: dir.join("vols"),
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
                &format!("{}/abs/", root.display()),
                "/abs",
            ),
        ]);
        let v = resolve_all(&w, &r).unwrap();
        assert_eq!(v[0].path, root.join("vols/proj/prod/data"));
        assert_eq!(v[1].path, root.join("vols/proj/shared/x"));
        assert_eq!(v[2].path, root.join("abs"));
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
            code(vol(VolumeScope::Absolute, "/etc", "/d")),
            failure::SYSTEM_PATH
        );
        assert_eq!(
            code(vol(VolumeScope::Absolute, "/", "/d")),
            failure::SYSTEM_PATH
        );
        assert_eq!(
            code(vol(
                VolumeScope::Absolute,
                "/var/lib/docker/volumes/x",
                "/d"
            )),
            failure::SYSTEM_PATH
        );
        assert_eq!(
            code(vol(VolumeScope::Absolute, "/usr/../etc", "/d")),
            failure::PATH_ESCAPES_BASE
        );
        assert_eq!(
            code(vol(VolumeScope::Absolute, "rel", "/d")),
            failure::PATH_ESCAPES_BASE
        );
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
        assert_eq!(
            resolve_all(&w, &r).unwrap_err().code,
            failure::PATH_ESCAPES_BASE
        );
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
}
