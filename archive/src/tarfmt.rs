//! The tar layer: POSIX ustar headers with PAX extended headers, as written by the
//! writer, and a strict reader that also accepts GNU long-name/long-link records.
//!
//! The reader is ours rather than the `tar` crate's so that every byte of a hostile
//! stream is accounted for: an extension header must be followed by the entry it
//! describes, a PAX key may appear once, numeric fields must parse exactly, and what
//! comes after the end-of-archive marker is checked (see [`TarStream::finish`]).

use crate::error::{ArchiveError, show};
use crate::limits::Limits;
use crate::tree::Meta;

pub(crate) const BLOCK: usize = 512;

/// Biggest PAX extended header accepted (its data, not the 512-byte header).
pub(crate) const MAX_PAX_BYTES: u64 = 1 << 20;

/// Consecutive extension headers (PAX `x`, GNU `L`, `K`) accepted before an entry.
const MAX_EXTENSION_HEADERS: usize = 3;

/// Zero bytes accepted after the first end-of-archive block (record padding).
pub(crate) const MAX_TRAILING_ZEROS: u64 = 1 << 20;

mod field {
    pub const NAME: (usize, usize) = (0, 100);
    pub const MODE: (usize, usize) = (100, 8);
    pub const UID: (usize, usize) = (108, 8);
    pub const GID: (usize, usize) = (116, 8);
    pub const SIZE: (usize, usize) = (124, 12);
    pub const MTIME: (usize, usize) = (136, 12);
    pub const CHKSUM: (usize, usize) = (148, 8);
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: (usize, usize) = (157, 100);
    pub const MAGIC: (usize, usize) = (257, 8);
    pub const DEVMAJOR: (usize, usize) = (329, 8);
    pub const DEVMINOR: (usize, usize) = (337, 8);
    pub const PREFIX: (usize, usize) = (345, 155);
}

const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";
const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";

/// What an entry is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    Regular,
    Dir,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// GNU sparse file (type `S` or PAX `GNU.sparse.*` records).
    Sparse,
    Other(u8),
}

/// One entry with its extension headers applied.
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub size: u64,
    pub etype: EntryType,
    pub meta: Meta,
    /// Offset of the entry's header in the decompressed stream.
    pub offset: u64,
}

/// Where decompressed bytes come from, in chunks.
pub(crate) trait ChunkSource {
    /// The next chunk; `Ok(None)` at the clean end of the compressed stream (after the
    /// gzip trailer and the check that nothing follows it).
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ArchiveError>;
    /// Gives a consumed chunk back for reuse.
    fn recycle(&mut self, _buf: Vec<u8>) {}
}

/// A tar stream read from a [`ChunkSource`].
pub(crate) struct TarStream<S: ChunkSource> {
    src: S,
    cur: Vec<u8>,
    pos: usize,
    offset: u64,
    eof: bool,
}

impl<S: ChunkSource> TarStream<S> {
    pub(crate) fn new(src: S) -> Self {
        TarStream {
            src,
            cur: Vec::new(),
            pos: 0,
            offset: 0,
            eof: false,
        }
    }

    /// The chunk source.
    pub(crate) fn source(&self) -> &S {
        &self.src
    }

    fn corrupt(&self, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::CorruptTar {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Makes sure unread bytes are available; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, ArchiveError> {
        while self.pos >= self.cur.len() {
            if self.eof {
                return Ok(false);
            }
            match self.src.next_chunk()? {
                Some(next) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    if old.capacity() > 0 {
                        self.src.recycle(old);
                    }
                }
                None => {
                    self.eof = true;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Reads one 512-byte block; false on a clean end of stream before it.
    fn read_block(&mut self, out: &mut [u8; BLOCK]) -> Result<bool, ArchiveError> {
        let mut got = 0;
        while got < BLOCK {
            if !self.fill()? {
                if got == 0 {
                    return Ok(false);
                }
                return Err(self.corrupt("stream ends inside a header block"));
            }
            let n = (BLOCK - got).min(self.cur.len() - self.pos);
            out[got..got + n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
            self.pos += n;
            self.offset += n as u64;
            got += n;
        }
        Ok(true)
    }

    /// Streams `n` bytes of entry data to `f`, then skips the block padding.
    pub(crate) fn read_data(
        &mut self,
        n: u64,
        mut f: impl FnMut(&[u8]) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        let mut left = n;
        while left > 0 {
            if !self.fill()? {
                return Err(self.corrupt("stream ends inside entry data"));
            }
            let avail = (self.cur.len() - self.pos) as u64;
            let take = avail.min(left) as usize;
            f(&self.cur[self.pos..self.pos + take])?;
            self.pos += take;
            self.offset += take as u64;
            left -= take as u64;
        }
        self.skip(padding(n))
    }

    fn skip(&mut self, mut n: u64) -> Result<(), ArchiveError> {
        while n > 0 {
            if !self.fill()? {
                return Err(self.corrupt("stream ends inside block padding"));
            }
            let take = ((self.cur.len() - self.pos) as u64).min(n) as usize;
            self.pos += take;
            self.offset += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads `n` (already bounded) bytes of data into memory.
    pub(crate) fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, ArchiveError> {
        let mut v = Vec::with_capacity(n as usize);
        self.read_data(n, |b| {
            v.extend_from_slice(b);
            Ok(())
        })?;
        Ok(v)
    }

    /// The next entry, or `None` at the end-of-archive marker.
    pub(crate) fn next_entry(&mut self, limits: &Limits) -> Result<Option<Entry>, ArchiveError> {
        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut extensions = 0;
        let mut block = [0u8; BLOCK];
        loop {
            let offset = self.offset;
            if !self.read_block(&mut block)? {
                return Err(self.corrupt("stream ends without an end-of-archive marker"));
            }
            if block.iter().all(|b| *b == 0) {
                if extensions > 0 {
                    return Err(self.corrupt("extension header not followed by an entry"));
                }
                return Ok(None);
            }
            let h = RawHeader::parse(&block).map_err(|r| ArchiveError::CorruptTar {
                offset,
                reason: r.into(),
            })?;
            match h.typeflag {
                b'x' | b'L' | b'K' => {
                    extensions += 1;
                    if extensions > MAX_EXTENSION_HEADERS {
                        return Err(self.corrupt("too many extension headers in a row"));
                    }
                    let cap = if h.typeflag == b'x' {
                        MAX_PAX_BYTES
                    } else {
                        limits.max_path_len + 1
                    };
                    if h.size > cap {
                        let name = show(&h.name);
                        return Err(if h.typeflag == b'x' {
                            ArchiveError::EntrySizeCap {
                                name,
                                size: h.size,
                                limit: cap,
                            }
                        } else {
                            ArchiveError::PathLengthCap {
                                name,
                                what: "GNU long name record",
                                len: h.size,
                                limit: cap,
                            }
                        });
                    }
                    let data = self.read_vec(h.size)?;
                    match h.typeflag {
                        b'x' => {
                            if pax.is_some() {
                                return Err(self.corrupt("two PAX headers for one entry"));
                            }
                            pax =
                                Some(Pax::parse(&data).map_err(|r| ArchiveError::CorruptTar {
                                    offset,
                                    reason: r.into(),
                                })?);
                        }
                        kind => {
                            let slot = if kind == b'L' {
                                &mut long_name
                            } else {
                                &mut long_link
                            };
                            if slot.is_some() {
                                return Err(self.corrupt("two GNU long-name records for one entry"));
                            }
                            *slot =
                                Some(gnu_long(&data).map_err(|r| ArchiveError::CorruptTar {
                                    offset,
                                    reason: r.into(),
                                })?);
                        }
                    }
                }
                flag => {
                    let pax = pax.unwrap_or_default();
                    let mut etype = match flag {
                        b'0' | 0 => EntryType::Regular,
                        b'1' => EntryType::Hardlink,
                        b'2' => EntryType::Symlink,
                        b'3' => EntryType::CharDevice,
                        b'4' => EntryType::BlockDevice,
                        b'5' => EntryType::Dir,
                        b'6' => EntryType::Fifo,
                        b'S' => EntryType::Sparse,
                        other => EntryType::Other(other),
                    };
                    if pax.sparse {
                        etype = EntryType::Sparse;
                    }
                    let name = pax.path.or(long_name).unwrap_or(h.name);
                    let link = pax.linkpath.or(long_link).unwrap_or(h.link);
                    let (mtime, mtime_nsec) = pax.mtime.unwrap_or((h.mtime, 0));
                    return Ok(Some(Entry {
                        name,
                        link,
                        size: pax.size.unwrap_or(h.size),
                        etype,
                        meta: Meta {
                            // setuid/setgid/sticky are dropped here, never restored.
                            mode: h.mode & 0o777,
                            mtime,
                            mtime_nsec,
                            uid: pax.uid.unwrap_or(h.uid),
                            gid: pax.gid.unwrap_or(h.gid),
                        },
                        offset,
                    }));
                }
            }
        }
    }

    /// After the first end-of-archive block: the rest of the decompressed stream must be
    /// zeros (at most [`MAX_TRAILING_ZEROS`]) and the compressed stream must then end
    /// cleanly.
    pub(crate) fn finish(&mut self) -> Result<(), ArchiveError> {
        let start = self.offset;
        while self.fill()? {
            let chunk = &self.cur[self.pos..];
            if let Some(i) = chunk.iter().position(|b| *b != 0) {
                return Err(ArchiveError::TrailingData {
                    offset: self.offset + i as u64,
                });
            }
            self.offset += chunk.len() as u64;
            self.pos = self.cur.len();
            if self.offset - start > MAX_TRAILING_ZEROS {
                return Err(ArchiveError::TrailingData {
                    offset: self.offset,
                });
            }
        }
        Ok(())
    }
}

pub(crate) fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

struct RawHeader {
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    typeflag: u8,
}

fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|b| *b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

fn get(block: &[u8; BLOCK], (off, len): (usize, usize)) -> &[u8] {
    &block[off..off + len]
}

impl RawHeader {
    fn parse(block: &[u8; BLOCK]) -> Result<RawHeader, &'static str> {
        let stored = parse_octal(get(block, field::CHKSUM)).ok_or("bad checksum field")?;
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (i, b) in block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { *b };
            unsigned += b as u64;
            signed += b as i8 as i64;
        }
        if stored != unsigned && stored as i64 != signed {
            return Err("header checksum mismatch");
        }
        let magic = get(block, field::MAGIC);
        let ustar = magic == USTAR_MAGIC;
        if !ustar && magic != GNU_MAGIC {
            return Err("not a POSIX ustar or GNU tar header");
        }
        let mut name = cstr(get(block, field::NAME)).to_vec();
        if ustar {
            let prefix = cstr(get(block, field::PREFIX));
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        let num = |f: (usize, usize), what: &'static str| -> Result<u64, &'static str> {
            parse_numeric(get(block, f)).ok_or(what)
        };
        let mode = num(field::MODE, "bad mode field")?;
        let uid = num(field::UID, "bad uid field")?;
        let gid = num(field::GID, "bad gid field")?;
        let size = num(field::SIZE, "bad size field")?;
        let mtime = num(field::MTIME, "bad mtime field")?;
        Ok(RawHeader {
            name,
            link: cstr(get(block, field::LINKNAME)).to_vec(),
            mode: u32::try_from(mode)
                .ok()
                .filter(|m| *m <= 0o7777_7777)
                .ok_or("bad mode field")?,
            uid: u32::try_from(uid).map_err(|_| "uid out of range")?,
            gid: u32::try_from(gid).map_err(|_| "gid out of range")?,
            size,
            mtime: i64::try_from(mtime).map_err(|_| "mtime out of range")?,
            typeflag: block[field::TYPEFLAG],
        })
    }
}

/// Octal with optional leading spaces, ended by NUL/space; an empty field is 0.
fn parse_octal(f: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < f.len() && f[i] == b' ' {
        i += 1;
    }
    let mut v: u64 = 0;
    let mut digits = 0;
    while i < f.len() && (b'0'..=b'7').contains(&f[i]) {
        v = v.checked_mul(8)?.checked_add((f[i] - b'0') as u64)?;
        i += 1;
        digits += 1;
    }
    if digits == 0 && f[i..].iter().any(|b| *b != 0 && *b != b' ') {
        return None;
    }
    if f[i..].iter().all(|b| *b == 0 || *b == b' ') {
        Some(v)
    } else {
        None
    }
}

/// Octal, or GNU base-256 (positive only) when the high bit of the first byte is set.
fn parse_numeric(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 == 0 {
        return parse_octal(f);
    }
    if f[0] != 0x80 {
        return None; // negative or malformed
    }
    let mut v: u64 = 0;
    for b in &f[1..] {
        if v >> 56 != 0 {
            return None;
        }
        v = (v << 8) | *b as u64;
    }
    Some(v)
}

fn gnu_long(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let name = cstr(data);
    if data[name.len()..].iter().any(|b| *b != 0) {
        return Err("GNU long-name record has bytes after its NUL");
    }
    Ok(name.to_vec())
}

/// The PAX records volsnap cares about.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<(i64, u32)>,
    uid: Option<u32>,
    gid: Option<u32>,
    sparse: bool,
}

fn dec_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl Pax {
    fn parse(mut data: &[u8]) -> Result<Pax, &'static str> {
        let mut p = Pax::default();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        while !data.is_empty() {
            let sp = data
                .iter()
                .take(21)
                .position(|b| *b == b' ')
                .ok_or("malformed PAX record length")?;
            let len = dec_u64(&data[..sp]).ok_or("malformed PAX record length")? as usize;
            if len < sp + 3 || len > data.len() {
                return Err("PAX record length out of range");
            }
            let record = &data[..len];
            data = &data[len..];
            if record[len - 1] != b'\n' {
                return Err("PAX record does not end with a newline");
            }
            let kv = &record[sp + 1..len - 1];
            let eq = kv
                .iter()
                .position(|b| *b == b'=')
                .ok_or("PAX record without `=`")?;
            let (key, value) = (&kv[..eq], &kv[eq + 1..]);
            if key.is_empty() {
                return Err("PAX record with an empty key");
            }
            if seen.iter().any(|k| k == key) {
                return Err("PAX key repeated in one header");
            }
            seen.push(key.to_vec());
            // An empty value deletes the field: the ustar value then applies.
            let v = (!value.is_empty()).then_some(value);
            match key {
                b"path" => p.path = v.map(<[u8]>::to_vec),
                b"linkpath" => p.linkpath = v.map(<[u8]>::to_vec),
                b"size" => p.size = v.map(|v| dec_u64(v).ok_or("bad PAX size")).transpose()?,
                b"uid" | b"gid" => {
                    let id = v
                        .map(|v| {
                            dec_u64(v)
                                .and_then(|n| u32::try_from(n).ok())
                                .ok_or("bad PAX uid/gid")
                        })
                        .transpose()?;
                    if key == b"uid" {
                        p.uid = id;
                    } else {
                        p.gid = id;
                    }
                }
                b"mtime" => p.mtime = v.map(parse_pax_time).transpose()?,
                k if k.starts_with(b"GNU.sparse.") => p.sparse = true,
                // atime, ctime, uname, gname, comment, charset, hdrcharset, SCHILY.*,
                // LIBARCHIVE.* and other vendor keys carry nothing volsnap restores.
                _ => {}
            }
        }
        Ok(p)
    }
}

fn parse_pax_time(v: &[u8]) -> Result<(i64, u32), &'static str> {
    let (secs, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let secs = dec_u64(secs)
        .and_then(|s| i64::try_from(s).ok())
        .ok_or("bad PAX mtime")?;
    let mut nsec: u32 = 0;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return Err("bad PAX mtime");
        }
        for i in 0..9 {
            nsec = nsec * 10 + frac.get(i).map_or(0, |d| (d - b'0') as u32);
        }
    }
    Ok((secs, nsec))
}

// ---------------------------------------------------------------------------------
// Writing

fn put_octal(block: &mut [u8; BLOCK], (off, len): (usize, usize), v: u64) {
    let digits = len - 1;
    if v < 1u64 << (3 * digits as u32).min(63) {
        let s = format!("{v:0digits$o}");
        block[off..off + digits].copy_from_slice(s.as_bytes());
        block[off + digits] = 0;
    } else {
        // GNU base-256: 0x80 then the value big-endian in the remaining bytes.
        let f = &mut block[off..off + len];
        f.fill(0);
        f[0] = 0x80;
        let bytes = v.to_be_bytes();
        let n = (len - 1).min(8);
        f[len - n..].copy_from_slice(&bytes[8 - n..]);
    }
}

fn fits_octal(v: u64, width: usize) -> bool {
    v < 1u64 << (3 * (width - 1) as u32).min(63)
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // The length counts its own digits: find the fixed point.
    let base = 1 + key.len() + 1 + value.len() + 1;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn raw_header(name: &[u8], typeflag: u8, meta: &Meta, size: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    put_octal(&mut b, field::MODE, meta.mode as u64);
    put_octal(&mut b, field::UID, meta.uid as u64);
    put_octal(&mut b, field::GID, meta.gid as u64);
    put_octal(&mut b, field::SIZE, size);
    put_octal(&mut b, field::MTIME, meta.mtime.max(0) as u64);
    b[field::TYPEFLAG] = typeflag;
    let l = link.len().min(100);
    b[field::LINKNAME.0..field::LINKNAME.0 + l].copy_from_slice(&link[..l]);
    b[field::MAGIC.0..field::MAGIC.0 + 8].copy_from_slice(USTAR_MAGIC);
    put_octal(&mut b, field::DEVMAJOR, 0);
    put_octal(&mut b, field::DEVMINOR, 0);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|x| *x as u64).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    b
}

/// Appends an entry header (preceded by a PAX header when a name, link or number does
/// not fit the ustar fields) to `out`.
pub(crate) fn write_header(
    out: &mut Vec<u8>,
    name: &[u8],
    typeflag: u8,
    meta: &Meta,
    size: u64,
    link: &[u8],
) {
    let mut pax = Vec::new();
    if name.len() > 100 {
        pax_record(&mut pax, "path", name);
    }
    if link.len() > 100 {
        pax_record(&mut pax, "linkpath", link);
    }
    if !fits_octal(size, 12) {
        pax_record(&mut pax, "size", size.to_string().as_bytes());
    }
    if !fits_octal(meta.mtime.max(0) as u64, 12) {
        pax_record(&mut pax, "mtime", meta.mtime.to_string().as_bytes());
    }
    if !fits_octal(meta.uid as u64, 8) {
        pax_record(&mut pax, "uid", meta.uid.to_string().as_bytes());
    }
    if !fits_octal(meta.gid as u64, 8) {
        pax_record(&mut pax, "gid", meta.gid.to_string().as_bytes());
    }
    if !pax.is_empty() {
        let pmeta = Meta {
            mode: 0o644,
            ..Meta::default()
        };
        out.extend_from_slice(&raw_header(
            b"././@PaxHeader",
            b'x',
            &pmeta,
            pax.len() as u64,
            b"",
        ));
        let plen = pax.len() as u64;
        out.extend_from_slice(&pax);
        out.resize(out.len() + padding(plen) as usize, 0);
    }
    out.extend_from_slice(&raw_header(name, typeflag, meta, size, link));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Once(Option<Vec<u8>>);
    impl ChunkSource for Once {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
            Ok(self.0.take())
        }
    }

    #[test]
    fn pax_lengths_are_self_consistent() {
        for n in [1usize, 5, 90, 95, 96, 97, 98, 990, 995, 9990] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'a'; n]);
            let sp = out.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value length {n}");
        }
    }

    #[test]
    fn write_then_read_long_names_and_big_numbers() {
        let long = format!("volumes/0/{}", "d/".repeat(200));
        let meta = Meta {
            mode: 0o755,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            uid: 3_000_000,
            gid: 7,
        };
        let mut out = Vec::new();
        write_header(&mut out, long.as_bytes(), b'5', &meta, 0, b"");
        write_header(
            &mut out,
            b"volumes/0/l",
            b'2',
            &meta,
            0,
            "t/".repeat(80).as_bytes(),
        );
        out.extend_from_slice(&[0u8; 1024]);
        // The tar crate agrees with what we wrote.
        let mut ar = tar::Archive::new(&out[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![long.clone(), "volumes/0/l".into()]);
        // And so does our reader.
        let mut ts = TarStream::new(Once(Some(out)));
        let e = ts.next_entry(&Limits::default()).unwrap().unwrap();
        assert_eq!(e.name, long.as_bytes());
        assert_eq!(e.etype, EntryType::Dir);
        assert_eq!(e.meta, meta);
        let e = ts.next_entry(&Limits::default()).unwrap().unwrap();
        assert_eq!(e.link, "t/".repeat(80).as_bytes());
        assert!(ts.next_entry(&Limits::default()).unwrap().is_none());
        ts.finish().unwrap();
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"64x\0"), None);
        assert_eq!(parse_octal(b"6 4\0"), None);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 5;
        assert_eq!(parse_numeric(&f), Some(5));
        f[0] = 0xff;
        assert_eq!(parse_numeric(&f), None);
        assert_eq!(parse_pax_time(b"12.5").unwrap(), (12, 500_000_000));
        assert!(parse_pax_time(b"-1").is_err());
    }

    #[test]
    fn pax_rules() {
        assert!(Pax::parse(b"12 path=abc\n").is_ok());
        assert!(Pax::parse(b"12 path=abc\n12 path=abd\n").is_err());
        assert!(Pax::parse(b"13 path=abc\n").is_err());
        assert!(Pax::parse(b"12 path=abcX").is_err());
        assert!(Pax::parse(b"x path=abc\n").is_err());
        assert!(Pax::parse(b"22 GNU.sparse.major=1\n").unwrap().sparse);
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    struct Once(Option<Vec<u8>>);
    impl ChunkSource for Once {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
            Ok(self.0.take())
        }
    }

    #[test]
    fn ustar_prefix_field_is_joined() {
        // Another tool's ustar header: a 150-byte path split into prefix + name.
        let path = format!("volumes/0/{}/file", "p".repeat(135));
        let mut h = tar::Header::new_ustar();
        h.set_path(&path).unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        assert_ne!(
            h.as_ustar().unwrap().prefix[0],
            0,
            "the tar crate used the prefix"
        );
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let mut ts = TarStream::new(Once(Some(bytes)));
        let e = ts.next_entry(&Limits::default()).unwrap().unwrap();
        assert_eq!(e.name, path.as_bytes());
    }
}
