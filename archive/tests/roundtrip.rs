//! Capture → extract reproduces trees exactly (checked by a tree hash), and the capture
//! side's own rules (skips, refusals, atomic output, determinism).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::*;
use rustix::fs::{AtFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};
use volsnap_archive::{
    ExtractOptions, Limits, VolumeInput, WriteOptions, extract_file, read_manifest, verify,
    write_archive, write_archive_file,
};

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "alpha",
            "beta",
            "gamma",
            "delta",
            "volume",
            "snapshot",
            "restore",
            "=",
            "\n",
            "42",
            "{\"k\":1}",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            v.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
            v.push(b' ');
        }
        v.truncate(n);
        v
    }
}

fn set_mtime(p: &Path, secs: i64) {
    let t = Timestamps {
        last_access: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

struct Built {
    files: u64,
    bytes: u64,
}

/// A tree with `small` small files spread over nested directories, a few large files,
/// symlinks (to files, to directories, dangling, long targets), odd names, modes,
/// owners and mtimes.
fn build_tree(root: &Path, small: usize, large: &[usize], seed: u64) -> Built {
    let mut rng = Rng(seed);
    let is_root = rustix::process::geteuid().is_root();
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    for i in 0..20 {
        let d = root.join(format!("d{i:02}"));
        fs::create_dir(&d).unwrap();
        dirs.push(d.clone());
        for j in 0..3 {
            let s = d.join(format!("sub{j}"));
            fs::create_dir(&s).unwrap();
            dirs.push(s);
        }
    }
    let mut deep = root.join("deep");
    for i in 0..25 {
        deep = deep.join(format!("level-{i:02}-with-a-longer-name"));
    }
    fs::create_dir_all(&deep).unwrap();
    dirs.push(deep.clone());
    let modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o700];
    let mut write = |p: &Path, data: &[u8], mode: u32| {
        fs::write(p, data).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        files += 1;
        bytes += data.len() as u64;
    };
    for i in 0..small {
        let d = &dirs[i % dirs.len()];
        let len = match rng.below(10) {
            0 => 0,
            1..=6 => rng.below(4096) as usize,
            _ => rng.below(40_000) as usize,
        };
        let data = if rng.below(3) == 0 {
            rng.bytes(len)
        } else {
            rng.text(len)
        };
        let p = d.join(format!("file-{i:05}.dat"));
        write(&p, &data, modes[rng.below(modes.len() as u64) as usize]);
        if is_root && i % 97 == 0 {
            rustix::fs::chown(
                &p,
                Some(rustix::fs::Uid::from_raw(1234)),
                Some(rustix::fs::Gid::from_raw(5678)),
            )
            .unwrap();
        }
    }
    for (i, size) in large.iter().enumerate() {
        let data = if i % 2 == 0 {
            rng.bytes(*size)
        } else {
            rng.text(*size)
        };
        write(&root.join(format!("large-{i}.bin")), &data, 0o640);
    }
    // Odd names: UTF-8, not UTF-8, spaces and a newline, a 200-byte name deep down.
    write(&root.join("données été.txt"), b"accents", 0o644);
    write(
        &root.join(std::ffi::OsStr::from_bytes_compat(b"raw-\xff\xfe")),
        b"bytes",
        0o644,
    );
    write(&root.join("new\nline"), b"nl", 0o644);
    write(&deep.join("n".repeat(200)), b"deep and long", 0o600);
    write(&root.join("empty"), b"", 0o644);
    // Symlinks, all inside the volume.
    symlink("d00/file-00000.dat", root.join("link-to-file")).unwrap();
    symlink("../d02", root.join("d01/up")).unwrap();
    symlink("nothing/here", root.join("dangling")).unwrap();
    let long_target = deep.strip_prefix(root).unwrap().join("n".repeat(200));
    symlink(&long_target, root.join("long-link")).unwrap();
    symlink("link-to-file", root.join("link-to-link")).unwrap();
    // Directories with unusual modes, an empty one.
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    write(&root.join("private/secret"), b"s", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(root.join("readonly")).unwrap();
    write(&root.join("readonly/inside"), b"r", 0o444);
    fs::set_permissions(root.join("readonly"), fs::Permissions::from_mode(0o555)).unwrap();
    // mtimes: every entry, directories last and deepest first.
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &all {
        set_mtime(p, 1_000_000_000 + rng.below(800_000_000) as i64);
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(root, 1_234_567_890);
    Built { files, bytes }
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}
impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            collect(&path, out);
        }
        out.push(path);
    }
}

/// The rule a capture of `volumes` to `dest` (default options) is refused with.
fn refused(dest: &Path, volumes: &[VolumeInput]) -> &'static str {
    write_archive_file(dest, "w", volumes, &WriteOptions::default(), &mut |_, _| {})
        .unwrap_err()
        .rule()
}

fn vol(index: u32, path: &Path) -> VolumeInput {
    VolumeInput {
        index,
        target: format!("/var/lib/app{index}"),
        scope: "stage".into(),
        source: format!("data{index}"),
        path: path.to_path_buf(),
        root: None,
    }
}

#[test]
fn round_trip_thousands_of_files_and_a_few_large() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let built = build_tree(&src, 3000, &[3 << 20, 4 << 20, 5 << 20], 7);
    let expected = snapshot(&src, true);

    let dest = tmp.path().join("snap.tar.gz");
    let mut calls: Vec<(u64, u64)> = Vec::new();
    let summary = write_archive_file(
        &dest,
        "wl-1",
        &[vol(0, &src)],
        &WriteOptions::default(),
        &mut |d, t| calls.push((d, t)),
    )
    .unwrap();
    let data = fs::read(&dest).unwrap();
    assert_eq!(summary.size, data.len() as u64);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&data)));
    assert_eq!(summary.manifest.volumes[0].files, built.files);
    assert_eq!(summary.manifest.volumes[0].bytes, built.bytes);
    assert_eq!(summary.manifest.volumes[0].skipped, None);
    assert_eq!(calls.first(), Some(&(0, built.bytes)));
    assert_eq!(calls.last(), Some(&(built.bytes, built.bytes)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
    // No temporary file left next to it.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);

    assert_eq!(read_manifest(&dest).unwrap(), summary.manifest);
    let v = verify(&dest, &Limits::default()).unwrap();
    assert_eq!(v.sha256, summary.sha256);
    assert_eq!(v.size, summary.size);
    assert_eq!(v.stats.files, built.files);

    let staging = tmp.path().join("staging");
    let map = BTreeMap::from([(0u32, staging.clone())]);
    let mut ecalls: Vec<(u64, u64)> = Vec::new();
    let s = extract_file(&dest, &map, &ExtractOptions::default(), &mut |d, t| {
        ecalls.push((d, t))
    })
    .unwrap();
    assert_eq!(s.stats.files, built.files);
    assert_eq!(s.stats.bytes, built.bytes);
    assert_eq!(s.compressed_bytes, summary.size);
    assert_eq!(ecalls.last(), Some(&(built.bytes, built.bytes)));
    let got = snapshot(&staging, true);
    assert_eq!(
        tree_hash(&expected),
        tree_hash(&got),
        "trees differ:\n{}",
        diff(&expected, &got)
    );
    assert!(expected.len() > 3000 + 60);

    // GNU tar reads our archives too.
    if let Ok(out) = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&dest)
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = out.stdout.iter().filter(|b| **b == b'\n').count();
        assert!(listed >= expected.len(), "tar listed {listed} lines");
    }
}

#[test]
fn capture_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, 200, &[100_000], 3);
    let opts = WriteOptions {
        created_at: Some("2025-06-01T12:00:00Z".parse().unwrap()),
        ..WriteOptions::default()
    };
    let mut a = Vec::new();
    let sa = write_archive(&mut a, "w", &[vol(0, &src)], &opts, &mut |_, _| {}).unwrap();
    let mut b = Vec::new();
    let sb = write_archive(&mut b, "w", &[vol(0, &src)], &opts, &mut |_, _| {}).unwrap();
    assert_eq!(a, b);
    assert_eq!(sa.sha256, sb.sha256);
    assert_eq!(sa.size, a.len() as u64);
}

#[test]
fn several_volumes_to_staging_on_different_filesystems() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    build_tree(&a, 100, &[], 11);
    build_tree(&b, 50, &[200_000], 12);
    let mut out = Vec::new();
    write_archive(
        &mut out,
        "w",
        &[vol(0, &a), vol(1, &b)],
        &WriteOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    // Volume 1 goes to /dev/shm (tmpfs) when there is one: another filesystem.
    let other = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let map = BTreeMap::from([
        (0u32, tmp.path().join("s0")),
        (1u32, other.path().join("s1")),
    ]);
    volsnap_archive::extract(&out[..], &map, &ExtractOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(snapshot(&a, true), snapshot(&map[&0], true));
    assert_eq!(snapshot(&b, true), snapshot(&map[&1], true));
}

#[test]
fn skipped_entries_are_counted_and_names_like_volsnaps_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("keep"), b"k").unwrap();
    fs::create_dir(src.join("d")).unwrap();
    // Names like the ones volsnap once used inside volumes are ordinary app files.
    fs::write(src.join(".volsnap-marker"), b"m").unwrap();
    fs::write(src.join("..volsnap-marker.tmp"), b"t").unwrap();
    let expected = snapshot(&src, false);
    // Skipped: fifo, socket, absolute symlink, escaping symlink, escaping chain.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    symlink("/etc/passwd", src.join("abs")).unwrap();
    symlink("../../outside", src.join("d/up")).unwrap();
    symlink(".", src.join("dot")).unwrap();
    symlink("../dot/..", src.join("d/chain")).unwrap();
    let mut out = Vec::new();
    let s = write_archive(
        &mut out,
        "w",
        &[vol(0, &src)],
        &WriteOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(s.manifest.volumes[0].skipped, Some(5));
    assert_eq!(s.manifest.volumes[0].files, 3);
    let staging = tmp.path().join("staging");
    volsnap_archive::extract(
        &out[..],
        &BTreeMap::from([(0, staging.clone())]),
        &opts(),
        &mut |_, _| {},
    )
    .unwrap();
    let mut got = snapshot(&staging, false);
    // "dot" -> "." stays (it resolves inside); the rest are gone.
    assert!(got.remove(b"dot".as_slice()).is_some());
    let mut exp = expected;
    exp.remove(b"d".as_slice());
    got.remove(b"d".as_slice());
    assert_eq!(exp, got);
}

#[test]
fn capture_refuses_what_restore_would_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("Readme"), b"a").unwrap();
    fs::write(src.join("README"), b"b").unwrap();
    let dest = tmp.path().join("out.tar.gz");
    assert_eq!(refused(&dest, &[vol(0, &src)]), "case_collision");
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no output, no temp file"
    );

    fs::remove_file(src.join("README")).unwrap();
    fs::write(src.join("big"), vec![0u8; 2000]).unwrap();
    let opts = WriteOptions {
        limits: Limits {
            max_entry_size: 1000,
            ..Limits::default()
        },
        ..WriteOptions::default()
    };
    let e = write_archive_file(&dest, "w", &[vol(0, &src)], &opts, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.rule(), "entry_size_cap");

    // A symlinked or missing volume root is refused.
    symlink(&src, tmp.path().join("via-link")).unwrap();
    assert_eq!(
        refused(&dest, &[vol(0, &tmp.path().join("via-link"))]),
        "source_invalid"
    );
    assert_eq!(
        refused(&dest, &[vol(0, &tmp.path().join("nope"))]),
        "source_invalid"
    );
    // Duplicate targets make an invalid manifest.
    let mut v1 = vol(1, &src);
    v1.target = vol(0, &src).target;
    assert_eq!(refused(&dest, &[vol(0, &src), v1]), "manifest_invalid");
    // An existing destination is never overwritten.
    fs::write(&dest, b"precious").unwrap();
    assert_eq!(refused(&dest, &[vol(0, &src)]), "io");
    assert_eq!(fs::read(&dest).unwrap(), b"precious");
}

#[test]
fn write_errors_surface_as_typed_io() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), vec![1u8; 3 << 20]).unwrap();
    let e = write_archive(
        Full,
        "w",
        &[vol(0, tmp.path())],
        &WriteOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert_eq!(e.rule(), "no_space", "{e}");
}

/// Capture through a held directory fd and extract relative to a held parent fd: after
/// both directories' paths are swapped for symlinks to elsewhere, reading and writing
/// still happen in the directories that were opened, and nothing lands at the symlinks'
/// targets.
#[test]
fn fd_pinned_capture_and_extraction_ignore_later_path_swaps() {
    use std::os::fd::AsFd;
    use volsnap_archive::{StagingAt, extract_at};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("real"), "captured").unwrap();
    let decoy = tmp.path().join("decoy");
    fs::create_dir(&decoy).unwrap();
    fs::write(decoy.join("secret"), "must not be captured").unwrap();

    let src_fd = std::sync::Arc::new(
        rustix::fs::open(
            &src,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap(),
    );
    fs::rename(&src, tmp.path().join("src-moved")).unwrap();
    symlink(&decoy, &src).unwrap();
    let mut input = vol(0, &src);
    input.root = Some(src_fd);
    let dest = tmp.path().join("snap.tar.gz");
    write_archive_file(
        &dest,
        "wl-1",
        &[input],
        &WriteOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();

    let parent = tmp.path().join("parent");
    fs::create_dir(&parent).unwrap();
    let parent_fd = rustix::fs::open(
        &parent,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    fs::rename(&parent, tmp.path().join("parent-moved")).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, &parent).unwrap();
    let name = std::ffi::OsStr::new("stage");
    let staging = BTreeMap::from([(
        0u32,
        StagingAt {
            parent: parent_fd.as_fd(),
            name,
            label: parent.join("stage"),
        },
    )]);
    extract_at(
        fs::File::open(&dest).unwrap(),
        &staging,
        &ExtractOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let landed = tmp.path().join("parent-moved/stage");
    assert_eq!(fs::read_to_string(landed.join("real")).unwrap(), "captured");
    assert!(!landed.join("secret").exists(), "the decoy was captured");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

// --- The parallel compressor (several threads, one gzip member) ---

fn fixed(threads: usize) -> WriteOptions {
    WriteOptions {
        created_at: Some("2025-06-01T12:00:00Z".parse().unwrap()),
        threads,
        ..WriteOptions::default()
    }
}

/// A tree whose tar stream spans many 128 KiB compression blocks.
fn multi_block_tree(root: &Path) -> Built {
    fs::create_dir(root).unwrap();
    build_tree(root, 600, &[1 << 20, 700_001, 2 << 20], 21)
}

#[test]
fn parallel_capture_is_byte_identical_for_any_thread_count_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    multi_block_tree(&src);
    let capture = |threads| {
        let mut out = Vec::new();
        let s = write_archive(
            &mut out,
            "w",
            &[vol(0, &src)],
            &fixed(threads),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(s.size, out.len() as u64);
        assert_eq!(s.sha256, hex::encode(Sha256::digest(&out)));
        out
    };
    let one = capture(1);
    assert!(one.len() > 1 << 20, "the tree must span many blocks");
    for threads in [2, 3, 8, 0, 2] {
        let other = capture(threads);
        if one != other {
            let un = |g: &[u8]| {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(g), &mut v).unwrap();
                v
            };
            eprintln!("tar streams equal: {}", un(&one) == un(&other));
            let first = one.iter().zip(&other).position(|(a, b)| a != b);
            eprintln!("first differing byte: {first:?}");
        }
        assert!(
            one == other,
            "{threads} threads: {} bytes vs {} with 1 thread",
            other.len(),
            one.len()
        );
    }
}

#[test]
fn parallel_capture_is_one_gzip_member_that_gnu_tar_and_we_extract_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let built = multi_block_tree(&src);
    let expected = snapshot(&src, true);
    let dest = tmp.path().join("snap.tar.gz");
    write_archive_file(&dest, "w", &[vol(0, &src)], &fixed(4), &mut |_, _| {}).unwrap();
    let data = fs::read(&dest).unwrap();

    // Exactly one member: its decoder consumes the whole file, nothing is left over.
    let mut dec = flate2::bufread::GzDecoder::new(&data[..]);
    let n = std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
    assert!(n > built.bytes);
    assert!(dec.into_inner().is_empty(), "bytes after the first member");
    // gzip itself agrees (CRC and length).
    let t = std::process::Command::new("gzip")
        .arg("-t")
        .arg(&dest)
        .output()
        .expect("gzip must be installed for this test");
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));

    // GNU tar extracts it to exactly the source tree (types, modes, owners, mtimes,
    // contents, symlinks).
    let by_tar = tmp.path().join("by-tar");
    fs::create_dir(&by_tar).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&dest)
        .arg("-C")
        .arg(&by_tar)
        .arg("--numeric-owner")
        .output()
        .expect("GNU tar must be installed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = snapshot(&by_tar.join("volumes/0"), true);
    assert_eq!(
        tree_hash(&expected),
        tree_hash(&got),
        "GNU tar's tree differs:\n{}",
        diff(&expected, &got)
    );

    // And so does ours.
    let staging = tmp.path().join("staging");
    let s = extract_file(
        &dest,
        &BTreeMap::from([(0u32, staging.clone())]),
        &ExtractOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(s.stats.files, built.files);
    assert_eq!(s.compressed_bytes, data.len() as u64);
    let got = snapshot(&staging, true);
    assert_eq!(
        tree_hash(&expected),
        tree_hash(&got),
        "our tree differs:\n{}",
        diff(&expected, &got)
    );
}

#[test]
fn parallel_capture_damaged_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    multi_block_tree(&src);
    let mut good = Vec::new();
    write_archive(&mut good, "w", &[vol(0, &src)], &fixed(3), &mut |_, _| {}).unwrap();
    let staging = tmp.path().join("staging");
    let refused = |bytes: &[u8], rule: Option<&str>, what: &str| {
        let map = BTreeMap::from([(0u32, staging.clone())]);
        let e = volsnap_archive::extract(bytes, &map, &opts(), &mut |_, _| {}).expect_err(what);
        if let Some(rule) = rule {
            assert_eq!(e.rule(), rule, "{what}: {e}");
        }
        assert!(!staging.exists(), "{what}: staging left behind");
    };

    // Cut exactly after a block's sync-flush marker (00 00 ff ff): the deflate stream
    // is cleanly cut at a block boundary there, so only the missing final block and
    // trailer tell; and cut in the middle of blocks.
    let marks: Vec<usize> = good
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0, 0, 0xff, 0xff])
        .map(|(i, _)| i + 4)
        .collect();
    assert!(
        marks.len() >= 8,
        "expected many blocks, found {}",
        marks.len()
    );
    for &cut in marks.iter().step_by(marks.len() / 6) {
        refused(
            &good[..cut],
            Some("corrupt_gzip"),
            &format!("cut at block end {cut}"),
        );
    }
    for cut in [
        good.len() / 3,
        good.len() / 2 + 17,
        good.len() - 9,
        good.len() - 1,
    ] {
        refused(&good[..cut], Some("corrupt_gzip"), &format!("cut at {cut}"));
    }
    // The trailer's CRC and length.
    for back in [8, 5, 4, 1] {
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - back] ^= 0x40;
        refused(&bad, Some("corrupt_gzip"), &format!("trailer byte -{back}"));
    }
    // A flipped bit inside a compressed block is refused (by inflate, the tar
    // reader or at the latest the CRC); which rule depends on where it lands.
    for at in [good.len() / 4, good.len() / 2, 3 * good.len() / 4] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        refused(&bad, None, &format!("bit flipped at {at}"));
    }
    // A second member (another whole archive) after ours, and garbage after ours.
    let mut two = good.clone();
    two.extend_from_slice(&good);
    refused(&two, Some("multiple_gzip_members"), "two members");
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"\0\0junk");
    refused(&trailing, Some("trailing_data"), "trailing bytes");
    // And the undamaged archive still extracts.
    let map = BTreeMap::from([(0u32, staging.clone())]);
    volsnap_archive::extract(&good[..], &map, &opts(), &mut |_, _| {}).unwrap();
}
