//! PAX extended headers (POSIX.1-2001 `x` records): the strict parser of the records
//! volsnap reads, and the record writer for names, links and numbers that do not fit
//! a ustar header.

/// Biggest PAX extended header accepted (its data, not the 512-byte header).
pub(crate) const MAX_PAX_BYTES: u64 = 1 << 20;

/// The PAX records volsnap cares about.
#[derive(Debug, Default)]
pub(super) struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub mtime: Option<(i64, u32)>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub sparse: bool,
}

fn dec_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl Pax {
    /// Parses a PAX header's data; a repeated key, a malformed length or number is an
    /// error.
    pub(super) fn parse(mut data: &[u8]) -> Result<Pax, &'static str> {
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

/// Appends one `"<len> <key>=<value>\n"` record to `out`.
pub(super) fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pax_rules() {
        assert!(Pax::parse(b"12 path=abc\n").is_ok());
        assert!(Pax::parse(b"12 path=abc\n12 path=abd\n").is_err());
        assert!(Pax::parse(b"13 path=abc\n").is_err());
        assert!(Pax::parse(b"12 path=abcX").is_err());
        assert!(Pax::parse(b"x path=abc\n").is_err());
        assert!(Pax::parse(b"22 GNU.sparse.major=1\n").unwrap().sparse);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12.5").unwrap(), (12, 500_000_000));
        assert!(parse_pax_time(b"-1").is_err());
    }
}
