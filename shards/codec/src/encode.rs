//! PLACEHOLDER: the codec helper replaces this file.
use crate::error::EncodeError;
use crate::types::{Packet, ProtocolVersion, Publish};
use bytes::BytesMut;

pub fn encode(_p: &Packet, _v: ProtocolVersion, _out: &mut BytesMut) -> Result<(), EncodeError> {
    unimplemented!()
}

pub fn encoded_len(_p: &Packet, _v: ProtocolVersion) -> usize {
    unimplemented!()
}

pub fn encode_publish_header(
    _p: &Publish,
    _v: ProtocolVersion,
    _out: &mut BytesMut,
) -> Result<(), EncodeError> {
    unimplemented!()
}

pub fn publish_header_len(_p: &Publish, _v: ProtocolVersion) -> usize {
    unimplemented!()
}
