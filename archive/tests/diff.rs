//! The streaming diff (`volsnap_archive::diff`) against real trees and real archives:
//! exact counts for hand-made changes, agreement with a naive whole-tree comparison on
//! randomly mutated trees, symlinks in the live tree never followed, and archives out
//! of capture order refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};
use volsnap_archive::diff::{DiffError, DiffOptions, DiffSummary, diff, diff_paths};
use volsnap_archive::{
    ExtractOptions, VolumeInput, WriteOptions, extract_file, write_archive_file,
};

fn capture(dirs: &[&Path], out: &Path) {
    let inputs: Vec<VolumeInput> = dirs
        .iter()
        .enumerate()
        .map(|(i, p)| VolumeInput {
            index: i as u32,
            target: format!("/v{i}"),
            scope: "stage".into(),
            source: format!("v{i}"),
            path: p.to_path_buf(),
            root: None,
        })
        .collect();
    write_archive_file(out, "w", &inputs, &WriteOptions::default(), &mut |_, _| {}).unwrap();
}

fn run(archive: &Path, live: &[&Path]) -> DiffSummary {
    let map: BTreeMap<u32, PathBuf> = live
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32, p.to_path_buf()))
        .collect();
    diff_paths(archive, &map, &DiffOptions::default()).unwrap()
}

fn w(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

#[test]
fn identical_then_each_kind_of_change_counted_exactly() {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("vol");
    // Names whose order differs between "sort full paths" and "sort per directory":
    // `a` (a dir) < `a-b` < `a.b` < `a0`, and `a/…` must come right after `a`.
    w(&v.join("a/inner.txt"), b"inner");
    w(&v.join("a-b"), b"dash");
    w(&v.join("a.b"), b"dot");
    w(&v.join("a0/zz"), b"zero");
    w(&v.join("same-size"), b"0123456789");
    w(&v.join("grows"), b"short");
    w(&v.join("mode"), b"mode");
    w(&v.join("gone/one"), b"1");
    w(&v.join("gone/two/three"), b"333");
    w(&v.join("becomes-dir"), b"file then dir");
    w(&v.join("dir-becomes-file/x"), b"x");
    w(&v.join("\u{e9}t\u{e9}"), b"utf-8 name");
    fs::create_dir_all(v.join("empty")).unwrap();
    symlink("a/inner.txt", v.join("link")).unwrap();
    let arc = t.path().join("a.tar.gz");
    capture(&[&v], &arc);

    let d = run(&arc, &[&v]);
    let vd = &d.volumes[0];
    assert!(vd.is_identical(), "{vd:#?}");
    assert_eq!(vd.unchanged_files, 13);
    assert_eq!(vd.target, "/v0");

    // Now change the live tree in every way.
    fs::write(v.join("same-size"), b"0123456780").unwrap(); // content, same size
    fs::write(v.join("grows"), b"longer now").unwrap(); // size
    fs::set_permissions(v.join("mode"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_dir_all(v.join("gone")).unwrap(); // archive has 2 files + 2 dirs there
    w(&v.join("new/deep/file"), b"12345"); // removed by a restore: 1 file 5 B, 2 dirs
    fs::remove_file(v.join("becomes-dir")).unwrap();
    w(&v.join("becomes-dir/child"), b"ab"); // live dir+file removed, archive file added
    fs::remove_dir_all(v.join("dir-becomes-file")).unwrap();
    w(&v.join("dir-becomes-file"), b"now a file"); // live file removed, archive dir+x added
    fs::remove_file(v.join("link")).unwrap();
    symlink("elsewhere", v.join("link")).unwrap(); // target changed
    fs::remove_file(v.join("a-b")).unwrap();
    symlink("a.b", v.join("a-b")).unwrap(); // file -> symlink: changed
    let d = run(&arc, &[&v]);
    let vd = &d.volumes[0];
    // added: gone/one (1 B), gone/two/three (3 B), becomes-dir (13 B), dir-becomes-file/x
    // (1 B); dirs gone/, gone/two/, dir-becomes-file/.
    assert_eq!(
        (vd.added.files, vd.added.bytes, vd.added.dirs),
        (4, 18, 3),
        "{vd:#?}"
    );
    // changed: same-size, grows, mode, link, a-b (bytes: the archive's sizes 10+5+4+0+4).
    assert_eq!(
        (vd.changed.files, vd.changed.bytes, vd.changed.dirs),
        (5, 23, 0),
        "{vd:#?}"
    );
    // removed: new/deep/file (5 B), becomes-dir/child (2 B), dir-becomes-file (10 B);
    // dirs new/, new/deep/, becomes-dir/.
    assert_eq!(
        (vd.removed.files, vd.removed.bytes, vd.removed.dirs),
        (3, 17, 3),
        "{vd:#?}"
    );
    let changed: BTreeSet<&str> = vd.changed.samples.iter().map(String::as_str).collect();
    assert_eq!(
        changed,
        BTreeSet::from(["a-b", "grows", "link", "mode", "same-size"])
    );
    assert!(vd.removed.samples.contains(&"new/deep/file".to_string()));
    assert!(vd.added.samples.contains(&"gone/two/three".to_string()));
    assert!(vd.added.samples.contains(&"dir-becomes-file/".to_string()));
    // 13 files in the archive: 5 changed, 4 added (of which `becomes-dir` and
    // `dir-becomes-file/x` replace live entries), the rest unchanged.
    assert_eq!(vd.unchanged_files, 13 - 5 - 4);
}

#[test]
fn several_volumes_a_missing_live_root_and_samples_capped() {
    let t = tempfile::tempdir().unwrap();
    let (v0, v1) = (t.path().join("v0"), t.path().join("v1"));
    for i in 0..50 {
        w(&v0.join(format!("f{i:02}")), format!("{i}").as_bytes());
    }
    w(&v1.join("x"), b"x");
    let arc = t.path().join("a.tar.gz");
    capture(&[&v0, &v1], &arc);
    fs::remove_dir_all(&v0).unwrap();
    let d = run(&arc, &[&v0, &v1]);
    assert_eq!(d.volumes.len(), 2);
    assert_eq!(d.volumes[0].added.files, 50);
    assert_eq!(
        d.volumes[0].added.samples.len(),
        20,
        "samples are capped at 20"
    );
    assert_eq!(d.volumes[0].added.samples[0], "f00");
    assert!(d.volumes[1].is_identical());
    // A manifest volume without a live mapping is refused.
    let mut only0 = BTreeMap::new();
    only0.insert(0u32, v1.clone());
    let err = diff_paths(&arc, &only0, &DiffOptions::default()).unwrap_err();
    assert!(
        matches!(err, DiffError::VolumeUnmapped { index: 1 }),
        "{err}"
    );
}

#[test]
fn live_symlinks_are_compared_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("vol");
    let outside = t.path().join("outside");
    w(&outside.join("secret"), b"same bytes");
    w(&v.join("file"), b"same bytes");
    w(&v.join("dir/inner"), b"same bytes");
    let arc = t.path().join("a.tar.gz");
    capture(&[&v], &arc);
    // The app swaps a file and a directory for symlinks to identical content outside.
    fs::remove_file(v.join("file")).unwrap();
    symlink(outside.join("secret"), v.join("file")).unwrap();
    fs::remove_dir_all(v.join("dir")).unwrap();
    symlink(&outside, v.join("dir")).unwrap();
    let d = run(&arc, &[&v]);
    let vd = &d.volumes[0];
    // `file` is now a symlink: changed (not "same content" through the link).
    assert_eq!(vd.changed.samples, vec!["file".to_string()]);
    // `dir` is a symlink, not a directory: the archive's dir and its file are added,
    // the live link removed; nothing under `outside` was counted.
    assert_eq!((vd.added.files, vd.added.dirs), (1, 1), "{vd:#?}");
    assert_eq!(
        (vd.removed.files, vd.removed.dirs, vd.removed.bytes),
        (1, 0, 0)
    );
    // The root itself as a symlink is refused when opened by path.
    let link_root = t.path().join("link-root");
    symlink(&v, &link_root).unwrap();
    let mut m = BTreeMap::new();
    m.insert(0u32, link_root);
    assert!(diff_paths(&arc, &m, &DiffOptions::default()).is_err());
}

#[test]
fn archives_out_of_capture_order_are_refused_and_rules_still_apply() {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("vol");
    fs::create_dir_all(&v).unwrap();
    let roots = |arc: Vec<u8>| {
        let mut r = volsnap_archive::diff::LiveRoots::new();
        r.insert(0, volsnap_archive::diff::open_live_root(&v).unwrap());
        diff(&arc[..], r, &DiffOptions::default())
    };
    // Unsorted siblings.
    let arc = archive(&[
        Raw::dir("volumes/0/"),
        Raw::file("volumes/0/b", "b"),
        Raw::file("volumes/0/a", "a"),
    ]);
    let err = roots(arc).unwrap_err();
    assert_eq!(err.code(), "diff_archive_not_canonical", "{err}");
    // A child after its directory was left.
    let arc = archive(&[
        Raw::dir("volumes/0/"),
        Raw::dir("volumes/0/d/"),
        Raw::file("volumes/0/e", "e"),
        Raw::file("volumes/0/d/x", "x"),
    ]);
    assert_eq!(roots(arc).unwrap_err().code(), "diff_archive_not_canonical");
    // Hostile names are refused by the format's own rules.
    let arc = archive(&[Raw::dir("volumes/0/"), Raw::file("volumes/0/../x", "x")]);
    assert_eq!(roots(arc).unwrap_err().code(), "path_traversal");
    // A canonical hand-made archive is fine.
    let arc = archive(&[
        Raw::dir("volumes/0/"),
        Raw::dir("volumes/0/d/"),
        Raw::file("volumes/0/d/x", "x"),
        Raw::file("volumes/0/e", "e"),
    ]);
    let d = roots(arc).unwrap();
    assert_eq!((d.volumes[0].added.files, d.volumes[0].added.dirs), (2, 1));
}

// ---- agreement with a naive comparison on random trees ----

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 33) as u8 % 4).collect()
    }
}

const NAMES: &[&str] = &["a", "a-b", "a.b", "a0", "b", "z", "\u{e9}", "x y"];

fn random_tree(r: &mut Rng, dir: &Path, depth: u32) {
    fs::create_dir_all(dir).unwrap();
    for name in NAMES {
        match r.below(6) {
            0 | 1 => {
                let n = r.below(3000) as usize;
                fs::write(dir.join(name), r.bytes(n)).unwrap();
            }
            2 if depth < 4 => random_tree(r, &dir.join(name), depth + 1),
            3 => symlink(NAMES[r.below(NAMES.len() as u64) as usize], dir.join(name)).unwrap(),
            _ => {}
        }
    }
}

fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn mutate(r: &mut Rng, root: &Path) {
    for p in all_paths(root) {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue; // under something already removed
        };
        match r.below(8) {
            0 if m.is_dir() => fs::remove_dir_all(&p).unwrap(),
            0 => fs::remove_file(&p).unwrap(),
            1 if m.is_file() => {
                // Same size, one byte different.
                let mut d = fs::read(&p).unwrap();
                if let Some(b) = d.first_mut() {
                    *b ^= 0x40;
                }
                fs::write(&p, d).unwrap();
            }
            2 if m.is_file() => fs::write(&p, r.bytes(7)).unwrap(),
            3 if m.is_file() => fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap(),
            4 if !m.is_dir() => {
                fs::remove_file(&p).unwrap();
                random_tree(r, &p, 3);
            }
            5 if m.is_dir() => {
                fs::remove_dir_all(&p).unwrap();
                fs::write(&p, b"was a dir").unwrap();
            }
            6 if m.is_dir() => random_tree(r, &p.join("new"), 3),
            7 if m.file_type().is_symlink() => {
                fs::remove_file(&p).unwrap();
                symlink("changed-target", &p).unwrap();
            }
            _ => {}
        }
    }
}

/// path -> (is_dir, description of a non-dir: kind, mode, size, content hash / target).
fn describe(root: &Path) -> BTreeMap<Vec<u8>, (bool, String, u64)> {
    all_paths(root)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let v = if m.is_dir() {
                (true, String::new(), 0)
            } else if m.file_type().is_symlink() {
                (false, format!("l {:?}", fs::read_link(&p).unwrap()), 0)
            } else {
                let h = hex::encode(Sha256::digest(fs::read(&p).unwrap()));
                (false, format!("f {:o} {h}", m.mode() & 0o777), m.size())
            };
            (rel, v)
        })
        .collect()
}

#[test]
fn agrees_with_a_naive_whole_tree_comparison_on_random_trees() {
    // Over all seeds, every kind of difference must have occurred.
    let mut seen = [0u64; 6];
    for seed in 1..=12u64 {
        let t = tempfile::tempdir().unwrap();
        let v = t.path().join("vol");
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        random_tree(&mut r, &v, 0);
        let arc = t.path().join("a.tar.gz");
        capture(&[&v], &arc);
        mutate(&mut r, &v);
        fs::write(v.join("zz-new"), r.bytes(100)).unwrap();

        // The naive way: extract the archive, hold both trees in memory, compare.
        let staging = t.path().join("staging");
        let mut map = BTreeMap::new();
        map.insert(0u32, staging.clone());
        extract_file(&arc, &map, &ExtractOptions::default(), &mut |_, _| {}).unwrap();
        let (a, l) = (describe(&staging), describe(&v));
        let (mut added, mut changed, mut removed) = ((0, 0, 0), (0, 0), (0, 0, 0));
        let mut unchanged = 0;
        for (p, (adir, adesc, asize)) in &a {
            match l.get(p) {
                Some((ldir, ldesc, _)) if ldir == adir => {
                    if !adir && ldesc != adesc {
                        changed.0 += 1;
                        changed.1 += asize;
                    } else if !adir {
                        unchanged += 1;
                    }
                }
                _ if *adir => added.2 += 1,
                _ => {
                    added.0 += 1;
                    added.1 += asize;
                }
            }
        }
        for (p, (ldir, _, lsize)) in &l {
            if a.get(p).is_some_and(|(adir, _, _)| adir == ldir) {
                continue;
            }
            if *ldir {
                removed.2 += 1;
            } else {
                removed.0 += 1;
                removed.1 += lsize;
            }
        }

        let d = run(&arc, &[&v]);
        let vd = &d.volumes[0];
        assert_eq!(
            (vd.added.files, vd.added.bytes, vd.added.dirs),
            added,
            "seed {seed}: {vd:#?}"
        );
        assert_eq!((vd.changed.files, vd.changed.bytes), changed, "seed {seed}");
        assert_eq!(
            (vd.removed.files, vd.removed.bytes, vd.removed.dirs),
            removed,
            "seed {seed}"
        );
        assert_eq!(vd.unchanged_files, unchanged, "seed {seed}");
        for (k, n) in [
            vd.added.files,
            vd.added.dirs,
            vd.changed.files,
            vd.removed.files,
            vd.removed.dirs,
            vd.unchanged_files,
        ]
        .into_iter()
        .enumerate()
        {
            seen[k] += n;
        }
    }
    assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
}
