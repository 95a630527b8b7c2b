//! Checks shared by the cargo-fuzz target (`fuzz/fuzz_targets/journal_open.rs`), the crash
//! tests and the fixed-seed image test, so a stable `cargo test` runs exactly what the fuzzer
//! runs. Every function panics on a violated guarantee; errors that are allowed are returned.

use crate::format::{
    read_slot, record_crc, segment_file_name, u32_at, u64_at, write_header, Slot, HEADER_BYTES,
    RECORD_HEADER_BYTES,
};
use crate::{Journal, JournalConfig, JournalError, RecoveryReport};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Segment size used by the fuzz target: small, so inputs reach several segments.
pub const FUZZ_SEGMENT_BYTES: u64 = 4096;

/// A directory removed on drop; on tmpfs when available because the fuzzer creates thousands.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = base.join(format!("ringmq-journal-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn config(dir: &Path, segment_size: u64, salvage: bool) -> JournalConfig {
    JournalConfig {
        dir: dir.to_path_buf(),
        segment_size,
        max_bytes: 0,
        salvage,
    }
}

/// Replayed records as (seq, kind, payload).
pub type Replayed = Vec<(u64, u8, Vec<u8>)>;

/// Opens and collects the replay, checking what must hold of any successful open: seqs are
/// contiguous, the report agrees with the journal, and appends continue at `last_seq + 1`.
pub fn open_collect(
    cfg: JournalConfig,
) -> Result<(Journal, RecoveryReport, Replayed), JournalError> {
    let mut got: Replayed = Vec::new();
    let (j, report) = Journal::open(cfg, |r| got.push((r.seq, r.kind, r.payload.to_vec())))?;
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "replayed seqs are contiguous");
    }
    assert_eq!(report.records, got.len() as u64);
    assert_eq!(report.last_seq, j.last_seq());
    assert_eq!(
        j.synced_seq(),
        j.last_seq(),
        "open leaves everything durable"
    );
    if let Some(last) = got.last() {
        assert_eq!(last.0, j.last_seq());
    }
    assert_eq!(report.segments, j.segments().len());
    assert_eq!(j.segments().last(), Some(&j.active_segment()));
    Ok((j, report, got))
}

/// Fuzz entry point. The first byte picks the mode: raw segment images (optionally with the
/// header and record checksums fixed up so the input reaches deep), or a valid journal built
/// from the input and then damaged as the input says.
pub fn fuzz_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        fuzz_images(mode, rest);
    } else {
        fuzz_damage(rest);
    }
}

/// Writes `rest` as one or two segment images and opens them without and with salvage.
fn fuzz_images(mode: u8, rest: &[u8]) {
    let two = mode & 2 != 0;
    let indexes = match (mode >> 4) & 3 {
        0 => [0, 1],
        1 => [0, 2],
        2 => [5, 6],
        _ => [1, 3],
    };
    let split = if rest.len() >= 2 {
        usize::from(u16::from_le_bytes([rest[0], rest[1]])) % (rest.len() + 1)
    } else {
        rest.len()
    };
    let mut images: Vec<(u64, Vec<u8>)> = if two {
        vec![
            (indexes[0], rest[..split].to_vec()),
            (indexes[1], rest[split..].to_vec()),
        ]
    } else {
        vec![(indexes[0], rest.to_vec())]
    };
    for (index, img) in &mut images {
        if mode & 4 != 0 && img.len() >= HEADER_BYTES {
            // Keep the input's first seq, but small, so chains can line up.
            let first_seq = u64_at(img, 24) % 4;
            write_header(img, *index, first_seq, FUZZ_SEGMENT_BYTES);
        }
        if mode & 8 != 0 {
            fix_record_crcs(img, FUZZ_SEGMENT_BYTES as usize);
        }
    }
    check_images(&images, FUZZ_SEGMENT_BYTES);
}

/// Opens segment images in a fresh directory, without salvage then with; checks that salvage
/// always yields a journal that then reopens cleanly with the same records.
pub fn check_images(images: &[(u64, Vec<u8>)], segment_bytes: u64) {
    let dir = TempDir::new("img");
    let write = |dir: &Path| {
        for (index, img) in images {
            std::fs::write(dir.join(segment_file_name(*index)), img).expect("write image");
        }
    };
    write(dir.path());
    let strict = open_collect(config(dir.path(), segment_bytes, false));
    if let Ok((j, _, got)) = strict {
        append_and_reopen(j, &got, segment_bytes, dir.path());
    }

    let dir = TempDir::new("img-salvage");
    write(dir.path());
    match open_collect(config(dir.path(), segment_bytes, true)) {
        Ok((j, _, got)) => append_and_reopen(j, &got, segment_bytes, dir.path()),
        Err(JournalError::Corrupt { .. }) => panic!("salvage never reports corruption"),
        // A header with a valid checksum for another segment size is a configuration error.
        Err(JournalError::Config(_)) => {}
        Err(e) => panic!("unexpected error with salvage: {e}"),
    }
}

/// Appends one record after recovery and checks a strict reopen sees the old records and it.
fn append_and_reopen(mut j: Journal, got: &Replayed, segment_bytes: u64, dir: &Path) {
    let next = j.last_seq() + 1;
    let seq = j
        .append(7, b"after-recovery")
        .expect("append after recovery")
        .seq;
    assert_eq!(seq, next);
    j.sync_blocking().expect("sync");
    drop(j);
    let (_, report, again) =
        open_collect(config(dir, segment_bytes, false)).expect("a recovered journal reopens");
    assert!(!report.torn_tail, "nothing torn after a clean close");
    assert!(report.moved_aside.is_empty());
    assert_eq!(&again[..again.len() - 1], &got[..]);
    assert_eq!(again.last().map(|r| (r.0, r.1)), Some((seq, 7)));
}

/// Recomputes the checksum of every record that the len words chain through, so that fuzz
/// inputs can form valid records.
pub fn fix_record_crcs(img: &mut [u8], segment_bytes: usize) {
    let limit = img.len().min(segment_bytes);
    let mut off = HEADER_BYTES;
    while off + RECORD_HEADER_BYTES <= limit {
        let len = u32_at(img, off) as usize;
        let end = off + RECORD_HEADER_BYTES + len;
        if len == 0 && u64_at(img, off + 8) == 0 || end > limit {
            break;
        }
        let crc = record_crc(&img[off + 8..end]);
        img[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
        off = end.next_multiple_of(8);
    }
}

/// Damage applied to a closed journal.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Cut the last segment file to `at % (its length + 1)` bytes.
    TruncateLast { at: u64 },
    /// A torn write: overwrite the last segment from somewhere in its last records to at
    /// least the end of its written data with `fill` (repeated).
    TornTail {
        back: u64,
        fill: Vec<u8>,
        extra: u64,
    },
    /// Flip one bit anywhere in any segment (`at` is reduced modulo the total size).
    FlipBit { at: u64, bit: u8 },
}

/// Writes `payloads` as records, closes, applies `damage`, reopens without then with salvage,
/// and checks: what comes back is a prefix of what was written, torn tails never make open
/// fail, and appends continue. Returns the number of records recovered with salvage.
pub fn crash_check(segment_bytes: u64, payloads: &[Vec<u8>], damage: &Damage) -> u64 {
    let dir = TempDir::new("crash");
    let written = write_records(dir.path(), segment_bytes, payloads);
    apply_damage(dir.path(), damage);
    let backup = snapshot(dir.path());

    let tail_only = !matches!(damage, Damage::FlipBit { .. });
    match open_collect(config(dir.path(), segment_bytes, false)) {
        Ok((j, _, got)) => {
            assert_prefix(&got, &written);
            append_and_reopen(j, &got, segment_bytes, dir.path());
        }
        Err(JournalError::Corrupt { .. }) if !tail_only => {
            // A refused open must leave the files untouched.
            assert_eq!(
                snapshot(dir.path()),
                backup,
                "refused open modified the directory"
            );
        }
        Err(e) => panic!("open after {damage:?} failed: {e}"),
    }

    let dir2 = TempDir::new("crash-salvage");
    restore(dir2.path(), &backup);
    let (j, report, got) = open_collect(config(dir2.path(), segment_bytes, true))
        .unwrap_or_else(|e| panic!("salvage open after {damage:?} failed: {e}"));
    assert_prefix(&got, &written);
    if tail_only {
        assert!(
            report.moved_aside.is_empty(),
            "a torn tail is cut, not moved aside"
        );
    }
    append_and_reopen(j, &got, segment_bytes, dir2.path());
    got.len() as u64
}

fn assert_prefix(got: &Replayed, written: &Replayed) {
    assert!(got.len() <= written.len(), "more records than written");
    for (g, w) in got.iter().zip(written) {
        assert_eq!(g, w, "recovered records are a prefix of the written ones");
    }
}

/// Appends `payloads` (kind = index % 251) and syncs; returns what was written.
pub fn write_records(dir: &Path, segment_bytes: u64, payloads: &[Vec<u8>]) -> Replayed {
    let (mut j, _) = Journal::open(config(dir, segment_bytes, false), |_| {}).expect("open");
    let mut written = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        let kind = (i % 251) as u8;
        let seq = j.append(kind, p).expect("append").seq;
        written.push((seq, kind, p.clone()));
    }
    j.sync_blocking().expect("sync");
    written
}

type Snapshot = Vec<(String, Vec<u8>)>;

/// Segment files of `dir`, by name; the ".damaged" files salvage writes included.
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut files: Snapshot = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read file"))
        })
        .collect();
    files.sort();
    files
}

fn restore(dir: &Path, snap: &Snapshot) {
    for (name, bytes) in snap {
        std::fs::write(dir.join(name), bytes).expect("restore");
    }
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(crate::format::parse_segment_file_name)
                .is_some()
        })
        .collect();
    v.sort();
    v
}

/// End of the records in a segment image (offset of its end marker).
fn written_end(img: &[u8]) -> usize {
    let mut off = HEADER_BYTES;
    while let Slot::Record(p) = read_slot(img, off, img.len()) {
        off = p.next;
    }
    off
}

pub fn apply_damage(dir: &Path, damage: &Damage) {
    let segs = segment_paths(dir);
    let last = segs.last().expect("a segment");
    match damage {
        Damage::TruncateLast { at } => {
            let len = std::fs::metadata(last).expect("stat").len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(last)
                .expect("open");
            f.set_len(at % (len + 1)).expect("truncate");
        }
        Damage::TornTail { back, fill, extra } => {
            let mut img = std::fs::read(last).expect("read");
            let end = written_end(&img);
            let start = end.saturating_sub(*back as usize % 4096).max(HEADER_BYTES);
            let stop = (end + *extra as usize % 64).min(img.len()).max(start);
            if !fill.is_empty() {
                for (i, b) in img[start..stop].iter_mut().enumerate() {
                    *b = fill[i % fill.len()];
                }
            }
            std::fs::write(last, img).expect("write");
        }
        Damage::FlipBit { at, bit } => {
            let sizes: Vec<u64> = segs
                .iter()
                .map(|p| std::fs::metadata(p).expect("stat").len())
                .collect();
            let total: u64 = sizes.iter().sum();
            let mut at = at % total;
            for (p, size) in segs.iter().zip(sizes) {
                if at < size {
                    let mut img = std::fs::read(p).expect("read");
                    img[at as usize] ^= 1 << (bit % 8);
                    std::fs::write(p, img).expect("write");
                    return;
                }
                at -= size;
            }
        }
    }
}

/// Builds a journal from the input (record sizes), then applies the damage it describes.
fn fuzz_damage(rest: &[u8]) {
    if rest.len() < 10 {
        return;
    }
    let (ctl, sizes) = rest.split_at(10);
    let at = u64::from_le_bytes(ctl[1..9].try_into().expect("8 bytes"));
    let damage = match ctl[0] % 3 {
        0 => Damage::TruncateLast { at },
        1 => Damage::TornTail {
            back: at & 0xffff,
            fill: ctl[9..].to_vec(),
            extra: at >> 16,
        },
        _ => Damage::FlipBit { at, bit: ctl[9] },
    };
    // Each size byte makes one record of up to ~1.5 KiB; 64 records at most.
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .take(64)
        .enumerate()
        .map(|(i, &s)| vec![i as u8; usize::from(s) * 6])
        .collect();
    crash_check(FUZZ_SEGMENT_BYTES, &payloads, &damage);
}
