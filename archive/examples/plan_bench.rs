//! Benchmark of the streaming diff behind restore plans (not a test).
//!
//!     cargo build --release -p volsnap-archive --example plan_bench
//!     target/release/examples/plan_bench [--files 30000] [--mib 1024] [--runs 3] [--dir /var/tmp/...]
//!
//! Builds a volume of `--mib` MiB in `--files` files (100 files per directory,
//! semi-compressible data), captures it with the archive library (gzip level 6, as
//! captures do), changes 1 % of the files, then — with a warm page cache for every
//! measurement (each one runs once unmeasured first) — times, `--runs` times each:
//! - the floor: `tar -xzOf ARCHIVE >/dev/null` plus `find VOL -type f -exec cat {} +
//!   >/dev/null` (reading both sides once, one after the other);
//! - the diff (`volsnap_archive::diff::diff_paths`) in a child process, which reports
//!   its own peak resident memory (VmHWM);
//! - the diff as a `plan` job reads the archive: through a SHA-256 hasher (the job
//!   checks the file's recorded sha256 on the same read) — the plan's whole read path.
//!
//! Then the diff's peak memory on a tree of a tenth of the files (same bytes per file,
//! same directory width), to show memory flat in the file count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::Digest as _;
use volsnap_archive::diff::{DiffOptions, LiveRoots, diff, diff_paths, open_live_root};
use volsnap_archive::{VolumeInput, WriteOptions, write_archive_file};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        .unwrap_or(0)
}

/// `files` files totalling ~`mib` MiB, 100 per directory.
fn generate(dir: &Path, files: usize, mib: usize) {
    let per = ((mib << 20) / files.max(1)).max(1);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; per];
    for i in 0..files {
        let d = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&d).unwrap();
        }
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 6 random bits per byte from a 64-letter alphabet: compresses to ~75 %.
            for (k, b) in chunk.iter_mut().enumerate() {
                *b = b'0' + ((x >> (k * 6)) & 63) as u8;
            }
        }
        std::fs::write(d.join(format!("f{i:06}.dat")), &buf).unwrap();
    }
}

/// Change 1 % of the files (one byte each).
fn mutate(dir: &Path, files: usize) {
    for i in (0..files).step_by(100) {
        let p = dir.join(format!("d{:04}/f{i:06}.dat", i / 100));
        let mut d = std::fs::read(&p).unwrap();
        d[0] ^= 1;
        std::fs::write(&p, d).unwrap();
    }
}

fn sh(cmd: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A reader that hashes what passes through (as the plan job's reader does).
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Run the diff in a child process: (seconds, peak KiB, summary line).
fn diff_child(archive: &Path, vol: &Path) -> (f64, u64, String) {
    diff_child_mode(archive, vol, "child")
}

/// [`diff_child`] in `mode` (`child`: plain; `child-sha`: hashing the archive too).
fn diff_child_mode(archive: &Path, vol: &Path, mode: &str) -> (f64, u64, String) {
    let t = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .arg(mode)
        .arg(archive)
        .arg(vol)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    let (kib, summary) = s.trim().split_once(' ').unwrap();
    (secs, kib.parse().unwrap(), summary.to_owned())
}

fn setup(root: &Path, files: usize, mib: usize) -> (PathBuf, PathBuf) {
    let vol = root.join(format!("vol-{files}"));
    let archive = root.join(format!("snap-{files}.tar.gz"));
    if !archive.exists() {
        let _ = std::fs::remove_dir_all(&vol);
        eprintln!("generating {files} files, {mib} MiB in {}", vol.display());
        generate(&vol, files, mib);
        eprintln!("capturing");
        let input = VolumeInput {
            index: 0,
            target: "/data".into(),
            scope: "stage".into(),
            source: "data".into(),
            path: vol.clone(),
            root: None,
        };
        write_archive_file(
            &archive,
            "bench",
            &[input],
            &WriteOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        mutate(&vol, files);
    }
    (vol, archive)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child-sha") {
        let (archive, vol) = (PathBuf::from(&args[2]), PathBuf::from(&args[3]));
        let mut roots = LiveRoots::new();
        roots.insert(0, open_live_root(&vol).unwrap());
        let mut r = Hashing {
            inner: std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(&archive).unwrap(),
            ),
            hasher: sha2::Sha256::new(),
        };
        let d = diff(&mut r, roots, &DiffOptions::default()).unwrap();
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        let sha = hex::encode(r.hasher.finalize());
        let v = &d.volumes[0];
        println!(
            "{} changed={} sha256={}…",
            vm_hwm_kib(),
            v.changed.files,
            &sha[..12]
        );
        return;
    }
    if args.get(1).map(String::as_str) == Some("child") {
        let (archive, vol) = (PathBuf::from(&args[2]), PathBuf::from(&args[3]));
        let mut live = BTreeMap::new();
        live.insert(0u32, vol);
        let d = diff_paths(&archive, &live, &DiffOptions::default()).unwrap();
        let v = &d.volumes[0];
        println!(
            "{} changed={} unchanged={} added={} removed={}",
            vm_hwm_kib(),
            v.changed.files,
            v.unchanged_files,
            v.added.files,
            v.removed.files
        );
        return;
    }
    let files: usize = arg(&args, "--files", "30000").parse().unwrap();
    let mib: usize = arg(&args, "--mib", "1024").parse().unwrap();
    let runs: usize = arg(&args, "--runs", "3").parse().unwrap();
    let root = PathBuf::from(arg(&args, "--dir", "/var/tmp/volsnap-plan-bench"));
    std::fs::create_dir_all(&root).unwrap();

    let (vol, archive) = setup(&root, files, mib);
    let floor_cmd = format!(
        "tar -xzOf {a} >/dev/null && find {v} -type f -exec cat {{}} + >/dev/null",
        a = archive.display(),
        v = vol.display()
    );
    // Warm the cache for both.
    sh(&floor_cmd);
    let _ = diff_child(&archive, &vol);
    let (mut floor, mut diff, mut peak) = (vec![], vec![], 0);
    let mut summary = String::new();
    for _ in 0..runs {
        floor.push(sh(&floor_cmd));
        let (s, k, sum) = diff_child(&archive, &vol);
        diff.push(s);
        peak = peak.max(k);
        summary = sum;
    }
    let _ = diff_child_mode(&archive, &vol, "child-sha");
    let mut plan_read = vec![];
    for _ in 0..runs {
        plan_read.push(diff_child_mode(&archive, &vol, "child-sha").0);
    }
    let p = median(plan_read);
    let (f, d) = (median(floor), median(diff));
    println!(
        "{files} files, {mib} MiB, archive {} MiB: floor {f:.2} s, diff {d:.2} s, ratio {:.2}, diff peak RSS {:.1} MiB ({summary})",
        std::fs::metadata(&archive).unwrap().len() >> 20,
        d / f,
        peak as f64 / 1024.0
    );
    println!(
        "diff + sha256 of the archive (a plan job's read path): {p:.2} s, ratio {:.2}",
        p / f
    );

    // Memory against the file count: a tenth of the files, same file size.
    let small_files = files / 10;
    let (svol, sarchive) = setup(&root, small_files, mib / 10);
    let _ = diff_child(&sarchive, &svol);
    let (_, small_peak, _) = diff_child(&sarchive, &svol);
    println!(
        "peak RSS: {small_files} files {:.1} MiB, {files} files {:.1} MiB",
        small_peak as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
