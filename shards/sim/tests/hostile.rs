//! Replays the `core_bytes` fuzz corpus (fuzz/corpus/core_bytes, kept in git) and a few
//! hand-written sessions through `ringmq_sim::hostile`, on stable Rust.
//! `HOSTILE_WRITE_SEEDS=1` also writes the hand-written ones into the corpus as fuzzing seeds.

use ringmq_sim::hostile;
use std::path::Path;

const SEND: u8 = 0;
const EOF: u8 = 3;
const ADVANCE: u8 = 4;
const SYNC: u8 = 5;
const CRASH: u8 = 6;

/// An input: the first byte picks 1-2 shards and the fsync policy, then (op, len, bytes).
struct Input(Vec<u8>);

impl Input {
    fn new(two_shards: bool, always: bool) -> Input {
        Input(vec![u8::from(two_shards) | u8::from(always) << 1])
    }
    fn op(mut self, conn: u8, code: u8, bytes: &[u8]) -> Input {
        self.0.push(conn << 3 | code);
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(bytes);
        self
    }
    fn send(self, conn: u8, bytes: &[u8]) -> Input {
        self.op(conn, SEND, bytes)
    }
    fn bare(self, conn: u8, code: u8) -> Input {
        self.op(conn, code, &[])
    }
}

/// MQTT 3.1.1 CONNECT, Clean Session 0, keep-alive 60 s, client id `id` (2 bytes).
fn connect311(id: &[u8; 2]) -> Vec<u8> {
    let mut p = vec![0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 2];
    p.extend_from_slice(id);
    p
}

/// MQTT 5 CONNECT, Clean Start, Session Expiry 60 s.
fn connect5(id: &[u8; 2]) -> Vec<u8> {
    let mut p = vec![0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60];
    p.extend_from_slice(&[5, 0x11, 0, 0, 0, 60, 0, 2]);
    p.extend_from_slice(id);
    p
}

const SUB_ALL_QOS2: &[u8] = &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 2];
const PUB_QOS2_RETAIN: &[u8] = &[0x35, 8, 0, 3, b'a', b'/', b'b', 0, 2, b'x'];
const PUBREL_2: &[u8] = &[0x62, 2, 0, 2];
const PUB_QOS1: &[u8] = &[0x32, 8, 0, 3, b'a', b'/', b'c', 0, 3, b'y'];
const PUBREC_1: &[u8] = &[0x50, 2, 0, 1];
const DISCONNECT: &[u8] = &[0xe0, 0];

fn sessions() -> Vec<(&'static str, Vec<u8>)> {
    let persistent = Input::new(true, false)
        .send(0, &connect311(b"h1"))
        .send(0, SUB_ALL_QOS2)
        .bare(0, SYNC)
        .send(1, &connect311(b"h2"))
        .send(1, PUB_QOS2_RETAIN)
        .bare(1, SYNC)
        .send(1, PUBREL_2)
        .send(1, PUB_QOS1)
        .send(0, PUBREC_1)
        .bare(0, CRASH)
        .send(0, &connect311(b"h1"))
        .send(1, &connect311(b"h2"))
        .send(1, PUB_QOS2_RETAIN)
        .bare(0, SYNC)
        .send(1, DISCONNECT)
        .0;
    let takeover = Input::new(true, true)
        .send(0, &connect5(b"t1"))
        .send(0, SUB_ALL_QOS2)
        .send(1, &connect311(b"t1"))
        .send(2, &connect5(b"t1"))
        .bare(0, SYNC)
        .op(0, ADVANCE, &[0; 200])
        .bare(2, EOF)
        .0;
    // A CONNECT cut into reads of one byte, then garbage.
    let mut split = Input::new(false, false);
    for b in connect311(b"s1") {
        split = split.send(0, &[b]);
    }
    let split = split.send(0, &[0xff; 20]).0;
    vec![
        ("seed-persistent", persistent),
        ("seed-takeover", takeover),
        ("seed-split", split),
    ]
}

#[test]
fn hand_written_sessions() {
    let write = std::env::var("HOSTILE_WRITE_SEEDS").is_ok_and(|v| v == "1");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/core_bytes");
    for (name, input) in sessions() {
        let s = hostile::run(&input);
        eprintln!("{name}: {s:?}");
        match name {
            "seed-persistent" => {
                assert!(s.connects >= 4 && s.restarts == 1, "{s:?}");
                assert!(s.msgs_in >= 3 && s.msgs_out >= 2, "{s:?}");
            }
            "seed-takeover" => assert!(s.connects >= 3, "{s:?}"),
            _ => assert!(s.connects == 1 && s.protocol_errors == 1, "{s:?}"),
        }
        if write {
            std::fs::write(dir.join(name), &input).expect("write the seed");
        }
    }
}

#[test]
fn corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/core_bytes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/core_bytes exists") {
        let path = entry.expect("readable").path();
        let input = std::fs::read(&path).expect("readable");
        hostile::run(&input);
        n += 1;
    }
    assert!(
        n >= 3,
        "the corpus holds at least the hand-written seeds ({n} inputs)"
    );
}
