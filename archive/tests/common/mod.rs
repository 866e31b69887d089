//! Helpers shared by the integration tests: tree snapshots, hand-crafted archives, and
//! an arena with a sentinel tree around the staging directories.
#![allow(dead_code)]

mod rng;
#[allow(unused_imports)] // not every test binary makes random data
pub use rng::Rng;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use volsnap_archive::{ArchiveError, ExtractOptions, ExtractSummary};

/// Every entry below `root` (root included as "."), with type, permission bits, mtime
/// (seconds), owner, and content hash or symlink target. Symlinks are not followed.
pub fn snapshot(root: &Path, with_mtime_of_root: bool) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    if !with_mtime_of_root && let Some(v) = out.get_mut(b".".as_slice()) {
        *v = v.split(" mtime=").next().unwrap().to_string();
    }
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<Vec<u8>, String>) {
    let md = fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap();
    let key = if rel.as_os_str().is_empty() {
        b".".to_vec()
    } else {
        rel.as_os_str().as_bytes().to_vec()
    };
    let ft = md.file_type();
    let desc = if ft.is_symlink() {
        format!(
            "symlink -> {:?} mtime={}",
            fs::read_link(p).unwrap(),
            md.mtime()
        )
    } else if ft.is_dir() {
        format!(
            "dir mode={:o} uid={} gid={} mtime={}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime()
        )
    } else if ft.is_file() {
        let data = fs::read(p).unwrap();
        format!(
            "file mode={:o} uid={} gid={} size={} sha={} mtime={}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            data.len(),
            hex::encode(Sha256::digest(&data)),
            md.mtime()
        )
    } else {
        format!("special mode={:o}", md.mode())
    };
    out.insert(key, desc);
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &p.join(n), out);
        }
    }
}

/// A hash of a snapshot, for one-line comparisons.
pub fn tree_hash(s: &BTreeMap<Vec<u8>, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in s {
        h.update(k);
        h.update(b"\0");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Diff of two snapshots, for assertion messages.
pub fn diff(a: &BTreeMap<Vec<u8>, String>, b: &BTreeMap<Vec<u8>, String>) -> String {
    let keys: BTreeSet<_> = a.keys().chain(b.keys()).collect();
    let mut out = String::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            out.push_str(&format!(
                "{}: {:?} != {:?}\n",
                String::from_utf8_lossy(k),
                x,
                y
            ));
        }
        if out.len() > 4000 {
            break;
        }
    }
    out
}

/// A temp dir holding a sentinel tree next to the staging parent:
/// `<tmp>/sentinel/{victim, d/inner, link -> victim}` and `<tmp>/parent/` (staging
/// directories go there). Everything under `<tmp>` except `parent`'s own mtime must be
/// identical before and after a refused extraction.
pub struct Arena {
    pub tmp: tempfile::TempDir,
}

impl Arena {
    pub fn new() -> Arena {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join("sentinel");
        fs::create_dir_all(s.join("d")).unwrap();
        fs::write(s.join("victim"), b"original").unwrap();
        fs::write(s.join("d/inner"), b"inner").unwrap();
        std::os::unix::fs::symlink("victim", s.join("link")).unwrap();
        fs::create_dir(tmp.path().join("parent")).unwrap();
        Arena { tmp }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn sentinel(&self) -> PathBuf {
        self.tmp.path().join("sentinel")
    }

    pub fn staging(&self, i: u32) -> PathBuf {
        self.tmp.path().join("parent").join(format!("stage{i}"))
    }

    pub fn map(&self, n: u32) -> BTreeMap<u32, PathBuf> {
        (0..n).map(|i| (i, self.staging(i))).collect()
    }

    /// The whole arena except the staging parent's own mtime (creating and removing a
    /// staging directory changes it, which is the one change allowed).
    pub fn state(&self) -> BTreeMap<Vec<u8>, String> {
        let mut s = snapshot(self.root(), false);
        if let Some(v) = s.get_mut(b"parent".as_slice()) {
            *v = v.split(" mtime=").next().unwrap().to_string();
        }
        s
    }

    /// Extracts `gz` into staging for `volumes` volumes and asserts the refusal: the
    /// rule, no staging directory left, the rest of the arena untouched.
    pub fn assert_refused(
        &self,
        gz: &[u8],
        volumes: u32,
        opts: &ExtractOptions,
        rule: &str,
    ) -> ArchiveError {
        let before = self.state();
        let err = volsnap_archive::extract(gz, &self.map(volumes), opts, &mut |_, _| {})
            .expect_err("hostile archive must be refused");
        assert_eq!(err.rule(), rule, "wrong rule; error: {err}");
        for i in 0..volumes.max(1) {
            assert!(
                fs::symlink_metadata(self.staging(i)).is_err(),
                "staging {i} left behind"
            );
        }
        let after = self.state();
        assert_eq!(before, after, "arena changed:\n{}", diff(&before, &after));
        assert_eq!(fs::read_dir(self.root().join("parent")).unwrap().count(), 0);
        // verify() must refuse it for the same reason.
        let v = volsnap_archive::verify_stream(gz, &opts.limits).expect_err("verify refuses too");
        assert_eq!(v.rule(), rule, "verify disagrees: {v}");
        err
    }

    pub fn extract_ok(&self, gz: &[u8], volumes: u32, opts: &ExtractOptions) -> ExtractSummary {
        volsnap_archive::extract(gz, &self.map(volumes), opts, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("extract failed: {e} ({})", e.rule()))
    }
}

pub fn opts() -> ExtractOptions {
    ExtractOptions {
        fsync: false,
        ..ExtractOptions::default()
    }
}

pub fn gz(tar: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::new(1));
    e.write_all(tar).unwrap();
    e.finish().unwrap()
}

/// One entry of a hand-made archive.
pub struct Raw {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub data: Vec<u8>,
    /// Size written in the header (defaults to data length).
    pub size: Option<u64>,
    pub link: Vec<u8>,
    /// PAX records to put in an `x` header before this entry.
    pub pax: Vec<(String, Vec<u8>)>,
    /// GNU long name (`L` record) before this entry.
    pub gnu_long_name: Option<Vec<u8>>,
}

impl Raw {
    pub fn new(name: impl AsRef<[u8]>, typeflag: u8) -> Raw {
        Raw {
            name: name.as_ref().to_vec(),
            typeflag,
            mode: if typeflag == b'5' { 0o755 } else { 0o644 },
            data: Vec::new(),
            size: None,
            link: Vec::new(),
            pax: Vec::new(),
            gnu_long_name: None,
        }
    }
    pub fn dir(name: impl AsRef<[u8]>) -> Raw {
        Raw::new(name, b'5')
    }
    pub fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Raw {
        let mut r = Raw::new(name, b'0');
        r.data = data.as_ref().to_vec();
        r
    }
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Raw {
        let mut r = Raw::new(name, b'2');
        r.link = target.as_ref().to_vec();
        r
    }
    pub fn with_mode(mut self, mode: u32) -> Raw {
        self.mode = mode;
        self
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A ustar header with the name written raw (no validation, so hostile names pass).
pub fn header(name: &[u8], typeflag: u8, mode: u32, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::new(typeflag));
    {
        let u = h.as_ustar_mut().unwrap();
        let n = name.len().min(100);
        u.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        u.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_cksum();
    *h.as_bytes()
}

fn append(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Serialises entries as a tar stream (no end marker).
pub fn tar_entries(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &e.pax {
                data.extend(pax_record(k, v));
            }
            out.extend_from_slice(&header(
                b"././@PaxHeader",
                b'x',
                0o644,
                data.len() as u64,
                b"",
            ));
            append(&mut out, &data);
        }
        if let Some(long) = &e.gnu_long_name {
            let mut data = long.clone();
            data.push(0);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::GNULongName);
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            append(&mut out, &data);
        }
        let size = e.size.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(&e.name, e.typeflag, e.mode, size, &e.link));
        append(&mut out, &e.data);
    }
    out
}

/// A manifest declaring, per volume index, the regular files and bytes of `entries`.
pub fn manifest_for(volumes: u32, entries: &[Raw]) -> String {
    let mut vols = Vec::new();
    for i in 0..volumes {
        let prefix = format!("volumes/{i}/");
        let mut files = 0u64;
        let mut bytes = 0u64;
        for e in entries {
            if (e.typeflag == b'0' || e.typeflag == 0) && e.name.starts_with(prefix.as_bytes()) {
                files += 1;
                bytes += e.size.unwrap_or(e.data.len() as u64);
            }
        }
        vols.push(format!(
            r#"{{"index":{i},"target":"/data/{i}","scope":"stage","source":"v{i}","files":{files},"bytes":{bytes}}}"#
        ));
    }
    format!(
        r#"{{"format":"volsnap/1","workload_id":"w-1","created_at":"2025-01-02T03:04:05Z","volumes":[{}]}}"#,
        vols.join(",")
    )
}

/// A complete tar: manifest (computed unless given), entries, end marker.
pub fn tar_with(volumes: u32, manifest: Option<&str>, entries: &[Raw]) -> Vec<u8> {
    let m = manifest
        .map(str::to_string)
        .unwrap_or_else(|| manifest_for(volumes, entries));
    let mut all = vec![Raw::file("manifest.json", m.as_bytes())];
    all.extend(entries.iter().map(|e| Raw {
        name: e.name.clone(),
        typeflag: e.typeflag,
        mode: e.mode,
        data: e.data.clone(),
        size: e.size,
        link: e.link.clone(),
        pax: e.pax.clone(),
        gnu_long_name: e.gnu_long_name.clone(),
    }));
    let mut out = tar_entries(&all);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// [`tar_with`] gzipped, one volume.
pub fn archive(entries: &[Raw]) -> Vec<u8> {
    gz(&tar_with(1, None, entries))
}
