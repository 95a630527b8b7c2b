//! Decoding: framing first, then parsing.
//!
//! [`frame_len`] looks only at the fixed header: it validates the first byte (packet type and
//! the reserved flag bits), reads the Remaining Length and rejects a frame over the size limit
//! before its body has been read, so a peer cannot make the broker buffer an oversized packet.
//! It never allocates. Only one flag rule depends on the protocol version (MQTT 3.1 lets a
//! retried PUBREL/SUBSCRIBE/UNSUBSCRIBE carry DUP); `frame_len`, which has no version, accepts
//! what some version accepts, and [`decode_packet`] / [`decode_frame`] apply the connection's.
//!
//! Once the whole frame is buffered, [`decode_packet`] splits it off the read buffer as one
//! `Bytes` and parses it. Everything variable-length in the resulting [`Packet`] (topics,
//! strings, binary data, the PUBLISH payload) is a slice of that frame: a refcount increment,
//! never a copy. A 3.1.x QoS 0 PUBLISH decodes without any allocation.
//!
//! Every length read is checked against the bytes of the frame before it is used, so a
//! declared length can never make the decoder allocate or index beyond what arrived, and every
//! parser must consume its body exactly (trailing bytes are Malformed).

use crate::error::DecodeError;
use crate::props;
use crate::types::*;
use bytes::{Bytes, BytesMut};

use DecodeError::{Malformed, Protocol};

/// Where a frame's body starts and how long the whole frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// 1 + the length of the Remaining Length field (2..=5).
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FrameHeader {
    /// Length of the whole frame, fixed header included.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// The packet type number (1..=15 once [`frame_len`] accepted it).
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }
}

/// Reads the fixed header at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed (a normal state). Checks the first byte (type 0 and
/// reserved flag bits are Malformed [MQTT-2.1.3-1], as are PUBLISH QoS 3 [MQTT-3.3.1-4] and DUP
/// on QoS 0 [MQTT-3.3.1-2]), the Remaining Length (at most 4 bytes, minimally encoded
/// [MQTT-1.5.5-1]) and that `header_len + remaining_len <= max_packet_size` as soon as the
/// fixed header is readable, giving `PacketTooLarge` before the body arrives. Never allocates.
///
/// Without a protocol version, the DUP bit on PUBREL/SUBSCRIBE/UNSUBSCRIBE (legal only in MQTT
/// 3.1) is accepted here; [`decode_packet`] and [`decode_frame`] reject it for 3.1.1 and 5.0.
pub fn frame_len(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
    fixed_header(buf, max_packet_size, None)
}

/// [`frame_len`] with the flag rules of `version`, or of any version for `None`.
fn fixed_header(
    buf: &[u8],
    max_packet_size: usize,
    version: Option<ProtocolVersion>,
) -> Result<Option<FrameHeader>, DecodeError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        return Ok(None);
    };
    // The first byte is checked before the length so that a bad type or flag is reported
    // without waiting for the rest of the header.
    check_first_byte(first_byte, version)?;
    let Some((remaining_len, len_bytes)) = read_vbi(rest)? else {
        return Ok(None);
    };
    let h = FrameHeader {
        first_byte,
        header_len: 1 + len_bytes,
        remaining_len: remaining_len as usize,
    };
    let size = h.frame_len();
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Some(h))
}

/// Reads the Variable Byte Integer at the start of `buf`, returning its value and length, or
/// `Ok(None)` if `buf` ends before its last byte (the caller decides whether that is "wait for
/// more" or truncation). Every VBI of the codec (Remaining Length, Property Length, property
/// identifiers, Subscription Identifier) goes through here so all get the same rule
/// [MQTT-1.5.5-1]: at most 4 bytes, and the minimum number of bytes. A multi-byte encoding is
/// minimal exactly when its last byte is not 0 (a trailing 0 group adds nothing to the value).
pub(crate) fn read_vbi(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut v = 0u32;
    for (i, &b) in buf.iter().take(4).enumerate() {
        v |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(Malformed(
                    "Variable Byte Integer not in its minimal encoding [MQTT-1.5.5-1]",
                ));
            }
            return Ok(Some((v, i + 1)));
        }
    }
    if buf.len() >= 4 {
        // Known to be bad as soon as the 4th byte has its continuation bit set.
        Err(Malformed(
            "Variable Byte Integer longer than 4 bytes [MQTT-1.5.5-1]",
        ))
    } else {
        Ok(None)
    }
}

/// Validates the packet type and the flag nibble of the first byte, which the spec fixes for
/// every type but PUBLISH [MQTT-2.1.3-1]. `version` is the connection's, `None` when unknown
/// (then the union of what the versions allow is accepted).
fn check_first_byte(b: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let flags = b & 0x0F;
    match b >> 4 {
        0 => Err(Malformed("packet type 0 is reserved [2.1.2]")),
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                Err(Malformed("PUBLISH QoS 3 [MQTT-3.3.1-4]"))
            } else if qos == 0 && flags & 0x08 != 0 {
                Err(Malformed("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"))
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 => {
            // MQTT 3.1 (sections 3.6, 3.8, 3.10) sets DUP when a client retries these packets;
            // the fixed 0010 is a 3.1.1 rule, so a 3.1 client's retry must not be dropped.
            let dup_ok = matches!(version, None | Some(ProtocolVersion::V31));
            if flags == 0b0010 || (flags == 0b1010 && dup_ok) {
                Ok(())
            } else {
                Err(Malformed(
                    "PUBREL/SUBSCRIBE/UNSUBSCRIBE flags must be 0010 [MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1]",
                ))
            }
        }
        _ => {
            if flags == 0 {
                Ok(())
            } else {
                Err(Malformed(
                    "reserved fixed header flags not 0 [MQTT-2.1.3-1]",
                ))
            }
        }
    }
}

/// If a whole frame is in `buf`, splits it off (`buf.split_to(len).freeze()`) and parses it.
///
/// PUBLISH payload, topics and all strings/binary data are zero-copy slices of that frame.
/// `version` is the connection's negotiated version (ignored for CONNECT, which carries its
/// own). On a parse error the frame has already been removed from `buf`; the connection is to
/// be closed anyway. A framing error (`frame_len`) leaves `buf` untouched.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(h) = fixed_header(buf, max_packet_size, Some(version))? else {
        return Ok(None);
    };
    if buf.len() < h.frame_len() {
        return Ok(None);
    }
    let frame = buf.split_to(h.frame_len()).freeze();
    parse(h, &frame, version).map(Some)
}

/// Parses one frame already split off the stream: `frame` holds exactly the fixed header and
/// body that `header` (from [`frame_len`]) describes. For transports that frame themselves.
pub fn decode_frame(
    header: FrameHeader,
    frame: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    check_first_byte(header.first_byte, Some(version))?;
    if frame.len() != header.frame_len()
        || header.header_len < 2
        || frame.first() != Some(&header.first_byte)
    {
        return Err(Malformed("frame does not match its fixed header [2.1.4]"));
    }
    parse(header, &frame, version)
}

fn parse(h: FrameHeader, frame: &Bytes, v: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut r = Reader {
        buf: frame,
        pos: h.header_len,
        end: frame.len(),
    };
    let flags = h.first_byte & 0x0F;
    let r = &mut r;
    let p = match h.first_byte >> 4 {
        1 => Packet::Connect(Box::new(connect(r)?)),
        2 => Packet::ConnAck(Box::new(connack(r, v)?)),
        3 => Packet::Publish(publish(r, flags, v)?),
        4 => Packet::PubAck(pub_resp(r, v, PUBACK_CODES)?),
        5 => Packet::PubRec(pub_resp(r, v, PUBACK_CODES)?),
        6 => Packet::PubRel(pub_resp(r, v, PUBREL_CODES)?),
        7 => Packet::PubComp(pub_resp(r, v, PUBREL_CODES)?),
        8 => Packet::Subscribe(Box::new(subscribe(r, v)?)),
        9 => Packet::SubAck(Box::new(suback(r, v)?)),
        10 => Packet::Unsubscribe(Box::new(unsubscribe(r, v)?)),
        11 => Packet::UnsubAck(Box::new(unsuback(r, v)?)),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(Box::new(disconnect(r, v)?)),
        15 => Packet::Auth(Box::new(auth(r, v)?)),
        _ => return Err(Malformed("packet type 0 is reserved [2.1.2]")),
    };
    if !r.is_empty() {
        return Err(Malformed("bytes after the end of the packet body [2.1.4]"));
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Reason code tables (MQTT 5 sections 3.2.2.2, 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3,
// 3.11.3, 3.14.2.1, 3.15.2.1). A code outside the table is a value outside the field's domain,
// hence Malformed.

const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// PUBACK and PUBREC.
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP.
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

/// The MQTT 5 reason codes valid in a packet of type `packet_type` (2, 4..=7, 9, 11, 14, 15);
/// empty for the others. Lets the broker check a code before sending it.
pub fn allowed_reason_codes(packet_type: u8) -> &'static [u8] {
    match packet_type {
        2 => CONNACK_CODES,
        4 | 5 => PUBACK_CODES,
        6 | 7 => PUBREL_CODES,
        9 => SUBACK_CODES,
        11 => UNSUBACK_CODES,
        14 => DISCONNECT_CODES,
        15 => AUTH_CODES,
        _ => &[],
    }
}

fn check_reason(code: u8, table: &[u8], err: &'static str) -> Result<ReasonCode, DecodeError> {
    if table.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(Malformed(err))
    }
}

/// Maps a 3.1.x CONNACK return code (0..=5) to the MQTT 5 reason code the model carries; the
/// inverse of [`crate::encode::connack_return_code`] on these six values.
pub fn reason_from_return_code(rc: u8) -> Option<ReasonCode> {
    Some(match rc {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Packet parsers. Each consumes its body exactly; `parse` rejects leftovers.

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.slice_u16("CONNECT truncated in the protocol name [3.1.2.1]")?;
    let level = r.u8("CONNECT truncated before the protocol level [3.1.2.2]")?;
    let protocol = match (name, level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolVersion(l)),
        _ => {
            return Err(Malformed(
                "protocol name is not \"MQTT\" or \"MQIsdp\" [MQTT-3.1.2-1]",
            ))
        }
    };
    let flags = r.u8("CONNECT truncated before the connect flags [3.1.2.3]")?;
    // The reserved bit must be 0 from 3.1.1 on; MQTT 3.1 only calls it unused, so a 3.1
    // client that sets it is still valid.
    if flags & 0x01 != 0 && protocol != ProtocolVersion::V31 {
        return Err(Malformed("CONNECT reserved flag is not 0 [MQTT-3.1.2-3]"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(Malformed(
            "Will QoS is not 0 without the Will Flag [MQTT-3.1.2-13]",
        ));
    }
    if !will_flag && will_retain {
        return Err(Malformed(
            "Will Retain is set without the Will Flag [MQTT-3.1.2-15]",
        ));
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(Malformed("Will QoS 3 [MQTT-3.1.2-14]"));
    };
    if password_flag && !username_flag && !protocol.is_v5() {
        return Err(Malformed(
            "Password Flag without User Name Flag [MQTT-3.1.2-22]",
        ));
    }
    let keep_alive = r.u16("CONNECT truncated in the keep alive [3.1.2.10]")?;
    let properties = if protocol.is_v5() {
        let p = props::decode(r, props::CONNECT)?;
        props::check_auth_pair(&p)?;
        p
    } else {
        Properties::default()
    };
    let client_id = r.string("CONNECT truncated in the client identifier [MQTT-3.1.3-3]")?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            props::decode(r, props::WILL)?
        } else {
            Properties::default()
        };
        let topic = r.string("CONNECT truncated in the will topic [MQTT-3.1.3-10]")?;
        if topic.is_empty() {
            return Err(Malformed("empty will topic [MQTT-4.7.3-1]"));
        }
        if has_wildcard(&topic) {
            return Err(Malformed("wildcard in the will topic [MQTT-3.3.2-2]"));
        }
        let payload = r.binary("CONNECT truncated in the will payload [3.1.3.4]")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("CONNECT truncated in the user name [MQTT-3.1.2-19]")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("CONNECT truncated in the password [MQTT-3.1.2-21]")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("CONNACK truncated before the acknowledge flags [3.2.2.1]")?;
    // 3.1 has no Session Present: the byte is reserved and its value unspecified.
    let session_present = if v == ProtocolVersion::V31 {
        false
    } else {
        if flags & 0xFE != 0 {
            return Err(Malformed(
                "CONNACK reserved acknowledge flags not 0 [MQTT-3.2.2-1]",
            ));
        }
        flags & 0x01 != 0
    };
    let code = r.u8("CONNACK truncated before the reason code [3.2.2.2]")?;
    let (reason, properties) = if v.is_v5() {
        let reason = check_reason(
            code,
            CONNACK_CODES,
            "reason code not valid for CONNACK [3.2.2.2]",
        )?;
        // Tolerate a CONNACK without a Property Length, as for the acks.
        let p = if r.is_empty() {
            Properties::default()
        } else {
            props::decode(r, props::CONNACK)?
        };
        props::check_auth_pair(&p)?;
        (reason, p)
    } else {
        let reason = reason_from_return_code(code)
            .ok_or(Malformed("CONNACK return code above 5 [3.2.2.3]"))?;
        (reason, Properties::default())
    };
    if session_present && reason.0 != 0 {
        return Err(Protocol(
            "Session Present set on a refused connection [MQTT-3.2.2-4, MQTT-3.2.2-6]",
        ));
    }
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn publish(r: &mut Reader<'_>, flags: u8, v: ProtocolVersion) -> Result<Publish, DecodeError> {
    // frame_len() already rejected QoS 3 and DUP on QoS 0.
    let qos = match (flags >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(Malformed("PUBLISH QoS 3 [MQTT-3.3.1-4]")),
    };
    let topic = r.string("PUBLISH truncated in the topic name [3.3.2.1]")?;
    if has_wildcard(&topic) {
        return Err(Malformed("wildcard in a PUBLISH topic name [MQTT-3.3.2-2]"));
    }
    let packet_id = if qos != QoS::AtMostOnce {
        Some(r.packet_id("PUBLISH truncated in the packet identifier [MQTT-2.2.1-2]")?)
    } else {
        None
    };
    let properties = if v.is_v5() {
        props::decode_opt(r, props::PUBLISH)?
    } else {
        None
    };
    if topic.is_empty() {
        if !v.is_v5() {
            return Err(Malformed("empty PUBLISH topic name [MQTT-4.7.3-1]"));
        }
        if properties.as_ref().and_then(|p| p.topic_alias).is_none() {
            return Err(Protocol(
                "empty topic name without a Topic Alias [MQTT-3.3.2-1, 3.3.2.3.4]",
            ));
        }
    }
    let payload = r.rest();
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload,
        properties,
    })
}

fn pub_resp(
    r: &mut Reader<'_>,
    v: ProtocolVersion,
    codes: &'static [u8],
) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id("acknowledgement truncated in the packet identifier [3.4.2]")?;
    let mut resp = PubResp::new(packet_id);
    // MQTT 5 short forms: no reason code means 0x00; no Property Length means none
    // [3.4.2.1, 3.4.2.2.1].
    if v.is_v5() && !r.is_empty() {
        let code = r.u8("reason code truncated [3.4.2.1]")?;
        resp.reason = check_reason(
            code,
            codes,
            "reason code not valid for this acknowledgement [3.4.2.1]",
        )?;
        if !r.is_empty() {
            resp.properties = props::decode_opt(r, props::PUBRESP)?;
        }
    }
    Ok(resp)
}

fn subscribe(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id("SUBSCRIBE truncated in the packet identifier [3.8.2]")?;
    let properties = if v.is_v5() {
        props::decode(r, props::SUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("SUBSCRIBE truncated in a topic filter [3.8.3]")?;
        if filter.is_empty() {
            return Err(Malformed("empty topic filter [MQTT-4.7.3-1]"));
        }
        let o = r.u8("SUBSCRIBE topic filter without its options byte [3.8.3.1]")?;
        let options = if v.is_v5() {
            if o & 0xC0 != 0 {
                return Err(Malformed(
                    "reserved subscription option bits not 0 [MQTT-3.8.3-5]",
                ));
            }
            let Some(qos) = QoS::from_u8(o & 0x03) else {
                return Err(Protocol("subscription Maximum QoS 3 [3.8.3.1]"));
            };
            let retain_handling = match (o >> 4) & 0x03 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(Protocol("Retain Handling 3 [3.8.3.1]")),
            };
            let no_local = o & 0x04 != 0;
            if no_local && filter.starts_with("$share/") {
                return Err(Protocol("No Local on a shared subscription [MQTT-3.8.3-4]"));
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            }
        } else {
            if o & 0xFC != 0 {
                return Err(Malformed(
                    "reserved bits of the requested QoS byte not 0 [MQTT-3.8.3-4]",
                ));
            }
            let Some(qos) = QoS::from_u8(o) else {
                return Err(Malformed("requested QoS 3 [MQTT-3.8.3-4]"));
            };
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(Protocol("SUBSCRIBE without a topic filter [MQTT-3.8.3-3]"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id("SUBACK truncated in the packet identifier [3.9.2]")?;
    let properties = if v.is_v5() {
        props::decode(r, props::SUBACK)?
    } else {
        Properties::default()
    };
    let codes = r.rest_slice();
    let table: &[u8] = if v.is_v5() {
        SUBACK_CODES
    } else {
        &[0x00, 0x01, 0x02, 0x80]
    };
    if let Some(_bad) = codes.iter().find(|c| !table.contains(c)) {
        return Err(Malformed(
            "return code not valid for SUBACK [MQTT-3.9.3-2, 3.9.3]",
        ));
    }
    if codes.is_empty() {
        return Err(Protocol("SUBACK without a return code [3.9.3]"));
    }
    let reason_codes = codes.iter().map(|&c| ReasonCode(c)).collect();
    r.pos = r.end;
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id("UNSUBSCRIBE truncated in the packet identifier [3.10.2]")?;
    let properties = if v.is_v5() {
        props::decode(r, props::UNSUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("UNSUBSCRIBE truncated in a topic filter [3.10.3]")?;
        if filter.is_empty() {
            return Err(Malformed("empty topic filter [MQTT-4.7.3-1]"));
        }
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(Protocol(
            "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id("UNSUBACK truncated in the packet identifier [3.11.2]")?;
    if !v.is_v5() {
        return Ok(UnsubAck {
            packet_id,
            reason_codes: Vec::new(),
            properties: Properties::default(),
        });
    }
    let properties = props::decode(r, props::UNSUBACK)?;
    let codes = r.rest_slice();
    if codes.iter().any(|c| !UNSUBACK_CODES.contains(c)) {
        return Err(Malformed("reason code not valid for UNSUBACK [3.11.3]"));
    }
    if codes.is_empty() {
        return Err(Protocol("UNSUBACK without a reason code [3.11.3]"));
    }
    let reason_codes = codes.iter().map(|&c| ReasonCode(c)).collect();
    r.pos = r.end;
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn disconnect(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    // Remaining Length 0 means Normal disconnection; a missing Property Length means none
    // [3.14.2.1, 3.14.2.2.1]. 3.1.x DISCONNECT has no body (trailing bytes are rejected).
    if v.is_v5() && !r.is_empty() {
        let code = r.u8("reason code truncated [3.14.2.1]")?;
        d.reason = check_reason(
            code,
            DISCONNECT_CODES,
            "reason code not valid for DISCONNECT [3.14.2.1]",
        )?;
        if !r.is_empty() {
            d.properties = props::decode(r, props::DISCONNECT)?;
        }
    }
    Ok(d)
}

fn auth(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Auth, DecodeError> {
    if !v.is_v5() {
        return Err(Malformed(
            "AUTH before MQTT 5 (packet type 15 reserved) [2.1.2]",
        ));
    }
    let mut a = Auth::default();
    // Remaining Length 0 means Success with no properties [3.15.2.1].
    if !r.is_empty() {
        let code = r.u8("reason code truncated [3.15.2.1]")?;
        a.reason = check_reason(
            code,
            AUTH_CODES,
            "reason code not valid for AUTH [3.15.2.1]",
        )?;
        if !r.is_empty() {
            a.properties = props::decode(r, props::AUTH)?;
            props::check_auth_pair(&a.properties)?;
        }
    }
    Ok(a)
}

#[inline]
fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

// ---------------------------------------------------------------------------------------------

/// A cursor over one frame. Every read checks the bytes left before touching them and returns
/// `Malformed(err)` if they are not there; slices share the frame's buffer.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over all of `buf`.
    pub(crate) fn over(buf: &'a Bytes) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    #[inline]
    fn take_slice(&mut self, n: usize, err: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(Malformed(err));
        }
        let buf: &'a [u8] = &self.buf[..];
        let s = &buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub(crate) fn u8(&mut self, err: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take_slice(1, err)?[0])
    }

    #[inline]
    pub(crate) fn u16(&mut self, err: &'static str) -> Result<u16, DecodeError> {
        let s = self.take_slice(2, err)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    #[inline]
    pub(crate) fn u32(&mut self, err: &'static str) -> Result<u32, DecodeError> {
        let s = self.take_slice(4, err)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A Variable Byte Integer: at most 4 bytes, minimally encoded [MQTT-1.5.5-1] (see
    /// [`read_vbi`]); `err` if the body ends inside it.
    pub(crate) fn vbi(&mut self, err: &'static str) -> Result<u32, DecodeError> {
        let Some((v, n)) = read_vbi(self.rest_slice())? else {
            return Err(Malformed(err));
        };
        self.pos += n;
        Ok(v)
    }

    /// A Packet Identifier, which is never 0 [MQTT-2.2.1-3].
    #[inline]
    fn packet_id(&mut self, err: &'static str) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16(err)?).ok_or(Protocol("packet identifier 0 [MQTT-2.2.1-3]"))
    }

    /// Two-byte length then that many bytes, as a slice of the frame (no copy).
    fn slice_u16(&mut self, err: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u16(err)? as usize;
        self.take_slice(n, err)
    }

    /// Binary Data (1.5.6): a zero-copy `Bytes` slice.
    pub(crate) fn binary(&mut self, err: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(err)? as usize;
        if n > self.remaining() {
            return Err(Malformed(err));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// A UTF-8 Encoded String (1.5.4): valid UTF-8, which excludes surrogates [MQTT-1.5.4-1],
    /// and no U+0000 [MQTT-1.5.4-2]. U+FEFF is kept as is [MQTT-1.5.4-3].
    pub(crate) fn string(&mut self, err: &'static str) -> Result<ByteStr, DecodeError> {
        let start = self.pos;
        let s = self.slice_u16(err)?;
        validate_utf8(s)?;
        let b = self.buf.slice(start + 2..self.pos);
        // SAFETY: validate_utf8 checked these exact bytes with std::str::from_utf8.
        Ok(unsafe { ByteStr::from_utf8_unchecked(b) })
    }

    /// Everything left, as a zero-copy slice (the PUBLISH payload).
    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos.min(self.end)..self.end);
        self.pos = self.end;
        b
    }

    /// Everything left, borrowed; the caller advances `pos`.
    fn rest_slice(&self) -> &'a [u8] {
        let buf: &'a [u8] = &self.buf[..];
        &buf[self.pos.min(self.end)..self.end]
    }

    /// Splits off the next `n` bytes as a reader of their own (a property list).
    pub(crate) fn sub(&mut self, n: usize, err: &'static str) -> Result<Reader<'a>, DecodeError> {
        if n > self.remaining() {
            return Err(Malformed(err));
        }
        let sub = Reader {
            buf: self.buf,
            pos: self.pos,
            end: self.pos + n,
        };
        self.pos += n;
        Ok(sub)
    }
}

/// The MQTT string rules on raw bytes [MQTT-1.5.4-1, MQTT-1.5.4-2].
pub(crate) fn validate_utf8(s: &[u8]) -> Result<(), DecodeError> {
    if std::str::from_utf8(s).is_err() {
        return Err(Malformed("string is not valid UTF-8 [MQTT-1.5.4-1]"));
    }
    if s.contains(&0) {
        return Err(Malformed("string contains U+0000 [MQTT-1.5.4-2]"));
    }
    Ok(())
}
