//! Runs the cargo-fuzz target's body (`ringmq_codec::fuzzing::fuzz_roundtrip`) on stable: every
//! input of the fuzzer's corpus kept in the repository (`fuzz/corpus/decode/`), a seed corpus of
//! valid packets of every type, each with every truncation and every single-byte change applied,
//! plus a deterministic pseudo-random stream.

use bytes::BytesMut;
use ringmq_codec::fuzzing::fuzz_roundtrip;
use ringmq_codec::{decode_packet, ProtocolVersion};

/// One valid frame of every type in each version (hand-written so this file stands alone).
const SEEDS: &[&[u8]] = &[
    // CONNECT 3.1.1 with will, user name, password
    &[
        0x10, 0x1D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 10, 0, 3, b'c', b'i', b'd', 0, 1,
        b'w', 0, 2, b'h', b'i', 0, 1, b'u', 0, 2, b'p', b'w',
    ],
    // CONNECT 3.1
    &[
        0x10, 0x12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 4, b't', b'e',
        b's', b't',
    ],
    // CONNECT 5.0 with properties and will properties
    &[
        0x10, 0x2A, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC6, 0, 60, 8, 0x11, 0, 0, 0, 10, 0x21, 0,
        20, 0, 1, b'c', 7, 0x01, 1, 0x18, 0, 0, 0, 5, 0, 1, b't', 0, 1, b'x', 0, 1, b'u', 0, 1,
        b'p',
    ],
    &[0x20, 2, 1, 0],
    &[0x20, 9, 0, 0, 6, 0x12, 0, 1, b'a', 0x24, 1],
    &[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'],
    &[0x3B, 8, 0, 3, b'a', b'/', b'b', 0, 10, b'x'],
    &[
        0x34, 15, 0, 1, b't', 0, 5, 8, 0x0B, 5, 0x0B, 0x81, 1, 0x23, 0, 3, b'p',
    ],
    &[0x40, 2, 0, 1],
    &[0x50, 3, 0, 1, 0x10],
    &[0x62, 8, 0, 1, 0x92, 4, 0x1F, 0, 1, b'r'],
    &[0x70, 2, 0, 1],
    &[0x82, 12, 0, 1, 0, 3, b'a', b'/', b'b', 1, 0, 1, b'#', 2],
    &[
        0x82, 16, 0, 2, 9, 0x0B, 7, 0x26, 0, 1, b'k', 0, 1, b'v', 0, 1, b't', 0x2D,
    ],
    &[0x90, 5, 0, 1, 0, 1, 0x80],
    &[0x90, 6, 0, 1, 0, 2, 0x97, 0xA2],
    &[0xA2, 10, 0, 3, 0, 1, b'a', 0, 3, b'a', b'/', b'+'],
    &[0xB0, 2, 0, 3],
    &[0xB0, 5, 0, 3, 0, 0x11, 0],
    &[0xC0, 0],
    &[0xD0, 0],
    &[0xE0, 0],
    &[0xE0, 7, 0, 5, 0x11, 0, 0, 0, 0],
    &[
        0xF0, 12, 0x18, 10, 0x15, 0, 3, b'S', b'C', b'R', 0x16, 0, 1, b'd',
    ],
];

#[test]
fn seeds_are_valid() {
    for seed in SEEDS {
        let ok = [
            ProtocolVersion::V31,
            ProtocolVersion::V311,
            ProtocolVersion::V5,
        ]
        .into_iter()
        .any(|v| {
            let mut buf = BytesMut::from(*seed);
            matches!(decode_packet(&mut buf, v, usize::MAX), Ok(Some(_))) && buf.is_empty()
        });
        assert!(ok, "seed {seed:02X?} decodes under some version");
    }
}

#[test]
fn seeds_truncations_and_byte_flips() {
    for seed in SEEDS {
        fuzz_roundtrip(seed);
        for n in 0..seed.len() {
            fuzz_roundtrip(&seed[..n]);
        }
        let mut m = seed.to_vec();
        for i in 0..m.len() {
            let orig = m[i];
            for b in [
                0x00,
                0x01,
                0x02,
                0x7F,
                0x80,
                0xFF,
                orig ^ 0x01,
                orig ^ 0x80,
                orig.wrapping_add(1),
            ] {
                m[i] = b;
                fuzz_roundtrip(&m);
            }
            m[i] = orig;
        }
    }
    // All seeds back to back: a stream of packets.
    fuzz_roundtrip(&SEEDS.concat());
}

#[test]
fn pseudo_random_streams() {
    // xorshift64*: deterministic, no dependency.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut data = Vec::new();
    for _ in 0..3000 {
        data.clear();
        let len = (next() % 64) as usize;
        for _ in 0..len {
            data.push(next() as u8);
        }
        // Bias the first byte towards real packet types with valid flags.
        if let Some(first) = data.first_mut() {
            let t = (*first >> 4).max(1);
            *first = (t << 4) | if matches!(t, 6 | 8 | 10) { 2 } else { 0 };
        }
        if data.len() > 1 {
            data[1] = (data.len() - 2).min(127) as u8;
        }
        fuzz_roundtrip(&data);
    }
}

/// Replays every input of the cargo-fuzz corpus kept in the repository
/// (`fuzz/corpus/decode/`, minimized with `cargo fuzz cmin`) through the fuzz target's body.
/// A missing or empty corpus fails: a replay of nothing must not pass.
#[test]
fn replay_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<std::path::PathBuf> = entries
        .map(|e| e.expect("corpus dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| fuzz_roundtrip(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} corpus inputs panicked (reproduce with `cargo +nightly fuzz run decode <file>`): {failed:#?}",
        failed.len(),
        files.len()
    );
}
