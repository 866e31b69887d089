//! The reading side of the gzip layer, on its own thread so that decompression overlaps
//! with filesystem work (the writing side is [`crate::deflate`]).
//!
//! Exactly one gzip member, CRC and length checked by flate2, nothing after it; the
//! compression ratio is watched as bytes come out.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::thread::Scope;

use flate2::bufread::GzDecoder;

use crate::error::ArchiveError;
use crate::limits::Limits;
use crate::tarfmt::ChunkSource;

/// Size of the decompressed chunks handed to the tar reader.
const CHUNK: usize = 256 << 10;
/// Compressed read buffer.
const READ_BUF: usize = 256 << 10;
/// Chunks in flight between the threads.
const DEPTH: usize = 8;

/// Counts bytes read from the archive and keeps an I/O error of the underlying reader,
/// so that a failing disk is not reported as a corrupt archive.
struct Counting<R> {
    inner: R,
    count: u64,
    failure: Option<io::Error>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(e);
                Err(io::Error::new(kind, "archive read failed"))
            }
        }
    }
}

/// Pulls decompressed chunks out of one gzip member and enforces the gzip-level rules.
pub(crate) struct Inflater<R: Read> {
    dec: Option<GzDecoder<BufReader<Counting<R>>>>,
    out_total: u64,
    consumed_at_end: u64,
    max_ratio: u64,
    grace: u64,
}

impl<R: Read> Inflater<R> {
    pub(crate) fn new(archive: R, limits: &Limits) -> Self {
        let counting = Counting {
            inner: archive,
            count: 0,
            failure: None,
        };
        Inflater {
            dec: Some(GzDecoder::new(BufReader::with_capacity(READ_BUF, counting))),
            out_total: 0,
            consumed_at_end: 0,
            max_ratio: limits.max_compression_ratio,
            grace: limits.ratio_grace_bytes,
        }
    }

    /// Compressed bytes consumed so far (exact once the stream has ended).
    pub(crate) fn compressed_bytes(&self) -> u64 {
        match &self.dec {
            Some(d) => {
                let br = d.get_ref();
                br.get_ref().count - br.buffer().len() as u64
            }
            None => self.consumed_at_end,
        }
    }

    fn map_err(&mut self, e: io::Error) -> ArchiveError {
        let offset = self.compressed_bytes();
        let failure = self
            .dec
            .as_mut()
            .and_then(|d| d.get_mut().get_mut().failure.take());
        match failure {
            Some(source) => ArchiveError::io("reading the archive", source),
            None => ArchiveError::CorruptGzip {
                compressed_offset: offset,
                source: e,
            },
        }
    }

    /// Fills `buf` with the next decompressed bytes; `Ok(None)` once the member ended and
    /// nothing follows it.
    pub(crate) fn next_into(&mut self, mut buf: Vec<u8>) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(dec) = self.dec.as_mut() else {
            return Ok(None);
        };
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let mut ended = false;
        while n < CHUNK {
            match dec.read(&mut buf[n..]) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.map_err(e)),
            }
        }
        buf.truncate(n);
        self.out_total += n as u64;
        if self.out_total > self.grace {
            let compressed = self.compressed_bytes().max(1);
            if self.out_total > compressed.saturating_mul(self.max_ratio) {
                return Err(ArchiveError::CompressionRatioCap {
                    decompressed: self.out_total,
                    compressed,
                    limit: self.max_ratio,
                });
            }
        }
        if ended {
            self.end_of_member()?;
            if n == 0 {
                return Ok(None);
            }
        }
        Ok(Some(buf))
    }

    fn end_of_member(&mut self) -> Result<(), ArchiveError> {
        let dec = self.dec.take().expect("decoder present");
        let mut br = dec.into_inner();
        let offset = br.get_ref().count - br.buffer().len() as u64;
        self.consumed_at_end = offset;
        let rest = match br.fill_buf() {
            Ok(rest) => rest,
            Err(e) => return Err(ArchiveError::io("reading the archive", e)),
        };
        if rest.is_empty() {
            return Ok(());
        }
        if rest.len() >= 2 && rest[0] == 0x1f && rest[1] == 0x8b {
            return Err(ArchiveError::MultipleGzipMembers {
                compressed_offset: offset,
            });
        }
        Err(ArchiveError::TrailingData { offset })
    }
}

/// An [`Inflater`] driven inline on the caller's thread (used by `read_manifest`).
pub(crate) struct InlineSource<R: Read>(pub Inflater<R>);

impl<R: Read> ChunkSource for InlineSource<R> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
        self.0.next_into(Vec::with_capacity(CHUNK))
    }
}

enum Msg {
    Data(Vec<u8>),
    End { compressed: u64 },
    Fail(ArchiveError),
}

/// Decompressed chunks produced by an inflater thread.
pub(crate) struct ThreadedSource {
    rx: Receiver<Msg>,
    free: Sender<Vec<u8>>,
    compressed: u64,
}

impl ThreadedSource {
    /// Compressed bytes read, once the stream has ended.
    pub(crate) fn compressed_bytes(&self) -> u64 {
        self.compressed
    }
}

impl ChunkSource for ThreadedSource {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self.rx.recv() {
            Ok(Msg::Data(b)) => Ok(Some(b)),
            Ok(Msg::End { compressed }) => {
                self.compressed = compressed;
                Ok(None)
            }
            Ok(Msg::Fail(e)) => Err(e),
            Err(_) => Err(ArchiveError::Io {
                context: "decompressing the archive".into(),
                source: io::Error::other("decompression thread stopped"),
            }),
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        let _ = self.free.send(buf);
    }
}

/// Starts a thread that decompresses `archive` into chunks.
pub(crate) fn spawn_inflater<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    archive: R,
    limits: &Limits,
) -> ThreadedSource {
    let (tx, rx) = sync_channel::<Msg>(DEPTH);
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    let mut inflater = Inflater::new(archive, limits);
    scope.spawn(move || {
        loop {
            let buf = free_rx
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            let msg = match inflater.next_into(buf) {
                Ok(Some(b)) => Msg::Data(b),
                Ok(None) => Msg::End {
                    compressed: inflater.compressed_bytes(),
                },
                Err(e) => Msg::Fail(e),
            };
            let last = !matches!(msg, Msg::Data(_));
            // A failed send means the reader gave up: stop quietly.
            if tx.send(msg).is_err() || last {
                return;
            }
        }
    });
    ThreadedSource {
        rx,
        free: free_tx,
        compressed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn drain(bytes: &[u8], limits: &Limits) -> Result<Vec<u8>, ArchiveError> {
        let mut inf = Inflater::new(bytes, limits);
        let mut out = Vec::new();
        while let Some(b) = inf.next_into(Vec::new())? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[test]
    fn one_member_only() {
        let l = Limits::default();
        let a = gz(b"hello");
        assert_eq!(drain(&a, &l).unwrap(), b"hello");
        let mut two = a.clone();
        two.extend_from_slice(&gz(b"world"));
        assert_eq!(drain(&two, &l).unwrap_err().rule(), "multiple_gzip_members");
        let mut trailing = a.clone();
        trailing.push(0);
        assert_eq!(drain(&trailing, &l).unwrap_err().rule(), "trailing_data");
        let truncated = &a[..a.len() - 3];
        assert_eq!(drain(truncated, &l).unwrap_err().rule(), "corrupt_gzip");
        let mut bad_crc = a.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        assert_eq!(drain(&bad_crc, &l).unwrap_err().rule(), "corrupt_gzip");
        assert_eq!(drain(b"", &l).unwrap_err().rule(), "corrupt_gzip");
        assert_eq!(
            drain(b"not gzip at all", &l).unwrap_err().rule(),
            "corrupt_gzip"
        );
    }

    #[test]
    fn ratio_cap() {
        let zeros = gz(&vec![0u8; 4 << 20]);
        let l = Limits {
            max_compression_ratio: 100,
            ratio_grace_bytes: 1 << 20,
            ..Limits::default()
        };
        assert_eq!(
            drain(&zeros, &l).unwrap_err().rule(),
            "compression_ratio_cap"
        );
        let lenient = Limits {
            max_compression_ratio: 2000,
            ..l
        };
        assert_eq!(drain(&zeros, &lenient).unwrap().len(), 4 << 20);
    }

    #[test]
    fn read_errors_are_io_not_corruption() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(5))
            }
        }
        let mut inf = Inflater::new(Failing, &Limits::default());
        assert_eq!(inf.next_into(Vec::new()).unwrap_err().rule(), "io");
    }
}
