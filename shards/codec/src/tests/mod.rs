//! Unit tests: byte-literal tables (both directions), one test per rejection rule, encoder
//! specifics, and property-based round trips.

mod encoder;
mod proptests;
mod reject;
mod tables;

use crate::*;
use bytes::{Bytes, BytesMut};

pub(crate) const V31: ProtocolVersion = ProtocolVersion::V31;
pub(crate) const V311: ProtocolVersion = ProtocolVersion::V311;
pub(crate) const V5: ProtocolVersion = ProtocolVersion::V5;
pub(crate) const ALL: [ProtocolVersion; 3] = [V31, V311, V5];

pub(crate) fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub(crate) fn s(x: &'static str) -> ByteStr {
    ByteStr::from_static(x)
}

pub(crate) fn b(x: &'static [u8]) -> Bytes {
    Bytes::from_static(x)
}

pub(crate) fn dec(bytes: &[u8], v: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode_packet(&mut buf, v, usize::MAX)
}

/// Decodes exactly one complete packet that fills `bytes`.
#[track_caller]
pub(crate) fn dec_ok(bytes: &[u8], v: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let p = decode_packet(&mut buf, v, usize::MAX)
        .unwrap_or_else(|e| panic!("{bytes:02X?} under {v:?}: {e}"))
        .expect("complete packet");
    assert!(buf.is_empty(), "whole frame consumed");
    p
}

#[track_caller]
pub(crate) fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).unwrap();
    assert_eq!(out.len(), encoded_len(p, v), "encoded_len");
    out.to_vec()
}

#[track_caller]
pub(crate) fn malformed(bytes: &[u8], v: ProtocolVersion) {
    match dec(bytes, v) {
        Err(DecodeError::Malformed(m)) => {
            assert!(m.contains('['), "message names a spec statement: {m}")
        }
        other => panic!("{bytes:02X?} under {v:?}: expected Malformed, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn protocol(bytes: &[u8], v: ProtocolVersion) {
    match dec(bytes, v) {
        Err(DecodeError::Protocol(m)) => {
            assert!(m.contains('['), "message names a spec statement: {m}")
        }
        other => panic!("{bytes:02X?} under {v:?}: expected Protocol, got {other:?}"),
    }
}
