//! A per-shard append-only journal of memory-mapped, preallocated segment files.
//!
//! # Layout
//! - [`format`]: the on-disk format (segment names, header, record framing; see `FORMAT.md`).
//! - `journal` (private): [`Journal`], the single-owner writer: appends, sync bookkeeping,
//!   segment rollover, compaction support.
//! - [`jobs`]: [`SyncJob`] and [`PrepareJob`], the only work that blocks for long. The journal
//!   never does it on the caller's thread in steady state: the caller (a reactor) hands these
//!   `Send` jobs to a blocking thread and reports back with [`Journal::sync_done`] and
//!   [`Journal::install_prepared`]. Appends then only `memcpy` into pages that were allocated
//!   and faulted in ahead of time.
//! - `recover` (private): [`Journal::open`], which tells a torn tail (cut it, continue) from
//!   corruption in the middle (refuse, or move the damage aside with `salvage`).
//! - `fuzzing` (hidden): the cargo-fuzz target's body, shared with the stable test suite.
//!
//! The crate knows nothing about the runtime (no glommio): it is driven by whoever owns it.

mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod jobs;
mod journal;
mod recover;

pub use error::JournalError;
pub use jobs::{PrepareJob, PreparedSegment, SyncJob};
pub use journal::Journal;

use std::path::PathBuf;

/// Default segment size: large enough that rollover (and its directory sync) is rare.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest accepted segment size: one page.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// Size of every segment file, a multiple of 8 and at least [`MIN_SEGMENT_BYTES`]. Must
    /// match the segments already on disk.
    pub segment_size: u64,
    /// Upper bound on the bytes of live segments; 0 means unlimited. An append that would need
    /// one more segment beyond it fails with [`JournalError::Full`].
    pub max_bytes: u64,
    /// On corruption in the middle, move the damaged segment and everything after it aside
    /// (`*.damaged`) and continue from the last good record instead of refusing to open.
    pub salvage: bool,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_BYTES,
            max_bytes: 0,
            salvage: false,
        }
    }
}

/// Where a record sits: its segment and its offset there, in one word, so that an index of
/// records kept in memory (a session's queue on disk) costs 8 bytes per record. Valid for as
/// long as the segment is live; compaction copies what it still needs to a new place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordLoc(u64);

impl RecordLoc {
    /// `None` past 2^32 segments or a 4 GiB offset (then the caller keeps its own copy).
    pub fn new(segment: u64, offset: usize) -> Option<RecordLoc> {
        let offset = u32::try_from(offset).ok()?;
        let segment = u32::try_from(segment).ok()?;
        Some(RecordLoc(u64::from(segment) << 32 | u64::from(offset)))
    }

    pub fn segment(self) -> u64 {
        self.0 >> 32
    }

    pub fn offset(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    /// The location as one word, for crates that keep it without knowing the journal.
    pub fn to_bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> RecordLoc {
        RecordLoc(bits)
    }
}

/// What [`Journal::append_with`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub segment: u64,
    /// Where to read it back ([`Journal::read`]); `None` only past [`RecordLoc`]'s range.
    pub at: Option<RecordLoc>,
}

/// One record, borrowed from the segment mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Position in the whole journal: contiguous, starting at 1.
    pub seq: u64,
    /// Index of the segment holding the record.
    pub segment: u64,
    /// Offset of the record (its header) in the segment.
    pub offset: usize,
    /// Caller-defined record type.
    pub kind: u8,
    pub payload: &'a [u8],
}

/// What [`Journal::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Live segments after recovery, the active one included.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Non-zero bytes zeroed or deleted after the last good record (a torn tail, or with
    /// salvage the damaged part, which was copied aside first).
    pub truncated_bytes: u64,
    /// A torn tail was cut: the last writes before the crash were incomplete.
    pub torn_tail: bool,
    /// Files written aside by `salvage` (the damaged segment and every later one).
    pub moved_aside: Vec<PathBuf>,
    /// Segment files deleted because they held no records (unused prepared spares, segments
    /// torn while being created).
    pub deleted: Vec<PathBuf>,
    /// Seq of the last record kept; appends continue at `last_seq + 1`.
    pub last_seq: u64,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub appends: u64,
    /// Bytes of records written, headers and padding included.
    pub bytes_appended: u64,
    /// Completed syncs reported through `sync_done` (or `sync_blocking`).
    pub syncs: u64,
    /// Segment files created (prepared or synchronous).
    pub segments_created: u64,
    pub segments_removed: u64,
    /// Rollovers that found no prepared segment and created one on the caller's thread: each
    /// one is a stall on the reactor. Non-zero means `prepare_job` is not called early enough.
    pub sync_segment_creates: u64,
}
