//! Coverage-guided fuzzing of the extractor.
//!
//! Input: the first byte picks how the rest is used: even → a raw tar stream that is
//! gzipped (stored, level 0) before extraction, so the fuzzer explores the tar reader
//! and the rules; odd → the bytes are the archive as is (gzip layer). After every run:
//! no panic, the staging directory exists only if extraction succeeded, and the
//! sentinel next to it is untouched.
#![no_main]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use volsnap_archive::{ExtractOptions, Limits};

struct Arena {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn arena() -> &'static Arena {
    static A: OnceLock<Arena> = OnceLock::new();
    A.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir(root.join("sentinel")).unwrap();
        std::fs::write(root.join("sentinel/victim"), b"original").unwrap();
        std::fs::create_dir(root.join("parent")).unwrap();
        Arena { _tmp: tmp, root }
    })
}

fn open_up(p: &Path) {
    if let Ok(md) = std::fs::symlink_metadata(p) {
        if md.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            for e in std::fs::read_dir(p).unwrap() {
                open_up(&e.unwrap().path());
            }
        }
    }
}

fn check_sentinel(root: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["parent", "sentinel"]);
    let s: Vec<_> = std::fs::read_dir(root.join("sentinel")).unwrap().collect();
    assert_eq!(s.len(), 1);
    assert_eq!(
        std::fs::read(root.join("sentinel/victim")).unwrap(),
        b"original"
    );
    assert_eq!(std::fs::read_dir(root.join("parent")).unwrap().count(), 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode % 2 == 0 {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
        e.write_all(rest).unwrap();
        e.finish().unwrap()
    } else {
        rest.to_vec()
    };
    let a = arena();
    let staging = a.root.join("parent/stage0");
    let map = BTreeMap::from([(0u32, staging.clone())]);
    let opts = ExtractOptions {
        fsync: false,
        // Small caps keep each run fast without changing which code paths exist.
        limits: Limits {
            max_total_bytes: 16 << 20,
            max_entry_size: 8 << 20,
            ratio_grace_bytes: 1 << 20,
            ..Limits::default()
        },
        ..ExtractOptions::default()
    };
    match volsnap_archive::extract(&input[..], &map, &opts, &mut |_, _| {}) {
        Ok(_) => {
            assert!(staging.is_dir());
            open_up(&staging);
            std::fs::remove_dir_all(&staging).unwrap();
        }
        Err(_) => assert!(std::fs::symlink_metadata(&staging).is_err()),
    }
    check_sentinel(&a.root);
});
