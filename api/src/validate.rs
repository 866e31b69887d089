//! Validation of client input, before anything reaches the database. Each failure is a
//! 400 naming the field. The worker re-checks volume paths against the node's real
//! filesystem (symlinks, its own state dir); these are the lexical rules.

use volsnap_shared::db;
use volsnap_shared::db::workloads::WorkloadFields;
use volsnap_shared::domain::{SourceKind, VolumeScope, VolumeSpec};

use crate::error::Error;

/// Most volumes one workload may have.
pub const MAX_VOLUMES: usize = 64;
const MAX_PATH: usize = 4096;

/// Host paths an `absolute` volume may not be, nor be under (the worker refuses these
/// and a few more, such as its own state directory).
const SYSTEM_PATHS: &[&str] = &[
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/var/lib/docker",
];

/// `^[a-z0-9][a-z0-9_.-]{0,62}$` — the same rule as the table's CHECK constraint.
pub fn slug(field: &str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'_' | b'.' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_field(
            field,
            "must match ^[a-z0-9][a-z0-9_.-]{0,62}$ (lowercase letters, digits, '_', '.', '-'; at most 63)",
        ))
    }
}

/// A node name: 1–253 printable characters without whitespace.
pub fn node(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty()
        || value.len() > 253
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid_field(
            field,
            "must be 1 to 253 characters without whitespace",
        ));
    }
    Ok(())
}

/// `/`-separated segments with no empty, `.` or `..` segment; NUL and control
/// characters refused.
fn normalised_segments(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// An absolute, normalised path other than `/`.
fn absolute(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(normalised_segments)
}

fn is_system_path(path: &str) -> bool {
    SYSTEM_PATHS.iter().any(|p| {
        path == *p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

pub fn volumes(volumes: &[VolumeSpec]) -> Result<(), Error> {
    if volumes.len() > MAX_VOLUMES {
        return Err(Error::invalid_field(
            "volumes",
            format!("at most {MAX_VOLUMES} volumes"),
        ));
    }
    for (i, v) in volumes.iter().enumerate() {
        let source = format!("volumes[{i}].source");
        match v.scope {
            VolumeScope::Absolute => {
                if !absolute(&v.source) {
                    return Err(Error::invalid_field(
                        source,
                        "scope absolute needs an absolute, normalised host path (no '.', '..' or '//', not '/')",
                    ));
                }
                if is_system_path(&v.source) {
                    return Err(Error::invalid_field(
                        source,
                        "a system path cannot be a volume",
                    ));
                }
            }
            VolumeScope::Project | VolumeScope::Stage => {
                if v.source.starts_with('/') || !normalised_segments(&v.source) {
                    return Err(Error::invalid_field(
                        source,
                        format!(
                            "scope {} needs a relative, normalised path (no leading '/', no '.', '..' or '//')",
                            v.scope
                        ),
                    ));
                }
            }
        }
        let target = format!("volumes[{i}].target");
        if !absolute(&v.target) {
            return Err(Error::invalid_field(
                target,
                "must be an absolute, normalised container path (no '.', '..' or '//', not '/')",
            ));
        }
        if volumes[..i].iter().any(|o| o.target == v.target) {
            return Err(Error::invalid_field(
                target,
                "targets must be unique within a workload",
            ));
        }
    }
    Ok(())
}

/// A page size: 1 to 500, 100 when absent.
pub fn limit(limit: Option<i64>) -> Result<i64, Error> {
    match limit {
        None => Ok(db::DEFAULT_LIMIT),
        Some(l) if (1..=db::MAX_LIMIT).contains(&l) => Ok(l),
        Some(_) => Err(Error::invalid_field(
            "limit",
            format!("must be from 1 to {}", db::MAX_LIMIT),
        )),
    }
}

/// An opaque listing cursor, as handed out in `next_cursor`.
pub fn cursor(cursor: Option<&str>) -> Result<Option<db::Cursor>, Error> {
    cursor
        .map(|c| {
            db::Cursor::decode(c)
                .ok_or_else(|| Error::invalid_field("cursor", "not a cursor this API handed out"))
        })
        .transpose()
}

/// The whole workload body.
pub fn workload(f: &WorkloadFields) -> Result<(), Error> {
    slug("name", &f.name)?;
    slug("project", &f.project)?;
    slug("stage", &f.stage)?;
    node("node", &f.node)?;
    match (&f.image, f.source_kind) {
        (None, SourceKind::Image) => {
            return Err(Error::invalid_field(
                "image",
                "required when source_kind is image",
            ));
        }
        (Some(image), _)
            if image.is_empty()
                || image.len() > 512
                || image.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return Err(Error::invalid_field(
                "image",
                "must be 1 to 512 characters without whitespace",
            ));
        }
        _ => {}
    }
    volumes(&f.volumes)
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

    fn field_of(r: Result<(), Error>) -> String {
        r.unwrap_err().field.unwrap()
    }

    #[test]
    fn slugs() {
        for ok in ["a", "app", "a-b.c_d", "0", &"a".repeat(63)] {
            slug("name", ok).unwrap();
        }
        for bad in [
            "",
            "A",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
            "a\0",
        ] {
            assert_eq!(field_of(slug("name", bad)), "name", "{bad:?}");
        }
    }

    #[test]
    fn volume_paths() {
        use VolumeScope::*;
        volumes(&[
            vol(Absolute, "/srv/app", "/data"),
            vol(Stage, "data/db", "/var/lib/db"),
        ])
        .unwrap();
        for (v, field) in [
            (vol(Absolute, "srv", "/d"), "volumes[0].source"),
            (vol(Absolute, "/", "/d"), "volumes[0].source"),
            (vol(Absolute, "/srv/../etc", "/d"), "volumes[0].source"),
            (vol(Absolute, "/srv//x", "/d"), "volumes[0].source"),
            (vol(Absolute, "/srv/./x", "/d"), "volumes[0].source"),
            (vol(Absolute, "/srv/", "/d"), "volumes[0].source"),
            (vol(Absolute, "/etc", "/d"), "volumes[0].source"),
            (
                vol(Absolute, "/var/lib/docker/volumes/x", "/d"),
                "volumes[0].source",
            ),
            (vol(Project, "/abs", "/d"), "volumes[0].source"),
            (vol(Project, "../up", "/d"), "volumes[0].source"),
            (vol(Stage, "a/../../b", "/d"), "volumes[0].source"),
            (vol(Stage, "", "/d"), "volumes[0].source"),
            (vol(Stage, "x", "rel"), "volumes[0].target"),
            (vol(Stage, "x", "/"), "volumes[0].target"),
            (vol(Stage, "x", "/a/../b"), "volumes[0].target"),
        ] {
            assert_eq!(field_of(volumes(std::slice::from_ref(&v))), field, "{v:?}");
        }
        // /etcetera is not under /etc
        volumes(&[vol(Absolute, "/etcetera", "/d")]).unwrap();
        let dup = [vol(Stage, "a", "/d"), vol(Stage, "b", "/d")];
        assert_eq!(field_of(volumes(&dup)), "volumes[1].target");
    }
}
