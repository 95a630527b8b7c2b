//! The journal's API: appends, replay, rollover, prepared segments, compaction, limits and the
//! sync bookkeeping.

use ringmq_journal::format::{max_payload_bytes, record_bytes, HEADER_BYTES};
use ringmq_journal::fuzzing::{config, open_collect, TempDir};
use ringmq_journal::{Journal, JournalConfig, JournalError};

const SEG: u64 = 64 << 10;

fn open(cfg: JournalConfig) -> (Journal, Vec<(u64, u8, Vec<u8>)>) {
    let (j, _, got) = open_collect(cfg).expect("open");
    (j, got)
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

#[test]
fn append_reopen_round_trip() {
    let dir = TempDir::new("t-roundtrip");
    let (mut j, got) = open(config(dir.path(), SEG, false));
    assert!(got.is_empty());
    assert_eq!((j.last_seq(), j.synced_seq()), (0, 0));
    let mut written = Vec::new();
    let mut locs = Vec::new();
    for i in 1..=600u64 {
        let p = payload(i, (i as usize * 7) % 300);
        let a = j.append(i as u8, &p).unwrap();
        assert_eq!(a.seq, i);
        assert_eq!(a.segment, j.active_segment());
        locs.push(a.at.expect("small journals have locations"));
        written.push((a.seq, i as u8, p));
    }
    // Empty payloads are records too (seq 0 is never used, so they are not the end marker).
    let a = j.append(9, &[]).unwrap();
    locs.push(a.at.unwrap());
    written.push((a.seq, 9, vec![]));
    j.sync_blocking().unwrap();
    drop(j);
    let (j, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got, written);
    assert_eq!(j.last_seq(), 601);
    // Every record reads back from where its append said it went, across rollovers and a
    // reopen.
    assert!(j.segment_count() > 1, "the test spans segments");
    for (at, (seq, kind, p)) in locs.iter().zip(&written) {
        let r = j.read(*at).unwrap();
        assert_eq!((r.seq, r.kind, r.payload), (*seq, *kind, &p[..]));
        assert_eq!((r.segment, r.offset), (at.segment(), at.offset()));
    }
}

#[test]
fn read_refuses_locations_that_hold_no_record() {
    let dir = TempDir::new("t-read-bad");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let a = j.append(1, b"0123456789abcdef").unwrap().at.unwrap();
    let b = j.append(2, b"x").unwrap().at.unwrap();
    assert_eq!(j.read(b).unwrap().payload, b"x");
    let seg = a.segment();
    for off in [
        0,
        8,
        a.offset() + 8,
        b.offset() + 8,
        b.offset() + 64,
        SEG as usize,
    ] {
        let at = ringmq_journal::RecordLoc::new(seg, off).unwrap();
        assert!(j.read(at).is_err(), "offset {off} holds no record");
    }
    let gone = ringmq_journal::RecordLoc::new(seg + 7, a.offset()).unwrap();
    assert!(matches!(
        j.read(gone),
        Err(ringmq_journal::JournalError::NoSuchSegment(_))
    ));
}

#[test]
fn copy_record_keeps_a_record_past_the_removal_of_its_segment() {
    let dir = TempDir::new("t-copy-record");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let keep = j.append(5, b"keep me").unwrap().at.unwrap();
    while j.segment_count() < 2 {
        j.append(1, &[0; 200]).unwrap();
    }
    let copied = j.copy_record(keep).unwrap();
    assert_eq!(copied.seq, j.last_seq());
    let moved = copied.at.unwrap();
    assert!(moved.segment() > keep.segment());
    j.sync_blocking().unwrap();
    j.remove_oldest().unwrap();
    assert!(j.read(keep).is_err(), "its old segment is gone");
    let r = j.read(moved).unwrap();
    assert_eq!((r.kind, r.payload), (5, &b"keep me"[..]));
}

#[test]
fn append_with_writes_in_place() {
    let dir = TempDir::new("t-append-with");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let seq = j
        .append_with(3, 5, |buf| {
            assert_eq!(buf, &[0; 5], "fresh slot is zeroed");
            buf.copy_from_slice(b"hello");
        })
        .unwrap()
        .seq;
    assert_eq!(seq, 1);
    // A panicking fill appends nothing and leaves no bytes behind.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        j.append_with(3, 100, |buf| {
            buf.fill(0xAB);
            panic!("fill failed");
        })
    }));
    assert!(r.is_err());
    assert_eq!(j.last_seq(), 1);
    j.append(4, b"x").unwrap();
    j.sync_blocking().unwrap();
    drop(j);
    let (_, report, got) = open_collect(config(dir.path(), SEG, false)).unwrap();
    assert!(!report.torn_tail);
    assert_eq!(got, vec![(1, 3, b"hello".to_vec()), (2, 4, b"x".to_vec())]);
}

#[test]
fn too_large_is_refused() {
    let dir = TempDir::new("t-too-large");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let max = max_payload_bytes(SEG);
    assert!(matches!(
        j.append(0, &vec![0; max + 1]),
        Err(JournalError::TooLarge { .. })
    ));
    // The largest record fills a whole segment.
    j.append(0, &vec![1; max]).unwrap();
    j.append(0, &vec![2; max]).unwrap();
    assert_eq!(j.segments().len(), 2);
    j.sync_blocking().unwrap();
    drop(j);
    let (_, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got.len(), 2);
}

#[test]
fn rollover_without_spare_creates_synchronously() {
    let dir = TempDir::new("t-rollover");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let p = vec![7u8; 1000];
    let per_seg = (SEG as usize - HEADER_BYTES) / record_bytes(1000);
    for _ in 0..per_seg * 3 + 1 {
        j.append(1, &p).unwrap();
    }
    assert_eq!(j.segments(), vec![0, 1, 2, 3]);
    assert_eq!(j.stats().sync_segment_creates, 3);
    j.sync_blocking().unwrap();
    drop(j);
    let (j, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got.len(), per_seg * 3 + 1);
    assert_eq!(j.segments(), vec![0, 1, 2, 3]);
    // Records replay with the segment they are in.
    let mut segs = Vec::new();
    Journal::open(config(dir.path(), SEG, false), |r| segs.push(r.segment)).unwrap();
    assert_eq!(segs[0], 0);
    assert_eq!(segs[per_seg], 1);
    assert_eq!(*segs.last().unwrap(), 3);
}

#[test]
fn prepared_segments_avoid_synchronous_creates() {
    let dir = TempDir::new("t-prepared");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let p = vec![7u8; 3000];
    for _ in 0..200 {
        if let Some(job) = j.prepare_job() {
            assert!(j.prepare_job().is_none(), "one spare at a time");
            j.install_prepared(job.run().unwrap());
            assert!(j.prepare_job().is_none(), "spare ready");
        }
        j.append(1, &p).unwrap();
    }
    if let Some(job) = j.prepare_job() {
        j.install_prepared(job.run().unwrap());
    }
    assert!(j.segments().len() > 5);
    assert_eq!(j.stats().sync_segment_creates, 0);
    assert_eq!(j.disk_bytes(), (j.segments().len() as u64 + 1) * SEG);
    j.sync_blocking().unwrap();
    drop(j);
    // The unused spare is deleted at open.
    let (_, report, got) = open_collect(config(dir.path(), SEG, false)).unwrap();
    assert_eq!(got.len(), 200);
    assert_eq!(report.deleted.len(), 1);
    assert!(!report.torn_tail);
}

#[test]
fn stale_spare_is_discarded() {
    let dir = TempDir::new("t-stale");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let job = j.prepare_job().unwrap();
    // Roll over before the job finishes: the journal creates the segment itself.
    let max = max_payload_bytes(SEG);
    j.append(1, &vec![1; max]).unwrap();
    j.append(1, &vec![2; max]).unwrap();
    assert_eq!(j.stats().sync_segment_creates, 1);
    let stale = job.run().unwrap();
    let stale_index = stale.index();
    j.install_prepared(stale);
    assert!(stale_index < j.active_segment());
    assert_eq!(
        j.disk_bytes(),
        2 * SEG,
        "stale spare not counted as a spare"
    );
    let job = j.prepare_job().unwrap();
    j.install_prepared(job.run().unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "stale file deleted by the next job: {names:?}"
    );
    j.append(1, &vec![3; max]).unwrap();
    assert_eq!(j.stats().sync_segment_creates, 1, "fresh spare used");
    j.sync_blocking().unwrap();
    drop(j);
    let (_, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got.len(), 3);
}

#[test]
fn remove_oldest_and_for_each_record() {
    let dir = TempDir::new("t-remove");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    assert!(matches!(
        j.remove_oldest(),
        Err(JournalError::ActiveSegment(0))
    ));
    for i in 0..100u64 {
        j.append(2, &payload(i, 2000)).unwrap();
    }
    let segs = j.segments();
    assert!(segs.len() >= 3);
    let mut seen = Vec::new();
    j.for_each_record(segs[0], |r| seen.push(r.seq)).unwrap();
    assert_eq!(seen[0], 1);
    assert!(matches!(
        j.for_each_record(999, |_| {}),
        Err(JournalError::NoSuchSegment(999))
    ));
    let before = j.disk_bytes();
    assert_eq!(j.remove_oldest().unwrap(), SEG);
    assert_eq!(j.disk_bytes(), before - SEG);
    assert_eq!(j.segments(), segs[1..].to_vec());
    assert_eq!(j.stats().segments_removed, 1);
    j.sync_blocking().unwrap();
    drop(j);
    let (j, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got.first().unwrap().0, *seen.last().unwrap() + 1);
    assert_eq!(got.last().unwrap().0, 100);
    assert_eq!(j.segments(), segs[1..].to_vec());
}

#[test]
fn max_bytes_full_writes_nothing() {
    let dir = TempDir::new("t-full");
    let cfg = JournalConfig {
        max_bytes: 2 * SEG,
        ..config(dir.path(), SEG, false)
    };
    let (mut j, _) = open(cfg.clone());
    let max = max_payload_bytes(SEG);
    j.append(1, &vec![1; max]).unwrap();
    assert!(j.prepare_job().is_some(), "a second segment fits");
    let mut j = {
        // Drop the job unrun: it was only a probe; reopen to reset.
        j.sync_blocking().unwrap();
        drop(j);
        open(cfg.clone()).0
    };
    j.append(1, &vec![2; max]).unwrap();
    assert!(
        j.prepare_job().is_none(),
        "a third segment would exceed max_bytes"
    );
    let err = j.append(1, b"one more").unwrap_err();
    assert!(matches!(err, JournalError::Full { max_bytes } if max_bytes == 2 * SEG));
    assert!(err.to_string().contains("max_bytes"));
    assert_eq!(j.last_seq(), 2);
    // Freeing a segment makes room again.
    j.remove_oldest().unwrap();
    j.append(1, b"one more").unwrap();
    j.sync_blocking().unwrap();
    drop(j);
    let (_, got) = open(cfg);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn sync_bookkeeping() {
    let dir = TempDir::new("t-sync");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    assert!(j.sync_job().is_none(), "nothing to sync");
    j.append(1, b"a").unwrap();
    j.append(1, b"b").unwrap();
    let a = j.sync_job().unwrap();
    assert_eq!(a.seq(), 2);
    assert!(j.sync_job().is_none(), "covered by the job in flight");
    j.append(1, b"c").unwrap();
    let b = j.sync_job().unwrap();
    assert_eq!(b.seq(), 3);
    // Completion out of order: each job syncs every file past synced_seq, so b alone makes
    // 3 durable and a's later completion must not move synced_seq back.
    let sb = b.run().unwrap();
    j.sync_done(sb);
    assert_eq!(j.synced_seq(), 3);
    let sa = a.run().unwrap();
    j.sync_done(sa);
    assert_eq!(j.synced_seq(), 3);
    assert!(j.sync_job().is_none());
    assert_eq!(j.stats().syncs, 2);
    // A failed job can be retried.
    j.append(1, b"d").unwrap();
    let _lost = j.sync_job().unwrap();
    j.sync_failed();
    let retry = j.sync_job().unwrap();
    j.sync_done(retry.run().unwrap());
    assert_eq!(j.synced_seq(), 4);
}

#[test]
fn jobs_run_on_another_thread() {
    let dir = TempDir::new("t-threads");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    let (to_worker, jobs) = std::sync::mpsc::channel::<Job>();
    let (to_owner, results) = std::sync::mpsc::channel::<Done>();
    enum Job {
        Sync(ringmq_journal::SyncJob),
        Prepare(ringmq_journal::PrepareJob),
    }
    enum Done {
        Synced(u64),
        Prepared(ringmq_journal::PreparedSegment),
    }
    let worker = std::thread::spawn(move || {
        for job in jobs {
            let done = match job {
                Job::Sync(s) => Done::Synced(s.run().unwrap()),
                Job::Prepare(p) => Done::Prepared(p.run().unwrap()),
            };
            to_owner.send(done).unwrap();
        }
    });
    let p = vec![5u8; 1500];
    for i in 0..2000 {
        j.append(1, &p).unwrap();
        if let Some(job) = j.prepare_job() {
            to_worker.send(Job::Prepare(job)).unwrap();
        }
        if i % 10 == 0 {
            if let Some(job) = j.sync_job() {
                to_worker.send(Job::Sync(job)).unwrap();
            }
        }
        for done in results.try_iter() {
            match done {
                Done::Synced(seq) => j.sync_done(seq),
                Done::Prepared(seg) => j.install_prepared(seg),
            }
        }
    }
    if let Some(job) = j.sync_job() {
        to_worker.send(Job::Sync(job)).unwrap();
    }
    drop(to_worker);
    worker.join().unwrap();
    for done in results.try_iter() {
        match done {
            Done::Synced(seq) => j.sync_done(seq),
            Done::Prepared(seg) => j.install_prepared(seg),
        }
    }
    assert_eq!(j.synced_seq(), 2000);
    assert!(j.stats().segments_created > 40);
    drop(j);
    let (_, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got.len(), 2000);
}

#[test]
fn config_errors_are_clear() {
    let dir = TempDir::new("t-config");
    let e = Journal::open(config(dir.path(), 1000, false), |_| {})
        .err()
        .unwrap();
    assert!(matches!(e, JournalError::Config(_)), "{e}");
    let (mut j, _) = open(config(dir.path(), SEG, false));
    j.append(1, b"x").unwrap();
    j.sync_blocking().unwrap();
    drop(j);
    let e = Journal::open(config(dir.path(), 2 * SEG, false), |_| {})
        .err()
        .unwrap();
    assert!(e.to_string().contains("segment_size"), "{e}");
}

#[test]
fn unrelated_files_are_ignored() {
    let dir = TempDir::new("t-unrelated");
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    std::fs::write(dir.path().join("seg-1.rmj"), b"short name").unwrap();
    std::fs::create_dir(dir.path().join("seg-00000000000000000009.rmj")).unwrap();
    let (mut j, got) = open(config(dir.path(), SEG, false));
    assert!(got.is_empty());
    j.append(1, b"x").unwrap();
    j.sync_blocking().unwrap();
    drop(j);
    let (_, got) = open(config(dir.path(), SEG, false));
    assert_eq!(got.len(), 1);
    assert!(dir.path().join("notes.txt").exists());
}
