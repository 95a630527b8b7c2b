//! Decode and encode errors.
//!
//! A decode error always ends the connection; the variant decides what the broker tells the peer
//! first (MQTT 5: CONNACK or DISCONNECT with [`DecodeError::reason_code`]; 3.1.x: CONNACK return
//! code 1 for an unsupported version, otherwise just close). Each message names the spec
//! statement it enforces so that a log line can be checked against the standard.
//!
//! Malformed vs Protocol follows the MQTT 5 text where it says which one applies (section
//! 4.13.1 and the individual "It is a Protocol Error ..." / "... is a Malformed Packet"
//! sentences): bytes that cannot be parsed, or a value outside the data type's domain (a
//! reserved bit, an unknown reason code, a property identifier not valid for the packet) are
//! Malformed; a parsable value the spec calls a Protocol Error (a duplicate property, a zero
//! Receive Maximum, Retain Handling 3, ...) is Protocol.

use crate::types::ReasonCode;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes do not form a valid packet (reason code 0x81).
    Malformed(&'static str),
    /// The packet parses but breaks a rule the spec calls a Protocol Error (reason code 0x82).
    Protocol(&'static str),
    /// The fixed header announced a frame larger than the limit (reason code 0x95). Reported
    /// as soon as the fixed header is readable, before the body is buffered.
    PacketTooLarge { size: usize, max: usize },
    /// CONNECT with a protocol level this codec does not speak (reason code 0x84; return code 1
    /// for a 3.1.x client).
    UnsupportedProtocolVersion(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code to send in CONNACK or DISCONNECT before closing.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(m) => write!(f, "malformed packet: {m}"),
            DecodeError::Protocol(m) => write!(f, "protocol error: {m}"),
            DecodeError::PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            DecodeError::UnsupportedProtocolVersion(level) => {
                write!(f, "unsupported protocol level {level}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A field or the whole packet is this many bytes (or this value, for a Subscription
    /// Identifier), beyond what the wire format can express: a string or binary field over
    /// 65,535 bytes, a Remaining Length over 268,435,455 [MQTT-1.5.5], a variable byte
    /// integer value over 268,435,455.
    TooLarge(usize),
    /// The packet cannot be expressed in the wire format at all, e.g. a QoS > 0 PUBLISH without
    /// a packet id, or AUTH for a 3.1.x connection. Names the violated rule.
    Invalid(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge(n) => write!(f, "field or packet too large to encode ({n})"),
            EncodeError::Invalid(m) => write!(f, "packet cannot be encoded: {m}"),
        }
    }
}

impl std::error::Error for EncodeError {}
