//! The writer: appends into the active segment's mapping, rolls over to prepared segments, and
//! keeps the bookkeeping for the jobs that run elsewhere.

use crate::format::{
    max_payload_bytes, read_slot, record_bytes, record_crc, write_header, Slot, HEADER_BYTES,
    MAX_SEQ, RECORD_HEADER_BYTES,
};
use crate::jobs::{create_segment, sync_dir, PrepareJob, PreparedSegment, SyncJob};
use crate::{
    Appended, JournalConfig, JournalError, JournalStats, RecordLoc, RecordRef, RecoveryReport,
};
use memmap2::MmapMut;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A live segment: mapped for its whole size for as long as the journal holds it.
pub(crate) struct Segment {
    pub index: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub map: MmapMut,
    /// Seq of the last record; `first_seq - 1` while empty.
    pub last_seq: u64,
    /// Offset where the next record goes.
    pub end: usize,
}

/// The journal of one shard. Single owner; not shared between threads.
pub struct Journal {
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes: u64,
    pub(crate) max_bytes: u64,
    /// Oldest first; never empty, the last one is active.
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) spare: Option<PreparedSegment>,
    pub(crate) prepare_in_flight: Option<u64>,
    pub(crate) next_index: u64,
    pub(crate) last_seq: u64,
    pub(crate) synced_seq: u64,
    /// Highest seq covered by a sync job handed out (>= `synced_seq`).
    pub(crate) sync_requested_seq: u64,
    /// Stale spares left for the next prepare job to delete.
    pub(crate) discard: Vec<PathBuf>,
    pub(crate) stats: JournalStats,
}

impl Journal {
    /// Opens the journal in `cfg.dir` (created if missing), replays every valid record in seq
    /// order, cuts a torn tail (zeroed and synced) and returns the journal ready for appends.
    ///
    /// Blocks (it reads every segment and syncs): call it at start-up or on a blocking thread.
    /// `replay` only sees records that stay in the journal: on `Err` it has not been called.
    pub fn open(
        cfg: JournalConfig,
        replay: impl FnMut(RecordRef<'_>),
    ) -> Result<(Journal, RecoveryReport), JournalError> {
        crate::recover::open(cfg, replay)
    }

    /// Appends one record of `len` payload bytes, which `fill` writes straight into the mapped
    /// segment. Returns its seq and where it is.
    ///
    /// The record becomes visible to recovery only when its len word is stored, last; a crash
    /// before that leaves a zero len (end of data) or a record the checksum rejects. If `fill`
    /// panics the slot is zeroed again and nothing was appended.
    pub fn append_with(
        &mut self,
        kind: u8,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Appended, JournalError> {
        let max = max_payload_bytes(self.segment_bytes);
        if len > max {
            return Err(JournalError::TooLarge { len, max });
        }
        let need = record_bytes(len);
        if self.active().end + need > self.map_len() {
            self.roll()?;
        }
        // 2^62 records is beyond any real journal, but a recovered one (a forged or damaged
        // segment with a valid checksum) may claim it: refuse the write, never panic.
        if self.last_seq + 1 >= MAX_SEQ {
            return Err(JournalError::SeqExhausted);
        }
        let seq = self.last_seq + 1;
        let seg = self
            .segments
            .back_mut()
            .expect("journal has an active segment");
        let off = seg.end;
        assert!(off + need <= seg.map.len(), "record fits after rollover");

        /// Zeroes the slot unless disarmed, so a panicking `fill` leaves no bytes behind.
        struct ZeroOnUnwind<'a>(&'a mut [u8]);
        impl Drop for ZeroOnUnwind<'_> {
            fn drop(&mut self) {
                self.0.fill(0);
            }
        }
        let mut guard = ZeroOnUnwind(&mut seg.map[off..off + need]);
        fill(&mut guard.0[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len]);
        let rec = std::mem::take(&mut guard.0);
        drop(guard);

        rec[8..16].copy_from_slice(&seq.to_le_bytes());
        rec[16] = kind;
        rec[RECORD_HEADER_BYTES + len..].fill(0);
        let crc = record_crc(&rec[8..RECORD_HEADER_BYTES + len]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        let len_word = u32::try_from(len).expect("len <= max_payload_bytes <= u32::MAX");
        // SAFETY: the slot starts on an 8-byte boundary of a page-aligned mapping, so the len
        // word is aligned for AtomicU32; nothing else accesses the mapping concurrently. The
        // release store orders the payload, seq, kind and crc before the len word.
        unsafe { AtomicU32::from_ptr(rec.as_mut_ptr().cast::<u32>()) }
            .store(len_word.to_le(), Ordering::Release);

        seg.end += need;
        seg.last_seq = seq;
        self.last_seq = seq;
        self.stats.appends += 1;
        self.stats.bytes_appended += need as u64;
        Ok(Appended {
            seq,
            segment: seg.index,
            at: RecordLoc::new(seg.index, off),
        })
    }

    /// Appends a record by copying `payload`.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Appended, JournalError> {
        self.append_with(kind, payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// The record at `at`, from its segment's mapping, checked again (length, seq, checksum):
    /// a location that points nowhere valid is reported, never read as a record.
    pub fn read(&self, at: RecordLoc) -> Result<RecordRef<'_>, JournalError> {
        let segment = at.segment();
        let i = self
            .segments
            .binary_search_by_key(&segment, |s| s.index)
            .map_err(|_| JournalError::NoSuchSegment(segment))?;
        let seg = &self.segments[i];
        let off = at.offset();
        let bad = |reason: String| JournalError::Corrupt {
            segment: seg.path.clone(),
            offset: off as u64,
            reason,
        };
        if off < HEADER_BYTES || off >= seg.end || !off.is_multiple_of(8) {
            return Err(bad(format!("no record at offset {off}")));
        }
        let buf = &seg.map[..seg.end];
        match read_slot(buf, off, buf.len()) {
            Slot::Record(p) => Ok(RecordRef {
                seq: p.seq,
                segment,
                offset: off,
                kind: p.kind,
                payload: &buf[p.payload_off..p.payload_off + p.payload_len],
            }),
            Slot::End => Err(bad("no record at this offset".into())),
            Slot::Invalid(reason) => Err(bad(reason)),
        }
    }

    /// Appends a copy of the record at `at` (same kind and payload, a new seq): compaction's
    /// way to keep a record whose segment is about to be removed.
    pub fn copy_record(&mut self, at: RecordLoc) -> Result<Appended, JournalError> {
        let (kind, payload) = {
            let r = self.read(at)?;
            (r.kind, r.payload.to_vec())
        };
        self.append(kind, &payload)
    }

    /// Seq of the last appended record (0 if none was ever appended).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Seq up to which records are known durable.
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// A job making everything appended so far durable, or `None` if that is already done or
    /// a job handed out earlier covers it. Each job syncs every segment holding records past
    /// `synced_seq`, so jobs may complete in any order and each one's seq is truly durable.
    pub fn sync_job(&mut self) -> Option<SyncJob> {
        if self.last_seq <= self.synced_seq.max(self.sync_requested_seq) {
            return None;
        }
        let files = self
            .segments
            .iter()
            .filter(|s| s.last_seq > self.synced_seq)
            .map(|s| Arc::clone(&s.file))
            .collect();
        self.sync_requested_seq = self.last_seq;
        Some(SyncJob {
            files,
            seq: self.last_seq,
        })
    }

    /// Records that a sync job returned `Ok(seq)`.
    pub fn sync_done(&mut self, seq: u64) {
        assert!(seq <= self.last_seq, "synced seq {seq} was never appended");
        if seq > self.synced_seq {
            self.synced_seq = seq;
        }
        self.sync_requested_seq = self.sync_requested_seq.max(self.synced_seq);
        self.stats.syncs += 1;
    }

    /// Records that a sync job failed, so that `sync_job` hands out a new one. After an
    /// `fdatasync` error the kernel may have dropped the dirty pages: the caller should treat
    /// the records after `synced_seq` as lost (stop accepting, restart and recover).
    pub fn sync_failed(&mut self) {
        self.sync_requested_seq = self.synced_seq;
    }

    /// A job creating the next segment ahead of need, or `None` when a spare is ready or being
    /// prepared, or when one more segment would exceed `max_bytes` (it could not be used).
    pub fn prepare_job(&mut self) -> Option<PrepareJob> {
        if self.spare.is_some() || self.prepare_in_flight.is_some() || !self.room_for_segment() {
            return None;
        }
        let index = self.take_index().ok()?;
        self.prepare_in_flight = Some(index);
        Some(PrepareJob {
            dir: self.dir.clone(),
            index,
            segment_bytes: self.segment_bytes,
            discard: std::mem::take(&mut self.discard),
        })
    }

    /// Takes the result of a prepare job. A spare that lost the race with a synchronous
    /// creation (its index is below the active one) is dropped and deleted by the next job.
    pub fn install_prepared(&mut self, seg: PreparedSegment) {
        if self.prepare_in_flight == Some(seg.index) {
            self.prepare_in_flight = None;
        }
        self.stats.segments_created += 1;
        if seg.index > self.active().index && self.spare.is_none() {
            self.spare = Some(seg);
        } else {
            self.discard.push(seg.path.clone());
        }
    }

    /// Records that a prepare job failed; the next `prepare_job` retries with a new index and
    /// deletes whatever the failed one left.
    pub fn prepare_failed(&mut self) {
        if let Some(index) = self.prepare_in_flight.take() {
            self.discard
                .push(self.dir.join(crate::format::segment_file_name(index)));
        }
    }

    /// Syncs on the calling thread (shutdown, tests).
    pub fn sync_blocking(&mut self) -> io::Result<()> {
        // A job may be out already; sync everything past `synced_seq` regardless.
        self.sync_requested_seq = self.synced_seq;
        if let Some(job) = self.sync_job() {
            match job.run() {
                Ok(seq) => self.sync_done(seq),
                Err(e) => {
                    self.sync_failed();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Live segments, the active one included (no allocation, unlike [`Journal::segments`]).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Index of the oldest live segment.
    pub fn oldest_segment(&self) -> u64 {
        self.segments
            .front()
            .expect("journal has an active segment")
            .index
    }

    /// Segment indexes, oldest first; the last one is active.
    pub fn segments(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.index).collect()
    }

    pub fn active_segment(&self) -> u64 {
        self.active().index
    }

    /// Calls `f` for every record of `segment`, in order, from its mapping. Meant for sealed
    /// segments during compaction (the caller decides which records are still live); on the
    /// active segment it sees the records appended so far. Checksums are verified again, so
    /// damage that happened after open is reported rather than handed over.
    pub fn for_each_record(
        &self,
        segment: u64,
        mut f: impl FnMut(RecordRef<'_>),
    ) -> Result<(), JournalError> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.index == segment)
            .ok_or(JournalError::NoSuchSegment(segment))?;
        let buf = &seg.map[..seg.end];
        let mut off = HEADER_BYTES;
        while off < seg.end {
            match read_slot(buf, off, buf.len()) {
                Slot::Record(p) => {
                    f(RecordRef {
                        seq: p.seq,
                        segment,
                        offset: off,
                        kind: p.kind,
                        payload: &buf[p.payload_off..p.payload_off + p.payload_len],
                    });
                    off = p.next;
                }
                Slot::End => break,
                Slot::Invalid(reason) => {
                    return Err(JournalError::Corrupt {
                        segment: seg.path.clone(),
                        offset: off as u64,
                        reason,
                    })
                }
            }
        }
        Ok(())
    }

    /// Deletes the oldest segment, which must be sealed (not active), and syncs the directory.
    /// Returns the bytes freed. Blocks briefly (unlink + directory sync).
    pub fn remove_oldest(&mut self) -> Result<u64, JournalError> {
        if self.segments.len() < 2 {
            return Err(JournalError::ActiveSegment(self.active().index));
        }
        let seg = self.segments.pop_front().expect("checked above");
        let path = seg.path.clone();
        drop(seg);
        std::fs::remove_file(&path)?;
        sync_dir(&self.dir)?;
        self.stats.segments_removed += 1;
        Ok(self.segment_bytes)
    }

    /// Bytes used in the active segment (header included): callers prepare the next segment
    /// when it fills, rather than holding a spare from the start.
    pub fn active_used(&self) -> u64 {
        self.active().end as u64
    }

    /// Whether a record of `len` payload bytes appended now lands in segment `segment` (the
    /// active one, with room for it), so that it may refer to a record there by location.
    pub fn lands_in(&self, segment: u64, len: usize) -> bool {
        segment == self.active_segment() && self.active().end + record_bytes(len) <= self.map_len()
    }

    /// Bytes of segment files held: live segments plus a ready spare.
    pub fn disk_bytes(&self) -> u64 {
        (self.segments.len() as u64 + u64::from(self.spare.is_some())) * self.segment_bytes
    }

    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// The configuration in force (with the directory).
    pub fn config(&self) -> JournalConfig {
        JournalConfig {
            dir: self.dir.clone(),
            segment_size: self.segment_bytes,
            max_bytes: self.max_bytes,
            salvage: false,
        }
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("journal has an active segment")
    }

    fn map_len(&self) -> usize {
        self.active().map.len()
    }

    fn room_for_segment(&self) -> bool {
        self.max_bytes == 0
            || (self.segments.len() as u64 + 1) * self.segment_bytes <= self.max_bytes
    }

    fn take_index(&mut self) -> Result<u64, JournalError> {
        let index = self.next_index;
        self.next_index = index
            .checked_add(1)
            .ok_or_else(|| JournalError::Config("segment index space exhausted".into()))?;
        Ok(index)
    }

    /// Seals the active segment and activates the spare, or creates one here if none is ready.
    fn roll(&mut self) -> Result<(), JournalError> {
        if !self.room_for_segment() {
            return Err(JournalError::Full {
                max_bytes: self.max_bytes,
            });
        }
        let prepared = match self.spare.take() {
            Some(s) => s,
            None => {
                let index = self.take_index()?;
                let s = create_segment(&self.dir, index, self.segment_bytes)?;
                self.stats.sync_segment_creates += 1;
                self.stats.segments_created += 1;
                s
            }
        };
        self.activate(prepared, self.last_seq + 1);
        Ok(())
    }

    /// Makes a prepared segment the active one, recording its first seq in the header. The
    /// header page was faulted in by the prepare job, and the next sync covers it.
    pub(crate) fn activate(&mut self, mut p: PreparedSegment, first_seq: u64) {
        write_header(
            &mut p.map[..HEADER_BYTES],
            p.index,
            first_seq,
            self.segment_bytes,
        );
        self.segments.push_back(Segment {
            index: p.index,
            path: p.path,
            file: p.file,
            map: p.map,
            last_seq: first_seq - 1,
            end: HEADER_BYTES,
        });
    }
}
