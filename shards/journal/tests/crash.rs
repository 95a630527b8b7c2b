//! Crash-style tests: write records, damage the files the way a crash (or bit rot) would,
//! reopen. Torn tails must come back as a prefix and never fail the open; damage in the middle
//! is either refused (`Corrupt`, files untouched) or, with salvage, a prefix with the damaged
//! segments moved aside. The checks live in `ringmq_journal::fuzzing::crash_check`, which the
//! fuzz target runs too.

use proptest::prelude::*;
use ringmq_journal::format::HEADER_BYTES;
use ringmq_journal::fuzzing::{
    apply_damage, config, crash_check, open_collect, write_records, Damage, TempDir,
};
use ringmq_journal::JournalError;

const SEG: u64 = 64 << 10;

/// 1..120 records of 0..4000 bytes: from a fraction of a segment to several segments.
fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        (0usize..4000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn truncated_last_segment_recovers_a_prefix(p in payloads(), at in any::<u64>()) {
        crash_check(SEG, &p, &Damage::TruncateLast { at });
    }

    #[test]
    fn torn_tail_recovers_a_prefix(
        p in payloads(),
        back in any::<u64>(),
        fill in prop::collection::vec(any::<u8>(), 1..64),
        extra in any::<u64>(),
    ) {
        crash_check(SEG, &p, &Damage::TornTail { back, fill, extra });
    }

    #[test]
    fn flipped_bit_is_refused_or_salvaged(p in payloads(), at in any::<u64>(), bit in any::<u8>()) {
        crash_check(SEG, &p, &Damage::FlipBit { at, bit });
    }
}

/// A flipped bit in a record of a sealed segment: refused with where and why; salvage keeps
/// the records before it and moves the rest aside.
#[test]
fn middle_corruption_is_refused_then_salvaged() {
    let dir = TempDir::new("t-middle");
    let payloads: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 3000]).collect();
    write_records(dir.path(), SEG, &payloads);
    // Byte 100 of segment 0 is inside the payload of its first record... make it the second
    // record: header (64) + first record (17 + 3000 -> 3024) + 30.
    let at = (HEADER_BYTES + 3024 + 30) as u64;
    apply_damage(dir.path(), &Damage::FlipBit { at, bit: 3 });
    let err = open_collect(config(dir.path(), SEG, false)).err().unwrap();
    match &err {
        JournalError::Corrupt {
            segment, offset, ..
        } => {
            assert!(segment.ends_with("seg-00000000000000000000.rmj"));
            assert_eq!(*offset, (HEADER_BYTES + 3024) as u64);
        }
        e => panic!("expected Corrupt, got {e}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("checksum") && msg.contains("salvage"), "{msg}");

    let (_, report, got) = open_collect(config(dir.path(), SEG, true)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(report.last_seq, 1);
    assert!(report.moved_aside.len() >= 2, "{:?}", report.moved_aside);
    assert!(report.moved_aside.iter().all(|p| p.exists()));
    assert!(!report.torn_tail);
}

/// A torn tail is cut: zeroed, reported, appends continue in place.
#[test]
fn torn_tail_is_cut_and_reported() {
    let dir = TempDir::new("t-torn");
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 100]).collect();
    write_records(dir.path(), SEG, &payloads);
    // Garbage over the last record and past the end of data.
    apply_damage(
        dir.path(),
        &Damage::TornTail {
            back: 50,
            fill: vec![0x5A],
            extra: 40,
        },
    );
    let (mut j, report, got) = open_collect(config(dir.path(), SEG, false)).unwrap();
    assert_eq!(got.len(), 4);
    assert!(report.torn_tail);
    assert!(report.truncated_bytes > 0);
    assert_eq!(j.append(1, b"next").unwrap().seq, 5);
}

/// An all-zero last segment is an unused spare, deleted at open.
#[test]
fn zeroed_last_segment_is_an_unused_spare() {
    let dir = TempDir::new("t-zero-spare");
    write_records(dir.path(), SEG, &[vec![1; 10]]);
    std::fs::write(
        dir.path().join("seg-00000000000000000001.rmj"),
        vec![0u8; SEG as usize],
    )
    .unwrap();
    let (_, report, got) = open_collect(config(dir.path(), SEG, false)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(report.deleted.len(), 1);
    assert!(!report.torn_tail);
}

/// A missing middle segment is a seq gap: corruption, not a torn tail.
#[test]
fn missing_middle_segment_is_corruption() {
    let dir = TempDir::new("t-gap");
    let payloads: Vec<Vec<u8>> = (0..60).map(|i| vec![i as u8; 3000]).collect();
    write_records(dir.path(), SEG, &payloads);
    std::fs::remove_file(dir.path().join("seg-00000000000000000001.rmj")).unwrap();
    let err = open_collect(config(dir.path(), SEG, false)).err().unwrap();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    let (_, report, got) = open_collect(config(dir.path(), SEG, true)).unwrap();
    assert_eq!(got.len(), 21, "segment 0 holds 21 records of 3000 bytes");
    assert!(!report.moved_aside.is_empty());
}
