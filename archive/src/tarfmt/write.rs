//! The tar writer: ustar headers, preceded by a PAX header only when a name, link or
//! number does not fit the ustar fields (as `docs/archive.md` describes the format).

use super::header::{fits_octal, padding, raw_header};
use super::pax::pax_record;
use crate::tree::Meta;

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
