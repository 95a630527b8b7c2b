//! The server-to-client half of QoS 1/2 for one session: packet ids, the inflight window and
//! the queue behind it, part of which may live in the shard's journal only.

use crate::Message;
use ringmq_codec::{PacketId, QoS};
use std::collections::VecDeque;

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

/// What [`Outbound::refill`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refilled {
    /// Now inflight: send them, oldest first.
    pub ids: Vec<PacketId>,
    /// Journal ids of expired messages dropped on the way (0: not journaled).
    pub dropped: Vec<u64>,
    /// Messages queued in the journal whose record could not be read back.
    pub unreadable: u64,
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
    /// Queued messages whose only copy is a record in the shard's journal, by its location
    /// (opaque here; see [`Outbound::spill`]). All of them are newer than everything in
    /// `queue`: order is `inflight`, `queue`, `spilled`.
    spilled: VecDeque<u64>,
    /// What the queued messages weigh ([`weight`]), spilled ones included.
    queued_bytes: u64,
}

/// What a queued message counts against a byte limit: its topic and payload.
pub fn weight(q: &Queued) -> u64 {
    (q.message.topic.len() + q.message.payload.len()) as u64
}

/// Queued messages a connected session keeps in memory before later ones go to the journal
/// only: enough that a window refilled on every acknowledgement rarely reads the journal, few
/// enough that a backlog costs 8 bytes a message, not a copy.
pub const IN_MEMORY_QUEUE: usize = 64;

/// Shared empty queues for the read-only accessors of a session that holds nothing.
static EMPTY_INFLIGHT: VecDeque<Inflight> = VecDeque::new();
static EMPTY_QUEUE: VecDeque<Queued> = VecDeque::new();
static EMPTY_SPILLED: VecDeque<u64> = VecDeque::new();

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

    fn spilled_q(&self) -> &VecDeque<u64> {
        self.held.as_ref().map_or(&EMPTY_SPILLED, |h| &h.spilled)
    }

    fn held_mut(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Gives the allocation back once nothing is held.
    fn release_if_empty(&mut self) {
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.inflight.is_empty() && h.queue.is_empty() && h.spilled.is_empty())
        {
            self.held = None;
        }
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight_q().len()
    }

    /// Queued messages, in memory and in the journal.
    pub fn queued_len(&self) -> usize {
        self.queue_q().len() + self.spilled_q().len()
    }

    /// Queued messages whose only copy is in the journal.
    pub fn spilled_len(&self) -> usize {
        self.spilled_q().len()
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

    /// Whether the queue is down to three quarters of its limits (hysteresis for whoever
    /// reacts to [`Outbound::is_full`], so that a queue at its limit does not flip per message).
    pub fn is_drained(&self, max_bytes: u64) -> bool {
        let count = self.queue_max as usize;
        (count == 0 || self.queued_len() <= count - count / 4)
            && (max_bytes == 0 || self.queued_bytes() <= max_bytes - max_bytes / 4)
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
        if online && self.window_open() && self.queue_q().is_empty() && self.spilled_q().is_empty()
        {
            let id = self.push_inflight(q);
            return Offer::Send(id);
        }
        self.push_queued(q);
        Offer::Queued
    }

    /// Whether a message offered now should be queued in the journal only ([`Outbound::spill`])
    /// instead of in memory: it would queue, and the session is offline, or its in-memory
    /// queue is at [`IN_MEMORY_QUEUE`], or earlier messages are in the journal already.
    pub fn should_spill(&self, online: bool) -> bool {
        let spilled = !self.spilled_q().is_empty();
        let queue = self.queue_q().len();
        let sends_now = online && self.window_open() && queue == 0 && !spilled;
        !sends_now && (!online || spilled || queue >= IN_MEMORY_QUEUE)
    }

    /// Queues a message whose record the caller wrote to the journal at `at`, keeping only
    /// that location; `weight` is what it counts against the byte limit ([`weight`]). The
    /// message comes back through the `load` of [`Outbound::refill`].
    pub fn spill(&mut self, at: u64, weight: u64) {
        let h = self.held_mut();
        h.queued_bytes += weight;
        h.spilled.push_back(at);
    }

    /// Locations of the messages queued in the journal, oldest first.
    pub fn spilled(&self) -> impl Iterator<Item = u64> + '_ {
        self.spilled_q().iter().copied()
    }

    /// Locations of the messages queued in the journal, oldest first, for compaction to move.
    pub fn spilled_mut(&mut self) -> impl Iterator<Item = &mut u64> {
        self.held.iter_mut().flat_map(|h| h.spilled.iter_mut())
    }

    fn push_queued(&mut self, q: Queued) {
        let h = self.held_mut();
        h.queued_bytes += weight(&q);
        h.queue.push_back(q);
    }

    /// The oldest queued message: from memory, else read back from the journal by `load`.
    /// `Err(at)` if `load` could not read the record at `at` (it is gone from the queue).
    fn pop_queued(
        &mut self,
        load: &mut impl FnMut(u64) -> Option<Queued>,
    ) -> Option<Result<Queued, u64>> {
        let h = self.held.as_mut()?;
        let q = match h.queue.pop_front() {
            Some(q) => q,
            None => {
                let at = h.spilled.pop_front()?;
                match load(at) {
                    Some(q) => q,
                    None => return Some(Err(at)),
                }
            }
        };
        h.queued_bytes = h.queued_bytes.saturating_sub(weight(&q));
        Some(Ok(q))
    }

    /// Drops the oldest queued message (`--queue-full drop-oldest`): its journal id (0 if it
    /// was in the journal and `load` could not read it).
    pub fn drop_oldest(&mut self, mut load: impl FnMut(u64) -> Option<Queued>) -> Option<u64> {
        let q = self.pop_queued(&mut load)?;
        self.release_if_empty();
        Some(q.map_or(0, |q| q.journal_id))
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

    /// Moves queued messages into free window slots, reading those queued in the journal back
    /// with `load`; returns the ids to send now, oldest first. Messages `alive` rejects
    /// (expired ones) are dropped on the way, and so are those `load` cannot read: their
    /// journal ids are in `dropped` (0 for those not journaled or not read).
    pub fn refill(
        &mut self,
        mut alive: impl FnMut(&Queued) -> bool,
        mut load: impl FnMut(u64) -> Option<Queued>,
    ) -> Refilled {
        let mut r = Refilled::default();
        while self.window_open() {
            let q = match self.pop_queued(&mut load) {
                None => break,
                Some(Err(_)) => {
                    r.unreadable += 1;
                    continue;
                }
                Some(Ok(q)) => q,
            };
            if !alive(&q) {
                r.dropped.push(q.journal_id);
                continue;
            }
            r.ids.push(self.push_inflight(q));
        }
        self.release_if_empty();
        r
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

    /// Removes queued (not inflight) messages held in memory that the predicate rejects, e.g.
    /// expired ones; those in the journal are checked when read back.
    pub fn retain_queued(&mut self, f: impl FnMut(&Queued) -> bool) {
        if let Some(h) = self.held.as_mut() {
            let before: u64 = h.queue.iter().map(weight).sum();
            h.queue.retain(f);
            let after: u64 = h.queue.iter().map(weight).sum();
            h.queued_bytes -= before - after;
        }
        self.release_if_empty();
    }

    /// True while the session holds an allocation for its window and queue (for tests).
    pub fn holds_buffers(&self) -> bool {
        self.held.is_some()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use ringmq_codec::ByteStr;
    use std::time::Instant;

    pub(crate) fn msg(qos: QoS) -> Queued {
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

    /// For queues that hold nothing in the journal.
    fn no_load(at: u64) -> Option<Queued> {
        panic!("nothing was spilled, yet {at} was loaded")
    }

    /// A journal stand-in: spilled messages by location, each a [`msg`] with its own id.
    #[derive(Default)]
    struct Disk(std::collections::HashMap<u64, Queued>);

    impl Disk {
        fn spill(&mut self, o: &mut Outbound, id: u64) {
            let mut q = msg(QoS::AtLeastOnce);
            q.journal_id = id;
            let at = 1000 + id;
            o.spill(at, weight(&q));
            self.0.insert(at, q);
        }

        fn load(&mut self) -> impl FnMut(u64) -> Option<Queued> + '_ {
            |at| self.0.remove(&at)
        }
    }

    fn ids_sent(o: &Outbound) -> Vec<u64> {
        o.inflight().map(|i| i.journal_id).collect()
    }

    #[test]
    fn spilled_messages_come_back_in_order_after_those_in_memory() {
        let mut o = Outbound::new(2, 0);
        let mut disk = Disk::default();
        for id in 1..=3 {
            let mut q = msg(QoS::AtLeastOnce);
            q.journal_id = id;
            assert!(!o.should_spill(true) || id > 2);
            o.offer(q, true);
        }
        // Window full (1, 2), 3 queued in memory; offline, everything goes to the journal.
        assert!(o.should_spill(false));
        for id in 4..=6 {
            disk.spill(&mut o, id);
        }
        // Once something is in the journal, later messages follow it there, online or not.
        assert!(o.should_spill(true));
        assert_eq!((o.queued_len(), o.spilled_len()), (4, 3));
        assert_eq!(o.queued_bytes(), 4 * 4);
        for done in 1..=6u16 {
            assert_eq!(
                ids_sent(&o)[0],
                u64::from(done),
                "sent in the order offered"
            );
            o.on_puback(pid(done));
            o.refill(|_| true, disk.load());
        }
        assert_eq!(ids_sent(&o), Vec::<u64>::new());
        assert!(!o.holds_buffers());
        assert!(
            disk.0.is_empty(),
            "every spilled message was read back once"
        );
    }

    #[test]
    fn refill_reads_back_spilled_messages_in_order() {
        let mut o = Outbound::new(2, 0);
        let mut disk = Disk::default();
        for id in 1..=5 {
            disk.spill(&mut o, id);
        }
        let r = o.refill(|_| true, disk.load());
        assert_eq!(r.ids, vec![pid(1), pid(2)]);
        assert_eq!(ids_sent(&o), vec![1, 2]);
        o.on_puback(pid(1));
        o.refill(|_| true, disk.load());
        assert_eq!(ids_sent(&o), vec![2, 3]);
        assert_eq!((o.queued_len(), o.queued_bytes()), (2, 8));
    }

    #[test]
    fn an_unreadable_spilled_record_is_counted_and_skipped() {
        let mut o = Outbound::new(1, 0);
        let mut disk = Disk::default();
        for id in 1..=3 {
            disk.spill(&mut o, id);
        }
        disk.0.remove(&1001);
        let r = o.refill(|_| true, disk.load());
        assert_eq!((r.ids, r.unreadable), (vec![pid(1)], 1));
        assert_eq!(ids_sent(&o), vec![2]);
    }

    #[test]
    fn drop_oldest_reaches_into_the_journal() {
        let mut o = Outbound::new(1, 0);
        let mut disk = Disk::default();
        o.offer(msg(QoS::AtLeastOnce), true);
        disk.spill(&mut o, 7);
        disk.spill(&mut o, 8);
        assert_eq!(o.drop_oldest(disk.load()), Some(7));
        assert_eq!((o.queued_len(), o.queued_bytes()), (1, 4));
        assert!(o.is_full(4) && !o.is_full(5));
    }

    #[test]
    fn a_full_queue_is_drained_again_at_three_quarters_of_its_limits() {
        let mut o = Outbound::new(2, 8);
        for _ in 0..8 {
            o.offer(msg(QoS::AtLeastOnce), false);
        }
        assert!(o.is_full(0) && !o.is_drained(0));
        assert!(!o.is_drained(32), "8 x 4 bytes at a 32-byte limit");
        let mut disk = Disk::default();
        o.refill(|_| true, disk.load());
        assert_eq!((o.queued_len(), o.queued_bytes()), (6, 24));
        assert!(!o.is_full(0) && o.is_drained(0) && o.is_drained(32));
        assert!(!o.is_drained(20), "24 bytes is above three quarters of 20");
        assert!(
            Outbound::new(2, 0).is_drained(0),
            "no limits: always drained"
        );
    }

    #[test]
    fn a_connected_session_keeps_a_bounded_head_in_memory() {
        let mut o = Outbound::new(1, 0);
        o.offer(msg(QoS::AtLeastOnce), true);
        for _ in 0..IN_MEMORY_QUEUE {
            assert!(o.should_spill(false));
            assert!(!o.should_spill(true));
            o.offer(msg(QoS::AtLeastOnce), true);
        }
        assert!(o.should_spill(true));
    }

    #[test]
    fn spilled_locations_can_be_moved() {
        let mut o = Outbound::new(1, 0);
        let mut disk = Disk::default();
        disk.spill(&mut o, 1);
        disk.spill(&mut o, 2);
        for at in o.spilled_mut() {
            let q = disk.0.remove(at).unwrap();
            *at += 50;
            disk.0.insert(*at, q);
        }
        o.refill(|_| true, disk.load());
        assert_eq!(ids_sent(&o), vec![1]);
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
        assert_eq!(o.refill(|_| true, no_load).ids.len(), 1);
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
        assert_eq!(o.drop_oldest(no_load), Some(9));
        assert_eq!(o.on_puback(pid(1)), Some(9));
        assert!(
            o.on_puback(pid(1)).is_none(),
            "a second PUBACK for the same id finds nothing"
        );
        assert_eq!(o.refill(|_| true, no_load).ids, vec![pid(3)]);
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
        assert_eq!(o.refill(|_| true, no_load).ids.len(), 1);
        assert_eq!(o.queued_bytes(), 8);
        o.drop_oldest(no_load);
        assert_eq!(o.queued_bytes(), 4);
        o.retain_queued(|_| false);
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn offline_messages_queue_even_with_room_in_the_window() {
        let mut o = Outbound::new(10, 10);
        assert_eq!(o.offer(msg(QoS::AtLeastOnce), false), Offer::Queued);
        assert_eq!(o.inflight_len(), 0);
        assert_eq!(o.refill(|_| true, no_load).ids, vec![pid(1)]);
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
        assert_eq!(o.refill(|_| true, no_load).ids, vec![pid(2)]);
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
        assert_eq!(o.refill(|_| true, no_load).ids, vec![pid(6)]);
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
        let r = o.refill(
            |_| {
                n += 1;
                n % 2 == 0
            },
            no_load,
        );
        assert_eq!(r.ids, vec![pid(1), pid(2)]);
        assert_eq!(r.dropped, vec![9, 9]);
        assert_eq!(o.queued_len(), 0);
    }
}
