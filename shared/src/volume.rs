//! The volume path rules, once: the API applies them at registration and update, the
//! worker at pre-flight, and both get the same answer from the same code.
//!
//! A [`VolumeSpec`] (as stored, untrusted) is parsed into a [`Volume`]: its source and
//! target are lexically normalised (no `..`, NUL, control characters or empty path;
//! components of at most [`NAME_MAX`] bytes, paths of at most [`PATH_MAX`]). Placing a
//! volume on a node ([`Volume::place`]) needs the node's [`NodeRoots`] and yields a
//! [`Placement`]: a trusted base (the volumes root, or the matching
//! `VOLSNAP_ABSOLUTE_ROOTS` entry) and a non-empty relative path below it. System
//! directories, volsnap's own directories and the volumes root's parents are refused in
//! every scope; `absolute` volumes are allowed only under the operator's roots.
//!
//! Everything here is lexical. The worker adds what only the node's filesystem can tell
//! (symlinked components, identities), and compares against other workloads of the node
//! with [`find_overlap`]. Messages name a volume by its container `target`, never by
//! its host path (which only the worker's log shows).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::domain::{VolumeScope, VolumeSpec, Workload};
use crate::failure;
use crate::ids::WorkloadId;

/// Longest path component, in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest path, in bytes, without the terminating NUL (Linux `PATH_MAX` - 1).
pub const PATH_MAX: usize = 4095;
/// Most volumes one workload may have.
pub const MAX_VOLUMES: usize = 64;

/// The operator setting that allows `absolute` volumes.
pub const ABSOLUTE_ROOTS_SETTING: &str = "VOLSNAP_ABSOLUTE_ROOTS";

/// Trees no volume (and no root) may be, nor lie inside of.
const SYSTEM_TREES: &[&str] = &[
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
    "/var/lock",
    "/var/spool",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/snap",
];

/// Directories no volume (and no root) may be; their subdirectories are fine.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/var", "/var/lib", "/var/log", "/var/tmp", "/home", "/root", "/tmp", "/srv", "/opt",
    "/mnt", "/media",
];

/// The directories of one node that the rules depend on: absolute, normalised, and (as
/// the worker publishes them) canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoots {
    pub volumes_root: PathBuf,
    /// Where `absolute` volumes may live; empty: absolute volumes are refused.
    pub absolute_roots: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub snapshot_dir: PathBuf,
}

/// Why a path is not acceptable, lexically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is empty")]
    Empty,
    #[error("contains a NUL byte or a control character")]
    Control,
    #[error("contains `..`")]
    DotDot,
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error("must be a relative path")]
    NotRelative,
    #[error("must name a directory below `/`")]
    Root,
    #[error("has a component longer than {NAME_MAX} bytes")]
    ComponentTooLong,
    #[error("is longer than {PATH_MAX} bytes")]
    TooLong,
}

/// Why a volume is refused. The `Display` text is client-safe: no host path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("target {0}")]
    Target(PathError),
    #[error("source {0}")]
    Source(PathError),
    #[error("two volumes have this target")]
    DuplicateTarget,
    #[error("the workload's {0} is not a single path component")]
    NotAComponent(&'static str),
    #[error("its host path lies in a system directory, which volsnap never restores onto")]
    SystemPath,
    #[error("its host path is or holds volsnap's own state or snapshot directory")]
    OwnDirectory,
    #[error("its host path is the volumes root or one of its parents")]
    VolumesRootParent,
    #[error(
        "absolute volumes are refused on this node: its worker has no {ABSOLUTE_ROOTS_SETTING} \
         (or has not published its roots yet: start the node's worker first)"
    )]
    NoAbsoluteRoots,
    #[error("its source is not below any of the node's {ABSOLUTE_ROOTS_SETTING}")]
    OutsideAbsoluteRoots,
    #[error("its host path is longer than {PATH_MAX} bytes")]
    HostPathTooLong,
    #[error("its host path overlaps the host path of volume {0:?} of the same workload")]
    OverlapsOwnVolume(String),
}

impl VolumeError {
    /// The job failure code (`volsnap_shared::failure`) of this refusal.
    pub fn code(&self) -> failure::FailureCode {
        match self {
            VolumeError::Source(PathError::DotDot | PathError::NotRelative)
            | VolumeError::NotAComponent(_) => failure::PATH_ESCAPES_BASE,
            VolumeError::Source(PathError::Root)
            | VolumeError::SystemPath
            | VolumeError::OwnDirectory
            | VolumeError::VolumesRootParent => failure::SYSTEM_PATH,
            VolumeError::NoAbsoluteRoots | VolumeError::OutsideAbsoluteRoots => {
                failure::ABSOLUTE_NOT_ALLOWED
            }
            _ => failure::INVALID_VOLUME,
        }
    }

    /// The field of the volume at fault (`source` or `target`).
    pub fn field(&self) -> &'static str {
        match self {
            VolumeError::Target(_) | VolumeError::DuplicateTarget => "target",
            _ => "source",
        }
    }
}

/// A refused volume: which one (index in the config, container target) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume {target:?}: {error}")]
pub struct VolumeRefusal {
    pub index: usize,
    pub target: String,
    #[source]
    pub error: VolumeError,
}

impl VolumeRefusal {
    pub fn code(&self) -> failure::FailureCode {
        self.error.code()
    }

    /// The request field at fault, e.g. `volumes[0].source`.
    pub fn field(&self) -> String {
        format!("volumes[{}].{}", self.index, self.error.field())
    }
}

/// Lexically normalise: drop `.` and empty components; refuse `..`, NUL and control
/// characters, over-long components and paths. `absolute` says which kind is wanted.
/// The result of an absolute path is never `/` alone.
fn normalise(p: &str, absolute: bool) -> Result<PathBuf, PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    if p.len() > PATH_MAX {
        return Err(PathError::TooLong);
    }
    if absolute != p.starts_with('/') {
        return Err(if absolute {
            PathError::NotAbsolute
        } else {
            PathError::NotRelative
        });
    }
    let mut out = PathBuf::from(if absolute { "/" } else { "" });
    let mut any = false;
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(PathError::DotDot),
            Component::Prefix(_) => return Err(PathError::NotRelative),
            Component::Normal(n) => {
                if n.len() > NAME_MAX {
                    return Err(PathError::ComponentTooLong);
                }
                out.push(n);
                any = true;
            }
        }
    }
    if !any {
        return Err(if absolute {
            PathError::Root
        } else {
            PathError::Empty
        });
    }
    Ok(out)
}

/// An absolute, normalised container path other than `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPath(PathBuf);

impl ContainerPath {
    pub fn parse(s: &str) -> Result<ContainerPath, PathError> {
        normalise(s, true).map(ContainerPath)
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// A normalised, non-empty relative path with no `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(PathBuf);

impl RelPath {
    pub fn parse(s: &str) -> Result<RelPath, PathError> {
        normalise(s, false).map(RelPath)
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// A normalised absolute host path other than `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath(PathBuf);

impl HostPath {
    pub fn parse(s: &str) -> Result<HostPath, PathError> {
        normalise(s, true).map(HostPath)
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// Where a volume's data lives, by scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Absolute(HostPath),
    Project(RelPath),
    Stage(RelPath),
}

/// A volume spec that passed every lexical rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: Source,
    pub target: ContainerPath,
}

/// A volume placed on a node: `base` is trusted (the volumes root or an absolute root),
/// `rel` is non-empty, normalised and has no `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub base: PathBuf,
    pub rel: PathBuf,
}

impl Placement {
    /// The host directory.
    pub fn path(&self) -> PathBuf {
        self.base.join(&self.rel)
    }
}

/// A workload's project or stage as one path component.
fn component<'a>(name: &'a str, what: &'static str) -> Result<&'a str, VolumeError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    ok.then_some(name).ok_or(VolumeError::NotAComponent(what))
}

/// Whether `p` is a system directory, or lies inside one of the system trees.
pub fn is_system_path(p: &Path) -> bool {
    SYSTEM_TREES.iter().any(|t| p.starts_with(t)) || SYSTEM_DIRS.iter().any(|d| p == Path::new(d))
}

/// Whether one of two paths equals or contains the other (component-wise).
pub fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Volume {
    pub fn parse(spec: &VolumeSpec) -> Result<Volume, VolumeError> {
        let target = ContainerPath::parse(&spec.target).map_err(VolumeError::Target)?;
        let src = &spec.source;
        let source = match spec.scope {
            VolumeScope::Absolute => HostPath::parse(src).map(Source::Absolute),
            VolumeScope::Project => RelPath::parse(src).map(Source::Project),
            VolumeScope::Stage => RelPath::parse(src).map(Source::Stage),
        }
        .map_err(VolumeError::Source)?;
        Ok(Volume { source, target })
    }

    /// The spec in normal form (what the API stores).
    pub fn to_spec(&self) -> VolumeSpec {
        let (scope, source) = match &self.source {
            Source::Absolute(p) => (VolumeScope::Absolute, p.as_path()),
            Source::Project(p) => (VolumeScope::Project, p.as_path()),
            Source::Stage(p) => (VolumeScope::Stage, p.as_path()),
        };
        VolumeSpec {
            scope,
            source: source.to_string_lossy().into_owned(),
            target: self.target.as_path().to_string_lossy().into_owned(),
        }
    }

    /// The path below the volumes root of a `project`/`stage` volume (none for
    /// `absolute`).
    fn below_volumes_root(
        &self,
        project: &str,
        stage: &str,
    ) -> Result<Option<PathBuf>, VolumeError> {
        Ok(match &self.source {
            Source::Absolute(_) => None,
            Source::Project(rel) => {
                Some(Path::new(component(project, "project")?).join(rel.as_path()))
            }
            Source::Stage(rel) => Some(
                Path::new(component(project, "project")?)
                    .join(component(stage, "stage")?)
                    .join(rel.as_path()),
            ),
        })
    }

    /// Place the volume on a node with these roots, applying every rule.
    pub fn place(
        &self,
        project: &str,
        stage: &str,
        roots: &NodeRoots,
    ) -> Result<Placement, VolumeError> {
        let placement = match self.below_volumes_root(project, stage)? {
            Some(rel) => Placement {
                base: roots.volumes_root.clone(),
                rel,
            },
            None => {
                let Source::Absolute(p) = &self.source else {
                    unreachable!("only absolute volumes lie outside the volumes root")
                };
                let p = p.as_path();
                if is_system_path(p) {
                    return Err(VolumeError::SystemPath);
                }
                if roots.absolute_roots.is_empty() {
                    return Err(VolumeError::NoAbsoluteRoots);
                }
                // The longest matching root is the one the path is walked from.
                let base = roots
                    .absolute_roots
                    .iter()
                    .filter(|r| p.starts_with(r) && p != r.as_path())
                    .max_by_key(|r| r.as_os_str().len())
                    .ok_or(VolumeError::OutsideAbsoluteRoots)?;
                let rel = p.strip_prefix(base).expect("starts_with").to_path_buf();
                Placement {
                    base: base.clone(),
                    rel,
                }
            }
        };
        let path = placement.path();
        if path.as_os_str().len() > PATH_MAX {
            return Err(VolumeError::HostPathTooLong);
        }
        if is_system_path(&path) {
            return Err(VolumeError::SystemPath);
        }
        if overlaps(&path, &roots.state_dir) || overlaps(&path, &roots.snapshot_dir) {
            return Err(VolumeError::OwnDirectory);
        }
        if roots.volumes_root.starts_with(&path) {
            return Err(VolumeError::VolumesRootParent);
        }
        Ok(placement)
    }

    /// The lexical host path used to compare workloads for overlaps, without the
    /// allow-list (a workload whose config is refused still owns its directories).
    /// Without the node's volumes root, `project`/`stage` volumes compare by their path
    /// below it (relative, so never equal to an absolute path) and `absolute` ones
    /// cannot be compared (`None`).
    pub fn overlap_key(
        &self,
        project: &str,
        stage: &str,
        volumes_root: Option<&Path>,
    ) -> Option<PathBuf> {
        match (self.below_volumes_root(project, stage).ok()?, volumes_root) {
            (Some(rel), Some(root)) => Some(root.join(rel)),
            (Some(rel), None) => Some(rel),
            (None, Some(_)) => match &self.source {
                Source::Absolute(p) => Some(p.as_path().to_path_buf()),
                _ => None,
            },
            (None, None) => None,
        }
    }
}

/// Parse every volume of a config (all or nothing): count, each spec, unique targets.
pub fn parse_all(specs: &[VolumeSpec]) -> Result<Vec<Volume>, VolumeRefusal> {
    if specs.len() > MAX_VOLUMES {
        return Err(VolumeRefusal {
            index: MAX_VOLUMES,
            target: specs[MAX_VOLUMES].target.clone(),
            error: VolumeError::Target(PathError::TooLong),
        });
    }
    let mut out: Vec<Volume> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let refuse = |error| VolumeRefusal {
            index,
            target: spec.target.clone(),
            error,
        };
        let v = Volume::parse(spec).map_err(refuse)?;
        if out.iter().any(|o| o.target == v.target) {
            return Err(refuse(VolumeError::DuplicateTarget));
        }
        out.push(v);
    }
    Ok(out)
}

/// Parse and place every volume of a workload config on a node (all or nothing),
/// refusing volumes of the config that overlap each other.
pub fn place_all(
    project: &str,
    stage: &str,
    specs: &[VolumeSpec],
    roots: &NodeRoots,
) -> Result<Vec<Placement>, VolumeRefusal> {
    let vols = parse_all(specs)?;
    let mut out: Vec<Placement> = Vec::with_capacity(vols.len());
    for (index, (v, spec)) in vols.iter().zip(specs).enumerate() {
        let refuse = |error| VolumeRefusal {
            index,
            target: spec.target.clone(),
            error,
        };
        let p = v.place(project, stage, roots).map_err(refuse)?;
        let path = p.path();
        if let Some(j) = out.iter().position(|o| overlaps(&o.path(), &path)) {
            return Err(refuse(VolumeError::OverlapsOwnVolume(
                specs[j].target.clone(),
            )));
        }
        out.push(p);
    }
    Ok(out)
}

/// What a registration or update needs to hear from the rules, given what the node
/// published (`None`: its worker has not started yet, so only the lexical rules apply
/// and `absolute` volumes are refused).
pub fn check_config(
    project: &str,
    stage: &str,
    specs: &[VolumeSpec],
    roots: Option<&NodeRoots>,
) -> Result<Vec<Volume>, VolumeRefusal> {
    let vols = parse_all(specs)?;
    match roots {
        Some(r) => {
            place_all(project, stage, specs, r)?;
        }
        None => {
            let mut keys: Vec<PathBuf> = Vec::with_capacity(vols.len());
            for (index, (v, spec)) in vols.iter().zip(specs).enumerate() {
                let refuse = |error| VolumeRefusal {
                    index,
                    target: spec.target.clone(),
                    error,
                };
                if let Source::Absolute(p) = &v.source {
                    return Err(refuse(if is_system_path(p.as_path()) {
                        VolumeError::SystemPath
                    } else {
                        VolumeError::NoAbsoluteRoots
                    }));
                }
                let key = v
                    .below_volumes_root(project, stage)
                    .map_err(refuse)?
                    .expect("not absolute");
                if let Some(j) = keys.iter().position(|k| overlaps(k, &key)) {
                    return Err(refuse(VolumeError::OverlapsOwnVolume(
                        specs[j].target.clone(),
                    )));
                }
                keys.push(key);
            }
        }
    }
    Ok(vols)
}

/// A volume of one workload whose host path equals, contains or lies inside a volume
/// of another workload of the same node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// Index and target of the volume of the workload being checked.
    pub index: usize,
    pub target: String,
    pub other_id: WorkloadId,
    pub other_project: String,
    pub other_stage: String,
    pub other_name: String,
    pub other_target: String,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "volume {:?} overlaps volume {:?} of workload {} ({}/{}/{}) on the same node: \
             no two workloads may share, contain or nest host directories",
            self.target,
            self.other_target,
            self.other_id,
            self.other_project,
            self.other_stage,
            self.other_name
        )
    }
}

impl std::error::Error for Overlap {}

/// The first overlap between `mine` (index, target, host path or overlap key) and the
/// volumes of `others` (other workloads of the same node), compared by
/// [`Volume::overlap_key`] with the node's volumes root (when known).
pub fn find_overlap(
    mine: &[(usize, String, PathBuf)],
    others: &[Workload],
    volumes_root: Option<&Path>,
) -> Option<Overlap> {
    for other in others {
        for spec in &other.volumes {
            let Ok(v) = Volume::parse(spec) else {
                continue;
            };
            let Some(key) = v.overlap_key(&other.project, &other.stage, volumes_root) else {
                continue;
            };
            if let Some((index, target, _)) = mine.iter().find(|(_, _, p)| overlaps(p, &key)) {
                return Some(Overlap {
                    index: *index,
                    target: target.clone(),
                    other_id: other.id,
                    other_project: other.project.clone(),
                    other_stage: other.stage.clone(),
                    other_name: other.name.clone(),
                    other_target: spec.target.clone(),
                });
            }
        }
    }
    None
}

/// The overlap keys of a config about to be written (see [`Volume::overlap_key`]).
pub fn overlap_keys(
    project: &str,
    stage: &str,
    vols: &[Volume],
    volumes_root: Option<&Path>,
) -> Vec<(usize, String, PathBuf)> {
    vols.iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let key = v.overlap_key(project, stage, volumes_root)?;
            Some((i, v.to_spec().target, key))
        })
        .collect()
}

/// Why a node's root setting is refused at worker start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("{setting} must be an absolute path")]
    NotAbsolute { setting: &'static str },
    #[error("{setting} is `/` or a system directory ({path})")]
    SystemDirectory { setting: &'static str, path: String },
    #[error("{setting} ({path}) overlaps volsnap's state or snapshot directory")]
    OverlapsOwnDirectory { setting: &'static str, path: String },
}

/// A volumes root or absolute root must not be `/`, a system directory (nor inside a
/// system tree), and must neither be, contain nor lie inside the state or snapshot
/// directory. `root` is absolute and normalised (as the worker canonicalises it).
pub fn check_root(
    setting: &'static str,
    root: &Path,
    state_dir: &Path,
    snapshot_dir: &Path,
) -> Result<(), RootError> {
    if !root.is_absolute() {
        return Err(RootError::NotAbsolute { setting });
    }
    let path = root.display().to_string();
    if root == Path::new("/") || is_system_path(root) {
        return Err(RootError::SystemDirectory { setting, path });
    }
    if overlaps(root, state_dir) || overlaps(root, snapshot_dir) {
        return Err(RootError::OverlapsOwnDirectory { setting, path });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(scope: VolumeScope, source: &str, target: &str) -> VolumeSpec {
        VolumeSpec {
            scope,
            source: source.into(),
            target: target.into(),
        }
    }

    fn roots(abs: &[&str]) -> NodeRoots {
        NodeRoots {
            volumes_root: "/srv/volsnap/volumes".into(),
            absolute_roots: abs.iter().map(PathBuf::from).collect(),
            state_dir: "/var/lib/volsnap".into(),
            snapshot_dir: "/var/lib/volsnap/snapshots".into(),
        }
    }

    fn place(spec: VolumeSpec, r: &NodeRoots) -> Result<Placement, VolumeError> {
        Volume::parse(&spec)?.place("proj", "prod", r)
    }

    #[test]
    fn paths_are_normalised_and_bounded() {
        assert_eq!(
            RelPath::parse("./a//b/").unwrap().as_path(),
            Path::new("a/b")
        );
        assert_eq!(RelPath::parse("a/../b"), Err(PathError::DotDot));
        assert_eq!(RelPath::parse("/a"), Err(PathError::NotRelative));
        assert_eq!(RelPath::parse("."), Err(PathError::Empty));
        assert_eq!(RelPath::parse(""), Err(PathError::Empty));
        assert_eq!(RelPath::parse("a\0b"), Err(PathError::Control));
        assert_eq!(RelPath::parse("a\nb"), Err(PathError::Control));
        assert_eq!(HostPath::parse("/"), Err(PathError::Root));
        assert_eq!(HostPath::parse("//."), Err(PathError::Root));
        assert_eq!(HostPath::parse("srv"), Err(PathError::NotAbsolute));
        RelPath::parse(&"x".repeat(NAME_MAX)).unwrap();
        assert_eq!(
            RelPath::parse(&"x".repeat(NAME_MAX + 1)),
            Err(PathError::ComponentTooLong)
        );
        let long = vec!["y".repeat(200); 21].join("/");
        assert_eq!(RelPath::parse(&long), Err(PathError::TooLong));
    }

    #[test]
    fn scopes_place_under_their_bases() {
        let r = roots(&["/data/apps"]);
        let p = place(vol(VolumeScope::Stage, "db/x", "/d"), &r).unwrap();
        assert_eq!(p.base, Path::new("/srv/volsnap/volumes"));
        assert_eq!(p.rel, Path::new("proj/prod/db/x"));
        let p = place(vol(VolumeScope::Project, "shared", "/d"), &r).unwrap();
        assert_eq!(p.rel, Path::new("proj/shared"));
        let p = place(vol(VolumeScope::Absolute, "/data/apps/a/b", "/d"), &r).unwrap();
        assert_eq!(p.base, Path::new("/data/apps"));
        assert_eq!(p.rel, Path::new("a/b"));
        assert_eq!(p.path(), Path::new("/data/apps/a/b"));
    }

    #[test]
    fn absolute_volumes_need_an_allowing_root() {
        let none = roots(&[]);
        let some = roots(&["/data/apps"]);
        let abs = |s: &str| vol(VolumeScope::Absolute, s, "/d");
        assert_eq!(
            place(abs("/data/apps/x"), &none),
            Err(VolumeError::NoAbsoluteRoots)
        );
        assert_eq!(
            place(abs("/data/other"), &some),
            Err(VolumeError::OutsideAbsoluteRoots)
        );
        // The root itself is not a volume; `/data/apps2` is not under `/data/apps`.
        assert_eq!(
            place(abs("/data/apps"), &some),
            Err(VolumeError::OutsideAbsoluteRoots)
        );
        assert_eq!(
            place(abs("/data/apps2/x"), &some),
            Err(VolumeError::OutsideAbsoluteRoots)
        );
        for sys in ["/run/x", "/etc", "/var/lib/docker/volumes/v", "/root"] {
            assert_eq!(
                place(abs(sys), &some),
                Err(VolumeError::SystemPath),
                "{sys}"
            );
            assert_eq!(
                place(abs(sys), &none),
                Err(VolumeError::SystemPath),
                "{sys}"
            );
        }
        assert_eq!(
            VolumeError::NoAbsoluteRoots.code(),
            failure::ABSOLUTE_NOT_ALLOWED
        );
    }

    #[test]
    fn own_directories_and_root_parents_are_refused() {
        let r = roots(&["/var/lib/volsnap-data", "/srv/volsnap"]);
        let r = NodeRoots {
            absolute_roots: r
                .absolute_roots
                .into_iter()
                .chain([PathBuf::from("/var/lib")])
                .collect(),
            ..r
        };
        let abs = |s: &str| vol(VolumeScope::Absolute, s, "/d");
        assert_eq!(
            place(abs("/var/lib/volsnap/snapshots/x"), &r),
            Err(VolumeError::OwnDirectory)
        );
        assert_eq!(
            place(abs("/srv/volsnap/volumes"), &r),
            Err(VolumeError::VolumesRootParent)
        );
        place(abs("/srv/volsnap/volumes/proj/prod/data"), &r).unwrap();
    }

    #[test]
    fn a_config_is_all_or_nothing() {
        let r = roots(&[]);
        let e = place_all(
            "proj",
            "prod",
            &[
                vol(VolumeScope::Stage, "a", "/a"),
                vol(VolumeScope::Stage, "a/b", "/b"),
            ],
            &r,
        )
        .unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.error, VolumeError::OverlapsOwnVolume("/a".into()));
        let e = parse_all(&[
            vol(VolumeScope::Stage, "a", "/a"),
            vol(VolumeScope::Stage, "b", "/a/"),
        ])
        .unwrap_err();
        assert_eq!((e.index, &e.error), (1, &VolumeError::DuplicateTarget));
        assert_eq!(e.field(), "volumes[1].target");
        // Without published roots: lexical checks, absolute refused, nesting found.
        let e = check_config(
            "proj",
            "prod",
            &[
                vol(VolumeScope::Project, "prod", "/a"),
                vol(VolumeScope::Stage, "x", "/b"),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(e.error, VolumeError::OverlapsOwnVolume("/a".into()));
        let e =
            check_config("p", "s", &[vol(VolumeScope::Absolute, "/x/y", "/a")], None).unwrap_err();
        assert_eq!(e.error, VolumeError::NoAbsoluteRoots);
    }

    #[test]
    fn messages_name_the_target_not_the_host_path() {
        let r = roots(&["/data/apps"]);
        for (spec, secret) in [
            (
                vol(VolumeScope::Absolute, "/run/secret-x", "/d"),
                "secret-x",
            ),
            (vol(VolumeScope::Absolute, "/data/nope-x", "/d"), "nope-x"),
            (vol(VolumeScope::Stage, &"z".repeat(300), "/d"), "zzzz"),
        ] {
            let msg = place_all("proj", "prod", std::slice::from_ref(&spec), &r)
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("volume \"/d\": "), "{msg}");
            assert!(!msg.contains(secret), "{msg}");
            assert!(!msg.contains("/data"), "{msg}");
        }
    }

    #[test]
    fn roots_are_checked() {
        let (s, n) = (Path::new("/var/lib/volsnap"), Path::new("/backups/snap"));
        let ok = |p: &str| check_root("VOLSNAP_VOLUMES_ROOT", Path::new(p), s, n);
        ok("/srv/volsnap/volumes").unwrap();
        ok("/data").unwrap();
        for bad in ["/", "/etc", "/usr/local", "/var", "/home", "/run/x", "/tmp"] {
            assert!(
                matches!(ok(bad), Err(RootError::SystemDirectory { .. })),
                "{bad}"
            );
        }
        for bad in ["/var/lib/volsnap/x", "/backups", "/backups/snap"] {
            assert!(
                matches!(ok(bad), Err(RootError::OverlapsOwnDirectory { .. })),
                "{bad}"
            );
        }
        assert!(ok("rel").is_err());
        assert!(
            ok("/")
                .unwrap_err()
                .to_string()
                .contains("VOLSNAP_VOLUMES_ROOT")
        );
    }
}
