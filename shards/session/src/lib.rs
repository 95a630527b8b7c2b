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
use ringmq_codec::{
    ByteStr, LastWill, PacketId, Properties, ProtocolVersion, QoS, SubscriptionOptions,
};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

mod qos2;
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

/// Where a QoS 1/2 delivery stands in its acknowledgement flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

#[derive(Clone, Debug)]
pub struct Inflight {
    pub packet_id: PacketId,
    pub qos: QoS,
    pub state: InflightState,
    pub message: Message,
    /// Retain flag as it is to be sent to this subscriber.
    pub retain: bool,
    /// Subscription identifiers to attach (MQTT 5).
    pub subscription_ids: Vec<u32>,
    /// Id of this delivery in the shard's journal; 0 if it is not journaled.
    pub journal_id: u64,
    /// The shared subscription group it was delivered through (shard-local id), 0 if none: if
    /// the session ends unacknowledged, another member of the group gets it.
    pub shared_group: u32,
}

/// A message waiting for room in the inflight window.
#[derive(Clone, Debug)]
pub struct Queued {
    pub qos: QoS,
    pub message: Message,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Id of this delivery in the shard's journal; 0 if it is not journaled.
    pub journal_id: u64,
    /// See [`Inflight::shared_group`].
    pub shared_group: u32,
}

/// What a PUBREC did to the QoS 2 delivery it acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubRecOutcome {
    /// Now awaiting PUBCOMP: send PUBREL. Carries the delivery's journal id.
    Released(u64),
    /// A repeated PUBREC for a flow already at PUBREL: send PUBREL again.
    Repeated,
    /// A PUBREC with a failure reason code ended the flow. Carries the journal id.
    Failed(u64),
    /// No delivery with this id awaited PUBREC.
    Unknown,
}

/// What became of a message handed to [`Outbound::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Send it now with this packet id (already recorded as inflight).
    Send(PacketId),
    /// Queued behind a full window or for an offline session.
    Queued,
}

/// The outgoing QoS 1/2 state of one session.
///
/// The window and the queue live in one allocation made when the first message arrives and
/// released when both are empty again: most devices of an idle fleet hold nothing, and a session
/// that received once should not keep the buffers of its busiest moment.
#[derive(Debug)]
pub struct Outbound {
    held: Option<Box<Held>>,
    next_id: u16,
    /// Largest number of unacknowledged QoS 1/2 PUBLISHes: min(client Receive Maximum, server).
    window: u16,
    /// Queued messages at which the queue is full (0: no count limit); see [`Outbound::is_full`].
    queue_max: u32,
}

#[derive(Debug, Default)]
struct Held {
    /// In send order: acknowledgements mostly arrive in that order, so lookups find the front.
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Queued>,
    /// What the queued messages weigh ([`weight`]).
    queued_bytes: u64,
}

/// What a queued message counts against a byte limit: its topic and payload.
fn weight(q: &Queued) -> u64 {
    (q.message.topic.len() + q.message.payload.len()) as u64
}

/// Shared empty queues for the read-only accessors of a session that holds nothing.
static EMPTY_INFLIGHT: VecDeque<Inflight> = VecDeque::new();
static EMPTY_QUEUE: VecDeque<Queued> = VecDeque::new();

impl Outbound {
    pub fn new(window: usize, queue_max: usize) -> Outbound {
        assert!(window > 0 && window <= u16::MAX as usize);
        Outbound {
            held: None,
            next_id: 1,
            window: window as u16,
            queue_max: u32::try_from(queue_max).unwrap_or(u32::MAX),
        }
    }

    /// A reconnect may bring another Receive Maximum.
    pub fn set_window(&mut self, window: usize) {
        assert!(window > 0 && window <= u16::MAX as usize);
        self.window = window as u16;
    }

    fn inflight_q(&self) -> &VecDeque<Inflight> {
        self.held.as_ref().map_or(&EMPTY_INFLIGHT, |h| &h.inflight)
    }

    fn queue_q(&self) -> &VecDeque<Queued> {
        self.held.as_ref().map_or(&EMPTY_QUEUE, |h| &h.queue)
    }

    fn held_mut(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Gives the allocation back once nothing is held.
    fn release_if_empty(&mut self) {
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.inflight.is_empty() && h.queue.is_empty())
        {
            self.held = None;
        }
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight_q().len()
    }

    pub fn queued_len(&self) -> usize {
        self.queue_q().len()
    }

    /// Bytes of topic and payload queued.
    pub fn queued_bytes(&self) -> u64 {
        self.held.as_ref().map_or(0, |h| h.queued_bytes)
    }

    /// Whether the queue has reached its message count (if any) or `max_bytes` (0: no byte
    /// limit). A full queue still takes messages: what to do then is the caller's policy.
    pub fn is_full(&self, max_bytes: u64) -> bool {
        (self.queue_max != 0 && self.queued_len() >= self.queue_max as usize)
            || (max_bytes != 0 && self.queued_bytes() >= max_bytes)
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight_q().iter()
    }

    fn id_in_use(&self, id: u16) -> bool {
        self.inflight_q().iter().any(|i| i.packet_id.get() == id)
    }

    fn allocate_id(&mut self) -> PacketId {
        // The window is at most 65,535 and full windows never allocate, so a free id exists.
        loop {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.id_in_use(id) {
                return PacketId::new(id).expect("ids start at 1");
            }
        }
    }

    fn window_open(&self) -> bool {
        self.inflight_len() < usize::from(self.window)
    }

    /// Hands a QoS 1/2 message to the session. `online` is false for a disconnected persistent
    /// session, whose messages always queue. A full queue takes it too ([`Outbound::is_full`]
    /// is checked before).
    pub fn offer(&mut self, q: Queued, online: bool) -> Offer {
        debug_assert!(q.qos != QoS::AtMostOnce);
        if online && self.window_open() && self.queue_q().is_empty() {
            let id = self.push_inflight(q);
            return Offer::Send(id);
        }
        self.push_queued(q);
        Offer::Queued
    }

    fn push_queued(&mut self, q: Queued) {
        let h = self.held_mut();
        h.queued_bytes += weight(&q);
        h.queue.push_back(q);
    }

    fn pop_queued(&mut self) -> Option<Queued> {
        let h = self.held.as_mut()?;
        let q = h.queue.pop_front()?;
        h.queued_bytes -= weight(&q);
        Some(q)
    }

    /// Drops the oldest queued message (`--queue-full drop-oldest`): its journal id.
    pub fn drop_oldest(&mut self) -> Option<u64> {
        let q = self.pop_queued()?;
        self.release_if_empty();
        Some(q.journal_id)
    }

    fn push_inflight(&mut self, q: Queued) -> PacketId {
        let packet_id = self.allocate_id();
        let state = if q.qos == QoS::ExactlyOnce {
            InflightState::AwaitPubRec
        } else {
            InflightState::AwaitPubAck
        };
        self.held_mut().inflight.push_back(Inflight {
            packet_id,
            qos: q.qos,
            state,
            message: q.message,
            retain: q.retain,
            subscription_ids: q.subscription_ids,
            journal_id: q.journal_id,
            shared_group: q.shared_group,
        });
        packet_id
    }

    /// Puts back a delivery that was inflight before a restart, with its packet id and state;
    /// it is resent (with DUP, or as PUBREL) when the client reconnects.
    pub fn restore_inflight(&mut self, i: Inflight) {
        if self.next_id <= i.packet_id.get() {
            self.next_id = i.packet_id.get().checked_add(1).unwrap_or(1);
        }
        self.held_mut().inflight.push_back(i);
    }

    /// Puts back a delivery that was queued before a restart. Restored state may exceed the
    /// queue bound if the bound was lowered: nothing acknowledged is dropped for that.
    pub fn restore_queued(&mut self, q: Queued) {
        self.push_queued(q);
    }

    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.queue_q().iter()
    }

    /// Moves queued messages into free window slots; returns the ids to send now, oldest first.
    /// Messages `alive` rejects (expired ones) are dropped on the way; their journal ids are
    /// returned (0 for those not journaled).
    pub fn refill(&mut self, mut alive: impl FnMut(&Queued) -> bool) -> (Vec<PacketId>, Vec<u64>) {
        let mut ids = Vec::new();
        let mut dropped = Vec::new();
        while self.window_open() {
            let Some(q) = self.pop_queued() else {
                break;
            };
            if !alive(&q) {
                dropped.push(q.journal_id);
                continue;
            }
            ids.push(self.push_inflight(q));
        }
        self.release_if_empty();
        (ids, dropped)
    }

    pub fn get(&self, id: PacketId) -> Option<&Inflight> {
        self.inflight_q().iter().find(|i| i.packet_id == id)
    }

    fn position(&self, id: PacketId, state: InflightState) -> Option<usize> {
        self.inflight_q()
            .iter()
            .position(|i| i.packet_id == id && i.state == state)
    }

    /// Removes the inflight delivery at `p` (found by [`Outbound::position`]): its journal id.
    fn finish(&mut self, p: usize) -> Option<u64> {
        let done = self.held.as_mut()?.inflight.remove(p).map(|i| i.journal_id);
        self.release_if_empty();
        done
    }

    /// PUBACK for a QoS 1 delivery: the finished delivery's journal id, `None` if no such
    /// delivery awaited it.
    pub fn on_puback(&mut self, id: PacketId) -> Option<u64> {
        let p = self.position(id, InflightState::AwaitPubAck)?;
        self.finish(p)
    }

    /// PUBREC for a QoS 2 delivery: the message is now the client's; what remains is PUBREL.
    /// A PUBREC with a failure reason code ends the flow instead (`failed`).
    pub fn on_pubrec(&mut self, id: PacketId, failed: bool) -> PubRecOutcome {
        match self.position(id, InflightState::AwaitPubRec) {
            Some(p) if failed => self
                .finish(p)
                .map_or(PubRecOutcome::Unknown, PubRecOutcome::Failed),
            Some(p) => {
                let i = &mut self.held_mut().inflight[p];
                i.state = InflightState::AwaitPubComp;
                PubRecOutcome::Released(i.journal_id)
            }
            // A retransmitted PUBREC for a flow already at PUBREL: answer PUBREL again.
            None if self.position(id, InflightState::AwaitPubComp).is_some() => {
                PubRecOutcome::Repeated
            }
            None => PubRecOutcome::Unknown,
        }
    }

    /// PUBCOMP: the finished delivery's journal id, `None` if no delivery awaited it.
    pub fn on_pubcomp(&mut self, id: PacketId) -> Option<u64> {
        let p = self.position(id, InflightState::AwaitPubComp)?;
        self.finish(p)
    }

    /// Drops everything (Clean Start, or the session ended).
    pub fn clear(&mut self) {
        self.held = None;
    }

    /// Removes queued (not inflight) messages the predicate rejects, e.g. expired ones.
    pub fn retain_queued(&mut self, f: impl FnMut(&Queued) -> bool) {
        if let Some(h) = self.held.as_mut() {
            h.queue.retain(f);
            h.queued_bytes = h.queue.iter().map(weight).sum();
        }
        self.release_if_empty();
    }

    /// True while the session holds an allocation for its window and queue (for tests).
    pub fn holds_buffers(&self) -> bool {
        self.held.is_some()
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

    fn msg(qos: QoS) -> Queued {
        Queued {
            qos,
            message: Message {
                topic: ByteStr::from("a/b"),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: None,
                origin: 0,
                expires_at: None,
                received_at: Instant::now(),
            },
            retain: false,
            subscription_ids: Vec::new(),
            journal_id: 9,
            shared_group: 0,
        }
    }

    fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    /// An idle device holds no queue buffers, also after it has received (issue 11: the
    /// per-connection budget); they come back when needed, in order.
    #[test]
    fn outbound_holds_buffers_only_while_it_holds_messages() {
        let mut o = Outbound::new(2, 10);
        assert!(!o.holds_buffers());
        let Offer::Send(a) = o.offer(msg(QoS::AtLeastOnce), true) else {
            panic!("window open")
        };
        let Offer::Send(b) = o.offer(msg(QoS::ExactlyOnce), true) else {
            panic!("window open")
        };
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        assert!(o.holds_buffers());
        assert_eq!(o.on_puback(a), Some(9));
        assert_eq!(o.refill(|_| true).0.len(), 1);
        assert_eq!(o.on_pubrec(b, false), PubRecOutcome::Released(9));
        assert_eq!(o.on_pubcomp(b), Some(9));
        assert!(o.holds_buffers(), "one still inflight");
        let last = o.inflight().next().unwrap().packet_id;
        assert_eq!(o.on_puback(last), Some(9));
        assert!(!o.holds_buffers());
        assert_eq!((o.inflight_len(), o.queued_len()), (0, 0));
        // Offline: queued, then expired away by retain_queued, which also releases.
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), false), Offer::Queued);
        o.retain_queued(|_| false);
        assert!(!o.holds_buffers());
        // Packet ids keep advancing across the releases (no reuse of a just-acked id).
        let Offer::Send(c) = o.offer(msg(QoS::AtLeastOnce), true) else {
            panic!("window open")
        };
        assert!(c.get() > last.get());
    }

    #[test]
    fn window_bounds_inflight_and_queue_bounds_the_rest() {
        let mut o = Outbound::new(2, 3);
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Send(pid(1)));
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Send(pid(2)));
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        assert!(!o.is_full(0));
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        assert!(o.is_full(0), "three queued: full");
        // Full is a signal, not a drop: the caller's policy decides.
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(o.queued_len(), 4);
        assert_eq!(o.drop_oldest(), Some(9));
        assert_eq!(o.on_puback(pid(1)), Some(9));
        assert!(
            o.on_puback(pid(1)).is_none(),
            "a second PUBACK for the same id finds nothing"
        );
        assert_eq!(o.refill(|_| true).0, vec![pid(3)]);
        assert_eq!(o.inflight_len(), 2);
        assert_eq!(o.queued_len(), 2);
    }

    #[test]
    fn the_byte_limit_counts_topic_and_payload_of_queued_messages_only() {
        // Each test message weighs 4 bytes ("a/b" and "x"); the window's are not counted.
        let mut o = Outbound::new(1, 0);
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Send(pid(1)));
        assert_eq!(o.queued_bytes(), 0);
        for _ in 0..3 {
            o.offer(msg(QoS::AtLeastOnce), true);
        }
        assert_eq!(o.queued_bytes(), 12);
        assert!(o.is_full(12) && !o.is_full(13) && !o.is_full(0));
        o.on_puback(pid(1));
        assert_eq!(o.refill(|_| true).0.len(), 1);
        assert_eq!(o.queued_bytes(), 8);
        o.drop_oldest();
        assert_eq!(o.queued_bytes(), 4);
        o.retain_queued(|_| false);
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn offline_messages_queue_even_with_room_in_the_window() {
        let mut o = Outbound::new(10, 10);
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), false), Offer::Queued);
        assert_eq!(o.inflight_len(), 0);
        assert_eq!(o.refill(|_| true).0, vec![pid(1)]);
    }

    #[test]
    fn queued_messages_keep_order_behind_the_window() {
        // A new message must not overtake queued ones when a slot frees [MQTT-4.6.0-6].
        let mut o = Outbound::new(1, 10);
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Send(pid(1)));
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        o.on_puback(pid(1));
        // The window has room but the queue is not empty: the new message queues behind.
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Queued);
        assert_eq!(o.refill(|_| true).0, vec![pid(2)]);
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        // [MQTT-2.2.1-3] a new PUBLISH uses an id not in use.
        let mut o = Outbound::new(3, 0);
        o.next_id = u16::MAX;
        assert_eq!(
            o.offer(msg(QoS::AtLeastOnce), true),
            Offer::Send(pid(u16::MAX))
        );
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Send(pid(1)));
        o.next_id = u16::MAX;
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), true), Offer::Send(pid(2)));
    }

    #[test]
    fn qos2_flow_pubrec_then_pubcomp() {
        let mut o = Outbound::new(4, 4);
        assert_eq!(o.offer(msg(QoS::ExactlyOnce), true), Offer::Send(pid(1)));
        assert!(
            o.on_pubcomp(pid(1)).is_none(),
            "PUBCOMP before PUBREC is not accepted"
        );
        assert_eq!(o.on_pubrec(pid(1), false), PubRecOutcome::Released(9));
        assert_eq!(o.get(pid(1)).unwrap().state, InflightState::AwaitPubComp);
        assert_eq!(
            o.on_pubrec(pid(1), false),
            PubRecOutcome::Repeated,
            "a repeated PUBREC is answered again"
        );
        assert_eq!(o.on_pubrec(pid(2), false), PubRecOutcome::Unknown);
        assert_eq!(o.on_pubcomp(pid(1)), Some(9));
        assert_eq!(o.inflight_len(), 0);
    }

    #[test]
    fn qos2_pubrec_with_error_ends_the_flow() {
        let mut o = Outbound::new(4, 4);
        o.offer(msg(QoS::ExactlyOnce), true);
        assert_eq!(o.on_pubrec(pid(1), true), PubRecOutcome::Failed(9));
        assert_eq!(o.inflight_len(), 0);
    }

    #[test]
    fn restored_inflight_keeps_its_ids_and_new_ids_avoid_them() {
        let mut o = Outbound::new(4, 4);
        let q = msg(QoS::AtLeastOnce);
        o.restore_inflight(Inflight {
            packet_id: pid(5),
            qos: q.qos,
            state: InflightState::AwaitPubAck,
            message: q.message.clone(),
            retain: false,
            subscription_ids: vec![],
            journal_id: 3,
            shared_group: 0,
        });
        o.restore_queued(msg(QoS::AtLeastOnce));
        assert_eq!(o.refill(|_| true).0, vec![pid(6)]);
        assert_eq!(o.on_puback(pid(5)), Some(3));
    }

    #[test]
    fn refill_drops_what_is_no_longer_alive() {
        // [MQTT-3.3.2-5] an expired message not yet sent is deleted for that subscriber.
        let mut o = Outbound::new(2, 10);
        for _ in 0..4 {
            o.offer(msg(QoS::AtLeastOnce), false);
        }
        let mut n = 0;
        let (ids, dropped) = o.refill(|_| {
            n += 1;
            n % 2 == 0
        });
        assert_eq!(ids, vec![pid(1), pid(2)]);
        assert_eq!(dropped, vec![9, 9]);
        assert_eq!(o.queued_len(), 0);
    }

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
