//! volsnap/1 archives.
