//! `manifest.json`, the first entry of every volsnap/1 archive.
//!
//! The manifest is untrusted input: [`Manifest::parse`] checks its shape strictly
//! (unknown fields, an unknown format string, duplicate indexes or targets are refused),
//! but nothing here makes `scope` or `source` meaningful for a path — the restore engine
//! maps volumes by `target` to the workload's *current* configuration.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ArchiveError, show};
use crate::limits::{Limits, MANIFEST_MAX_BYTES};
use crate::tarfmt::{ChunkSource, EntryType, TarStream};

/// The format string of this version of the archive format.
pub const FORMAT: &str = "volsnap/1";

/// The reserved name of the first entry.
pub const MANIFEST_NAME: &str = "manifest.json";

/// Most volumes one archive may describe.
pub const MAX_VOLUMES: usize = 4096;

/// Longest string field (target, scope, source, workload id), in bytes.
const MAX_FIELD_LEN: usize = 4096;

/// Reads the first entry of a tar stream as the manifest: a regular file named
/// `manifest.json`, at most [`MANIFEST_MAX_BYTES`], valid volsnap/1 JSON.
pub(crate) fn read_manifest_entry<S: ChunkSource>(
    stream: &mut TarStream<S>,
    limits: &Limits,
) -> Result<Manifest, ArchiveError> {
    let Some(e) = stream.next_entry(limits)? else {
        return Err(ArchiveError::ManifestMissing {
            first: "<end of archive>".into(),
        });
    };
    if e.name != MANIFEST_NAME.as_bytes() || e.etype != EntryType::Regular {
        return Err(ArchiveError::ManifestMissing {
            first: show(&e.name),
        });
    }
    if e.size > MANIFEST_MAX_BYTES {
        return Err(ArchiveError::ManifestTooLarge {
            size: e.size,
            limit: MANIFEST_MAX_BYTES,
        });
    }
    let data = stream.read_vec(e.size)?;
    Manifest::parse(&data)
}

/// The decoded `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`] (`"volsnap/1"`).
    pub format: String,
    /// The workload the snapshot was taken of.
    pub workload_id: String,
    /// When the capture started (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
    /// One entry per captured volume; their `index` values are unique.
    pub volumes: Vec<ManifestVolume>,
}

/// One captured volume as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestVolume {
    /// The volume's entries live under `volumes/<index>/`.
    pub index: u32,
    /// Mount point in the container; the key the restore engine maps volumes by.
    pub target: String,
    /// `absolute`, `project` or `stage` at capture time (informational only).
    pub scope: String,
    /// The source at capture time (informational only; never used to compute a path).
    pub source: String,
    /// Number of regular files in the volume (directories and symlinks not counted).
    pub files: u64,
    /// Sum of the regular files' sizes in bytes.
    pub bytes: u64,
    /// Entries the writer left out: sockets, fifos, devices, and symlinks that are
    /// absolute or point outside the volume. Absent when zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ArchiveError> {
        if bytes.len() as u64 > MANIFEST_MAX_BYTES {
            return Err(ArchiveError::ManifestTooLarge {
                size: bytes.len() as u64,
                limit: MANIFEST_MAX_BYTES,
            });
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ArchiveError::ManifestInvalid {
                reason: "not volsnap/1 manifest JSON".into(),
                source: Some(e),
            })?;
        m.validate()?;
        Ok(m)
    }

    /// Checks everything JSON decoding does not: format, unique indexes and targets,
    /// known scopes, bounded strings, totals that do not overflow.
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let invalid = |reason: String| ArchiveError::ManifestInvalid {
            reason,
            source: None,
        };
        if self.format != FORMAT {
            return Err(invalid(format!(
                "format is {:?}, expected {FORMAT:?}",
                self.format
            )));
        }
        check_field("workload_id", &self.workload_id).map_err(invalid)?;
        if self.volumes.len() > MAX_VOLUMES {
            return Err(invalid(format!(
                "{} volumes, at most {MAX_VOLUMES}",
                self.volumes.len()
            )));
        }
        let mut indexes = BTreeSet::new();
        let mut targets = BTreeSet::new();
        let mut bytes: u64 = 0;
        let mut files: u64 = 0;
        for v in &self.volumes {
            if !indexes.insert(v.index) {
                return Err(invalid(format!("volume index {} appears twice", v.index)));
            }
            check_field("target", &v.target).map_err(invalid)?;
            check_field("source", &v.source).map_err(invalid)?;
            if !v.target.starts_with('/') {
                return Err(invalid(format!(
                    "volume {}: target {:?} is not an absolute path",
                    v.index, v.target
                )));
            }
            if !targets.insert(v.target.as_str()) {
                return Err(invalid(format!("target {:?} appears twice", v.target)));
            }
            if !matches!(v.scope.as_str(), "absolute" | "project" | "stage") {
                return Err(invalid(format!(
                    "volume {}: unknown scope {:?}",
                    v.index, v.scope
                )));
            }
            bytes = bytes
                .checked_add(v.bytes)
                .ok_or_else(|| invalid("declared bytes overflow".into()))?;
            files = files
                .checked_add(v.files)
                .ok_or_else(|| invalid("declared files overflow".into()))?;
        }
        Ok(())
    }

    /// The declared volume with this index.
    pub fn volume(&self, index: u32) -> Option<&ManifestVolume> {
        self.volumes.iter().find(|v| v.index == index)
    }

    /// Sum of the declared bytes of all volumes (saturating).
    pub fn total_bytes(&self) -> u64 {
        self.volumes
            .iter()
            .fold(0u64, |a, v| a.saturating_add(v.bytes))
    }

    /// Sum of the declared files of all volumes (saturating).
    pub fn total_files(&self) -> u64 {
        self.volumes
            .iter()
            .fold(0u64, |a, v| a.saturating_add(v.files))
    }

    /// The JSON written as the first entry (compact, fields in declaration order).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }
}

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.len() > MAX_FIELD_LEN {
        return Err(format!("{name} is longer than {MAX_FIELD_LEN} bytes"));
    }
    if value.contains('\0') {
        return Err(format!("{name} contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            workload_id: "0190f0a0-0000-7000-8000-000000000001".into(),
            created_at: "2025-01-02T03:04:05Z".parse().unwrap(),
            volumes: vec![ManifestVolume {
                index: 0,
                target: "/var/lib/app".into(),
                scope: "stage".into(),
                source: "data".into(),
                files: 2,
                bytes: 10,
                skipped: None,
            }],
        }
    }

    #[test]
    fn round_trips_in_the_documented_shape() {
        let m = sample();
        let json = String::from_utf8(m.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"format":"volsnap/1","workload_id":"0190f0a0-0000-7000-8000-000000000001","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/var/lib/app","scope":"stage","source":"data","files":2,"bytes":10}]}"#
        );
        assert_eq!(Manifest::parse(json.as_bytes()).unwrap(), m);
    }

    #[test]
    fn refuses_bad_shapes() {
        let bad = [
            r#"{"format":"volsnap/2","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[]}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[],"extra":1}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"yesterday","volumes":[]}"#,
            r#"{"format":"volsnap/1","workload_id":"","created_at":"2025-01-02T03:04:05Z","volumes":[]}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/a","scope":"stage","source":"d","files":0,"bytes":0},{"index":0,"target":"/b","scope":"stage","source":"d","files":0,"bytes":0}]}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/a","scope":"stage","source":"d","files":0,"bytes":0},{"index":1,"target":"/a","scope":"stage","source":"d","files":0,"bytes":0}]}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"a","scope":"stage","source":"d","files":0,"bytes":0}]}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/a","scope":"moon","source":"d","files":0,"bytes":0}]}"#,
            r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/a","scope":"stage","source":"d","files":0,"bytes":18446744073709551615},{"index":1,"target":"/b","scope":"stage","source":"d","files":0,"bytes":1}]}"#,
            r#"[]"#,
            "",
        ];
        for b in bad {
            let e = Manifest::parse(b.as_bytes()).unwrap_err();
            assert_eq!(e.rule(), "manifest_invalid", "{b}");
        }
        let big = vec![b' '; (MANIFEST_MAX_BYTES + 1) as usize];
        assert_eq!(
            Manifest::parse(&big).unwrap_err().rule(),
            "manifest_too_large"
        );
    }
}
