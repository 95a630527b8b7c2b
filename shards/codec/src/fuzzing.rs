//! The body of the cargo-fuzz target (`fuzz/fuzz_targets/decode.rs`), kept here so that a
//! stable `cargo test` exercises exactly the same checks.

use crate::decode::decode_packet;
use crate::encode::{encode, encode_publish_header, encoded_len, publish_header_len};
use crate::types::{Packet, ProtocolVersion};
use bytes::BytesMut;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// Decodes `data` as a stream of packets under every protocol version and a few size limits;
/// every packet that decodes must re-encode, with `encoded_len` exact, and decode again to an
/// equal packet. Panics on any violation; decode errors are fine.
pub fn fuzz_roundtrip(data: &[u8]) {
    for v in VERSIONS {
        for max in [usize::MAX, 1024, 64, 2] {
            let mut buf = BytesMut::from(data);
            // Each success consumes at least 2 bytes, so this terminates.
            while let Ok(Some(p)) = decode_packet(&mut buf, v, max) {
                check_roundtrip(&p, v);
            }
        }
    }
}

/// Asserts encode -> decode is the identity on `p` (a packet as the decoder produces it for
/// `v`), that `encoded_len` is exact, and that for PUBLISH the header encoder plus the payload
/// gives the same bytes as `encode`.
pub fn check_roundtrip(p: &Packet, v: ProtocolVersion) {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).expect("a decoded packet re-encodes");
    assert_eq!(out.len(), encoded_len(p, v), "encoded_len is exact");
    if let Packet::Publish(pb) = p {
        let mut h = BytesMut::new();
        encode_publish_header(pb, v, &mut h).expect("publish header encodes");
        assert_eq!(
            h.len(),
            publish_header_len(pb, v),
            "publish_header_len is exact"
        );
        h.extend_from_slice(&pb.payload);
        assert_eq!(h, out, "header + payload == encode");
    }
    let mut again = out.clone();
    let q = decode_packet(&mut again, v, usize::MAX)
        .expect("re-encoded packet decodes")
        .expect("re-encoded packet is complete");
    assert!(again.is_empty(), "one packet, no leftovers");
    assert_eq!(&q, p, "decode(encode(p)) == p");
}
