//! QoS 2 in across crashes: receipts, held routing, and the record that routing finished.
//!
//! A QoS 2 message of a persistent session is journaled twice: its packet id as received
//! (`Qos2In { routed: false }`), then, once every shard took it, as routed (`routed: true`);
//! PUBREC waits for the second. After a restart a retransmission of a routed id is answered
//! only [MQTT-4.3.3-9]; one whose routing is not known to have finished is routed again, since
//! the crash may have cut it short (a second copy at some subscribers rather than a loss at
//! others).
//!
//! The message is routed only once its receipt is synced. Routed earlier, a power loss could
//! take the receipt but not the deliveries (durable on other shards, or sent already), and the
//! retransmission would be routed as new. The PUBACK/PUBREC slot is reserved at once, so
//! answers stay in order [MQTT-4.6.0-2], and the session's later PUBLISHes wait behind the
//! held one, so its messages reach subscribers in the order they were sent [MQTT-4.6.0-6].

use super::*;

impl ShardState {
    /// A QoS 2 message's routing finished: remembered, and journaled for a persistent session.
    pub(super) fn qos2_routed(&mut self, sid: u64, id: PacketId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.inbound_qos2.routed(id) && s.journaled {
            let client_id = s.client_id.to_string();
            self.jnote(Record::Qos2In {
                client_id,
                packet_id: id.get(),
                routed: true,
            });
        }
    }

    /// Whether the session has PUBLISHes held; cheap when no session has (the usual case).
    pub(super) fn is_held(&self, sid: u64) -> bool {
        !self.held.is_empty() && self.held.contains_key(&sid)
    }

    /// Holds `msg` until everything the journal has now is synced; `ack`: its packet id and
    /// QoS, whose answer slot is reserved now.
    pub(super) fn hold(&mut self, sid: u64, ack: Option<(PacketId, QoS)>, msg: Message) {
        let need = self.sync_needed_since(JournalSeq::NONE);
        *self.held.entry(sid).or_default() += 1;
        let token = ack.map(|(packet_id, qos)| {
            let token = AckToken(self.new_token());
            let slot = AckSlot {
                attachment: self.conn_ref(sid).attachment,
                token,
                packet_id,
                qos,
                // The hold itself: released by `route_held`.
                remaining: 1,
                taken: Taken::NoSubscribers,
                sync_before: JournalSeq::NONE,
                marked: false,
            };
            self.push_ack_slot(sid, slot);
            token
        });
        self.after_sync(
            need,
            AfterSync::Route {
                session: sid,
                msg,
                ack: token,
            },
        );
    }

    /// The journal is synced past a held PUBLISH: route it, and let its answer wait for
    /// what routing it takes, as for any other.
    pub(super) fn route_held(&mut self, sid: u64, msg: Message, ack: Option<AckToken>) {
        if let Some(n) = self.held.get_mut(&sid) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&sid);
            }
        }
        let before = self.journal_mark();
        let msg_qos2 = msg.qos == QoS::ExactlyOnce;
        self.delivery_refused = false;
        let routed = self.route(msg, ack);
        self.wait_for_peer(sid, routed.congested);
        let refused = std::mem::take(&mut self.delivery_refused);
        let Some(token) = ack else { return };
        let taken = Taken::new(routed.matched_here, refused);
        if msg_qos2 && routed.routing_done() && !taken.is_refused() {
            if let Some(id) = self.slot_packet_id(sid, token) {
                self.qos2_routed(sid, id);
            }
        }
        let need = self.sync_needed_since(before);
        let slot = self
            .acks
            .get_mut(&sid)
            .and_then(|q| q.iter_mut().find(|a| a.token == token && a.remaining > 0));
        if let Some(slot) = slot {
            slot.remaining += routed.awaiting;
            slot.taken = slot.taken.max(taken);
            slot.sync_before = need;
            if need != JournalSeq::NONE {
                self.after_sync(need, AfterSync::ReleaseAcks(sid));
            }
        }
        self.on_publish_ack(token, Taken::NoSubscribers);
    }

    fn slot_packet_id(&self, sid: u64, token: AckToken) -> Option<PacketId> {
        let q = self.acks.get(&sid)?;
        q.iter().find(|a| a.token == token).map(|a| a.packet_id)
    }
}
