//! `Journal::open`: scan, decide, then repair and replay.
//!
//! Phase 1 only reads: it walks the segments in index order, validating headers and records
//! and the seq chain, and stops at the first record that fails. Phase 2 decides: if any valid
//! record with a later seq exists after the failure (in the same segment or a later one), the
//! damage is in the middle and opening fails (or, with `salvage`, the damage is moved aside);
//! otherwise it is a torn tail and is cut. Only then are files modified and records replayed,
//! so a refused open leaves the directory as it was.

use crate::format::{
    parse_segment_file_name, read_header, read_slot, record_bytes, valid_record_in_window,
    write_header, Slot, HEADER_BYTES, MAX_SEQ, RECORD_ALIGN,
};
use crate::jobs::{create_segment, sync_dir};
use crate::journal::{Journal, Segment};
use crate::{
    JournalConfig, JournalError, JournalStats, RecordRef, RecoveryReport, MIN_SEGMENT_BYTES,
};
use memmap2::{Mmap, MmapOptions};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment file as found, mapped read-only for the scan.
struct Image {
    index: u64,
    path: PathBuf,
    file: File,
    file_len: u64,
    /// The first `min(file_len, segment_bytes)` bytes.
    map: Option<Mmap>,
}

impl Image {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// What the scan learned about one segment.
#[derive(Default)]
struct Scanned {
    header_ok: bool,
    /// The header's first seq (0 = never activated).
    header_first_seq: u64,
    /// Offset after the last valid record.
    end: usize,
    records: u64,
    first_seq: Option<u64>,
}

/// Where the scan stopped on a failed check.
struct Bad {
    segment: usize,
    offset: usize,
    reason: String,
}

pub(crate) fn open(
    cfg: JournalConfig,
    mut replay: impl FnMut(RecordRef<'_>),
) -> Result<(Journal, RecoveryReport), JournalError> {
    check_config(&cfg)?;
    std::fs::create_dir_all(&cfg.dir)?;
    let seg_bytes = cfg.segment_size as usize;
    let images = list_images(&cfg.dir, seg_bytes)?;
    let max_seen = images.iter().map(|i| i.index).max();

    // Phase 1: scan until the first failure.
    let mut scans: Vec<Scanned> = Vec::with_capacity(images.len());
    let mut expected: Option<u64> = None;
    let mut last_good = 0u64;
    let mut bad: Option<Bad> = None;
    for (k, img) in images.iter().enumerate() {
        let buf = img.bytes();
        let mut sc = Scanned::default();
        let header = read_header(buf).and_then(|h| {
            if h.index != img.index {
                Err(format!(
                    "header says segment {}, file name says {}",
                    h.index, img.index
                ))
            } else {
                Ok(h)
            }
        });
        let header = match header {
            Ok(h) => h,
            Err(reason) => {
                bad = Some(Bad {
                    segment: k,
                    offset: 0,
                    reason: format!("bad segment header: {reason}"),
                });
                scans.push(sc);
                break;
            }
        };
        if header.segment_bytes != cfg.segment_size {
            return Err(JournalError::Config(format!(
                "{} was written with segment_size {}, configured {} (configure the size the \
                 journal was created with)",
                img.path.display(),
                header.segment_bytes,
                cfg.segment_size
            )));
        }
        if header.first_seq > MAX_SEQ {
            bad = Some(Bad {
                segment: k,
                offset: 0,
                reason: format!("header first seq {} out of range", header.first_seq),
            });
            scans.push(sc);
            break;
        }
        sc.header_ok = true;
        sc.header_first_seq = header.first_seq;
        if header.first_seq != 0 {
            match expected {
                Some(e) if e != header.first_seq => {
                    bad = Some(Bad {
                        segment: k,
                        offset: 0,
                        reason: format!(
                            "segment starts at seq {}, the previous segment ends at seq {}",
                            header.first_seq,
                            e - 1
                        ),
                    });
                    scans.push(sc);
                    break;
                }
                _ => expected = Some(header.first_seq),
            }
        }
        let mut off = HEADER_BYTES;
        loop {
            match read_slot(buf, off, seg_bytes) {
                Slot::End => {
                    // Zeros here with a valid record further on means records were wiped.
                    let hi = seq_window_end(last_good, &images[k..], seg_bytes);
                    if let Some((o, s)) = find_in(buf, off + RECORD_ALIGN, seg_bytes, last_good, hi)
                    {
                        bad = Some(Bad {
                            segment: k,
                            offset: off,
                            reason: format!(
                                "end of data, but a valid record (seq {s}) follows at offset {o}"
                            ),
                        });
                    }
                    break;
                }
                Slot::Record(p) => {
                    if let Some(e) = expected.filter(|&e| e != p.seq) {
                        bad = Some(Bad {
                            segment: k,
                            offset: off,
                            reason: format!("record has seq {}, expected {e}", p.seq),
                        });
                        break;
                    }
                    sc.first_seq.get_or_insert(p.seq);
                    sc.records += 1;
                    last_good = p.seq;
                    expected = Some(p.seq + 1);
                    off = p.next;
                }
                Slot::Invalid(reason) => {
                    bad = Some(Bad {
                        segment: k,
                        offset: off,
                        reason,
                    });
                    break;
                }
            }
        }
        sc.end = off;
        scans.push(sc);
        if bad.is_some() {
            break;
        }
    }

    // Phase 2: decide what to keep.
    let mut report = RecoveryReport::default();
    // Segments [0, keep) stay; `cut` = (segment, offset) where a kept segment's data ends
    // early and the bytes after it are to be zeroed.
    let mut keep = images.len();
    let mut cut: Option<(usize, usize)> = None;
    let mut aside: Vec<usize> = Vec::new();
    let mut copy_aside: Option<usize> = None;
    if let Some(b) = &bad {
        let hi = seq_window_end(last_good, &images[b.segment..], seg_bytes);
        let from = if b.offset < HEADER_BYTES {
            HEADER_BYTES
        } else {
            b.offset + RECORD_ALIGN
        };
        let mut later = find_in(images[b.segment].bytes(), from, seg_bytes, last_good, hi)
            .map(|(o, s)| (b.segment, o, s));
        for (j, img) in images.iter().enumerate().skip(b.segment + 1) {
            if later.is_some() {
                break;
            }
            later = find_in(img.bytes(), HEADER_BYTES, seg_bytes, last_good, hi)
                .map(|(o, s)| (j, o, s));
        }
        keep = if b.offset >= HEADER_BYTES {
            b.segment + 1
        } else {
            b.segment
        };
        if b.offset >= HEADER_BYTES {
            cut = Some((b.segment, b.offset));
        }
        match later {
            Some((j, o, s)) if !cfg.salvage => {
                return Err(JournalError::Corrupt {
                    segment: images[b.segment].path.clone(),
                    offset: b.offset as u64,
                    reason: format!(
                        "{}; a valid record (seq {s}) follows in {} at offset {o}",
                        b.reason,
                        images[j].path.display()
                    ),
                });
            }
            Some(_) => {
                if b.offset >= HEADER_BYTES {
                    copy_aside = Some(b.segment);
                }
                aside.extend(keep..images.len());
            }
            None => {}
        }
    }

    // Segments without records are unused spares (or were torn while being created) and are
    // deleted. Only the last one may stay, as the active segment, if its header is valid and
    // it was activated or is the only segment (else the previous segment's free tail is used).
    let mut deleted: Vec<usize> = (keep..images.len())
        .filter(|j| !aside.contains(j))
        .collect();
    let mut kept: Vec<usize> = Vec::new();
    for (k, sc) in scans.iter().enumerate().take(keep) {
        let stays_active =
            k + 1 == keep && sc.header_ok && (sc.header_first_seq != 0 || kept.is_empty());
        if sc.records == 0 && !stays_active {
            deleted.push(k);
        } else {
            kept.push(k);
        }
    }
    deleted.sort_unstable();

    // Repair. Nothing was modified before this point.
    let mut dir_changed = false;
    if let Some(k) = copy_aside {
        let to = free_aside_name(&images[k].path);
        std::fs::copy(&images[k].path, &to)?;
        File::open(&to)?.sync_all()?;
        report.moved_aside.push(to);
        dir_changed = true;
    }
    for &j in &aside {
        let to = free_aside_name(&images[j].path);
        std::fs::rename(&images[j].path, &to)?;
        report.moved_aside.push(to);
        dir_changed = true;
    }
    for &j in &deleted {
        let img = &images[j];
        let from = if scans.get(j).is_some_and(|s| s.header_ok) {
            HEADER_BYTES
        } else {
            0
        };
        report.truncated_bytes += nonzero_extent(img.bytes(), from) as u64;
        std::fs::remove_file(&img.path)?;
        report.deleted.push(img.path.clone());
        dir_changed = true;
    }

    let mut segments: VecDeque<Segment> = VecDeque::with_capacity(kept.len());
    let mut images = images.into_iter().map(Some).collect::<Vec<_>>();
    let mut next_seq = expected.unwrap_or(1);
    for &k in &kept {
        let img = images[k].take().expect("each image is kept once");
        let sc = &scans[k];
        let end = match cut {
            Some((c, o)) if c == k => o,
            _ => sc.end,
        };
        // Anything after the last good record is a torn write (or garbage): zero it so the
        // next append starts on clean bytes and recovery sees the end marker.
        let tail_nonzero = nonzero_extent(img.bytes(), end);
        report.truncated_bytes += tail_nonzero as u64;
        let Image {
            index,
            path,
            file,
            file_len,
            map,
        } = img;
        drop(map);
        if file_len != cfg.segment_size {
            file.set_len(cfg.segment_size)?;
        }
        // SAFETY: the journal owns the segment files and never truncates a mapped one.
        let mut map = unsafe { MmapOptions::new().len(seg_bytes).map_mut(&file)? };
        if tail_nonzero > 0 {
            map[end..end + tail_nonzero].fill(0);
        }
        let first_seq = sc.first_seq.unwrap_or(if sc.header_first_seq != 0 {
            sc.header_first_seq
        } else {
            next_seq
        });
        let last_seq = first_seq + sc.records - 1;
        if sc.header_first_seq != first_seq {
            // A spare becoming active, or a header page that was lost in a crash.
            write_header(&mut map[..HEADER_BYTES], index, first_seq, cfg.segment_size);
        }
        map.flush()?;
        file.sync_data()?;
        segments.push_back(Segment {
            index,
            path,
            file: Arc::new(file),
            map,
            last_seq,
            end,
        });
        next_seq = last_seq + 1;
    }
    // With salvage the bytes cut were copied aside first: that is damage, not a torn tail.
    report.torn_tail = report.truncated_bytes > 0 && report.moved_aside.is_empty();

    let mut journal = Journal {
        dir: cfg.dir.clone(),
        segment_bytes: cfg.segment_size,
        max_bytes: cfg.max_bytes,
        segments,
        spare: None,
        prepare_in_flight: None,
        next_index: 0,
        last_seq: 0,
        synced_seq: 0,
        sync_requested_seq: 0,
        discard: Vec::new(),
        stats: JournalStats::default(),
    };
    match journal.segments.back() {
        Some(active) => {
            journal.last_seq = active.last_seq;
            journal.next_index = active
                .index
                .checked_add(1)
                .ok_or_else(|| JournalError::Config("segment index space exhausted".into()))?;
        }
        None => {
            // Empty directory, or nothing usable left: start a segment past every index
            // seen, so no name is reused.
            let index = highest_index_seen(&cfg.dir, max_seen.map_or(0, |m| m.saturating_add(1)))?;
            let seg = create_segment(&cfg.dir, index, cfg.segment_size)?;
            journal.stats.segments_created += 1;
            journal.next_index = index + 1;
            let first = next_seq;
            journal.activate(seg, first);
            let active = journal.segments.back_mut().expect("just activated");
            active.map.flush()?;
            active.file.sync_data()?;
            journal.last_seq = first - 1;
            dir_changed = false; // create_segment synced the directory
            if !report.moved_aside.is_empty() || !report.deleted.is_empty() {
                sync_dir(&cfg.dir)?;
            }
        }
    }
    if dir_changed {
        sync_dir(&cfg.dir)?;
    }
    journal.synced_seq = journal.last_seq;
    journal.sync_requested_seq = journal.last_seq;

    // Replay what stays. Every record up to each segment's end was verified in phase 1.
    for seg in &journal.segments {
        let buf = &seg.map[..seg.end];
        let mut off = HEADER_BYTES;
        while let Slot::Record(p) = read_slot(buf, off, buf.len()) {
            replay(RecordRef {
                seq: p.seq,
                segment: seg.index,
                offset: off,
                kind: p.kind,
                payload: &buf[p.payload_off..p.payload_off + p.payload_len],
            });
            report.records += 1;
            off = p.next;
        }
        assert_eq!(off, seg.end, "replay walks exactly the verified records");
    }
    report.segments = journal.segments.len();
    report.last_seq = journal.last_seq;
    Ok((journal, report))
}

fn check_config(cfg: &JournalConfig) -> Result<(), JournalError> {
    let s = cfg.segment_size;
    if s < MIN_SEGMENT_BYTES || s & (RECORD_ALIGN as u64 - 1) != 0 || usize::try_from(s).is_err() {
        return Err(JournalError::Config(format!(
            "segment_size {s} must be a multiple of {RECORD_ALIGN} and at least {MIN_SEGMENT_BYTES}"
        )));
    }
    if cfg.max_bytes != 0 && cfg.max_bytes < s {
        return Err(JournalError::Config(format!(
            "max_bytes {} is below one segment ({s}); use 0 for unlimited",
            cfg.max_bytes
        )));
    }
    Ok(())
}

/// Segment files in `dir`, by index. Other names are not ours and are left alone.
fn list_images(dir: &Path, seg_bytes: usize) -> Result<Vec<Image>, JournalError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) else {
            continue;
        };
        if !entry.file_type()?.is_file() {
            continue;
        }
        found.push((index, entry.path()));
    }
    found.sort_unstable();
    let mut images = Vec::with_capacity(found.len());
    for (index, path) in found {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        let map_len = file_len.min(seg_bytes as u64) as usize;
        let map = if map_len == 0 {
            None
        } else {
            // SAFETY: read-only view of a file only this journal writes.
            Some(unsafe { MmapOptions::new().len(map_len).map(&file)? })
        };
        images.push(Image {
            index,
            path,
            file,
            file_len,
            map,
        });
    }
    Ok(images)
}

/// Highest seq a valid record after `last_good` could have: every byte left holding minimal
/// records. Bounds the seq window so scanning garbage rarely computes a checksum.
fn seq_window_end(last_good: u64, rest: &[Image], seg_bytes: usize) -> u64 {
    let bytes: u64 = rest
        .iter()
        .map(|i| i.bytes().len().min(seg_bytes) as u64)
        .sum();
    last_good.saturating_add(bytes / record_bytes(0) as u64 + 1)
}

/// First valid record at an aligned offset `>= from` with a seq in `(lo, hi]`.
fn find_in(buf: &[u8], from: usize, seg_bytes: usize, lo: u64, hi: u64) -> Option<(usize, u64)> {
    let from = from.next_multiple_of(RECORD_ALIGN).max(HEADER_BYTES);
    (from..buf.len())
        .step_by(RECORD_ALIGN)
        .find_map(|o| valid_record_in_window(buf, o, seg_bytes, lo, hi).map(|s| (o, s)))
}

/// Bytes from `from` to the last non-zero byte (0 if all zero).
fn nonzero_extent(buf: &[u8], from: usize) -> usize {
    buf.get(from..)
        .and_then(|t| t.iter().rposition(|&b| b != 0))
        .map_or(0, |p| p + 1)
}

/// `<name>.damaged`, or `<name>.damaged.N` if earlier salvages used that.
fn free_aside_name(path: &Path) -> PathBuf {
    let base = path.as_os_str().to_owned();
    let mut n = 1u32;
    loop {
        let mut name = base.clone();
        if n == 1 {
            name.push(".damaged");
        } else {
            name.push(format!(".damaged.{n}"));
        }
        let p = PathBuf::from(name);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// `candidate`, raised past any segment file still in `dir` (none should be, but a name
/// clash would fail the creation).
fn highest_index_seen(dir: &Path, candidate: u64) -> io::Result<u64> {
    let mut index = candidate;
    for entry in std::fs::read_dir(dir)? {
        if let Some(i) = entry?
            .file_name()
            .to_str()
            .and_then(parse_segment_file_name)
        {
            index = index.max(i.saturating_add(1));
        }
    }
    Ok(index)
}
