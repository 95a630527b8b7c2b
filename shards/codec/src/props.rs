//! MQTT 5 properties (section 2.2.2): the per-packet allowed set, decoding with the duplicate and
//! value rules, and encoding that writes only what the packet may carry.

use crate::decode::Reader;
use crate::encode::{put_binary, put_str, put_vbi, vbi_len};
use crate::error::{DecodeError, EncodeError};
use crate::types::Properties;
use bytes::{BufMut, BytesMut};

/// Where a property list sits; one bit each so that the allowed-set table is a mask per id.
/// PUBACK, PUBREC, PUBREL and PUBCOMP share one set.
pub(crate) type Ctx = u16;
pub(crate) const CONNECT: Ctx = 1 << 0;
pub(crate) const CONNACK: Ctx = 1 << 1;
pub(crate) const PUBLISH: Ctx = 1 << 2;
pub(crate) const WILL: Ctx = 1 << 3;
pub(crate) const PUBRESP: Ctx = 1 << 4;
pub(crate) const SUBSCRIBE: Ctx = 1 << 5;
pub(crate) const SUBACK: Ctx = 1 << 6;
pub(crate) const UNSUBSCRIBE: Ctx = 1 << 7;
pub(crate) const UNSUBACK: Ctx = 1 << 8;
pub(crate) const DISCONNECT: Ctx = 1 << 9;
pub(crate) const AUTH: Ctx = 1 << 10;
const ALL: Ctx = (1 << 11) - 1;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The packets each property may appear in (table in section 2.2.2.2). 0 for unknown ids.
pub(crate) const fn allowed_in(id: u32) -> Ctx {
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => PUBLISH | WILL,
        0x0B => PUBLISH | SUBSCRIBE,
        0x11 => CONNECT | CONNACK | DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CONNACK,
        0x15 | 0x16 => CONNECT | CONNACK | AUTH,
        0x17 | 0x19 => CONNECT,
        0x18 => WILL,
        0x1C => CONNACK | DISCONNECT,
        0x1F => CONNACK | PUBRESP | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        0x21 | 0x22 | 0x27 => CONNECT | CONNACK,
        0x23 => PUBLISH,
        0x26 => ALL,
        _ => 0,
    }
}

#[inline]
fn ok(id: u8, ctx: Ctx) -> bool {
    allowed_in(id as u32) & ctx != 0
}

/// Reads a Property Length and the properties it covers, enforcing the allowed set for `ctx`,
/// the once-only rule and the value rules.
pub(crate) fn decode(r: &mut Reader<'_>, ctx: Ctx) -> Result<Properties, DecodeError> {
    let len = r.vbi("property length truncated [2.2.2.1]")? as usize;
    let mut sub = r.sub(len, "property length overruns the packet [2.2.2.1]")?;
    decode_list(&mut sub, ctx)
}

/// Like [`decode`] but returns `None` for an empty list, so PUBLISH and the acks allocate
/// nothing in the common case.
pub(crate) fn decode_opt(
    r: &mut Reader<'_>,
    ctx: Ctx,
) -> Result<Option<Box<Properties>>, DecodeError> {
    let len = r.vbi("property length truncated [2.2.2.1]")? as usize;
    if len == 0 {
        return Ok(None);
    }
    let mut sub = r.sub(len, "property length overruns the packet [2.2.2.1]")?;
    let p = decode_list(&mut sub, ctx)?;
    Ok(if p.is_empty() {
        None
    } else {
        Some(Box::new(p))
    })
}

fn decode_list(r: &mut Reader<'_>, ctx: Ctx) -> Result<Properties, DecodeError> {
    use DecodeError::{Malformed, Protocol};
    let mut p = Properties::default();
    // One bit per property id (all ids are < 64) to detect duplicates.
    let mut seen: u64 = 0;
    while !r.is_empty() {
        let id = r.vbi("property identifier truncated [2.2.2.2]")?;
        if allowed_in(id) & ctx == 0 {
            return Err(Malformed(
                "property identifier not valid for this packet type [2.2.2.2]",
            ));
        }
        let id = id as u8;
        let repeatable = id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && ctx == PUBLISH);
        if !repeatable {
            let bit = 1u64 << id;
            if seen & bit != 0 {
                return Err(Protocol(
                    "property that may appear once is repeated [2.2.2.2, 3.x.2.x]",
                ));
            }
            seen |= bit;
        }
        const TRUNC: &str = "property value truncated [2.2.2.2]";
        match id {
            PAYLOAD_FORMAT_INDICATOR => {
                p.payload_format_indicator = Some(bool_byte(
                    r,
                    "Payload Format Indicator not 0 or 1 [3.3.2.3.2]",
                )?)
            }
            MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32(TRUNC)?),
            CONTENT_TYPE => p.content_type = Some(r.string(TRUNC)?),
            RESPONSE_TOPIC => {
                let t = r.string(TRUNC)?;
                if t.is_empty() || t.bytes().any(|b| b == b'+' || b == b'#') {
                    return Err(Protocol(
                        "Response Topic empty or with wildcards [MQTT-3.3.2-14]",
                    ));
                }
                p.response_topic = Some(t)
            }
            CORRELATION_DATA => p.correlation_data = Some(r.binary(TRUNC)?),
            SUBSCRIPTION_IDENTIFIER => {
                let v = r.vbi(TRUNC)?;
                if v == 0 {
                    return Err(Protocol("Subscription Identifier 0 [3.3.2.3.8, 3.8.2.1.2]"));
                }
                p.subscription_identifiers.push(v);
            }
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32(TRUNC)?),
            ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(r.string(TRUNC)?),
            SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16(TRUNC)?),
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string(TRUNC)?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.binary(TRUNC)?),
            REQUEST_PROBLEM_INFORMATION => {
                p.request_problem_information = Some(bool_byte(
                    r,
                    "Request Problem Information not 0 or 1 [3.1.2.11.7]",
                )?)
            }
            WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32(TRUNC)?),
            REQUEST_RESPONSE_INFORMATION => {
                p.request_response_information = Some(bool_byte(
                    r,
                    "Request Response Information not 0 or 1 [3.1.2.11.6]",
                )?)
            }
            RESPONSE_INFORMATION => p.response_information = Some(r.string(TRUNC)?),
            SERVER_REFERENCE => p.server_reference = Some(r.string(TRUNC)?),
            REASON_STRING => p.reason_string = Some(r.string(TRUNC)?),
            RECEIVE_MAXIMUM => {
                let v = r.u16(TRUNC)?;
                if v == 0 {
                    return Err(Protocol("Receive Maximum 0 [3.1.2.11.3, 3.2.2.3.3]"));
                }
                p.receive_maximum = Some(v)
            }
            TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16(TRUNC)?),
            // 0 is not a valid alias [MQTT-3.3.2-8]; the receiver answers 0x94 Topic Alias
            // invalid, which it decides along with its own Topic Alias Maximum.
            TOPIC_ALIAS => p.topic_alias = Some(r.u16(TRUNC)?),
            MAXIMUM_QOS => {
                p.maximum_qos = Some(bool_byte(r, "Maximum QoS not 0 or 1 [3.2.2.3.4]")?)
            }
            RETAIN_AVAILABLE => {
                p.retain_available = Some(bool_byte(r, "Retain Available not 0 or 1 [3.2.2.3.5]")?)
            }
            USER_PROPERTY => {
                let k = r.string(TRUNC)?;
                let v = r.string(TRUNC)?;
                p.user_properties.push((k, v));
            }
            MAXIMUM_PACKET_SIZE => {
                let v = r.u32(TRUNC)?;
                if v == 0 {
                    return Err(Protocol("Maximum Packet Size 0 [3.1.2.11.4, 3.2.2.3.6]"));
                }
                p.maximum_packet_size = Some(v)
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                p.wildcard_subscription_available = Some(bool_byte(
                    r,
                    "Wildcard Subscription Available not 0 or 1 [3.2.2.3.11]",
                )?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                p.subscription_identifier_available = Some(bool_byte(
                    r,
                    "Subscription Identifiers Available not 0 or 1 [3.2.2.3.12]",
                )?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                p.shared_subscription_available = Some(bool_byte(
                    r,
                    "Shared Subscription Available not 0 or 1 [3.2.2.3.13]",
                )?)
            }
            // allowed_in() is 0 for every other id, so this is unreachable; stay total anyway.
            _ => return Err(Malformed("unknown property identifier [2.2.2.2]")),
        }
    }
    Ok(p)
}

fn bool_byte(r: &mut Reader<'_>, err: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8("property value truncated [2.2.2.2]")?;
    if v > 1 {
        return Err(DecodeError::Protocol(err));
    }
    Ok(v)
}

/// Authentication Data is meaningless without a method: "It is a Protocol Error to include
/// Authentication Data if there is no Authentication Method" [3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3].
pub(crate) fn check_auth_pair(p: &Properties) -> Result<(), DecodeError> {
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "Authentication Data without Authentication Method [3.1.2.11.10]",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding. Only properties allowed in `ctx` are written, so a broker that reuses a Properties
// value across packets never emits one the peer must reject; SUBSCRIBE carries at most the first
// Subscription Identifier.

#[inline]
fn s_len(s: &[u8]) -> usize {
    2 + s.len()
}

/// Byte length of the property list (without its Property Length prefix).
pub(crate) fn encoded_len(p: &Properties, ctx: Ctx) -> usize {
    let mut n = 0;
    macro_rules! fixed {
        ($f:expr, $id:expr, $sz:expr) => {
            if $f.is_some() && ok($id, ctx) {
                n += 1 + $sz;
            }
        };
    }
    macro_rules! var {
        ($f:expr, $id:expr) => {
            if let Some(v) = &$f {
                if ok($id, ctx) {
                    n += 1 + s_len(v.as_ref());
                }
            }
        };
    }
    fixed!(p.payload_format_indicator, PAYLOAD_FORMAT_INDICATOR, 1);
    fixed!(p.message_expiry_interval, MESSAGE_EXPIRY_INTERVAL, 4);
    var!(p.content_type, CONTENT_TYPE);
    var!(p.response_topic, RESPONSE_TOPIC);
    var!(p.correlation_data, CORRELATION_DATA);
    if ok(SUBSCRIPTION_IDENTIFIER, ctx) {
        let ids = subscription_ids(p, ctx);
        n += ids.iter().map(|&v| 1 + vbi_len(v as usize)).sum::<usize>();
    }
    fixed!(p.session_expiry_interval, SESSION_EXPIRY_INTERVAL, 4);
    var!(p.assigned_client_identifier, ASSIGNED_CLIENT_IDENTIFIER);
    fixed!(p.server_keep_alive, SERVER_KEEP_ALIVE, 2);
    var!(p.authentication_method, AUTHENTICATION_METHOD);
    var!(p.authentication_data, AUTHENTICATION_DATA);
    fixed!(
        p.request_problem_information,
        REQUEST_PROBLEM_INFORMATION,
        1
    );
    fixed!(p.will_delay_interval, WILL_DELAY_INTERVAL, 4);
    fixed!(
        p.request_response_information,
        REQUEST_RESPONSE_INFORMATION,
        1
    );
    var!(p.response_information, RESPONSE_INFORMATION);
    var!(p.server_reference, SERVER_REFERENCE);
    var!(p.reason_string, REASON_STRING);
    fixed!(p.receive_maximum, RECEIVE_MAXIMUM, 2);
    fixed!(p.topic_alias_maximum, TOPIC_ALIAS_MAXIMUM, 2);
    fixed!(p.topic_alias, TOPIC_ALIAS, 2);
    fixed!(p.maximum_qos, MAXIMUM_QOS, 1);
    fixed!(p.retain_available, RETAIN_AVAILABLE, 1);
    if ok(USER_PROPERTY, ctx) {
        for (k, v) in &p.user_properties {
            n += 1 + s_len(k.as_bytes()) + s_len(v.as_bytes());
        }
    }
    fixed!(p.maximum_packet_size, MAXIMUM_PACKET_SIZE, 4);
    fixed!(
        p.wildcard_subscription_available,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        1
    );
    fixed!(
        p.subscription_identifier_available,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        1
    );
    fixed!(
        p.shared_subscription_available,
        SHARED_SUBSCRIPTION_AVAILABLE,
        1
    );
    n
}

fn subscription_ids(p: &Properties, ctx: Ctx) -> &[u32] {
    let ids = &p.subscription_identifiers[..];
    if ctx == SUBSCRIBE && ids.len() > 1 {
        &ids[..1]
    } else {
        ids
    }
}

/// Property Length plus the list: the bytes [`write`] emits.
pub(crate) fn encoded_len_with_prefix(p: &Properties, ctx: Ctx) -> usize {
    let n = encoded_len(p, ctx);
    vbi_len(n) + n
}

/// Writes Property Length and the properties allowed in `ctx`.
pub(crate) fn write(p: &Properties, ctx: Ctx, out: &mut BytesMut) -> Result<(), EncodeError> {
    let n = encoded_len(p, ctx);
    put_vbi(out, n)?;
    macro_rules! byte {
        ($f:expr, $id:expr) => {
            if let Some(v) = $f {
                if ok($id, ctx) {
                    out.put_u8($id);
                    out.put_u8(v);
                }
            }
        };
    }
    macro_rules! u16_ {
        ($f:expr, $id:expr) => {
            if let Some(v) = $f {
                if ok($id, ctx) {
                    out.put_u8($id);
                    out.put_u16(v);
                }
            }
        };
    }
    macro_rules! u32_ {
        ($f:expr, $id:expr) => {
            if let Some(v) = $f {
                if ok($id, ctx) {
                    out.put_u8($id);
                    out.put_u32(v);
                }
            }
        };
    }
    macro_rules! str_ {
        ($f:expr, $id:expr) => {
            if let Some(v) = &$f {
                if ok($id, ctx) {
                    out.put_u8($id);
                    put_str(out, v.as_bytes())?;
                }
            }
        };
    }
    macro_rules! bin {
        ($f:expr, $id:expr) => {
            if let Some(v) = &$f {
                if ok($id, ctx) {
                    out.put_u8($id);
                    put_binary(out, v)?;
                }
            }
        };
    }
    byte!(p.payload_format_indicator, PAYLOAD_FORMAT_INDICATOR);
    u32_!(p.message_expiry_interval, MESSAGE_EXPIRY_INTERVAL);
    str_!(p.content_type, CONTENT_TYPE);
    str_!(p.response_topic, RESPONSE_TOPIC);
    bin!(p.correlation_data, CORRELATION_DATA);
    if ok(SUBSCRIPTION_IDENTIFIER, ctx) {
        for &v in subscription_ids(p, ctx) {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_vbi(out, v as usize)?;
        }
    }
    u32_!(p.session_expiry_interval, SESSION_EXPIRY_INTERVAL);
    str_!(p.assigned_client_identifier, ASSIGNED_CLIENT_IDENTIFIER);
    u16_!(p.server_keep_alive, SERVER_KEEP_ALIVE);
    str_!(p.authentication_method, AUTHENTICATION_METHOD);
    bin!(p.authentication_data, AUTHENTICATION_DATA);
    byte!(p.request_problem_information, REQUEST_PROBLEM_INFORMATION);
    u32_!(p.will_delay_interval, WILL_DELAY_INTERVAL);
    byte!(p.request_response_information, REQUEST_RESPONSE_INFORMATION);
    str_!(p.response_information, RESPONSE_INFORMATION);
    str_!(p.server_reference, SERVER_REFERENCE);
    str_!(p.reason_string, REASON_STRING);
    u16_!(p.receive_maximum, RECEIVE_MAXIMUM);
    u16_!(p.topic_alias_maximum, TOPIC_ALIAS_MAXIMUM);
    u16_!(p.topic_alias, TOPIC_ALIAS);
    byte!(p.maximum_qos, MAXIMUM_QOS);
    byte!(p.retain_available, RETAIN_AVAILABLE);
    if ok(USER_PROPERTY, ctx) {
        for (k, v) in &p.user_properties {
            out.put_u8(USER_PROPERTY);
            put_str(out, k.as_bytes())?;
            put_str(out, v.as_bytes())?;
        }
    }
    u32_!(p.maximum_packet_size, MAXIMUM_PACKET_SIZE);
    byte!(
        p.wildcard_subscription_available,
        WILDCARD_SUBSCRIPTION_AVAILABLE
    );
    byte!(
        p.subscription_identifier_available,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE
    );
    byte!(
        p.shared_subscription_available,
        SHARED_SUBSCRIPTION_AVAILABLE
    );
    Ok(())
}

/// Keeps only what [`write`] would emit for `ctx`, so tests can compare a decoded packet with
/// the original.
#[cfg(test)]
pub(crate) fn retain_allowed(p: &Properties, ctx: Ctx) -> Properties {
    let keep = |id: u8| ok(id, ctx);
    Properties {
        payload_format_indicator: p
            .payload_format_indicator
            .filter(|_| keep(PAYLOAD_FORMAT_INDICATOR)),
        message_expiry_interval: p
            .message_expiry_interval
            .filter(|_| keep(MESSAGE_EXPIRY_INTERVAL)),
        content_type: p.content_type.clone().filter(|_| keep(CONTENT_TYPE)),
        response_topic: p.response_topic.clone().filter(|_| keep(RESPONSE_TOPIC)),
        correlation_data: p
            .correlation_data
            .clone()
            .filter(|_| keep(CORRELATION_DATA)),
        subscription_identifiers: if keep(SUBSCRIPTION_IDENTIFIER) {
            subscription_ids(p, ctx).to_vec()
        } else {
            Vec::new()
        },
        session_expiry_interval: p
            .session_expiry_interval
            .filter(|_| keep(SESSION_EXPIRY_INTERVAL)),
        assigned_client_identifier: p
            .assigned_client_identifier
            .clone()
            .filter(|_| keep(ASSIGNED_CLIENT_IDENTIFIER)),
        server_keep_alive: p.server_keep_alive.filter(|_| keep(SERVER_KEEP_ALIVE)),
        authentication_method: p
            .authentication_method
            .clone()
            .filter(|_| keep(AUTHENTICATION_METHOD)),
        authentication_data: p
            .authentication_data
            .clone()
            .filter(|_| keep(AUTHENTICATION_DATA)),
        request_problem_information: p
            .request_problem_information
            .filter(|_| keep(REQUEST_PROBLEM_INFORMATION)),
        will_delay_interval: p.will_delay_interval.filter(|_| keep(WILL_DELAY_INTERVAL)),
        request_response_information: p
            .request_response_information
            .filter(|_| keep(REQUEST_RESPONSE_INFORMATION)),
        response_information: p
            .response_information
            .clone()
            .filter(|_| keep(RESPONSE_INFORMATION)),
        server_reference: p
            .server_reference
            .clone()
            .filter(|_| keep(SERVER_REFERENCE)),
        reason_string: p.reason_string.clone().filter(|_| keep(REASON_STRING)),
        receive_maximum: p.receive_maximum.filter(|_| keep(RECEIVE_MAXIMUM)),
        topic_alias_maximum: p.topic_alias_maximum.filter(|_| keep(TOPIC_ALIAS_MAXIMUM)),
        topic_alias: p.topic_alias.filter(|_| keep(TOPIC_ALIAS)),
        maximum_qos: p.maximum_qos.filter(|_| keep(MAXIMUM_QOS)),
        retain_available: p.retain_available.filter(|_| keep(RETAIN_AVAILABLE)),
        user_properties: if keep(USER_PROPERTY) {
            p.user_properties.clone()
        } else {
            Vec::new()
        },
        maximum_packet_size: p.maximum_packet_size.filter(|_| keep(MAXIMUM_PACKET_SIZE)),
        wildcard_subscription_available: p
            .wildcard_subscription_available
            .filter(|_| keep(WILDCARD_SUBSCRIPTION_AVAILABLE)),
        subscription_identifier_available: p
            .subscription_identifier_available
            .filter(|_| keep(SUBSCRIPTION_IDENTIFIER_AVAILABLE)),
        shared_subscription_available: p
            .shared_subscription_available
            .filter(|_| keep(SHARED_SUBSCRIPTION_AVAILABLE)),
    }
}

/// Encodes the properties a PUBLISH may carry (Property Length first), for storage outside a
/// packet such as journal records.
pub fn encode_publish_properties(p: &Properties, out: &mut BytesMut) -> Result<(), EncodeError> {
    write(p, PUBLISH, out)
}

/// Bytes [`encode_publish_properties`] writes.
pub fn publish_properties_len(p: &Properties) -> usize {
    encoded_len_with_prefix(p, PUBLISH)
}

/// Decodes what [`encode_publish_properties`] wrote, with the same checks as in a PUBLISH;
/// trailing bytes are an error.
pub fn decode_publish_properties(buf: &bytes::Bytes) -> Result<Properties, DecodeError> {
    let mut r = crate::decode::Reader::over(buf);
    let p = decode(&mut r, PUBLISH)?;
    if !r.is_empty() {
        return Err(DecodeError::Malformed("bytes after the properties"));
    }
    Ok(p)
}
