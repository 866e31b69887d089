//! Hand-crafted hostile archives. Each case asserts the rule that refuses it, that no
//! staging directory is left, and that nothing else in the arena (a sentinel tree next
//! to the staging parent) changed; `verify` must refuse it for the same rule.

mod common;

use std::io::Write;

use common::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use volsnap_archive::{ExtractOptions, Limits};

fn root() -> Raw {
    Raw::dir("volumes/0/")
}

fn refused(entries: Vec<Raw>, rule: &str) {
    let a = Arena::new();
    a.assert_refused(&archive(&entries), 1, &opts(), rule);
}

#[test]
fn absolute_names() {
    let a = Arena::new();
    let victim = a.sentinel().join("pwned");
    let name = victim.to_str().unwrap();
    a.assert_refused(
        &archive(&[root(), Raw::file(name, "x")]),
        1,
        &opts(),
        "absolute_path",
    );
    refused(vec![Raw::file("/volumes/0/x", "x")], "absolute_path");
    refused(vec![root(), Raw::dir("/")], "absolute_path");
}

#[test]
fn dot_dot_anywhere() {
    refused(
        vec![root(), Raw::file("volumes/0/../../sentinel/pwned", "x")],
        "path_traversal",
    );
    refused(
        vec![root(), Raw::file("../../sentinel/pwned", "x")],
        "path_traversal",
    );
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/a/"),
            Raw::file("volumes/0/a/../b", "x"),
        ],
        "path_traversal",
    );
    refused(vec![root(), Raw::dir("volumes/0/..")], "path_traversal");
    // The same through a PAX path record and a GNU long name.
    let mut pax = Raw::file("volumes/0/innocent", "x");
    pax.pax = vec![("path".into(), b"volumes/0/../../../sentinel/pwned".to_vec())];
    refused(vec![root(), pax], "path_traversal");
    let mut long = Raw::file("volumes/0/innocent", "x");
    long.gnu_long_name = Some(format!("volumes/0/{}/../../../x", "a".repeat(120)).into_bytes());
    refused(vec![root(), long], "path_traversal");
}

#[test]
fn non_normalised_names() {
    refused(
        vec![root(), Raw::file("volumes/0/./x", "x")],
        "invalid_name",
    );
    refused(vec![root(), Raw::file("volumes/0//x", "x")], "invalid_name");
    refused(vec![root(), Raw::file("volumes/0/x/", "x")], "invalid_name");
}

#[test]
fn symlink_absolute() {
    let a = Arena::new();
    let target = a.sentinel();
    let entries = [
        root(),
        Raw::symlink("volumes/0/l", target.to_str().unwrap()),
        Raw::file("volumes/0/l/victim", "overwritten"),
    ];
    a.assert_refused(&archive(&entries), 1, &opts(), "symlink_escape");
}

#[test]
fn symlink_relative_escape() {
    refused(
        vec![
            root(),
            Raw::symlink("volumes/0/l", "../../sentinel"),
            Raw::file("volumes/0/l/victim", "x"),
        ],
        "symlink_escape",
    );
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/d/"),
            Raw::symlink("volumes/0/d/l", "../x/../../y"),
        ],
        "symlink_escape",
    );
}

#[test]
fn symlink_escape_via_chain() {
    // Each link stays inside lexically; followed, z resolves to the volume's parent.
    refused(
        vec![
            root(),
            Raw::symlink("volumes/0/s", "."),
            Raw::dir("volumes/0/x/"),
            Raw::dir("volumes/0/x/y/"),
            Raw::symlink("volumes/0/x/y/z", "../../s/.."),
        ],
        "symlink_escape",
    );
    // The link used by the chain may come later in the archive.
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/x/"),
            Raw::symlink("volumes/0/x/z", "../s/.."),
            Raw::symlink("volumes/0/s", "."),
        ],
        "symlink_escape",
    );
    // A loop cannot be judged: refused.
    refused(
        vec![
            root(),
            Raw::symlink("volumes/0/a", "b"),
            Raw::symlink("volumes/0/b", "a"),
        ],
        "symlink_escape",
    );
}

#[test]
fn symlink_used_as_directory() {
    // The link itself is harmless (it points inside); writing through it is not.
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/sub/"),
            Raw::symlink("volumes/0/l", "sub"),
            Raw::file("volumes/0/l/f", "x"),
        ],
        "symlink_escape",
    );
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/sub/"),
            Raw::symlink("volumes/0/l", "sub"),
            Raw::dir("volumes/0/l/d/"),
        ],
        "symlink_escape",
    );
}

#[test]
fn hardlinks() {
    let mut h = Raw::new("volumes/0/h", b'1');
    h.link = b"volumes/0/f".to_vec();
    refused(vec![root(), Raw::file("volumes/0/f", "x"), h], "hardlink");
    let mut h = Raw::new("volumes/0/h", b'1');
    h.link = b"/etc/passwd".to_vec();
    refused(vec![root(), h], "hardlink");
}

#[test]
fn special_and_unknown_types() {
    refused(vec![root(), Raw::new("volumes/0/c", b'3')], "special_file");
    refused(vec![root(), Raw::new("volumes/0/b", b'4')], "special_file");
    refused(vec![root(), Raw::new("volumes/0/p", b'6')], "special_file");
    refused(vec![root(), Raw::new("volumes/0/z", b'Z')], "unknown_type");
    refused(vec![root(), Raw::new("volumes/0/s", b'S')], "unknown_type");
    refused(vec![root(), Raw::new("volumes/0/v", b'V')], "unknown_type");
    let mut g = Raw::new("pax_global_header", b'g');
    g.data = b"12 path=abc\n".to_vec();
    refused(vec![root(), g], "unknown_type");
    // GNU sparse announced through PAX records.
    let mut sp = Raw::file("volumes/0/s", "");
    sp.pax = vec![("GNU.sparse.major".into(), b"1".to_vec())];
    refused(vec![root(), sp], "unknown_type");
}

#[test]
fn duplicates_and_clashes() {
    refused(
        vec![
            root(),
            Raw::file("volumes/0/f", "a"),
            Raw::file("volumes/0/f", "b"),
        ],
        "duplicate_entry",
    );
    refused(
        vec![root(), Raw::dir("volumes/0/d/"), Raw::dir("volumes/0/d/")],
        "duplicate_entry",
    );
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/d/"),
            Raw::file("volumes/0/d", "x"),
        ],
        "duplicate_entry",
    );
    refused(
        vec![
            root(),
            Raw::file("volumes/0/f", "x"),
            Raw::dir("volumes/0/f/"),
        ],
        "duplicate_entry",
    );
    refused(
        vec![
            root(),
            Raw::file("volumes/0/f", "x"),
            Raw::file("volumes/0/f/g", "y"),
        ],
        "duplicate_entry",
    );
    refused(
        vec![
            root(),
            Raw::symlink("volumes/0/l", "x"),
            Raw::file("volumes/0/l", "y"),
        ],
        "duplicate_entry",
    );
    refused(vec![root(), root()], "duplicate_entry");
    refused(
        vec![root(), Raw::file("manifest.json", "{}")],
        "duplicate_entry",
    );
}

#[test]
fn names_differing_only_by_case() {
    refused(
        vec![
            root(),
            Raw::file("volumes/0/Readme", "a"),
            Raw::file("volumes/0/README", "b"),
        ],
        "case_collision",
    );
    refused(
        vec![
            root(),
            Raw::dir("volumes/0/Dir/"),
            Raw::file("volumes/0/dir", "b"),
        ],
        "case_collision",
    );
    refused(
        vec![
            root(),
            Raw::file("volumes/0/\u{c9}t\u{e9}", "a"),
            Raw::file("volumes/0/\u{e9}t\u{e9}", "b"),
        ],
        "case_collision",
    );
}

#[test]
fn gzip_bomb_with_default_limits() {
    // 600 MiB of zeros, about 600 KiB compressed; the manifest declares it honestly and
    // the size is under every cap, so only the ratio cap (200:1 after 256 MiB) stops it.
    let size: u64 = 600 << 20;
    let file = Raw {
        size: Some(size),
        ..Raw::file("volumes/0/zeros", "")
    };
    let entries = [root(), file];
    let head = {
        let mut t = tar_with(1, None, &entries);
        t.truncate(t.len() - 1024); // drop the end marker; data follows
        t
    };
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(9));
    enc.write_all(&head).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(size >> 20) {
        enc.write_all(&zeros).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "bomb is {} bytes", bomb.len());
    let a = Arena::new();
    a.assert_refused(&bomb, 1, &opts(), "compression_ratio_cap");
}

#[test]
fn gzip_bomb_with_small_limits() {
    let file = Raw::file("volumes/0/zeros", vec![0u8; 8 << 20]);
    let o = ExtractOptions {
        limits: Limits {
            max_compression_ratio: 50,
            ratio_grace_bytes: 1 << 20,
            ..Limits::default()
        },
        ..opts()
    };
    Arena::new().assert_refused(&archive(&[root(), file]), 1, &o, "compression_ratio_cap");
}

#[test]
fn declared_totals_over_the_caps() {
    let m = r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/d","scope":"stage","source":"s","files":1,"bytes":70000000000}]}"#;
    Arena::new().assert_refused(
        &gz(&tar_with(1, Some(m), &[root()])),
        1,
        &opts(),
        "total_bytes_cap",
    );
    let m = r#"{"format":"volsnap/1","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[{"index":0,"target":"/d","scope":"stage","source":"s","files":2000000,"bytes":1}]}"#;
    Arena::new().assert_refused(
        &gz(&tar_with(1, Some(m), &[root()])),
        1,
        &opts(),
        "entry_count_cap",
    );
}

#[test]
fn size_header_larger_than_the_cap() {
    // 17 GiB claimed, no data follows: refused from the header alone.
    let f = Raw {
        size: Some(17 << 30),
        ..Raw::file("volumes/0/huge", "")
    };
    let entries = [root(), f];
    let mut t = tar_with(1, None, &entries);
    t.truncate(t.len() - 1024);
    Arena::new().assert_refused(&gz(&t), 1, &opts(), "entry_size_cap");
    // And with a configured cap.
    let o = ExtractOptions {
        limits: Limits {
            max_entry_size: 1000,
            ..Limits::default()
        },
        ..opts()
    };
    Arena::new().assert_refused(
        &archive(&[root(), Raw::file("volumes/0/f", vec![1u8; 1001])]),
        1,
        &o,
        "entry_size_cap",
    );
}

#[test]
fn other_caps() {
    let small = |l: Limits| ExtractOptions {
        limits: l,
        ..opts()
    };
    let entries = vec![
        root(),
        Raw::dir("volumes/0/a/"),
        Raw::dir("volumes/0/a/b/"),
        Raw::dir("volumes/0/a/b/c/"),
    ];
    Arena::new().assert_refused(
        &archive(&entries),
        1,
        &small(Limits {
            max_depth: 2,
            ..Limits::default()
        }),
        "depth_cap",
    );
    Arena::new().assert_refused(
        &archive(&entries),
        1,
        &small(Limits {
            max_entries: 3,
            ..Limits::default()
        }),
        "entry_count_cap",
    );
    Arena::new().assert_refused(
        &archive(&entries),
        1,
        &small(Limits {
            max_path_len: 14,
            ..Limits::default()
        }),
        "path_length_cap",
    );
    let mut long = Raw::file("volumes/0/short", "x");
    long.pax = vec![(
        "path".into(),
        format!("volumes/0/{}", "n".repeat(256)).into_bytes(),
    )];
    refused(vec![root(), long], "path_length_cap");
    let mut long = Raw::file("volumes/0/short", "x");
    long.gnu_long_name = Some(format!("volumes/0/{}", "n/".repeat(2100)).into_bytes());
    refused(vec![root(), long], "path_length_cap");
    Arena::new().assert_refused(
        &archive(&[
            root(),
            Raw::file("volumes/0/a", "1234"),
            Raw::file("volumes/0/b", "1234"),
        ]),
        1,
        &small(Limits {
            max_total_bytes: 6,
            ..Limits::default()
        }),
        "total_bytes_cap",
    );
}

#[test]
fn truncated_or_corrupt_gzip() {
    let good = archive(&[root(), Raw::file("volumes/0/f", vec![7u8; 100_000])]);
    let a = Arena::new();
    a.assert_refused(&good[..good.len() / 2], 1, &opts(), "corrupt_gzip");
    a.assert_refused(&good[..good.len() - 4], 1, &opts(), "corrupt_gzip");
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0x55;
    a.assert_refused(&bad_crc, 1, &opts(), "corrupt_gzip");
    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    a.assert_refused(&bad_magic, 1, &opts(), "corrupt_gzip");
    a.assert_refused(b"", 1, &opts(), "corrupt_gzip");
    // Raw, uncompressed tar.
    a.assert_refused(&tar_with(1, None, &[root()]), 1, &opts(), "corrupt_gzip");
}

#[test]
fn data_after_the_end_of_the_tar() {
    let mut t = tar_with(1, None, &[root()]);
    t.extend_from_slice(b"hidden");
    refused_raw(&gz(&t), "trailing_data");
    // A whole entry hidden after the end-of-archive marker.
    let mut t = tar_with(1, None, &[root()]);
    t.extend(tar_entries(&[Raw::file("volumes/0/hidden", "x")]));
    refused_raw(&gz(&t), "trailing_data");
    // Endless zero padding.
    let mut t = tar_with(1, None, &[root()]);
    t.extend(vec![0u8; 3 << 20]);
    refused_raw(&gz(&t), "trailing_data");
    // Garbage after the gzip member.
    let mut g = archive(&[root()]);
    g.extend_from_slice(b"garbage");
    refused_raw(&g, "trailing_data");
}

fn refused_raw(gz: &[u8], rule: &str) {
    Arena::new().assert_refused(gz, 1, &opts(), rule);
}

#[test]
fn second_gzip_member() {
    let mut g = archive(&[root()]);
    g.extend(gz(&tar_entries(&[Raw::file("volumes/0/extra", "x")])));
    refused_raw(&g, "multiple_gzip_members");
}

#[test]
fn entries_outside_volumes() {
    refused(
        vec![root(), Raw::file("etc/passwd", "x")],
        "outside_volumes",
    );
    refused(
        vec![root(), Raw::file("volumes/x/a", "x")],
        "outside_volumes",
    );
    refused(vec![root(), Raw::dir("volumes/01/")], "outside_volumes");
    refused(vec![Raw::dir("volumes/")], "outside_volumes");
    refused(vec![Raw::file("volumes/0", "x")], "outside_volumes");
}

#[test]
fn index_beyond_the_manifest() {
    refused(
        vec![
            root(),
            Raw::dir("volumes/1/"),
            Raw::file("volumes/1/f", "x"),
        ],
        "index_out_of_bounds",
    );
    refused(
        vec![root(), Raw::dir("volumes/4294967295/")],
        "index_out_of_bounds",
    );
}

#[test]
fn manifest_missing_oversized_or_malformed() {
    // First entry is not the manifest.
    let mut t = tar_entries(&[root(), Raw::file("manifest.json", manifest_for(1, &[]))]);
    t.extend_from_slice(&[0u8; 1024]);
    refused_raw(&gz(&t), "manifest_missing");
    // The manifest as a directory.
    let mut t = tar_entries(&[Raw::dir("manifest.json/")]);
    t.extend_from_slice(&[0u8; 1024]);
    refused_raw(&gz(&t), "manifest_missing");
    // An empty archive.
    refused_raw(&gz(&[0u8; 1024]), "manifest_missing");
    // Oversized: the header alone is enough.
    let big = format!("{}{}", manifest_for(1, &[]), " ".repeat(1 << 20));
    refused_raw(
        &gz(&tar_with(1, Some(&big), &[root()])),
        "manifest_too_large",
    );
    // Malformed.
    refused_raw(
        &gz(&tar_with(1, Some("{not json"), &[root()])),
        "manifest_invalid",
    );
    refused_raw(
        &gz(&tar_with(
            1,
            Some(
                r#"{"format":"volsnap/9","workload_id":"w","created_at":"2025-01-02T03:04:05Z","volumes":[]}"#,
            ),
            &[],
        )),
        "manifest_invalid",
    );
}

#[test]
fn setuid_bits_are_dropped_not_refused() {
    let a = Arena::new();
    let entries = [
        root().with_mode(0o1777),
        Raw::dir("volumes/0/d/").with_mode(0o2775),
        Raw::file("volumes/0/d/suid", "#!/bin/sh\n").with_mode(0o4755),
        Raw::file("volumes/0/sgid", "x").with_mode(0o2711),
    ];
    a.extract_ok(&archive(&entries), 1, &opts());
    use std::os::unix::fs::MetadataExt;
    let mode = |p: &str| std::fs::metadata(a.staging(0).join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o777);
    assert_eq!(mode("d"), 0o775);
    assert_eq!(mode("d/suid"), 0o755);
    assert_eq!(mode("sgid"), 0o711);
}

#[test]
fn no_name_is_reserved() {
    // volsnap keeps nothing of its own inside a volume, so an app's files named like
    // anything volsnap uses elsewhere extract like every other name.
    let a = Arena::new();
    a.extract_ok(
        &archive(&[
            root(),
            Raw::file("volumes/0/.volsnap-marker", "m"),
            Raw::dir("volumes/0/.VOLSNAP-MARKER-dir/"),
            Raw::file("volumes/0/..volsnap-marker.tmp", "t"),
            Raw::file("volumes/0/.volsnap-0190-0", "s"),
        ]),
        1,
        &opts(),
    );
    assert_eq!(
        std::fs::read_to_string(a.staging(0).join(".volsnap-marker")).unwrap(),
        "m"
    );
    assert_eq!(
        std::fs::read_to_string(a.staging(0).join("..volsnap-marker.tmp")).unwrap(),
        "t"
    );
}

#[test]
fn entries_before_their_parent() {
    refused(vec![Raw::file("volumes/0/f", "x")], "missing_parent");
    refused(
        vec![root(), Raw::file("volumes/0/a/b", "x")],
        "missing_parent",
    );
}

#[test]
fn content_must_match_the_manifest() {
    let m = manifest_for(
        1,
        &[
            Raw::file("volumes/0/a", "12"),
            Raw::file("volumes/0/b", "34"),
        ],
    );
    refused_raw(
        &gz(&tar_with(
            1,
            Some(&m),
            &[root(), Raw::file("volumes/0/a", "12")],
        )),
        "manifest_mismatch",
    );
    let m = manifest_for(1, &[Raw::file("volumes/0/a", "1")]);
    refused_raw(
        &gz(&tar_with(
            1,
            Some(&m),
            &[root(), Raw::file("volumes/0/a", "12")],
        )),
        "manifest_mismatch",
    );
    // A declared volume without its root entry.
    let m = manifest_for(2, &[]);
    Arena::new().assert_refused(
        &gz(&tar_with(2, Some(&m), &[root()])),
        2,
        &opts(),
        "manifest_mismatch",
    );
}

#[test]
fn malformed_tar() {
    // Bad header checksum.
    let mut t = tar_with(1, None, &[root(), Raw::file("volumes/0/f", "x")]);
    let off = t.len() - 1024 - 1024 + 10; // inside the last entry's header
    t[off] ^= 1;
    refused_raw(&gz(&t), "corrupt_tar");
    // No end-of-archive marker.
    let mut t = tar_with(1, None, &[root()]);
    t.truncate(t.len() - 1024);
    refused_raw(&gz(&t), "corrupt_tar");
    // Entry data cut short.
    let t = tar_entries(&[
        Raw::file(
            "manifest.json",
            manifest_for(1, &[Raw::file("volumes/0/f", vec![1u8; 4096])]),
        ),
        root(),
        Raw::file("volumes/0/f", vec![1u8; 4096]),
    ]);
    refused_raw(&gz(&t[..t.len() - 2000]), "corrupt_tar");
    // A directory with data.
    let d = Raw {
        data: b"payload".to_vec(),
        ..Raw::dir("volumes/0/d/")
    };
    refused(vec![root(), d], "corrupt_tar");
    // A pre-POSIX (v7) header.
    let mut t = tar_with(1, None, &[root()]);
    let mut h = tar::Header::new_old();
    h.set_path("volumes/0/x").unwrap();
    h.set_size(0);
    h.set_cksum();
    let at = t.len() - 1024;
    t.splice(at..at, h.as_bytes().iter().copied());
    refused_raw(&gz(&t), "corrupt_tar");
}

#[test]
fn staging_must_map_every_volume_and_not_exist() {
    let a = Arena::new();
    let two = gz(&tar_with(2, None, &[root(), Raw::dir("volumes/1/")]));
    let before = a.state();
    let e = volsnap_archive::extract(&two[..], &a.map(1), &opts(), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.rule(), "volume_unmapped");
    assert!(!a.staging(0).exists());
    assert_eq!(before, a.state());
    std::fs::create_dir(a.staging(0)).unwrap();
    let e = volsnap_archive::extract(&two[..], &a.map(2), &opts(), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.rule(), "staging_invalid");
    assert!(a.staging(0).exists() && !a.staging(1).exists());
    std::fs::remove_dir(a.staging(0)).unwrap();
    let e = volsnap_archive::extract(&two[..], &a.map(3), &opts(), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.rule(), "staging_invalid");
    let mut map = a.map(2);
    map.insert(1, a.root().join("missing-parent/stage1"));
    let e = volsnap_archive::extract(&two[..], &map, &opts(), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.rule(), "staging_invalid");
    assert_eq!(before, a.state());
}

#[test]
fn a_late_error_removes_every_volume() {
    // Volume 0 fully written, volume 1 goes bad: both staging directories disappear.
    let entries = [
        root(),
        Raw::dir("volumes/0/d/"),
        Raw::file("volumes/0/d/f", vec![3u8; 300_000]),
        Raw::dir("volumes/1/"),
        Raw::file("volumes/1/ok", "fine"),
        Raw::symlink("volumes/1/l", "../../../sentinel"),
    ];
    let a = Arena::new();
    a.assert_refused(
        &gz(&tar_with(2, None, &entries)),
        2,
        &opts(),
        "symlink_escape",
    );
}

#[test]
fn legit_long_names_work() {
    let deep = format!("volumes/0/{}", "segment-of-a-long-path/".repeat(20));
    let file = format!("{deep}{}", "f".repeat(200));
    let mut pax_file = Raw::file("volumes/0/placeholder", "pax");
    pax_file.pax = vec![("path".into(), file.clone().into_bytes())];
    let mut gnu_file = Raw::file("volumes/0/placeholder2", "gnu");
    gnu_file.gnu_long_name = Some(format!("{deep}{}", "g".repeat(200)).into_bytes());
    let mut dirs = vec![root()];
    let mut p = String::from("volumes/0/");
    for _ in 0..20 {
        p.push_str("segment-of-a-long-path/");
        let mut d = Raw::dir("volumes/0/placeholder-dir/");
        d.pax = vec![("path".into(), p.clone().into_bytes())];
        dirs.push(d);
    }
    dirs.push(pax_file);
    dirs.push(gnu_file);
    let a = Arena::new();
    let s = a.extract_ok(&archive(&dirs), 1, &opts());
    assert_eq!(s.stats.files, 2);
    let rel = file.strip_prefix("volumes/0/").unwrap();
    assert_eq!(std::fs::read(a.staging(0).join(rel)).unwrap(), b"pax");
}

#[test]
fn symlink_resolution_cost_is_bounded() {
    // A 40-link chain of long `d/..` detours, then thousands of links into its head:
    // each resolution is legal but walks ~16,000 components. The total work is capped
    // (about one component per byte of targets plus a fixed allowance) and the archive
    // is refused instead of costing time quadratic in its size.
    let detour = "d/..".repeat(200);
    let mut entries = vec![root(), Raw::dir("volumes/0/d/")];
    for i in 0..39 {
        let target = format!("{detour}/l{}", i + 1);
        let mut l = Raw::symlink(format!("volumes/0/l{i}"), "placeholder");
        l.pax = vec![("linkpath".into(), target.into_bytes())];
        entries.push(l);
    }
    entries.push(Raw::symlink("volumes/0/l39", "d"));
    for i in 0..3000 {
        entries.push(Raw::symlink(format!("volumes/0/x{i}"), "l0"));
    }
    let e = Arena::new().assert_refused(&archive(&entries), 1, &opts(), "symlink_escape");
    assert!(e.to_string().contains("too costly"), "{e}");
    // The chain alone is fine.
    let a = Arena::new();
    a.extract_ok(&archive(&entries[..42]), 1, &opts());
}
