//! The packet model shared by every crate: one representation for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Fields that only exist in MQTT 5 (reason codes, properties) are carried for every version and
//! ignored by the encoder for 3.1/3.1.1, so the broker's logic is written once.

use bytes::Bytes;
use std::fmt;
use std::num::NonZeroU16;

/// Packet identifiers are never 0 [MQTT-2.2.1-3], so the type says so.
pub type PacketId = NonZeroU16;

/// The protocol level byte of CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string that passed the MQTT string rules (no U+0000, no surrogates, at most 65,535
/// bytes), backed by `Bytes` so that decoding a topic never copies it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Wraps bytes already known to be valid UTF-8 (the decoder checked them).
    ///
    /// # Safety
    /// `bytes` must be valid UTF-8.
    pub unsafe fn from_utf8_unchecked(bytes: Bytes) -> ByteStr {
        ByteStr(bytes)
    }

    /// Validates `bytes` as UTF-8 only (not the MQTT extra rules).
    pub fn from_utf8(bytes: Bytes) -> Result<ByteStr, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(ByteStr(bytes))
    }

    pub fn from_static(s: &'static str) -> ByteStr {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks UTF-8 or requires it of the caller.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> ByteStr {
        ByteStr(Bytes::from(s))
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> ByteStr {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::ops::Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An MQTT 5 reason code. A newtype rather than an enum because one value has several names
/// (0x00 is Success, Normal disconnection and Granted QoS 0) and because the set allowed depends
/// on the packet; the decoder checks that.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const RE_AUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    /// Codes at or above 0x80 are failures [MQTT-2.4].
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode(0x{:02X})", self.0)
    }
}

/// Every MQTT 5 property (section 2.2.2.2). One struct for all packets; the decoder rejects a
/// property that the packet does not allow and a duplicate of one that may appear once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01
    pub payload_format_indicator: Option<u8>,
    /// 0x02, seconds
    pub message_expiry_interval: Option<u32>,
    /// 0x03
    pub content_type: Option<ByteStr>,
    /// 0x08
    pub response_topic: Option<ByteStr>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x0B; one in SUBSCRIBE, any number in a PUBLISH from the server. Values 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, seconds
    pub session_expiry_interval: Option<u32>,
    /// 0x12
    pub assigned_client_identifier: Option<ByteStr>,
    /// 0x13, seconds
    pub server_keep_alive: Option<u16>,
    /// 0x15
    pub authentication_method: Option<ByteStr>,
    /// 0x16
    pub authentication_data: Option<Bytes>,
    /// 0x17, 0 or 1
    pub request_problem_information: Option<u8>,
    /// 0x18, seconds
    pub will_delay_interval: Option<u32>,
    /// 0x19, 0 or 1
    pub request_response_information: Option<u8>,
    /// 0x1A
    pub response_information: Option<ByteStr>,
    /// 0x1C
    pub server_reference: Option<ByteStr>,
    /// 0x1F
    pub reason_string: Option<ByteStr>,
    /// 0x21, never 0
    pub receive_maximum: Option<u16>,
    /// 0x22
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, never 0
    pub topic_alias: Option<u16>,
    /// 0x24, 0 or 1
    pub maximum_qos: Option<u8>,
    /// 0x25, 0 or 1
    pub retain_available: Option<u8>,
    /// 0x26, kept in order; may repeat
    pub user_properties: Vec<(ByteStr, ByteStr)>,
    /// 0x27, never 0
    pub maximum_packet_size: Option<u32>,
    /// 0x28, 0 or 1
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, 0 or 1
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A, 0 or 1
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (MQTT 5 only).
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.x) or Clean Start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 means no keep-alive.
    pub keep_alive: u16,
    /// May be empty: the server then assigns one (or refuses, for 3.1.x with clean session 0).
    pub client_id: ByteStr,
    pub will: Option<LastWill>,
    pub username: Option<ByteStr>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// The MQTT 5 reason code; the encoder maps it to a 3.1.x return code (0..=5).
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in MQTT 5 when a Topic Alias stands for it.
    pub topic: ByteStr,
    /// Present exactly when `qos` > 0.
    pub packet_id: Option<PacketId>,
    /// A zero-copy slice of the frame it was read from.
    pub payload: Bytes,
    /// Boxed because most publishes carry none and fan-out clones this struct.
    pub properties: Option<Box<Properties>>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResp {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: Option<Box<Properties>>,
}

impl PubResp {
    pub fn new(packet_id: PacketId) -> PubResp {
        PubResp {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: None,
        }
    }

    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> PubResp {
        PubResp {
            packet_id,
            reason,
            properties: None,
        }
    }
}

/// Retain Handling option of a subscription (MQTT 5, 3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// Never send them.
    DoNotSend = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: ByteStr,
    pub options: SubscriptionOptions,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    /// At least one [MQTT-3.8.3-3].
    pub filters: Vec<SubscribeFilter>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    /// One per filter, in order. For 3.1.x only 0x00, 0x01, 0x02 and 0x80 are encodable; the
    /// encoder maps any failure code to 0x80.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    /// At least one [MQTT-3.10.3-2].
    pub filters: Vec<ByteStr>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    /// One per filter (MQTT 5 only; not encoded for 3.1.x).
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// A control packet. Large variants are boxed so that the enum stays small on the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck(PubResp),
    PubRec(PubResp),
    PubRel(PubResp),
    PubComp(PubResp),
    Subscribe(Box<Subscribe>),
    SubAck(Box<SubAck>),
    Unsubscribe(Box<Unsubscribe>),
    UnsubAck(Box<UnsubAck>),
    PingReq,
    PingResp,
    Disconnect(Box<Disconnect>),
    Auth(Box<Auth>),
}

impl Packet {
    /// The packet type number of the fixed header (1..=15).
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }
}
