//! volsnap-archive against GNU tar + gzip on a ~1 GiB mixed tree, in one run.
//!
//! ```text
//! cargo bench -p volsnap-archive --bench archive_bench
//! ```
//!
//! Environment: `VOLSNAP_BENCH_DIR` (default `<workspace>/.volsnap/bench`, git-ignored),
//! `VOLSNAP_BENCH_ROUNDS` (default 3), `VOLSNAP_BENCH_SCALE` (default 1.0: the tree's
//! size relative to ~1 GiB), `VOLSNAP_BENCH_KEEP=1` keeps the directory afterwards.
//!
//! Capture: ours (`write_archive_file`: writes, fsyncs, renames) against
//! `tar --use-compress-program='gzip -6' -cf X -C src . && sync X`, and both without
//! durability. Extraction of the same archive (ours): ours with `fsync` (one `syncfs`)
//! against `tar -xzf X -C dir && sync -f dir` (also `syncfs`), and both without. The
//! source tree is read once first so every run starts from a warm page cache, and the
//! filesystem is synced (untimed) before each run. Rounds alternate which side goes
//! first; the median of each is reported.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use volsnap_archive::{
    ExtractOptions, VolumeInput, WriteOptions, extract_file, write_archive, write_archive_file,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn random(&mut self, n: usize, out: &mut Vec<u8>) {
        out.clear();
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
    }
    /// Log-like text: compresses about 4:1 with gzip -6.
    fn text(&mut self, n: usize, words: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        while out.len() < n {
            let ts = 1_700_000_000 + self.below(1_000_000);
            out.extend_from_slice(ts.to_string().as_bytes());
            out.extend_from_slice(b" level=info id=");
            out.extend_from_slice(format!("{:08x}", self.next() as u32).as_bytes());
            out.extend_from_slice(b" msg=\"");
            for _ in 0..3 + self.below(10) {
                out.extend_from_slice(&words[self.below(words.len() as u64) as usize]);
                out.push(b' ');
            }
            out.extend_from_slice(b"\"\n");
        }
        out.truncate(n);
    }
}

fn env_f64(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Builds the tree: many small files (0–64 KiB, skewed small) in ~600 directories, and
/// four 160 MiB files (two random, two text). About 1 GiB at scale 1.
fn generate(src: &Path, scale: f64) -> (u64, u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words: Vec<Vec<u8>> = (0..4000)
        .map(|_| {
            let len = 2 + rng.below(9) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    let mut buf = Vec::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let small = (30_000.0 * scale) as usize;
    for i in 0..small {
        let d = src.join(format!("d{:02}/s{:02}", i % 40, (i / 40) % 15));
        if i < 600 {
            fs::create_dir_all(&d).unwrap();
        }
        let size = match rng.below(100) {
            0..=49 => rng.below(4096),
            50..=89 => 4096 + rng.below(28_672),
            _ => 32_768 + rng.below(32_768),
        } as usize;
        if rng.below(3) == 0 {
            rng.random(size, &mut buf);
        } else {
            rng.text(size, &words, &mut buf);
        }
        fs::write(d.join(format!("f{i:06}.dat")), &buf).unwrap();
        files += 1;
        bytes += size as u64;
    }
    let large = (160.0 * 1024.0 * 1024.0 * scale) as usize;
    fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..4 {
        let mut f = fs::File::create(src.join(format!("big/large-{i}.bin"))).unwrap();
        let mut left = large;
        while left > 0 {
            let n = left.min(4 << 20);
            if i % 2 == 0 {
                rng.random(n, &mut buf);
            } else {
                rng.text(n, &words, &mut buf);
            }
            f.write_all(&buf).unwrap();
            left -= n;
        }
        files += 1;
        bytes += large as u64;
    }
    (files, bytes)
}

/// CPU seconds used so far by this process (all threads) plus its waited-for children,
/// from /proc/self/stat (utime, stime, cutime, cstime; clock ticks of 1/100 s).
fn cpu() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // after ")": state is field 3, so utime (14) is index 11.
    (11..15).map(|i| f[i].parse::<f64>().unwrap()).sum::<f64>() / 100.0
}

fn sh(cmd: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    let d = t.elapsed();
    assert!(st.success(), "command failed: {cmd}");
    d
}

fn syncfs(dir: &Path) {
    let st = Command::new("sync").arg("-f").arg(dir).status().unwrap();
    assert!(st.success());
}

fn rm(p: &Path) {
    if p.is_dir() {
        fs::remove_dir_all(p).unwrap();
    } else if p.exists() {
        fs::remove_file(p).unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn warm(p: &Path) {
    // Read the whole tree once so that both sides start from a warm page cache.
    sh(&format!("tar -cf - -C {} . > /dev/null", p.display()));
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Profiling aid: extract one existing archive (e.g. under `perf record`) and stop.
    if let Ok(archive) = std::env::var("VOLSNAP_BENCH_EXTRACT_ONLY") {
        let out = PathBuf::from(format!("{archive}.x"));
        rm(&out);
        let map = BTreeMap::from([(0u32, out.clone())]);
        let opts = ExtractOptions {
            fsync: false,
            ..ExtractOptions::default()
        };
        let (t, c0) = (Instant::now(), cpu());
        let s = extract_file(Path::new(&archive), &map, &opts, &mut |_, _| {}).unwrap();
        println!(
            "extracted {} entries in {:.2?}, {:.2} CPU s",
            s.stats.entries,
            t.elapsed(),
            cpu() - c0
        );
        rm(&out);
        return;
    }
    let base = std::env::var("VOLSNAP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.volsnap/bench"));
    let rounds = env_f64("VOLSNAP_BENCH_ROUNDS", 3.0) as usize;
    let scale = env_f64("VOLSNAP_BENCH_SCALE", 1.0);
    fs::create_dir_all(&base).unwrap();
    let base = fs::canonicalize(&base).unwrap();
    let src = base.join("src");
    rm(&src);
    fs::create_dir_all(&src).unwrap();
    let t = Instant::now();
    let (files, bytes) = generate(&src, scale);
    eprintln!(
        "generated {files} files, {:.1} MiB in {:.1?}",
        bytes as f64 / 1048576.0,
        t.elapsed()
    );
    warm(&src);

    let vol = [VolumeInput {
        index: 0,
        target: "/data".into(),
        scope: "stage".into(),
        source: "bench".into(),
        path: src.clone(),
    }];
    let ours_gz = base.join("ours.tar.gz");
    let tar_gz = base.join("tar.tar.gz");
    let mut r: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut c: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut sizes = (0u64, 0u64);
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        let ours_first = round % 2 == 0;
        for side in [ours_first, !ours_first] {
            syncfs(&base);
            if side {
                // Capture, durable.
                rm(&ours_gz);
                let (t, c0) = (Instant::now(), cpu());
                let s = write_archive_file(
                    &ours_gz,
                    "bench",
                    &vol,
                    &WriteOptions::default(),
                    &mut |_, _| {},
                )
                .unwrap();
                r.entry("capture ours (fsync)")
                    .or_default()
                    .push(t.elapsed());
                c.entry("capture ours (fsync)")
                    .or_default()
                    .push(cpu() - c0);
                sizes.0 = s.size;
                syncfs(&base);
                // Capture, no fsync.
                let scratch = base.join("ours-nosync.tar.gz");
                rm(&scratch);
                let (t, c0) = (Instant::now(), cpu());
                let f = fs::File::create(&scratch).unwrap();
                write_archive(f, "bench", &vol, &WriteOptions::default(), &mut |_, _| {}).unwrap();
                r.entry("capture ours (no fsync)")
                    .or_default()
                    .push(t.elapsed());
                c.entry("capture ours (no fsync)")
                    .or_default()
                    .push(cpu() - c0);
                rm(&scratch);
            } else {
                rm(&tar_gz);
                let c0 = cpu();
                let d = sh(&format!(
                    "tar --use-compress-program='gzip -6' -cf {t} -C {s} . && sync {t}",
                    t = tar_gz.display(),
                    s = src.display()
                ));
                r.entry("capture tar (sync)").or_default().push(d);
                c.entry("capture tar (sync)").or_default().push(cpu() - c0);
                sizes.1 = fs::metadata(&tar_gz).unwrap().len();
                syncfs(&base);
                let scratch = base.join("tar-nosync.tar.gz");
                let c0 = cpu();
                let d = sh(&format!(
                    "tar --use-compress-program='gzip -6' -cf {t} -C {s} .",
                    t = scratch.display(),
                    s = src.display()
                ));
                r.entry("capture tar (no sync)").or_default().push(d);
                c.entry("capture tar (no sync)")
                    .or_default()
                    .push(cpu() - c0);
                rm(&scratch);
            }
        }
        for side in [ours_first, !ours_first] {
            for durable in [true, false] {
                let out = base.join("x");
                rm(&out);
                syncfs(&base);
                if side {
                    let opts = ExtractOptions {
                        fsync: durable,
                        ..ExtractOptions::default()
                    };
                    let map = BTreeMap::from([(0u32, out.clone())]);
                    let (t, c0) = (Instant::now(), cpu());
                    extract_file(&ours_gz, &map, &opts, &mut |_, _| {}).unwrap();
                    let key = if durable {
                        "extract ours (syncfs)"
                    } else {
                        "extract ours (no fsync)"
                    };
                    r.entry(key).or_default().push(t.elapsed());
                    c.entry(key).or_default().push(cpu() - c0);
                } else {
                    fs::create_dir(&out).unwrap();
                    let c0 = cpu();
                    let sync = if durable {
                        format!(" && sync -f {}", out.display())
                    } else {
                        String::new()
                    };
                    let d = sh(&format!(
                        "tar -xzf {} -C {}{sync}",
                        ours_gz.display(),
                        out.display()
                    ));
                    let key = if durable {
                        "extract tar (sync -f)"
                    } else {
                        "extract tar (no sync)"
                    };
                    r.entry(key).or_default().push(d);
                    c.entry(key).or_default().push(cpu() - c0);
                }
                rm(&out);
            }
        }
    }
    let m = |k: &str| median(r[k].clone());
    println!();
    println!(
        "tree: {files} files, {:.1} MiB; archive: ours {:.1} MiB, tar+gzip -6 {:.1} MiB; {rounds} rounds, medians",
        bytes as f64 / 1048576.0,
        sizes.0 as f64 / 1048576.0,
        sizes.1 as f64 / 1048576.0
    );
    println!("| operation | ours | GNU tar + gzip | ratio ours/tar |");
    println!("|---|---|---|---|");
    for (label, ours, tar) in [
        (
            "capture, durable",
            "capture ours (fsync)",
            "capture tar (sync)",
        ),
        (
            "capture, no sync",
            "capture ours (no fsync)",
            "capture tar (no sync)",
        ),
        (
            "extract, durable",
            "extract ours (syncfs)",
            "extract tar (sync -f)",
        ),
        (
            "extract, no sync",
            "extract ours (no fsync)",
            "extract tar (no sync)",
        ),
    ] {
        let (o, t) = (m(ours), m(tar));
        println!(
            "| {label} | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2} |",
            o.as_secs_f64(),
            bytes as f64 / 1048576.0 / o.as_secs_f64(),
            t.as_secs_f64(),
            bytes as f64 / 1048576.0 / t.as_secs_f64(),
            o.as_secs_f64() / t.as_secs_f64()
        );
    }
    println!();
    println!("CPU seconds (user+sys, all threads/processes), medians:");
    println!("| operation | ours | GNU tar + gzip | ratio ours/tar |");
    println!("|---|---|---|---|");
    let mc = |k: &str| {
        let mut v = c[k].clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (label, ours, tar) in [
        (
            "capture, durable",
            "capture ours (fsync)",
            "capture tar (sync)",
        ),
        (
            "extract, durable",
            "extract ours (syncfs)",
            "extract tar (sync -f)",
        ),
        (
            "extract, no sync",
            "extract ours (no fsync)",
            "extract tar (no sync)",
        ),
    ] {
        println!(
            "| {label} | {:.2} s | {:.2} s | {:.2} |",
            mc(ours),
            mc(tar),
            mc(ours) / mc(tar)
        );
    }
    println!();
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", loadavg.trim());
    for (k, v) in &r {
        println!(
            "{k}: {:?}",
            v.iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
        );
    }
    if std::env::var("VOLSNAP_BENCH_KEEP").as_deref() != Ok("1") {
        rm(&base);
    }
}
