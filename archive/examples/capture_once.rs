//! Captures one directory once and reports wall and CPU time (a profiling aid).
//!
//! ```text
//! cargo run --release -p volsnap-archive --example capture_once -- DIR OUT [THREADS]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use volsnap_archive::{VolumeInput, WriteOptions, write_archive};

fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    (11..13).map(|i| f[i].parse::<f64>().unwrap()).sum::<f64>() / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let threads = args.get(3).map_or(0, |t| t.parse().unwrap());
    let vol = [VolumeInput {
        index: 0,
        target: "/data".into(),
        scope: "stage".into(),
        source: "once".into(),
        path: dir,
        root: None,
    }];
    let opts = WriteOptions {
        threads,
        ..WriteOptions::default()
    };
    let (t, c0) = (Instant::now(), cpu());
    let f = std::fs::File::create(&out).unwrap();
    let s = write_archive(f, "once", &vol, &opts, &mut |_, _| {}).unwrap();
    println!(
        "{} bytes in {:.2?}, {:.2} CPU s, {} files",
        s.size,
        t.elapsed(),
        cpu() - c0,
        s.manifest.volumes[0].files
    );
}
