//! PLACEHOLDER: the codec helper replaces this file.
use crate::error::DecodeError;
use crate::types::{Packet, ProtocolVersion};
use bytes::BytesMut;

/// Where a frame's body starts and how long the whole frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_byte: u8,
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

pub fn frame_len(_buf: &[u8], _max_packet_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
    unimplemented!()
}

pub fn decode_packet(
    _buf: &mut BytesMut,
    _version: ProtocolVersion,
    _max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    unimplemented!()
}
