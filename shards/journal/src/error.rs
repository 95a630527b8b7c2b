//! Journal errors. Bad bytes on disk are an operating condition (reported as `Corrupt` with
//! where and why, so an operator can act); broken invariants of our own are assertions.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum JournalError {
    Io(io::Error),
    /// Valid data follows damaged data, so cutting the damage off would silently lose records
    /// that were once written. The broker refuses to start; `salvage` moves the damage aside.
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The record can never fit in one segment.
    TooLarge {
        len: usize,
        max: usize,
    },
    /// Another segment would take the journal past `max_bytes`; nothing was written.
    Full {
        max_bytes: u64,
    },
    /// No sequence number is left (the journal claims 2^62 records): nothing was written.
    SeqExhausted,
    /// The configuration is unusable, or disagrees with the segments on disk.
    Config(String),
    /// No segment with this index is held by the journal.
    NoSuchSegment(u64),
    /// Only sealed segments can be removed; the oldest segment is the active one.
    ActiveSegment(u64),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io(e) => write!(f, "journal I/O error: {e}"),
            JournalError::Corrupt {
                segment,
                offset,
                reason,
            } => write!(
                f,
                "journal corrupt in {} at offset {offset}: {reason} (valid records follow the \
                 damage; restore the file or open with salvage to move the damaged segments aside)",
                segment.display()
            ),
            JournalError::TooLarge { len, max } => write!(
                f,
                "journal record of {len} bytes exceeds the maximum of {max} bytes for this \
                 segment size (raise segment_size)"
            ),
            JournalError::Full { max_bytes } => write!(
                f,
                "journal full: another segment would exceed max_bytes = {max_bytes} (remove \
                 old segments or raise max_bytes)"
            ),
            JournalError::SeqExhausted => write!(
                f,
                "journal sequence numbers exhausted (the recovered journal claims 2^62 records; \
                 start with a new data directory)"
            ),
            JournalError::Config(m) => write!(f, "journal configuration: {m}"),
            JournalError::NoSuchSegment(i) => write!(f, "journal has no segment {i}"),
            JournalError::ActiveSegment(i) => {
                write!(
                    f,
                    "journal segment {i} is the active segment and cannot be removed"
                )
            }
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for JournalError {
    fn from(e: io::Error) -> Self {
        JournalError::Io(e)
    }
}
