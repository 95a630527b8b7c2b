//! Encoding: size first, then one pass of writes straight into the caller's `BytesMut`.
//!
//! The Remaining Length precedes the body, so each packet's length is computed up front (cheap:
//! sums of field lengths), the buffer is reserved once, and the fields are written in order. On
//! an error nothing is left behind: `out` is truncated back to its length on entry.
//!
//! PUBLISH fan-out uses [`encode_publish_header`]: the fixed and variable header for one
//! subscriber (its QoS, packet id, properties), with a Remaining Length that counts the payload,
//! so the shared payload `Bytes` can follow it in a vectored write without being copied.
//!
//! For 3.1/3.1.x the MQTT 5-only parts of the model are dropped (properties, will properties,
//! subscription options other than QoS, UNSUBACK reason codes) or mapped (CONNACK return codes,
//! SUBACK failure codes). For MQTT 5, only the properties the packet allows are written, and the
//! short forms are used where the spec permits them (PUBACK & co. and DISCONNECT/AUTH with
//! reason 0x00 and no properties).

use crate::error::EncodeError;
use crate::props;
use crate::types::*;
use crate::MAX_REMAINING_LENGTH;
use bytes::{BufMut, Bytes, BytesMut};

/// Encodes `p` for a connection speaking `v` and appends it to `out`.
///
/// CONNECT is encoded for its own `protocol` field, not `v`. DUP is written only for QoS > 0
/// and a packet id only for QoS > 0 PUBLISH.
pub fn encode(p: &Packet, v: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    let r = encode_inner(p, v, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// The exact number of bytes [`encode`] appends for `p` (meaningless for a packet that
/// `encode` rejects).
pub fn encoded_len(p: &Packet, v: ProtocolVersion) -> usize {
    let rem = remaining_len(p, v);
    1 + vbi_len(rem) + rem
}

/// Encodes `p` into a fresh buffer of exactly the right size.
pub fn encode_packet_bytes(p: &Packet, v: ProtocolVersion) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::with_capacity(encoded_len(p, v));
    encode(p, v, &mut out)?;
    Ok(out.freeze())
}

/// Fixed header + variable header (topic, packet id, properties) of a PUBLISH, with the
/// Remaining Length counting the payload, but WITHOUT the payload: fan-out writes the shared
/// payload `Bytes` behind it with writev.
pub fn encode_publish_header(
    p: &Publish,
    v: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    let r = write_publish(p, v, out, false);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// The exact number of bytes [`encode_publish_header`] appends.
pub fn publish_header_len(p: &Publish, v: ProtocolVersion) -> usize {
    let vh = publish_var_header_len(p, v);
    1 + vbi_len(vh + p.payload.len()) + vh
}

/// The 3.1.x CONNACK return code for an MQTT 5 reason code:
///
/// | reason | return code |
/// |---|---|
/// | 0x00 Success | 0 accepted |
/// | 0x84 Unsupported Protocol Version | 1 unacceptable protocol version |
/// | 0x85 Client Identifier not valid | 2 identifier rejected |
/// | 0x86 Bad User Name or Password, 0x8C Bad authentication method | 4 bad user name or password |
/// | 0x87 Not authorized, 0x8A Banned | 5 not authorized |
/// | anything else (0x88 Server unavailable, 0x89 Server busy, 0x80, ...) | 3 server unavailable |
pub fn connack_return_code(reason: ReasonCode) -> u8 {
    match reason.0 {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x86 | 0x8C => 4,
        0x87 | 0x8A => 5,
        _ => 3,
    }
}

/// The 3.1.x SUBACK return code: granted QoS 0..=2 as is, any other code is Failure (0x80).
pub fn suback_return_code(reason: ReasonCode) -> u8 {
    if reason.0 <= 2 {
        reason.0
    } else {
        0x80
    }
}

// ---------------------------------------------------------------------------------------------

fn first_byte(p: &Packet) -> u8 {
    match p {
        Packet::Publish(p) => publish_first_byte(p),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
            (p.packet_type() << 4) | 0b0010
        }
        _ => p.packet_type() << 4,
    }
}

fn publish_first_byte(p: &Publish) -> u8 {
    let qos = p.qos as u8;
    let dup = p.dup && qos > 0;
    0x30 | ((dup as u8) << 3) | (qos << 1) | (p.retain as u8)
}

#[inline]
fn str_len(s: &ByteStr) -> usize {
    2 + s.len()
}

fn props_len(p: &Properties, ctx: props::Ctx, v: ProtocolVersion) -> usize {
    if v.is_v5() {
        props::encoded_len_with_prefix(p, ctx)
    } else {
        0
    }
}

/// Body length of a PUBACK-like packet or DISCONNECT/AUTH (`fixed` = 2 bytes of packet id or 0),
/// using the MQTT 5 short forms.
fn reason_props_len(
    fixed: usize,
    reason: ReasonCode,
    p: Option<&Properties>,
    ctx: props::Ctx,
) -> usize {
    let plen = p.map_or(0, |p| props::encoded_len(p, ctx));
    if plen == 0 {
        if reason.0 == 0 {
            fixed
        } else {
            fixed + 1
        }
    } else {
        fixed + 1 + vbi_len(plen) + plen
    }
}

fn protocol_name(v: ProtocolVersion) -> &'static [u8] {
    if v == ProtocolVersion::V31 {
        b"MQIsdp"
    } else {
        b"MQTT"
    }
}

fn publish_var_header_len(p: &Publish, v: ProtocolVersion) -> usize {
    let mut n = str_len(&p.topic);
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    if v.is_v5() {
        n += match &p.properties {
            Some(pr) => props::encoded_len_with_prefix(pr, props::PUBLISH),
            None => 1,
        };
    }
    n
}

fn remaining_len(p: &Packet, v: ProtocolVersion) -> usize {
    match p {
        Packet::Connect(c) => {
            let v = c.protocol;
            let mut n = 2 + protocol_name(v).len() + 1 + 1 + 2;
            n += props_len(&c.properties, props::CONNECT, v);
            n += str_len(&c.client_id);
            if let Some(w) = &c.will {
                n += props_len(&w.properties, props::WILL, v);
                n += str_len(&w.topic) + 2 + w.payload.len();
            }
            if let Some(u) = &c.username {
                n += str_len(u);
            }
            if let Some(pw) = &c.password {
                n += 2 + pw.len();
            }
            n
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, props::CONNACK, v),
        Packet::Publish(p) => publish_var_header_len(p, v) + p.payload.len(),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            if v.is_v5() {
                reason_props_len(2, r.reason, r.properties.as_deref(), props::PUBRESP)
            } else {
                2
            }
        }
        Packet::Subscribe(s) => {
            2 + props_len(&s.properties, props::SUBSCRIBE, v)
                + s.filters
                    .iter()
                    .map(|f| str_len(&f.filter) + 1)
                    .sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, props::SUBACK, v) + s.reason_codes.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(&u.properties, props::UNSUBSCRIBE, v)
                + u.filters.iter().map(str_len).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            if v.is_v5() {
                2 + props_len(&u.properties, props::UNSUBACK, v) + u.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v.is_v5() {
                reason_props_len(0, d.reason, Some(&d.properties), props::DISCONNECT)
            } else {
                0
            }
        }
        Packet::Auth(a) => reason_props_len(0, a.reason, Some(&a.properties), props::AUTH),
    }
}

fn encode_inner(p: &Packet, v: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = p {
        return write_publish(p, v, out, true);
    }
    let rem = remaining_len(p, v);
    if rem > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge(rem));
    }
    out.reserve(1 + vbi_len(rem) + rem);
    out.put_u8(first_byte(p));
    put_vbi(out, rem)?;
    match p {
        Packet::Connect(c) => write_connect(c, out)?,
        Packet::ConnAck(c) => {
            if v.is_v5() {
                out.put_u8(c.session_present as u8);
                out.put_u8(c.reason.0);
                props::write(&c.properties, props::CONNACK, out)?;
            } else {
                // 3.1 has no Session Present; its first byte is reserved.
                let sp = c.session_present && v == ProtocolVersion::V311;
                out.put_u8(sp as u8);
                out.put_u8(connack_return_code(c.reason));
            }
        }
        Packet::Publish(_) => unreachable!("handled above"),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            out.put_u16(r.packet_id.get());
            if v.is_v5() {
                write_reason_props(r.reason, r.properties.as_deref(), props::PUBRESP, out)?;
            }
        }
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::Invalid(
                    "SUBSCRIBE without a topic filter [MQTT-3.8.3-3]",
                ));
            }
            out.put_u16(s.packet_id.get());
            if v.is_v5() {
                props::write(&s.properties, props::SUBSCRIBE, out)?;
            }
            for f in &s.filters {
                put_str(out, f.filter.as_bytes())?;
                let o = &f.options;
                let b = if v.is_v5() {
                    (o.qos as u8)
                        | ((o.no_local as u8) << 2)
                        | ((o.retain_as_published as u8) << 3)
                        | ((o.retain_handling as u8) << 4)
                } else {
                    o.qos as u8
                };
                out.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id.get());
            if v.is_v5() {
                props::write(&s.properties, props::SUBACK, out)?;
                for c in &s.reason_codes {
                    out.put_u8(c.0);
                }
            } else {
                for &c in &s.reason_codes {
                    out.put_u8(suback_return_code(c));
                }
            }
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::Invalid(
                    "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
                ));
            }
            out.put_u16(u.packet_id.get());
            if v.is_v5() {
                props::write(&u.properties, props::UNSUBSCRIBE, out)?;
            }
            for f in &u.filters {
                put_str(out, f.as_bytes())?;
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id.get());
            if v.is_v5() {
                props::write(&u.properties, props::UNSUBACK, out)?;
                for c in &u.reason_codes {
                    out.put_u8(c.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v.is_v5() {
                write_reason_props(d.reason, Some(&d.properties), props::DISCONNECT, out)?;
            }
        }
        Packet::Auth(a) => {
            if !v.is_v5() {
                return Err(EncodeError::Invalid("AUTH exists only in MQTT 5 [2.1.2]"));
            }
            write_reason_props(a.reason, Some(&a.properties), props::AUTH, out)?;
        }
    }
    Ok(())
}

fn write_reason_props(
    reason: ReasonCode,
    p: Option<&Properties>,
    ctx: props::Ctx,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let plen = p.map_or(0, |p| props::encoded_len(p, ctx));
    match p {
        Some(p) if plen > 0 => {
            out.put_u8(reason.0);
            props::write(p, ctx, out)
        }
        _ => {
            if reason.0 != 0 {
                out.put_u8(reason.0);
            }
            Ok(())
        }
    }
}

fn write_connect(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let v = c.protocol;
    if c.password.is_some() && c.username.is_none() && !v.is_v5() {
        return Err(EncodeError::Invalid(
            "password without user name before MQTT 5 [MQTT-3.1.2-22]",
        ));
    }
    put_str(out, protocol_name(v))?;
    out.put_u8(v.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v.is_v5() {
        props::write(&c.properties, props::CONNECT, out)?;
    }
    put_str(out, c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        if v.is_v5() {
            props::write(&w.properties, props::WILL, out)?;
        }
        put_str(out, w.topic.as_bytes())?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_str(out, u.as_bytes())?;
    }
    if let Some(pw) = &c.password {
        put_binary(out, pw)?;
    }
    Ok(())
}

/// Writes a PUBLISH; the payload only if `with_payload`. The Remaining Length always counts it.
fn write_publish(
    p: &Publish,
    v: ProtocolVersion,
    out: &mut BytesMut,
    with_payload: bool,
) -> Result<(), EncodeError> {
    let vh = publish_var_header_len(p, v);
    let rem = vh + p.payload.len();
    if rem > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge(rem));
    }
    let packet_id = if p.qos != QoS::AtMostOnce {
        match p.packet_id {
            Some(id) => Some(id),
            None => {
                return Err(EncodeError::Invalid(
                    "QoS > 0 PUBLISH without a packet identifier [MQTT-2.2.1-2]",
                ))
            }
        }
    } else {
        None
    };
    let total = 1 + vbi_len(rem) + if with_payload { rem } else { vh };
    out.reserve(total);
    out.put_u8(publish_first_byte(p));
    put_vbi(out, rem)?;
    put_str(out, p.topic.as_bytes())?;
    if let Some(id) = packet_id {
        out.put_u16(id.get());
    }
    if v.is_v5() {
        match &p.properties {
            Some(pr) => props::write(pr, props::PUBLISH, out)?,
            None => out.put_u8(0),
        }
    }
    if with_payload {
        out.put_slice(&p.payload);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Primitive writers shared with the property encoder.

/// Bytes a Variable Byte Integer takes (values above the 4-byte maximum count as 4; writing
/// them fails).
#[inline]
pub(crate) fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[inline]
pub(crate) fn put_vbi(out: &mut BytesMut, mut v: usize) -> Result<(), EncodeError> {
    if v > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge(v));
    }
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            return Ok(());
        }
    }
}

/// A two-byte length and the bytes; over 65,535 bytes cannot be expressed [1.5.4].
#[inline]
pub(crate) fn put_str(out: &mut BytesMut, s: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(s.len()).map_err(|_| EncodeError::TooLarge(s.len()))?;
    out.put_u16(n);
    out.put_slice(s);
    Ok(())
}

#[inline]
pub(crate) fn put_binary(out: &mut BytesMut, b: &Bytes) -> Result<(), EncodeError> {
    put_str(out, b)
}
