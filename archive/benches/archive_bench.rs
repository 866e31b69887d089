//! volsnap-archive against GNU tar + pigz / gzip on a 10 MiB and a ~1 GiB mixed tree,
//! side by side in one run.
//!
//! ```text
//! cargo bench -p volsnap-archive --bench archive_bench
//! ```
//!
//! Environment: `VOLSNAP_BENCH_DIR` (default `<workspace>/.volsnap/bench`, git-ignored),
//! `VOLSNAP_BENCH_ROUNDS` (default 3; trees under 100 MiB get at least 9),
//! `VOLSNAP_BENCH_SCALES` (default `0.01,1`: tree sizes relative to ~1 GiB),
//! `VOLSNAP_BENCH_KEEP=1` keeps the directory afterwards.
//!
//! Capture: ours (`write_archive` to a file, default options: level 6, one compressor
//! thread per CPU) against `tar -cf - -C src . | pigz -6 -p 2 > X` and against
//! `tar -cf - -C src . | gzip -6 > X`; and durable: ours `write_archive_file` (write,
//! fsync, rename, fsync dir) against the pigz pipeline `&& sync X`. Output sizes of all
//! three. Extraction of our archive: ours (`extract_file`) against `tar -xzf X -C dir`,
//! without and with durability (ours: one `syncfs`; tar: `&& sync -f dir`, also
//! `syncfs`). The source tree is read once first so every run starts from a warm page
//! cache, and the filesystem is synced (untimed) before each run. Rounds rotate which
//! side goes first; medians are reported, with every run's time listed. Peak RSS of this
//! process (`VmHWM`, reset before each of our runs) shows the memory bound.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use volsnap_archive::{
    ExtractOptions, VolumeInput, WriteOptions, extract_file, write_archive, write_archive_file,
};

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::Rng;

impl Rng {
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
    let scales: Vec<f64> = std::env::var("VOLSNAP_BENCH_SCALES")
        .unwrap_or_else(|_| "0.01,1".into())
        .split(',')
        .map(|s| s.trim().parse().expect("VOLSNAP_BENCH_SCALES: numbers"))
        .collect();
    fs::create_dir_all(&base).unwrap();
    let base = fs::canonicalize(&base).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "volsnap-archive bench: {rounds} rounds (at least 9 below 100 MiB), medians; {threads} CPUs; ours uses {threads} compressor threads"
    );
    for scale in scales {
        // Small trees take well under a second a run, where a busy machine's noise is
        // as large as the effect: give them more rounds.
        let r = if scale < 0.1 { rounds.max(9) } else { rounds };
        run(&base, scale, r);
    }
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", loadavg.trim());
    if std::env::var("VOLSNAP_BENCH_KEEP").as_deref() != Ok("1") {
        rm(&base);
    }
}

/// Resets this process's peak RSS (Linux: `5` into `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS of this process since the last reset, in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[derive(Default)]
struct Samples {
    wall: BTreeMap<&'static str, Vec<Duration>>,
    cpu: BTreeMap<&'static str, Vec<f64>>,
    rss: BTreeMap<&'static str, f64>,
}

impl Samples {
    fn add(&mut self, k: &'static str, wall: Duration, cpu: f64) {
        self.wall.entry(k).or_default().push(wall);
        self.cpu.entry(k).or_default().push(cpu);
    }
    fn rss(&mut self, k: &'static str) {
        let v = peak_rss_mib();
        let e = self.rss.entry(k).or_insert(0.0);
        *e = e.max(v);
    }
    fn wall(&self, k: &str) -> f64 {
        median(self.wall[k].clone()).as_secs_f64()
    }
    fn cpu(&self, k: &str) -> f64 {
        let mut v = self.cpu[k].clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

/// Times a shell pipeline, CPU included (its children are waited for).
fn timed_sh(s: &mut Samples, k: &'static str, cmd: &str) {
    let c0 = cpu();
    let d = sh(cmd);
    s.add(k, d, cpu() - c0);
}

fn run(base: &Path, scale: f64, rounds: usize) {
    let src = base.join("src");
    rm(&src);
    fs::create_dir_all(&src).unwrap();
    let t = Instant::now();
    let (files, bytes) = generate(&src, scale);
    let mib = bytes as f64 / 1048576.0;
    eprintln!(
        "generated {files} files, {mib:.1} MiB in {:.1?}",
        t.elapsed()
    );
    warm(&src);

    let vol = [VolumeInput {
        index: 0,
        target: "/data".into(),
        scope: "stage".into(),
        source: "bench".into(),
        path: src.clone(),
        root: None,
    }];
    let ours_gz = base.join("ours.tar.gz");
    let pigz_gz = base.join("pigz.tar.gz");
    let gzip_gz = base.join("gzip.tar.gz");
    let mut s = Samples::default();
    let mut sizes = (0u64, 0u64, 0u64);
    let srcs = src.display();
    for round in 0..rounds {
        eprintln!("{mib:.0} MiB: round {} of {rounds}", round + 1);
        // Capture. Rotate which side goes first.
        for k in 0..3 {
            syncfs(base);
            match (round + k) % 3 {
                0 => {
                    // Ours without durability (the comparable of a pipeline into a file)
                    // and durable (`write_archive_file`: write, fsync, rename, fsync dir).
                    let scratch = base.join("ours-nosync.tar.gz");
                    rm(&scratch);
                    reset_peak_rss();
                    let (t, c0) = (Instant::now(), cpu());
                    let f = fs::File::create(&scratch).unwrap();
                    write_archive(f, "bench", &vol, &WriteOptions::default(), &mut |_, _| {})
                        .unwrap();
                    s.add("capture ours", t.elapsed(), cpu() - c0);
                    s.rss("capture ours");
                    rm(&scratch);
                    syncfs(base);
                    rm(&ours_gz);
                    let (t, c0) = (Instant::now(), cpu());
                    let w = write_archive_file(
                        &ours_gz,
                        "bench",
                        &vol,
                        &WriteOptions::default(),
                        &mut |_, _| {},
                    )
                    .unwrap();
                    s.add("capture ours durable", t.elapsed(), cpu() - c0);
                    sizes.0 = w.size;
                }
                1 => {
                    rm(&pigz_gz);
                    timed_sh(
                        &mut s,
                        "capture pigz",
                        &format!(
                            "tar -cf - -C {srcs} . | pigz -6 -p 2 > {}",
                            pigz_gz.display()
                        ),
                    );
                    sizes.1 = fs::metadata(&pigz_gz).unwrap().len();
                    rm(&pigz_gz);
                    syncfs(base);
                    timed_sh(
                        &mut s,
                        "capture pigz durable",
                        &format!(
                            "tar -cf - -C {srcs} . | pigz -6 -p 2 > {p} && sync {p}",
                            p = pigz_gz.display()
                        ),
                    );
                    rm(&pigz_gz);
                }
                _ => {
                    rm(&gzip_gz);
                    timed_sh(
                        &mut s,
                        "capture gzip",
                        &format!("tar -cf - -C {srcs} . | gzip -6 > {}", gzip_gz.display()),
                    );
                    sizes.2 = fs::metadata(&gzip_gz).unwrap().len();
                    rm(&gzip_gz);
                }
            }
        }
        // Extraction of the same archive (ours; GNU tar reads it).
        for side in [round % 2 == 0, round % 2 != 0] {
            for durable in [true, false] {
                let out = base.join("x");
                rm(&out);
                syncfs(base);
                if side {
                    let opts = ExtractOptions {
                        fsync: durable,
                        ..ExtractOptions::default()
                    };
                    let map = BTreeMap::from([(0u32, out.clone())]);
                    reset_peak_rss();
                    let (t, c0) = (Instant::now(), cpu());
                    extract_file(&ours_gz, &map, &opts, &mut |_, _| {}).unwrap();
                    let k = if durable {
                        "extract ours durable"
                    } else {
                        "extract ours"
                    };
                    s.add(k, t.elapsed(), cpu() - c0);
                    s.rss("extract ours");
                } else {
                    fs::create_dir(&out).unwrap();
                    let (k, sync) = if durable {
                        (
                            "extract tar durable",
                            format!(" && sync -f {}", out.display()),
                        )
                    } else {
                        ("extract tar", String::new())
                    };
                    timed_sh(
                        &mut s,
                        k,
                        &format!("tar -xzf {} -C {}{sync}", ours_gz.display(), out.display()),
                    );
                }
                rm(&out);
            }
        }
    }
    rm(&ours_gz);
    rm(&src);

    let mb = |n: u64| n as f64 / 1048576.0;
    println!();
    println!(
        "### {mib:.1} MiB, {files} files, {rounds} rounds; archive: ours {:.2} MiB, pigz -6 {:.2} MiB ({:+.2} %), gzip -6 {:.2} MiB ({:+.2} %)",
        mb(sizes.0),
        mb(sizes.1),
        (sizes.0 as f64 / sizes.1 as f64 - 1.0) * 100.0,
        mb(sizes.2),
        (sizes.0 as f64 / sizes.2 as f64 - 1.0) * 100.0,
    );
    println!();
    println!("| operation | ours | reference | ratio ours/reference | CPU s ours / reference |");
    println!("|---|---|---|---|---|");
    for (label, ours, reference) in [
        (
            "capture vs `tar -cf - . | pigz -6 -p 2 > X`",
            "capture ours",
            "capture pigz",
        ),
        (
            "capture vs `tar -cf - . | gzip -6 > X`",
            "capture ours",
            "capture gzip",
        ),
        (
            "capture, durable (+ fsync) vs pigz + `sync X`",
            "capture ours durable",
            "capture pigz durable",
        ),
        ("extract vs `tar -xzf`", "extract ours", "extract tar"),
        (
            "extract, durable (syncfs) vs `tar -xzf` + `sync -f`",
            "extract ours durable",
            "extract tar durable",
        ),
    ] {
        let (o, r) = (s.wall(ours), s.wall(reference));
        println!(
            "| {label} | {o:.2} s ({:.0} MiB/s) | {r:.2} s ({:.0} MiB/s) | **{:.2}** | {:.2} / {:.2} |",
            mib / o,
            mib / r,
            o / r,
            s.cpu(ours),
            s.cpu(reference),
        );
    }
    println!();
    println!(
        "peak RSS of the bench process: capture {:.1} MiB, extraction {:.1} MiB",
        s.rss["capture ours"], s.rss["extract ours"]
    );
    for (k, v) in &s.wall {
        println!(
            "{k}: {:?}",
            v.iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
        );
    }
}
