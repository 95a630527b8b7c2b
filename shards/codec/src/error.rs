//! PLACEHOLDER: the codec helper replaces this file.
use crate::types::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Malformed(&'static str),
    Protocol(&'static str),
    PacketTooLarge { size: usize, max: usize },
    UnsupportedProtocolVersion(u8),
}

impl DecodeError {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    TooLarge(usize),
}
