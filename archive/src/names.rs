//! Entry names: what a legal name in a volsnap/1 archive looks like.
//!
//! A legal name is relative and normalised (`a/b/c`, a directory may end in one `/`):
//! no leading `/`, no `..`, no `.`, no empty component, no NUL, components of at most
//! 255 bytes, the whole name within [`Limits::max_path_len`]. Anything else is refused
//! with a rule; nothing is silently rewritten (unlike `tar::Entry::unpack_in`).

use std::borrow::Cow;

use crate::error::{ArchiveError, show};
use crate::limits::{Limits, MAX_COMPONENT_LEN};
use crate::manifest::MANIFEST_NAME;
use crate::tarfmt::{Entry, EntryType};
use crate::tree::Kind;

/// A data entry (any entry after the manifest) judged as far as its place: its kind,
/// its volume index and its name's components.
pub(crate) struct Placed<'a> {
    pub kind: Kind,
    pub index: u32,
    comps: Vec<&'a [u8]>,
}

impl<'a> Placed<'a> {
    /// The components below the volume root (empty for the root itself).
    pub fn rest(&self) -> &[&'a [u8]] {
        &self.comps[2..]
    }
}

/// Judges a data entry in the extractor's rule order, up to its place: type (hard links,
/// devices, fifos and other types refused), not a second `manifest.json`, its name, its
/// location (`volumes/<index>/` with an index for which `listed` is true), its depth.
pub(crate) fn place_entry<'a>(
    e: &'a Entry,
    limits: &Limits,
    listed: impl Fn(u32) -> bool,
) -> Result<Placed<'a>, ArchiveError> {
    let name = || show(&e.name);
    let kind = match e.etype {
        EntryType::Regular => Kind::File,
        EntryType::Dir => Kind::Dir,
        EntryType::Symlink => Kind::Symlink,
        EntryType::Hardlink => {
            return Err(ArchiveError::Hardlink {
                name: name(),
                target: show(&e.link),
            });
        }
        EntryType::CharDevice | EntryType::BlockDevice | EntryType::Fifo => {
            return Err(ArchiveError::SpecialFile {
                name: name(),
                kind: match e.etype {
                    EntryType::CharDevice => "character device",
                    EntryType::BlockDevice => "block device",
                    _ => "fifo",
                },
            });
        }
        EntryType::Sparse => {
            return Err(ArchiveError::UnknownType {
                name: name(),
                type_flag: 'S',
            });
        }
        EntryType::Other(flag) => {
            return Err(ArchiveError::UnknownType {
                name: name(),
                type_flag: flag as char,
            });
        }
    };
    if e.name == MANIFEST_NAME.as_bytes() {
        return Err(ArchiveError::DuplicateEntry {
            name: name(),
            reason: "a second manifest.json",
        });
    }
    let comps = check_entry_name(&e.name, kind == Kind::Dir, limits)?;
    if comps.len() < 2 || comps[0] != b"volumes" {
        return Err(ArchiveError::OutsideVolumes {
            name: name(),
            reason: "not under volumes/<index>/",
        });
    }
    let index = parse_index(comps[1]).ok_or_else(|| ArchiveError::OutsideVolumes {
        name: name(),
        reason: "volume index is not a canonical decimal number",
    })?;
    if !listed(index) {
        return Err(ArchiveError::IndexOutOfBounds {
            name: name(),
            index,
        });
    }
    let depth = comps.len() as u64 - 2;
    if depth > limits.max_depth {
        return Err(ArchiveError::DepthCap {
            name: name(),
            depth,
            limit: limits.max_depth,
        });
    }
    Ok(Placed { kind, index, comps })
}

/// Splits and checks a raw entry name; returns its components.
///
/// `..` is reported before other defects so that a traversal attempt is always named as
/// one, whatever else is wrong with the name.
pub(crate) fn check_entry_name<'a>(
    raw: &'a [u8],
    is_dir: bool,
    limits: &Limits,
) -> Result<Vec<&'a [u8]>, ArchiveError> {
    let invalid = |reason| ArchiveError::InvalidName {
        name: show(raw),
        reason,
    };
    if raw.is_empty() {
        return Err(invalid("empty name"));
    }
    if raw[0] == b'/' {
        return Err(ArchiveError::AbsolutePath { name: show(raw) });
    }
    let mut body = raw;
    if let Some(stripped) = raw.strip_suffix(b"/") {
        body = stripped;
    }
    let comps: Vec<&[u8]> = body.split(|b| *b == b'/').collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err(ArchiveError::PathTraversal { name: show(raw) });
    }
    if raw.contains(&0) {
        return Err(invalid("NUL byte in name"));
    }
    if body.len() as u64 > limits.max_path_len {
        return Err(ArchiveError::PathLengthCap {
            name: show(raw),
            what: "name",
            len: body.len() as u64,
            limit: limits.max_path_len,
        });
    }
    if body.len() != raw.len() && !is_dir {
        return Err(invalid("trailing `/` on a non-directory"));
    }
    for c in &comps {
        if c.is_empty() {
            return Err(invalid("empty component (`//` or a lone `/`)"));
        }
        if *c == b"." {
            return Err(invalid("`.` component"));
        }
        if c.len() > MAX_COMPONENT_LEN {
            return Err(ArchiveError::PathLengthCap {
                name: show(raw),
                what: "name component",
                len: c.len() as u64,
                limit: MAX_COMPONENT_LEN as u64,
            });
        }
    }
    Ok(comps)
}

/// Parses the `<index>` component of `volumes/<index>/`: canonical decimal (no sign, no
/// leading zero), fitting a u32.
pub(crate) fn parse_index(c: &[u8]) -> Option<u32> {
    if c.is_empty() || c.len() > 10 || !c.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if c.len() > 1 && c[0] == b'0' {
        return None;
    }
    std::str::from_utf8(c).ok()?.parse().ok()
}

/// The case-folded form of a name used to detect names that would collide on a
/// case-insensitive filesystem: Unicode lowercase for UTF-8 names, ASCII lowercase for
/// other byte strings. (Unicode normalisation forms are not folded.)
pub(crate) fn fold(name: &[u8]) -> Cow<'_, [u8]> {
    match std::str::from_utf8(name) {
        Ok(s) if s.is_ascii() => {
            if s.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(name.to_ascii_lowercase())
            } else {
                Cow::Borrowed(name)
            }
        }
        Ok(s) => {
            let lower = s.to_lowercase();
            if lower.as_bytes() == name {
                Cow::Borrowed(name)
            } else {
                Cow::Owned(lower.into_bytes())
            }
        }
        Err(_) => {
            if name.iter().any(u8::is_ascii_uppercase) {
                Cow::Owned(name.to_ascii_lowercase())
            } else {
                Cow::Borrowed(name)
            }
        }
    }
}

/// Checks a symlink target on its own: non-empty, no NUL, relative, bounded, and not
/// leaving the volume lexically from a link `depth` components below the root (the link
/// itself not counted). Chains through other symlinks are checked once the whole tree is
/// known ([`crate::tree::Tree::check_symlinks`]).
pub(crate) fn check_symlink_target(
    name: &[u8],
    target: &[u8],
    parent_depth: usize,
    limits: &Limits,
) -> Result<(), ArchiveError> {
    let escape = |reason| ArchiveError::SymlinkEscape {
        name: show(name),
        target: show(target),
        reason,
    };
    if target.is_empty() {
        return Err(ArchiveError::InvalidName {
            name: show(name),
            reason: "empty symlink target",
        });
    }
    if target.contains(&0) {
        return Err(ArchiveError::InvalidName {
            name: show(name),
            reason: "NUL byte in symlink target",
        });
    }
    if target.len() as u64 > limits.max_path_len {
        return Err(ArchiveError::PathLengthCap {
            name: show(name),
            what: "symlink target",
            len: target.len() as u64,
            limit: limits.max_path_len,
        });
    }
    if target[0] == b'/' {
        return Err(escape("absolute target"));
    }
    let mut depth = parent_depth as i64;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(escape("target leaves the volume"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(raw: &str, dir: bool) -> &'static str {
        match check_entry_name(raw.as_bytes(), dir, &Limits::default()) {
            Ok(_) => "ok",
            Err(e) => e.rule(),
        }
    }

    #[test]
    fn names() {
        assert_eq!(rule("volumes/0/a/b", false), "ok");
        assert_eq!(rule("volumes/0/a/", true), "ok");
        assert_eq!(rule("volumes/0/a/", false), "invalid_name");
        assert_eq!(rule("/etc/passwd", false), "absolute_path");
        assert_eq!(rule("/../x", false), "absolute_path");
        assert_eq!(rule("volumes/0/../../x", false), "path_traversal");
        assert_eq!(rule("volumes/0/a/..", true), "path_traversal");
        assert_eq!(rule("volumes/0//a//../b", false), "path_traversal");
        assert_eq!(rule("..", true), "path_traversal");
        assert_eq!(rule("volumes/0/./a", false), "invalid_name");
        assert_eq!(rule("volumes/0//a", false), "invalid_name");
        assert_eq!(rule("", false), "invalid_name");
        assert_eq!(rule("volumes/0/a\0b", false), "invalid_name");
        assert_eq!(rule("volumes/0/...", false), "ok");
        assert_eq!(rule("volumes/0/..a", false), "ok");
        let long = format!("volumes/0/{}", "a".repeat(256));
        assert_eq!(rule(&long, false), "path_length_cap");
        let deep = format!("volumes/0/{}", "abcd/".repeat(1000));
        assert_eq!(rule(&deep, true), "path_length_cap");
    }

    #[test]
    fn indexes() {
        assert_eq!(parse_index(b"0"), Some(0));
        assert_eq!(parse_index(b"17"), Some(17));
        assert_eq!(parse_index(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_index(b"4294967296"), None);
        assert_eq!(parse_index(b"01"), None);
        assert_eq!(parse_index(b"+1"), None);
        assert_eq!(parse_index(b""), None);
        assert_eq!(parse_index(b"x"), None);
    }

    #[test]
    fn folding() {
        assert_eq!(fold(b"abc").as_ref(), b"abc");
        assert_eq!(fold(b"ReadMe").as_ref(), b"readme");
        assert_eq!(fold("ÉTÉ".as_bytes()).as_ref(), "été".as_bytes());
        assert_eq!(fold("\u{212A}".as_bytes()).as_ref(), b"k"); // Kelvin sign
        assert_eq!(fold(b"A\xff").as_ref(), b"a\xff");
    }

    #[test]
    fn symlink_targets() {
        let l = Limits::default();
        let r = |t: &str, d| match check_symlink_target(b"n", t.as_bytes(), d, &l) {
            Ok(()) => "ok",
            Err(e) => e.rule(),
        };
        assert_eq!(r("a/b", 0), "ok");
        assert_eq!(r("../a", 1), "ok");
        assert_eq!(r("../a", 0), "symlink_escape");
        assert_eq!(r("a/../../b", 0), "symlink_escape");
        assert_eq!(r("/etc/passwd", 3), "symlink_escape");
        assert_eq!(r("", 0), "invalid_name");
        assert_eq!(r(".", 0), "ok");
    }
}
