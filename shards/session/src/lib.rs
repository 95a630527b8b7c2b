//! Per-client session state, with no I/O and no clocks: the shard feeds it events and writes what
//! it returns.
//!
//! # Layout
//! - [`Message`]: an application message as it travels between shards; cloning it only bumps
//!   reference counts, so fan-out to many subscribers shares one payload.
//! - [`Outbound`]: the server-to-client half of QoS 1/2: packet-id allocation, the inflight window
//!   (bounded by the client's Receive Maximum and `--max-inflight`) and the bounded queue behind
//!   it, which is also the offline queue of a persistent session.
//! - [`InboundQos2`]: packet ids of QoS 2 PUBLISHes received but not yet released by PUBREL, so a
//!   retransmitted PUBLISH is not routed twice [MQTT-4.3.3-9].
//! - [`Session`]: what survives a disconnect for a persistent session.

use bytes::Bytes;
use compact_str::CompactString;
use ringmq_codec::{ByteStr, LastWill, Properties, ProtocolVersion, QoS, SubscriptionOptions};
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Instant;

mod outbound;
mod qos2;
pub use outbound::{
    weight, Inflight, InflightState, Offer, Outbound, PubRecOutcome, Queued, Refilled,
    IN_MEMORY_QUEUE,
};
pub use qos2::{InboundQos2, Qos2Routing, Qos2Seen};

/// An application message routed between sessions and shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    /// The QoS it was published with; each delivery is capped by the subscription's.
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers (never the Topic Alias or Subscription
    /// Identifiers of the incoming packet: those are per hop).
    pub properties: Option<Arc<Properties>>,
    /// Global id of the publishing session (`shard << 48 | local id`), for No Local.
    pub origin: u64,
    /// When the Message Expiry Interval (MQTT 5) runs out; the interval sent onwards is what
    /// remains of it [MQTT-3.3.2-6].
    pub expires_at: Option<Instant>,
    /// When the broker received the PUBLISH (or decided to publish the will), for the
    /// publish-to-write latency histograms.
    pub received_at: Instant,
}

impl Message {
    /// A copy whose buffers are exactly as large as its content. Messages held for long
    /// (retained, queued for an offline session) would otherwise pin the whole read buffer
    /// their bytes were sliced from.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// Whole seconds of the expiry interval left at `now`, rounded up.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let d = t.saturating_duration_since(now);
            (d.as_secs() + u64::from(d.subsec_nanos() > 0)).min(u64::from(u32::MAX)) as u32
        })
    }

    pub fn compacted(&self) -> Message {
        Message {
            topic: ByteStr::from(self.topic.as_str()),
            payload: Bytes::copy_from_slice(&self.payload),
            ..self.clone()
        }
    }
}

/// One subscription of a session, as the session remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// A session's subscriptions by filter. A plain vector: most devices hold one or a few, a map
/// would cost more than it saves, and the count is bounded by `--max-subscriptions-per-client`.
/// Filters of up to 24 bytes are stored inline (no allocation of their own), and so is a
/// session's first subscription: a typical device's one costs no allocation at all.
#[derive(Debug, Default)]
pub struct Subscriptions(SmallVec<[(CompactString, Subscription); 1]>);

impl Subscriptions {
    pub fn get(&self, filter: &str) -> Option<&Subscription> {
        self.0
            .iter()
            .find(|(f, _)| f.as_str() == filter)
            .map(|(_, s)| s)
    }

    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Inserts or replaces; returns the replaced subscription.
    pub fn insert(&mut self, filter: &str, sub: Subscription) -> Option<Subscription> {
        match self.0.iter_mut().find(|(f, _)| f.as_str() == filter) {
            Some((_, s)) => Some(std::mem::replace(s, sub)),
            None => {
                // Exact growth past the inline one (2, 4, ...), not the four entries a
                // vector's first allocation would make room for.
                if self.0.len() == self.0.capacity() {
                    self.0.reserve_exact(self.0.len().max(1));
                }
                self.0.push((CompactString::new(filter), sub));
                None
            }
        }
    }

    pub fn remove(&mut self, filter: &str) -> Option<Subscription> {
        let i = self.0.iter().position(|(f, _)| f.as_str() == filter)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _)| f.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Subscription)> {
        self.0.iter().map(|(f, s)| (f.as_str(), s))
    }
}

/// "Not set" for the 32-bit fields of [`Session`] that would otherwise be `Option`s (8 bytes
/// each instead of 4, per session of a million).
const NONE: u32 = u32::MAX;

/// The state of one client id that outlives its connections when the session is persistent.
#[derive(Debug)]
pub struct Session {
    /// Unique on this shard for the life of the process; never reused, so a late reply about an
    /// ended session cannot reach its successor.
    pub id: u64,
    /// Inline up to 24 bytes: every client id a 3.1.1 server must accept (1 to 23 bytes,
    /// [MQTT-3.1.3-5]) costs no allocation of its own.
    pub client_id: CompactString,
    pub protocol: ProtocolVersion,
    /// Seconds the session outlives its connection; `u32::MAX` never expires, 0 ends with it.
    pub expiry_interval: u32,
    pub subscriptions: Subscriptions,
    pub outbound: Outbound,
    pub inbound_qos2: InboundQos2,
    /// Boxed: a will carries a full property set, and most sessions have none.
    pub will: Option<Box<LastWill>>,
    /// The key on the shard of the connection currently attached; [`NONE`] when offline.
    connection: u32,
    /// Counts the connections attached so far. An answer held back for one connection (a
    /// SUBACK waiting for routes, a PUBCOMP waiting for a sync) carries it, so it is never
    /// sent on the next connection, where its packet id may mean something else.
    pub attachment: u32,
    /// Seconds on the shard's clock when the last connection ended; [`NONE`] while attached
    /// or before the first connection ended.
    disconnected_at: u32,
    /// Largest packet the client accepts (MQTT 5 Maximum Packet Size); u32::MAX if unlimited.
    pub max_packet_size: u32,
    /// Request Problem Information (MQTT 5): reason strings allowed on acknowledgements.
    pub problem_information: bool,
    /// Its state is written to the shard's journal (a persistent session).
    pub journaled: bool,
    /// The username it authenticated with, kept only when an ACL file is configured: the
    /// rules for its deliveries depend on it, also while it is offline.
    /// A thin pointer: every session pays 8 bytes, not 16, for what only ACL users need.
    pub username: Option<Box<String>>,
    /// When the TCP connection of its latest CONNECT was opened (µs of the home shard's
    /// clock; 0 for a session restored from the journal). A CONNECT from a connection opened
    /// before it is stale: it was read first but answered later (its password check took
    /// longer, or it crossed the mesh), and must not take over what came after it.
    pub opened_us: u64,
}

impl Session {
    pub fn new(
        id: u64,
        client_id: &str,
        protocol: ProtocolVersion,
        window: usize,
        queue_max: usize,
    ) -> Session {
        Session {
            id,
            client_id: CompactString::new(client_id),
            protocol,
            expiry_interval: 0,
            subscriptions: Subscriptions::default(),
            outbound: Outbound::new(window, queue_max),
            inbound_qos2: InboundQos2::default(),
            will: None,
            connection: NONE,
            attachment: 0,
            disconnected_at: NONE,
            max_packet_size: u32::MAX,
            problem_information: true,
            journaled: false,
            username: None,
            opened_us: 0,
        }
    }

    pub fn is_online(&self) -> bool {
        self.connection != NONE
    }

    /// The connection currently attached, by its key on the shard.
    pub fn connection(&self) -> Option<usize> {
        (self.connection != NONE).then_some(self.connection as usize)
    }

    pub fn set_connection(&mut self, key: Option<usize>) {
        self.connection = key.map_or(NONE, |k| {
            u32::try_from(k)
                .ok()
                .filter(|&k| k != NONE)
                .expect("connection keys fit in 32 bits")
        });
    }

    /// Seconds on the shard's clock when the last connection ended.
    pub fn disconnected_at(&self) -> Option<u64> {
        (self.disconnected_at != NONE).then_some(u64::from(self.disconnected_at))
    }

    /// Saturates 136 years after the shard started.
    pub fn set_disconnected_at(&mut self, s: Option<u64>) {
        self.disconnected_at = s.map_or(NONE, |s| s.min(u64::from(NONE - 1)) as u32);
    }

    /// True once an offline session has outlived its expiry interval at `now_s`.
    pub fn expired(&self, now_s: u64) -> bool {
        match self.disconnected_at() {
            Some(_) if self.expiry_interval == u32::MAX => false,
            Some(t) => now_s >= t.saturating_add(self.expiry_interval as u64),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::tests::msg;

    #[test]
    fn remaining_expiry_rounds_up() {
        let now = Instant::now();
        let mut m = msg(QoS::AtLeastOnce).message;
        assert_eq!(m.remaining_expiry(now), None);
        m.expires_at = Some(now + std::time::Duration::from_millis(98_800));
        assert_eq!(m.remaining_expiry(now), Some(99));
        assert!(!m.is_expired(now));
        assert!(m.is_expired(now + std::time::Duration::from_secs(99)));
        assert_eq!(
            m.remaining_expiry(now + std::time::Duration::from_secs(200)),
            Some(0)
        );
    }

    #[test]
    fn subscriptions_insert_replace_remove() {
        let mut subs = Subscriptions::default();
        let sub = |q| Subscription {
            options: SubscriptionOptions {
                qos: q,
                ..Default::default()
            },
            subscription_id: None,
        };
        assert!(subs.insert("a/+", sub(QoS::AtMostOnce)).is_none());
        assert!(subs.insert("b", sub(QoS::AtLeastOnce)).is_none());
        let old = subs.insert("a/+", sub(QoS::ExactlyOnce)).unwrap();
        assert_eq!(old.options.qos, QoS::AtMostOnce);
        assert_eq!(subs.len(), 2);
        assert_eq!(subs.get("a/+").unwrap().options.qos, QoS::ExactlyOnce);
        assert!(subs.remove("a/+").is_some());
        assert!(subs.remove("a/+").is_none());
        assert_eq!(subs.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn session_expiry() {
        let mut s = Session::new(1, "c", ProtocolVersion::V5, 10, 10);
        s.expiry_interval = 5;
        assert!(!s.expired(100));
        s.set_disconnected_at(Some(100));
        assert!(!s.expired(104));
        assert!(s.expired(105));
        s.expiry_interval = u32::MAX;
        assert!(!s.expired(u64::MAX));
    }

    #[test]
    fn compacted_message_owns_exact_buffers() {
        let big = Bytes::from(vec![7u8; 4096]);
        let m = Message {
            topic: ByteStr::from("t"),
            payload: big.slice(10..20),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            origin: 3,
            expires_at: None,
            received_at: Instant::now(),
        };
        let c = m.compacted();
        assert_eq!(c, m);
        drop(m);
        drop(big);
        assert_eq!(c.payload.len(), 10);
    }
}
