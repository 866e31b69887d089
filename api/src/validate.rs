//! Validation of client input, before anything reaches the database. Each failure is a
//! 400 naming the field. Volume paths follow the one set of rules in
//! `volsnap_shared::volume` (the worker applies the same code at pre-flight); here the
//! lexical half, the rest (the node's published roots, overlaps with the node's other
//! workloads) when the workload is written.

use chrono::{DateTime, Datelike as _, Utc};
use volsnap_shared::db;
use volsnap_shared::db::workloads::WorkloadFields;
use volsnap_shared::domain::{self, SourceKind, VolumeSpec};
use volsnap_shared::volume::{self, VolumeRefusal};

use crate::error::Error;

/// Most volumes one workload may have.
pub const MAX_VOLUMES: usize = volume::MAX_VOLUMES;

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

/// A node name: the strict grammar of `volsnap_shared::domain::check_node_name`
/// (the worker applies it to its own `VOLSNAP_NODE` at start).
pub fn node(field: &str, value: &str) -> Result<(), Error> {
    domain::check_node_name(value).map_err(|e| Error::invalid_field(field, e))
}

/// A refused volume as a 400 naming its field; the message names the volume by its
/// container target, never by a host path.
pub fn volume_refusal(r: &VolumeRefusal) -> Error {
    Error::invalid_field(r.field(), r)
}

/// The lexical volume rules; returns the volumes in normal form.
pub fn volumes(volumes: &[VolumeSpec]) -> Result<Vec<VolumeSpec>, Error> {
    if volumes.len() > MAX_VOLUMES {
        return Err(Error::invalid_field(
            "volumes",
            format!("at most {MAX_VOLUMES} volumes"),
        ));
    }
    let parsed = volume::parse_all(volumes).map_err(|r| volume_refusal(&r))?;
    Ok(parsed.iter().map(volume::Volume::to_spec).collect())
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

/// An opaque listing cursor, as handed out in `next_cursor`. Its timestamp must be one
/// a row can have (years 1 to 9999): PostgreSQL refuses far-out ones.
pub fn cursor(cursor: Option<&str>) -> Result<Option<db::Cursor>, Error> {
    cursor
        .map(|c| {
            db::Cursor::decode(c)
                .filter(|c| plausible(c.created_at))
                .ok_or_else(|| Error::invalid_field("cursor", "not a cursor this API handed out"))
        })
        .transpose()
}

fn plausible(t: DateTime<Utc>) -> bool {
    (1..=9999).contains(&t.year())
}

/// The whole workload body; its volumes are put in normal form.
pub fn workload(f: &mut WorkloadFields) -> Result<(), Error> {
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
    f.volumes = volumes(&f.volumes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use volsnap_shared::domain::VolumeScope;

    fn vol(scope: VolumeScope, source: &str, target: &str) -> VolumeSpec {
        VolumeSpec {
            scope,
            source: source.into(),
            target: target.into(),
        }
    }

    fn field_of<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
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
    fn node_names() {
        node("node", "node-a.example").unwrap();
        for bad in ["", "a b", "node\u{200b}", "node\u{202e}x", "\u{0410}"] {
            assert_eq!(field_of(node("node", bad)), "node", "{bad:?}");
        }
    }

    #[test]
    fn volume_paths() {
        use VolumeScope::*;
        let normal = volumes(&[
            vol(Absolute, "/srv/app/", "/data"),
            vol(Stage, "./data//db", "/var/lib/db"),
        ])
        .unwrap();
        assert_eq!(normal[0].source, "/srv/app");
        assert_eq!(normal[1].source, "data/db");
        for (v, field) in [
            (vol(Absolute, "srv", "/d"), "volumes[0].source"),
            (vol(Absolute, "/", "/d"), "volumes[0].source"),
            (vol(Absolute, "/srv/../etc", "/d"), "volumes[0].source"),
            (vol(Project, "/abs", "/d"), "volumes[0].source"),
            (vol(Project, "../up", "/d"), "volumes[0].source"),
            (vol(Stage, "a/../../b", "/d"), "volumes[0].source"),
            (vol(Stage, "", "/d"), "volumes[0].source"),
            (vol(Stage, &"x".repeat(300), "/d"), "volumes[0].source"),
            (vol(Stage, "x", "rel"), "volumes[0].target"),
            (vol(Stage, "x", "/"), "volumes[0].target"),
            (vol(Stage, "x", "/a/../b"), "volumes[0].target"),
        ] {
            assert_eq!(field_of(volumes(std::slice::from_ref(&v))), field, "{v:?}");
        }
        let dup = [vol(Stage, "a", "/d"), vol(Stage, "b", "/d/")];
        assert_eq!(field_of(volumes(&dup)), "volumes[1].target");
    }

    #[test]
    fn cursors_with_far_out_timestamps_are_refused() {
        let far = db::Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(i64::MAX / 2).unwrap(),
            id: uuid::Uuid::nil(),
        };
        assert_eq!(field_of(cursor(Some(&far.encode()))), "cursor");
        let now = db::Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(Utc::now().timestamp_micros())
                .unwrap(),
            id: uuid::Uuid::nil(),
        };
        assert_eq!(cursor(Some(&now.encode())).unwrap(), Some(now));
    }
}
