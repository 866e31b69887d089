//! Deterministic, in-process fuzzing of the extractor: mutated archives (at the tar level
//! and at the gzip level) and random bytes must never panic, never leave a staging
//! directory behind on error, and never change anything outside staging.
//!
//! `VOLSNAP_MUTATION_ITERS` (default 400) and `VOLSNAP_MUTATION_SEED` run it longer or
//! differently; the coverage-guided version is `fuzz/fuzz_targets/extract.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;

use common::*;
use volsnap_archive::{VolumeInput, WriteOptions, write_archive};

impl Rng {
    /// An index in `0..n` (0 when `n` is 0).
    fn pick(&mut self, n: usize) -> usize {
        self.below(n.max(1) as u64) as usize
    }
}

fn seed_archive() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/file"), b"hello world").unwrap();
    fs::write(src.join("top"), vec![b'x'; 3000]).unwrap();
    fs::write(src.join("a").join("l".repeat(150)), b"long name").unwrap();
    symlink("a/b/file", src.join("link")).unwrap();
    symlink("../top", src.join("a/up")).unwrap();
    let mut out = Vec::new();
    let v = VolumeInput {
        index: 0,
        target: "/data".into(),
        scope: "stage".into(),
        source: "d".into(),
        path: src.to_path_buf(),
        root: None,
    };
    let opts = WriteOptions {
        level: 1,
        created_at: Some("2025-01-01T00:00:00Z".parse().unwrap()),
        ..WriteOptions::default()
    };
    write_archive(&mut out, "w", &[v], &opts, &mut |_, _| {}).unwrap();
    out
}

fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .unwrap();
    out
}

const HOSTILE_NAMES: &[&[u8]] = &[
    b"../../sentinel/victim",
    b"/tmp/x",
    b"volumes/0/../../..",
    b"volumes/0/link/x",
    b"volumes/1/x",
    b"volumes/0/.volsnap-marker",
    b"volumes/0/A/B/FILE",
    b"manifest.json",
    b"volumes/0/",
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let rounds = 1 + rng.pick(4);
    for _ in 0..rounds {
        if v.is_empty() {
            break;
        }
        match rng.pick(8) {
            0 => {
                let i = rng.pick(v.len());
                v[i] ^= 1 << rng.pick(8);
            }
            1 => {
                let i = rng.pick(v.len());
                v[i] = *[
                    0u8, 0xff, b'/', b'.', b'0', b'7', b' ', b'1', b'2', b'5', b'x', b'L',
                ]
                .get(rng.pick(12))
                .unwrap();
            }
            2 => {
                let n = rng.pick(v.len());
                v.truncate(n);
            }
            3 => {
                // Duplicate a block at another block boundary.
                let blocks = v.len() / 512;
                if blocks > 1 {
                    let from = rng.pick(blocks) * 512;
                    let to = rng.pick(blocks) * 512;
                    let block: Vec<u8> = v[from..from + 512].to_vec();
                    v.splice(to..to, block);
                }
            }
            4 => {
                // Remove a block.
                let blocks = v.len() / 512;
                if blocks > 1 {
                    let at = rng.pick(blocks) * 512;
                    v.drain(at..at + 512);
                }
            }
            5 => {
                // Put a hostile name into a header-aligned name field and fix the checksum.
                let blocks = v.len() / 512;
                if blocks > 0 {
                    let at = rng.pick(blocks) * 512;
                    let name = HOSTILE_NAMES[rng.pick(HOSTILE_NAMES.len())];
                    v[at..at + 100].fill(0);
                    v[at..at + name.len()].copy_from_slice(name);
                    fix_checksum(&mut v[at..at + 512]);
                }
            }
            6 => {
                // Change a header's type flag and fix the checksum.
                let blocks = v.len() / 512;
                if blocks > 0 {
                    let at = rng.pick(blocks) * 512;
                    v[at + 156] = b"0125634xgLKS7"[rng.pick(13)];
                    fix_checksum(&mut v[at..at + 512]);
                }
            }
            _ => {
                // Overwrite a numeric field (size, mode, mtime) with random octal.
                let blocks = v.len() / 512;
                if blocks > 0 {
                    let at = rng.pick(blocks) * 512;
                    let (off, len) = [(124usize, 12usize), (100, 8), (136, 12)][rng.pick(3)];
                    for i in 0..len - 1 {
                        v[at + off + i] = b'0' + rng.pick(8) as u8;
                    }
                    fix_checksum(&mut v[at..at + 512]);
                }
            }
        }
    }
    v
}

fn fix_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn check(a: &Arena, before: &BTreeMap<Vec<u8>, String>, input: &[u8], what: &str) -> bool {
    let map = a.map(1);
    let r =
        std::panic::catch_unwind(|| volsnap_archive::extract(input, &map, &opts(), &mut |_, _| {}));
    let r = r.unwrap_or_else(|_| panic!("extractor panicked on {what}"));
    let ok = r.is_ok();
    if ok {
        assert!(a.staging(0).is_dir(), "{what}");
        volsnap_archive_test_cleanup(&a.staging(0));
    } else {
        assert!(
            fs::symlink_metadata(a.staging(0)).is_err(),
            "{what}: staging left behind"
        );
    }
    let after = a.state();
    assert_eq!(
        before,
        &after,
        "{what}: arena changed:\n{}",
        diff(before, &after)
    );
    ok
}

fn volsnap_archive_test_cleanup(p: &std::path::Path) {
    // Modes in a mutated archive may be anything: make everything removable first.
    use std::os::unix::fs::PermissionsExt;
    fn open_up(p: &std::path::Path) {
        let md = fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap();
            for e in fs::read_dir(p).unwrap() {
                open_up(&e.unwrap().path());
            }
        }
    }
    open_up(p);
    fs::remove_dir_all(p).unwrap();
}

#[test]
fn mutated_and_random_archives_never_escape() {
    let iters: usize = std::env::var("VOLSNAP_MUTATION_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("VOLSNAP_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let gz_base = seed_archive();
    let tar_base = gunzip(&gz_base);
    let a = Arena::new();
    let before = a.state();
    // The seed itself is accepted.
    assert!(check(&a, &before, &gz_base, "the seed"));
    let mut rng = Rng(seed);
    let mut accepted = 0;
    for i in 0..iters {
        // Tar-level mutations, recompressed: exercise the tar reader and every rule.
        let t = mutate(&mut rng, &tar_base);
        if check(
            &a,
            &before,
            &gz(&t),
            &format!("tar mutation {i} (seed {seed})"),
        ) {
            accepted += 1;
        }
        // Gzip-level mutations: exercise the gzip layer.
        if i % 4 == 0 {
            let g = mutate(&mut rng, &gz_base);
            check(&a, &before, &g, &format!("gzip mutation {i} (seed {seed})"));
        }
        // Pure noise, sometimes behind a valid gzip header.
        if i % 10 == 0 {
            let n = rng.pick(4096);
            let mut noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            if i % 20 == 0 && noise.len() > 10 {
                noise[..10].copy_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
            }
            check(&a, &before, &noise, &format!("noise {i} (seed {seed})"));
            check(
                &a,
                &before,
                &gz(&noise),
                &format!("gzipped noise {i} (seed {seed})"),
            );
        }
    }
    // Most mutations must be refused; a few (e.g. an mtime change) are harmless.
    assert!(accepted < iters, "accepted {accepted} of {iters}");
}
