//! One tar header block: the ustar field layout, its parsing (checksum, magic, strict
//! numbers) and its writing. Shared by the reader ([`super::read`]) and the writer
//! ([`super::write`]).

use crate::tree::Meta;

pub(crate) const BLOCK: usize = 512;

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

impl EntryType {
    /// The type of a header's type flag (PAX `GNU.sparse.*` records can still make an
    /// entry [`EntryType::Sparse`]).
    pub(super) fn from_flag(flag: u8) -> EntryType {
        match flag {
            b'0' | 0 => EntryType::Regular,
            b'1' => EntryType::Hardlink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' => EntryType::Dir,
            b'6' => EntryType::Fifo,
            b'S' => EntryType::Sparse,
            other => EntryType::Other(other),
        }
    }
}

/// Zero bytes after `n` bytes of entry data, up to the next block boundary.
pub(crate) fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

/// A header block's fields, checked: checksum, magic, and every number parsed exactly.
pub(super) struct RawHeader {
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
}

/// A NUL-terminated field's bytes (all of it when it has no NUL).
pub(super) fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|b| *b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

fn get(block: &[u8; BLOCK], (off, len): (usize, usize)) -> &[u8] {
    &block[off..off + len]
}

impl RawHeader {
    pub(super) fn parse(block: &[u8; BLOCK]) -> Result<RawHeader, &'static str> {
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

/// The ustar header block of one entry (no PAX): names and links are cut at 100 bytes
/// and numbers that do not fit are written GNU base-256; the writer puts a PAX header
/// first whenever that happens.
pub(super) fn raw_header(
    name: &[u8],
    typeflag: u8,
    meta: &Meta,
    size: u64,
    link: &[u8],
) -> [u8; BLOCK] {
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

pub(super) fn fits_octal(v: u64, width: usize) -> bool {
    v < 1u64 << (3 * (width - 1) as u32).min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
