//! The strict tar reader: a [`TarStream`] over decompressed chunks that yields entries
//! with their extension headers (PAX `x`, GNU `L`/`K`) applied, and accounts for every
//! byte: an extension header must be followed by the entry it describes, a PAX key may
//! appear once, numeric fields must parse exactly, and what comes after the
//! end-of-archive marker is checked (see [`TarStream::finish`]).

use super::header::{BLOCK, EntryType, RawHeader, cstr, padding};
use super::pax::{MAX_PAX_BYTES, Pax};
use crate::error::{ArchiveError, show};
use crate::limits::Limits;
use crate::tree::Meta;

/// Consecutive extension headers (PAX `x`, GNU `L`, `K`) accepted before an entry.
const MAX_EXTENSION_HEADERS: usize = 3;

/// Zero bytes accepted after the first end-of-archive block (record padding).
pub(crate) const MAX_TRAILING_ZEROS: u64 = 1 << 20;

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
                    let mut etype = EntryType::from_flag(flag);
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

/// A GNU long-name (`L`) or long-link (`K`) record's data: the name, then only NULs.
fn gnu_long(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let name = cstr(data);
    if data[name.len()..].iter().any(|b| *b != 0) {
        return Err("GNU long-name record has bytes after its NUL");
    }
    Ok(name.to_vec())
}
