//! The tar layer: POSIX ustar headers with PAX extended headers, as written by the
//! writer, and a strict reader that also accepts GNU long-name/long-link records.
//!
//! The reader is ours rather than the `tar` crate's so that every byte of a hostile
//! stream is accounted for: an extension header must be followed by the entry it
//! describes, a PAX key may appear once, numeric fields must parse exactly, and what
//! comes after the end-of-archive marker is checked (see [`TarStream::finish`]).
//!
//! Split by role, as the `tar` crate splits it: [`header`] (one 512-byte block, parsed
//! and written), [`pax`] (extended header records), [`read`] (the stream reader) and
//! [`write`] (entry headers for the writer).

mod header;
mod pax;
mod read;
mod write;

pub(crate) use header::{EntryType, padding};
pub(crate) use read::{ChunkSource, Entry, TarStream};
pub(crate) use write::write_header;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ArchiveError;
    use crate::limits::Limits;
    use crate::tree::Meta;

    /// A source that hands out one in-memory chunk.
    struct Once(Option<Vec<u8>>);
    impl ChunkSource for Once {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
            Ok(self.0.take())
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
