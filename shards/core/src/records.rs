//! What a shard writes to its journal: one record per change of durable state, each an upsert
//! or a delete keyed by client id (and filter, delivery id or packet id) or by topic. Replaying
//! the records in order rebuilds the state; replaying one twice changes nothing, which is what
//! lets compaction re-append live state before dropping old segments.
//!
//! Layout of every payload: little-endian integers; strings and byte strings prefixed by their
//! length (u16 for client ids, filters and topics, u32 for payloads and properties). The journal
//! frames each payload with its kind byte, sequence number and CRC32C (see
//! shards/journal/FORMAT.md); docs/journal.md lists these record kinds.

use bytes::{BufMut, Bytes, BytesMut};
use ringmq_codec::{
    decode_publish_properties, encode_publish_properties, publish_properties_len, Properties, QoS,
    RetainHandling, SubscriptionOptions,
};

pub const SESSION: u8 = 1;
pub const SESSION_GONE: u8 = 2;
pub const SUB: u8 = 3;
pub const UNSUB: u8 = 4;
pub const MSG: u8 = 5;
pub const MSG_STATE: u8 = 6;
pub const MSG_DONE: u8 = 7;
pub const QOS2_IN: u8 = 8;
pub const QOS2_DONE: u8 = 9;
pub const RETAIN: u8 = 10;
pub const RETAIN_CLEAR: u8 = 11;
/// A QoS 2 packet id received whose routing is not known to be finished (type 8 is written
/// once it is: see `state/held.rs`).
pub const QOS2_PENDING: u8 = 12;
/// A delivery whose message is in another record of the same segment (written once for the
/// many persistent sessions one publish reaches: see `state/spill.rs`).
pub const MSG_REF: u8 = 13;

/// Delivery states as stored.
pub const STATE_QUEUED: u8 = 0;
pub const STATE_AWAIT_ACK: u8 = 1;
pub const STATE_AWAIT_PUBCOMP: u8 = 2;

#[derive(Clone, Debug, PartialEq)]
pub struct MsgRecord {
    pub client_id: String,
    /// Unique per shard for the life of the journal.
    pub id: u64,
    pub qos: QoS,
    /// The retain flag as it is to be sent.
    pub retain: bool,
    /// 0 while queued.
    pub packet_id: u16,
    pub state: u8,
    pub topic: String,
    pub payload: Bytes,
    pub properties: Option<Properties>,
    /// Wall-clock milliseconds since the Unix epoch; 0 = never.
    pub expires_unix_ms: u64,
    pub subscription_ids: Vec<u32>,
}

impl MsgRecord {
    pub fn view(&self) -> MsgView<'_> {
        MsgView {
            client_id: &self.client_id,
            id: self.id,
            qos: self.qos,
            retain: self.retain,
            packet_id: self.packet_id,
            state: self.state,
            topic: &self.topic,
            payload: &self.payload,
            properties: self.properties.as_ref(),
            expires_unix_ms: self.expires_unix_ms,
            subscription_ids: &self.subscription_ids,
        }
    }
}

/// A delivery like [`MsgRecord`], whose topic, properties, expiry and payload are those of
/// the delivery record at `body` (a [`MSG`] record in the same segment).
#[derive(Clone, Debug, PartialEq)]
pub struct MsgRefRecord {
    pub client_id: String,
    pub id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: u16,
    pub state: u8,
    pub subscription_ids: Vec<u32>,
    /// The body record's location (`RecordLoc` bits).
    pub body: u64,
    /// Topic and payload bytes, so that replay need not read the body to weigh the queue.
    pub weight: u32,
}

impl MsgRefRecord {
    pub fn view(&self) -> RefView<'_> {
        RefView {
            client_id: &self.client_id,
            id: self.id,
            qos: self.qos,
            retain: self.retain,
            packet_id: self.packet_id,
            state: self.state,
            subscription_ids: &self.subscription_ids,
            body: self.body,
            weight: self.weight,
        }
    }

    /// The whole delivery, with the message taken from its body record.
    pub fn with_body(self, body: MsgRecord) -> MsgRecord {
        MsgRecord {
            client_id: self.client_id,
            id: self.id,
            qos: self.qos,
            retain: self.retain,
            packet_id: self.packet_id,
            state: self.state,
            topic: body.topic,
            payload: body.payload,
            properties: body.properties,
            expires_unix_ms: body.expires_unix_ms,
            subscription_ids: self.subscription_ids,
        }
    }
}

/// A [`MSG_REF`] record to encode, borrowing its parts.
pub struct RefView<'a> {
    pub client_id: &'a str,
    pub id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: u16,
    pub state: u8,
    pub subscription_ids: &'a [u32],
    pub body: u64,
    pub weight: u32,
}

impl RefView<'_> {
    /// Appends the payload of a [`MSG_REF`] record to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = W(out);
        let (q, r, p, st) = (self.qos, self.retain, self.packet_id, self.state);
        w.delivery(self.client_id, self.id, q, r, p, st);
        w.u32s(self.subscription_ids);
        w.u64(self.body);
        w.u32(self.weight);
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetainRecord {
    pub topic: String,
    pub qos: QoS,
    pub payload: Bytes,
    pub properties: Option<Properties>,
    pub expires_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A persistent session exists. `fresh` (Clean Start) discards what an earlier record of
    /// the same client id left; `disconnected_unix_ms` is 0 while connected.
    Session {
        client_id: String,
        expiry_interval: u32,
        protocol: u8,
        disconnected_unix_ms: u64,
        fresh: bool,
        /// Kept for the ACL (absent in records written before it existed).
        username: Option<String>,
    },
    SessionGone {
        client_id: String,
    },
    Sub {
        client_id: String,
        filter: String,
        options: SubscriptionOptions,
        subscription_id: u32,
    },
    Unsub {
        client_id: String,
        filter: String,
    },
    Msg(Box<MsgRecord>),
    MsgRef(Box<MsgRefRecord>),
    MsgState {
        client_id: String,
        id: u64,
        packet_id: u16,
        state: u8,
    },
    MsgDone {
        client_id: String,
        id: u64,
    },
    /// Stored as [`QOS2_IN`] once `routed`, else as [`QOS2_PENDING`].
    Qos2In {
        client_id: String,
        packet_id: u16,
        routed: bool,
    },
    Qos2Done {
        client_id: String,
        packet_id: u16,
    },
    Retain(Box<RetainRecord>),
    RetainClear {
        topic: String,
    },
}

pub fn options_byte(o: &SubscriptionOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    o.qos as u8 | (u8::from(o.no_local) << 2) | (u8::from(o.retain_as_published) << 3) | (rh << 4)
}

fn options_from(b: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 3)?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

/// A delivery record as the shard writes it, borrowed from the session's own copy: the hot
/// path encodes it without building an owned [`MsgRecord`].
pub struct MsgView<'a> {
    pub client_id: &'a str,
    pub id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: u16,
    pub state: u8,
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub properties: Option<&'a Properties>,
    pub expires_unix_ms: u64,
    pub subscription_ids: &'a [u32],
}

impl MsgView<'_> {
    /// Appends the payload of a [`MSG`] record to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = W(out);
        let (q, r, p, st) = (self.qos, self.retain, self.packet_id, self.state);
        w.delivery(self.client_id, self.id, q, r, p, st);
        w.u64(self.expires_unix_ms);
        w.u32s(self.subscription_ids);
        w.str(self.topic);
        w.props(self.properties);
        w.bytes(self.payload);
    }
}

struct W<'a>(&'a mut BytesMut);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16_le(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32_le(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    fn str(&mut self, s: &str) {
        // Client ids, filters and topics are at most 65,535 bytes by the protocol.
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    /// Client id, delivery id, QoS, retain, packet id and state: how every delivery record
    /// starts.
    #[allow(clippy::too_many_arguments)]
    fn delivery(&mut self, client_id: &str, id: u64, qos: QoS, retain: bool, pid: u16, state: u8) {
        self.str(client_id);
        self.u64(id);
        self.u8(qos as u8);
        self.u8(u8::from(retain));
        self.u16(pid);
        self.u8(state);
    }
    fn u32s(&mut self, v: &[u32]) {
        self.u16(v.len() as u16);
        for x in v {
            self.u32(*x);
        }
    }
    fn props(&mut self, p: Option<&Properties>) {
        match p {
            None => self.u32(0),
            Some(p) => {
                // Written in place: the length is known before encoding. Properties that came
                // from a decoded PUBLISH always encode.
                self.u32(publish_properties_len(p) as u32);
                let _ = encode_publish_properties(p, self.0);
            }
        }
    }
}

struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        Some(Bytes::copy_from_slice(self.take(n)?))
    }
    /// A u16 count, then that many u32s.
    fn u32s(&mut self) -> Option<Vec<u32>> {
        let n = self.u16()? as usize;
        let mut v = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            v.push(self.u32()?);
        }
        Some(v)
    }
    /// The fields every delivery record starts with (see [`W::delivery`]).
    #[allow(clippy::type_complexity)]
    fn delivery(&mut self) -> Option<(String, u64, QoS, bool, u16, u8)> {
        Some((
            self.str()?,
            self.u64()?,
            QoS::from_u8(self.u8()?)?,
            self.u8()? != 0,
            self.u16()?,
            self.u8()?,
        ))
    }
    fn props(&mut self) -> Option<Option<Properties>> {
        let b = self.bytes()?;
        if b.is_empty() {
            return Some(None);
        }
        Some(Some(decode_publish_properties(&b).ok()?))
    }
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::Session { .. } => SESSION,
            Record::SessionGone { .. } => SESSION_GONE,
            Record::Sub { .. } => SUB,
            Record::Unsub { .. } => UNSUB,
            Record::Msg(_) => MSG,
            Record::MsgRef(_) => MSG_REF,
            Record::MsgState { .. } => MSG_STATE,
            Record::MsgDone { .. } => MSG_DONE,
            Record::Qos2In { routed: true, .. } => QOS2_IN,
            Record::Qos2In { routed: false, .. } => QOS2_PENDING,
            Record::Qos2Done { .. } => QOS2_DONE,
            Record::Retain(_) => RETAIN,
            Record::RetainClear { .. } => RETAIN_CLEAR,
        }
    }

    /// Appends the payload (without kind) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = W(out);
        match self {
            Record::Session {
                client_id,
                expiry_interval,
                protocol,
                disconnected_unix_ms,
                fresh,
                username,
            } => {
                w.str(client_id);
                w.u32(*expiry_interval);
                w.u8(*protocol);
                w.u64(*disconnected_unix_ms);
                w.u8(u8::from(*fresh));
                // Trailing and optional: older records end before it.
                if let Some(u) = username {
                    w.str(u);
                }
            }
            Record::SessionGone { client_id } => w.str(client_id),
            Record::Sub {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                w.str(client_id);
                w.str(filter);
                w.u8(options_byte(options));
                w.u32(*subscription_id);
            }
            Record::Unsub { client_id, filter } => {
                w.str(client_id);
                w.str(filter);
            }
            Record::Msg(m) => m.view().encode(w.0),
            Record::MsgRef(m) => m.view().encode(w.0),
            Record::MsgState {
                client_id,
                id,
                packet_id,
                state,
            } => {
                w.str(client_id);
                w.u64(*id);
                w.u16(*packet_id);
                w.u8(*state);
            }
            Record::MsgDone { client_id, id } => {
                w.str(client_id);
                w.u64(*id);
            }
            Record::Qos2In {
                client_id,
                packet_id,
                ..
            }
            | Record::Qos2Done {
                client_id,
                packet_id,
            } => {
                w.str(client_id);
                w.u16(*packet_id);
            }
            Record::Retain(r) => {
                w.str(&r.topic);
                w.u8(r.qos as u8);
                w.u64(r.expires_unix_ms);
                w.props(r.properties.as_ref());
                w.bytes(&r.payload);
            }
            Record::RetainClear { topic } => w.str(topic),
        }
    }

    /// `None` if the payload is not a valid record of `kind` (a CRC-valid record that does not
    /// decode means a format mismatch, not a torn write).
    pub fn decode(kind: u8, payload: &[u8]) -> Option<Record> {
        let mut r = R { b: payload };
        let rec = match kind {
            SESSION => Record::Session {
                client_id: r.str()?,
                expiry_interval: r.u32()?,
                protocol: r.u8()?,
                disconnected_unix_ms: r.u64()?,
                fresh: r.u8()? != 0,
                username: if r.b.is_empty() { None } else { Some(r.str()?) },
            },
            SESSION_GONE => Record::SessionGone {
                client_id: r.str()?,
            },
            SUB => Record::Sub {
                client_id: r.str()?,
                filter: r.str()?,
                options: options_from(r.u8()?)?,
                subscription_id: r.u32()?,
            },
            UNSUB => Record::Unsub {
                client_id: r.str()?,
                filter: r.str()?,
            },
            MSG => {
                let (client_id, id, qos, retain, packet_id, state) = r.delivery()?;
                let expires_unix_ms = r.u64()?;
                let subscription_ids = r.u32s()?;
                Record::Msg(Box::new(MsgRecord {
                    client_id,
                    id,
                    qos,
                    retain,
                    packet_id,
                    state,
                    expires_unix_ms,
                    subscription_ids,
                    topic: r.str()?,
                    properties: r.props()?,
                    payload: r.bytes()?,
                }))
            }
            MSG_REF => {
                let (client_id, id, qos, retain, packet_id, state) = r.delivery()?;
                let subscription_ids = r.u32s()?;
                Record::MsgRef(Box::new(MsgRefRecord {
                    client_id,
                    id,
                    qos,
                    retain,
                    packet_id,
                    state,
                    subscription_ids,
                    body: r.u64()?,
                    weight: r.u32()?,
                }))
            }
            MSG_STATE => Record::MsgState {
                client_id: r.str()?,
                id: r.u64()?,
                packet_id: r.u16()?,
                state: r.u8()?,
            },
            MSG_DONE => Record::MsgDone {
                client_id: r.str()?,
                id: r.u64()?,
            },
            QOS2_IN | QOS2_PENDING => Record::Qos2In {
                client_id: r.str()?,
                packet_id: r.u16()?,
                routed: kind == QOS2_IN,
            },
            QOS2_DONE => Record::Qos2Done {
                client_id: r.str()?,
                packet_id: r.u16()?,
            },
            RETAIN => Record::Retain(Box::new(RetainRecord {
                topic: r.str()?,
                qos: QoS::from_u8(r.u8()?)?,
                expires_unix_ms: r.u64()?,
                properties: r.props()?,
                payload: r.bytes()?,
            })),
            RETAIN_CLEAR => Record::RetainClear { topic: r.str()? },
            _ => return None,
        };
        r.b.is_empty().then_some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_codec::ByteStr;

    fn all() -> Vec<Record> {
        let props = Properties {
            content_type: Some(ByteStr::from("text/plain")),
            user_properties: vec![(ByteStr::from("k"), ByteStr::from("v"))],
            ..Default::default()
        };
        vec![
            Record::Session {
                client_id: "c1".into(),
                expiry_interval: 300,
                protocol: 5,
                disconnected_unix_ms: 12345,
                fresh: true,
                username: Some("alice".into()),
            },
            Record::Session {
                client_id: "c0".into(),
                expiry_interval: 0,
                protocol: 4,
                disconnected_unix_ms: 0,
                fresh: false,
                username: None,
            },
            Record::SessionGone {
                client_id: "c1".into(),
            },
            Record::Sub {
                client_id: "c1".into(),
                filter: "a/+/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                subscription_id: 7,
            },
            Record::Unsub {
                client_id: "c1".into(),
                filter: "a".into(),
            },
            Record::Msg(Box::new(MsgRecord {
                client_id: "c1".into(),
                id: 99,
                qos: QoS::AtLeastOnce,
                retain: true,
                packet_id: 4,
                state: STATE_AWAIT_ACK,
                topic: "t/1".into(),
                payload: Bytes::from_static(b"hello"),
                properties: Some(props.clone()),
                expires_unix_ms: 777,
                subscription_ids: vec![1, 2],
            })),
            Record::MsgRef(Box::new(MsgRefRecord {
                client_id: "c2".into(),
                id: 100,
                qos: QoS::ExactlyOnce,
                retain: false,
                packet_id: 0,
                state: STATE_QUEUED,
                subscription_ids: vec![7],
                body: 3 << 32 | 4096,
                weight: 8,
            })),
            Record::MsgState {
                client_id: "c1".into(),
                id: 99,
                packet_id: 4,
                state: STATE_AWAIT_PUBCOMP,
            },
            Record::MsgDone {
                client_id: "c1".into(),
                id: 99,
            },
            Record::Qos2In {
                client_id: "c1".into(),
                packet_id: 65535,
                routed: true,
            },
            Record::Qos2In {
                client_id: "c1".into(),
                packet_id: 3,
                routed: false,
            },
            Record::Qos2Done {
                client_id: "c1".into(),
                packet_id: 1,
            },
            Record::Retain(Box::new(RetainRecord {
                topic: "r".into(),
                qos: QoS::AtMostOnce,
                payload: Bytes::from_static(b""),
                properties: None,
                expires_unix_ms: 0,
            })),
            Record::RetainClear { topic: "r".into() },
        ]
    }

    #[test]
    fn every_record_round_trips_and_truncations_fail() {
        for rec in all() {
            let mut b = BytesMut::new();
            rec.encode(&mut b);
            assert_eq!(Record::decode(rec.kind(), &b).as_ref(), Some(&rec));
            // A session record without its trailing username is the older format, valid.
            let older = match &rec {
                Record::Session {
                    client_id,
                    username: Some(u),
                    ..
                } => Some(b.len() - 2 - u.len()).filter(|_| !client_id.is_empty()),
                _ => None,
            };
            for cut in 0..b.len() {
                let got = Record::decode(rec.kind(), &b[..cut]);
                if Some(cut) == older {
                    assert!(matches!(got, Some(Record::Session { username: None, .. })));
                    continue;
                }
                assert!(got.is_none(), "{rec:?} {cut}");
            }
            let mut longer = b.clone();
            longer.put_u8(0);
            assert!(Record::decode(rec.kind(), &longer).is_none());
        }
        assert!(Record::decode(200, &[]).is_none());
    }
}
