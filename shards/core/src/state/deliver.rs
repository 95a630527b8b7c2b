//! Delivery: a message into each matching session (inflight window, queue, journal), resends
//! after reconnect, and the outgoing QoS 1/2 acknowledgement flows.

use super::backpressure::Admit;
use super::*;

impl ShardState {
    /// Delivers to this shard's subscribers. One delivery per session, at the highest QoS of its
    /// matching subscriptions, with all their identifiers [MQTT-3.3.4-2] [MQTT-3.3.4-3].
    pub(super) fn deliver_local(&mut self, msg: &Message) -> bool {
        let mut m = std::mem::take(&mut self.match_buf);
        m.clear();
        self.subs
            .for_each_match(&msg.topic, |sid, e| m.push((sid, *e)));
        if m.len() > 1 {
            m.sort_unstable_by_key(|x| x.0);
        }
        let mut delivered = false;
        // Several sessions: their delivery records share one copy of the message (spill.rs).
        self.shared_body = (m.len() > 1).then_some(None);
        let mut i = 0;
        while i < m.len() {
            let sid = m[i].0;
            let mut qos: Option<QoS> = None;
            let mut rap = false;
            let mut ids = Vec::new();
            while i < m.len() && m[i].0 == sid {
                let e = m[i].1;
                i += 1;
                // [MQTT-3.8.3-3] No Local: not back to the publishing session.
                if e.options.no_local && msg.origin == self.global_id(sid) {
                    continue;
                }
                qos = Some(qos.map_or(e.options.qos, |q| q.max(e.options.qos)));
                rap |= e.options.retain_as_published;
                if let Some(id) = e.subscription_id {
                    ids.push(id);
                }
            }
            if let Some(q) = qos {
                delivered = true;
                // [MQTT-3.3.1-12] live deliveries clear the retain flag unless Retain As Published.
                let d = Delivery {
                    qos: q.min(msg.qos),
                    retain: rap && msg.retain,
                    subscription_ids: ids,
                    source: Source::Publish,
                    shared_group: 0,
                };
                self.deliver_to_session(sid, msg, d);
            }
        }
        self.shared_body = None;
        self.match_buf = m;
        delivered
    }

    /// One message into one session: written now if the session is connected and its window
    /// has room, queued otherwise (journaled first for a persistent session), or dropped and
    /// counted (QoS 0 offline or over its limits, expired, too large for the client).
    /// Returns false only when the ACL keeps the session from reading the topic (counted):
    /// a shared subscription then offers the message to another member.
    pub(super) fn deliver_to_session(&mut self, sid: u64, msg: &Message, d: Delivery) -> bool {
        let Some(s) = self.sessions.get(&sid) else {
            return true;
        };
        if !Self::may_read(self.acl.as_deref(), s, &msg.topic) {
            self.counters.acl_denied_delivery += 1;
            return false;
        }
        self.deliver_allowed(sid, msg, d);
        true
    }

    /// [`ShardState::deliver_to_session`] once the ACL allowed it.
    fn deliver_allowed(&mut self, sid: u64, msg: &Message, d: Delivery) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        // Read the clock only for messages that can expire: this runs once per subscriber.
        let now = if msg.expires_at.is_some() {
            self.clock.now()
        } else {
            self.start
        };
        if msg.expires_at.is_some() && msg.is_expired(now) {
            self.counters.dropped_expired += 1;
            return;
        }
        let conn = s.connection();
        let v = s.protocol;
        let check_size = s.max_packet_size != u32::MAX;
        let full = s.outbound.is_full(self.cfg.max_queued_bytes);
        // Built once, for the size check and for the write; not at all for an offline session
        // without a size limit. The packet id is a placeholder of the same length until the
        // inflight window assigns one.
        let ids = &d.subscription_ids;
        let mut p = (check_size || conn.is_some()).then(|| {
            let id = Some(PacketId::MIN);
            make_publish(now, msg, d.qos, d.retain, ids, id, Dup::First, v)
        });
        // [MQTT-3.1.2-24] never send a packet larger than the client's Maximum Packet Size.
        if let Some(p) = p.as_ref().filter(|_| check_size) {
            let size = publish_header_len(p, v) + p.payload.len();
            if size > s.max_packet_size as usize {
                self.counters.dropped_too_large += 1;
                return;
            }
        }
        // Retained messages were received long ago: no publish-to-write latency for them.
        let received = matches!(d.source, Source::Publish).then_some(msg);
        if d.qos == QoS::AtMostOnce {
            // Behind QoS 0 retained messages still waiting for room: after them, in order.
            if let Some(x) = conn
                .filter(|_| matches!(d.source, Source::Publish))
                .and_then(|k| self.conns[k].extra.as_mut())
                .filter(|x| !x.retained.is_empty())
            {
                x.retained
                    .push_back((msg.clone(), d.retain, d.subscription_ids));
                return;
            }
            match (conn, p) {
                (Some(key), Some(p)) => self.write_publish(key, &p, received),
                _ => self.counters.dropped_offline_qos0 += 1,
            }
            return;
        }
        // A full queue: the policy decides (backpressure.rs).
        let defer = match full.then(|| self.admit_to_full(sid)) {
            None | Some(Admit::Queue) => None,
            Some(Admit::Defer(a)) => Some(a),
            Some(Admit::Skip) => return,
        };
        let Some(journal_id) = self.next_journal_id(sid) else {
            return;
        };
        let s = self.sessions.get_mut(&sid).expect("checked");
        // A journaled delivery that would queue may live in the journal only (spill.rs).
        let mut journal_it = journal_id != 0;
        if journal_it && d.shared_group == 0 && s.outbound.should_spill(conn.is_some()) {
            if self.spill_delivery(sid, journal_id, msg, &d).is_ok() {
                self.counters.queued += 1;
                if let Some(a) = defer {
                    self.defer_answer(sid, a);
                }
                self.mark_if_full(sid);
                return;
            }
            journal_it = false;
        }
        let q = Queued {
            qos: d.qos,
            message: msg.clone(),
            retain: d.retain,
            subscription_ids: d.subscription_ids,
            journal_id,
            shared_group: d.shared_group,
        };
        let s = self.sessions.get_mut(&sid).expect("checked");
        let offer = s.outbound.offer(q, conn.is_some());
        let before = self.journal_mark();
        if journal_it {
            self.journal_delivery(sid, journal_id, &offer, msg);
        }
        match offer {
            Offer::Send(id) => {
                // Offered as online, so the connection and the packet exist.
                if let (Some(key), Some(p)) = (conn, p.as_mut()) {
                    p.packet_id = Some(id);
                    if p.qos == QoS::ExactlyOnce {
                        self.gate_output(key, self.sync_needed_since(before));
                    }
                    self.write_publish(key, p, received);
                    self.awaiting_from(sid, key);
                }
            }
            Offer::Queued => {
                self.counters.queued += 1;
                self.mark_if_full(sid);
            }
        }
        if let Some(a) = defer {
            self.defer_answer(sid, a);
        }
    }

    /// The journal id of a new delivery to the session: 0 when it is not journaled; `None`
    /// when the journal has no room for it (refused: the publisher must not be told it is
    /// stored).
    fn next_journal_id(&mut self, sid: u64) -> Option<u64> {
        let journaled = self.sessions.get(&sid).is_some_and(|s| s.journaled);
        let Some(d) = self.durable.as_mut().filter(|_| journaled) else {
            return Some(0);
        };
        if !d.has_room() {
            self.counters.dropped_journal_full += 1;
            self.delivery_refused = true;
            return None;
        }
        let id = d.next_msg_id;
        d.next_msg_id += 1;
        Some(id)
    }

    /// Journals a delivery of a persistent session, encoded from the session's stored entry
    /// (nothing is copied to build the record), before anyone is told it is stored.
    fn journal_delivery(&mut self, sid: u64, journal_id: u64, offer: &Offer, msg: &Message) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let stored = match offer {
            Offer::Send(id) => s.outbound.get(*id).map(|i| {
                (
                    i.qos,
                    i.retain,
                    &i.subscription_ids,
                    id.get(),
                    records::STATE_AWAIT_ACK,
                )
            }),
            Offer::Queued => s.outbound.queued().last().map(|q| {
                (
                    q.qos,
                    q.retain,
                    &q.subscription_ids,
                    0,
                    records::STATE_QUEUED,
                )
            }),
        };
        let Some((qos, retain, sub_ids, pid, state)) = stored else {
            return;
        };
        let view = msg_view(
            &*self.clock,
            s.client_id.as_str(),
            journal_id,
            qos,
            retain,
            pid,
            state,
            msg,
            sub_ids,
        );
        let d = self.durable.as_mut().expect("journaled");
        if let Err(e) = d.write_delivery(&view, self.shared_body.as_mut()) {
            // Kept in memory and delivered, but the publisher must not be told it is stored.
            d.write_errors += 1;
            self.delivery_refused = true;
            tracing::error!(shard = self.id, error = %e, "journal append failed");
        }
    }

    /// Moves queued messages into free inflight slots and sends them; answers deferred on the
    /// queue go once it is under its limits.
    pub(super) fn refill(&mut self, sid: u64) {
        self.send_queued(sid);
        self.unmark_if_drained(sid);
        self.release_deferred(sid);
    }

    fn send_queued(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(key) = s.connection() else { return };
        let now = self.clock.now();
        let before = self.durable.as_ref().map_or(JournalSeq::NONE, |d| d.mark());
        let (durable, clock) = (self.durable.as_ref(), &*self.clock);
        let r = s.outbound.refill(
            |q| !q.message.is_expired(now),
            |at| spill::load_spilled(durable, clock, at),
        );
        let (ids, expired) = (r.ids, r.dropped);
        self.counters.dropped_expired += expired.len() as u64;
        self.counters.journal_read_failures += r.unreadable;
        if let Some(d) = self.durable.as_mut().filter(|_| s.journaled) {
            let cid = s.client_id.to_string();
            for jid in expired.iter().filter(|j| **j != 0) {
                d.note(&Record::MsgDone {
                    client_id: cid.clone(),
                    id: *jid,
                });
            }
            for id in &ids {
                if let Some(i) = s.outbound.get(*id).filter(|i| i.journal_id != 0) {
                    d.note(&Record::MsgState {
                        client_id: cid.clone(),
                        id: i.journal_id,
                        packet_id: id.get(),
                        state: records::STATE_AWAIT_ACK,
                    });
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        let v = s.protocol;
        let packets: Vec<(Publish, Instant, u64)> = ids
            .iter()
            .filter_map(|id| s.outbound.get(*id))
            .map(|i| {
                let p = make_publish(
                    now,
                    &i.message,
                    i.qos,
                    i.retain,
                    &i.subscription_ids,
                    Some(i.packet_id),
                    Dup::First,
                    v,
                );
                (p, i.message.received_at, i.message.origin)
            })
            .collect();
        // A QoS 2 PUBLISH goes once its packet id is durable: were it lost, the message would
        // be sent again under another id, which the client cannot recognise as a duplicate.
        if packets.iter().any(|(p, ..)| p.qos == QoS::ExactlyOnce) {
            self.gate_output(key, self.sync_needed_since(before));
        }
        for (p, received_at, origin) in &packets {
            self.write_publish(key, p, None);
            self.record_publish_to_write(*received_at, *origin, p.qos);
        }
        self.awaiting_from(sid, key);
    }

    /// After a reconnect, every unacknowledged delivery goes again: PUBLISH with DUP, or PUBREL
    /// where PUBREC already arrived [MQTT-4.4.0-1].
    pub(super) fn resend_inflight(&mut self, sid: u64) {
        let now = self.clock.now();
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(key) = s.connection() else { return };
        let v = s.protocol;
        let mut packets = Vec::new();
        for i in s.outbound.inflight() {
            if i.state == InflightState::AwaitPubComp {
                packets.push(Packet::PubRel(PubResp::new(i.packet_id)));
            } else {
                packets.push(Packet::Publish(make_publish(
                    now,
                    &i.message,
                    i.qos,
                    i.retain,
                    &i.subscription_ids,
                    Some(i.packet_id),
                    Dup::Again,
                    v,
                )));
            }
        }
        for p in &packets {
            match p {
                Packet::Publish(p) => self.write_publish(key, p, None),
                other => self.send(key, other),
            }
        }
    }

    /// PUBACK: a QoS 1 delivery is done, and its window slot is free for the queue.
    pub(super) fn on_puback(&mut self, sid: u64, r: PubResp) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(jid) = s.outbound.on_puback(r.packet_id) {
            self.delivery_done(sid, jid);
            self.refill(sid);
        }
    }

    /// PUBCOMP: a QoS 2 delivery is done.
    pub(super) fn on_pubcomp(&mut self, sid: u64, r: PubResp) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(jid) = s.outbound.on_pubcomp(r.packet_id) {
            self.delivery_done(sid, jid);
            self.refill(sid);
        }
    }

    /// PUBREC from a subscriber: PUBREL goes once the new state is durable. Sent earlier, a
    /// power loss would bring back the delivery as unacknowledged, and its resend would reach
    /// a client that completed it already as a new message: once PUBREL is sent, the PUBLISH
    /// must never be sent again [MQTT-4.3.3-6].
    pub(super) fn on_pubrec(&mut self, key: usize, sid: u64, r: PubResp) {
        let before = self.answer_mark(sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let failed = r.reason.is_error();
        match s.outbound.on_pubrec(r.packet_id, failed) {
            PubRecOutcome::Failed(jid) => {
                self.delivery_done(sid, jid);
                self.refill(sid);
            }
            PubRecOutcome::Released(jid) => {
                if jid != 0 && s.journaled {
                    let client_id = s.client_id.to_string();
                    self.jnote(Record::MsgState {
                        client_id,
                        id: jid,
                        packet_id: r.packet_id.get(),
                        state: records::STATE_AWAIT_PUBCOMP,
                    });
                }
                let rel = Packet::PubRel(PubResp::new(r.packet_id));
                self.send_when_durable(before, key, sid, rel);
            }
            PubRecOutcome::Repeated => {
                let rel = Packet::PubRel(PubResp::new(r.packet_id));
                self.send_when_durable(before, key, sid, rel);
            }
            PubRecOutcome::Unknown => {
                if self.conns[key].version.is_v5() {
                    let rel =
                        PubResp::with_reason(r.packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
                    self.send(key, &Packet::PubRel(rel));
                }
            }
        }
    }

    /// A journaled delivery is finished (acknowledged, refused or expired).
    pub(super) fn delivery_done(&mut self, sid: u64, jid: u64) {
        if jid == 0 {
            return;
        }
        if let Some(s) = self.sessions.get(&sid).filter(|s| s.journaled) {
            let client_id = s.client_id.to_string();
            self.jnote(Record::MsgDone { client_id, id: jid });
        }
    }
}

/// How one session gets one message.
pub(super) struct Delivery {
    /// The lower of the message's QoS and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag as sent to this subscriber.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub source: Source,
    /// The shared subscription group it came through (0: none).
    pub shared_group: GroupId,
}

/// Where a delivered message comes from.
pub(super) enum Source {
    /// A PUBLISH (or will) just received: its publish-to-write latency is recorded.
    Publish,
    /// The retained store, for a new subscription.
    Retained,
}

/// Whether a PUBLISH is sent for the first time or again after a reconnect (DUP).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dup {
    First,
    Again,
}
