//! Delivery: a message into each matching session (inflight window, queue, journal), resends
//! after reconnect, and the outgoing QoS 1/2 acknowledgement flows.

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
                self.deliver_to_session(sid, msg, q.min(msg.qos), rap && msg.retain, ids, true, 0);
            }
        }
        self.match_buf = m;
        delivered
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_to_session(
        &mut self,
        sid: u64,
        msg: &Message,
        qos: QoS,
        retain: bool,
        ids: Vec<u32>,
        live: bool,
        shared_group: GroupId,
    ) {
        // Retained messages were received long ago: no publish-to-write latency for them.
        let received = live.then_some(msg);
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
        let conn = s.connection;
        let v = s.protocol;
        let check_size = s.max_packet_size != u32::MAX;
        // Built once, for the size check and for the write; not at all for an offline session
        // without a size limit. The packet id is a placeholder of the same length until the
        // inflight window assigns one.
        let mut p = (check_size || conn.is_some())
            .then(|| make_publish(now, msg, qos, retain, &ids, Some(PacketId::MIN), false, v));
        // [MQTT-3.1.2-24] never send a packet larger than the client's Maximum Packet Size.
        if let Some(p) = p.as_ref().filter(|_| check_size) {
            let size = publish_header_len(p, v) + p.payload.len();
            if size > s.max_packet_size as usize {
                self.counters.dropped_too_large += 1;
                return;
            }
        }
        if qos == QoS::AtMostOnce {
            match (conn, p) {
                (Some(key), Some(p)) => self.write_publish(key, &p, received),
                _ => self.counters.dropped_offline_qos0 += 1,
            }
            return;
        }
        // A persistent session's delivery is journaled before anyone is told it is stored.
        let journaled = s.journaled && self.durable.is_some();
        let mut journal_id = 0;
        if journaled {
            let d = self.durable.as_mut().expect("journaled");
            if !d.has_room() {
                self.counters.dropped_journal_full += 1;
                self.delivery_refused = true;
                return;
            }
            journal_id = d.next_msg_id;
            d.next_msg_id += 1;
        }
        let q = Queued {
            qos,
            message: msg.clone(),
            retain,
            subscription_ids: ids,
            journal_id,
            shared_group,
        };
        let offer = s.outbound.offer(q, conn.is_some());
        if journaled {
            // Encoded from the session's stored entry: nothing is copied to build the record.
            let stored = match offer {
                Offer::Send(id) => s
                    .outbound
                    .get(id)
                    .map(|i| (&i.subscription_ids, id.get(), records::STATE_AWAIT_ACK)),
                Offer::Queued => s
                    .outbound
                    .queued()
                    .last()
                    .map(|q| (&q.subscription_ids, 0, records::STATE_QUEUED)),
                Offer::Dropped => None,
            };
            if let Some((sub_ids, pid, state)) = stored {
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
                if let Err(e) = d.write_msg(&view) {
                    // Kept in memory and delivered, but the publisher must not be told it is
                    // stored.
                    d.write_errors += 1;
                    self.delivery_refused = true;
                    tracing::error!(shard = self.id, error = %e, "journal append failed");
                }
            }
        }
        match offer {
            Offer::Send(id) => {
                // Offered as online, so the connection and the packet exist.
                if let (Some(key), Some(p)) = (conn, p.as_mut()) {
                    p.packet_id = Some(id);
                    self.write_publish(key, p, received);
                }
            }
            Offer::Queued => self.counters.queued += 1,
            Offer::Dropped => self.counters.dropped_queue_full += 1,
        }
    }

    /// Moves queued messages into free inflight slots and sends them.
    pub(super) fn refill(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(key) = s.connection else { return };
        let now = self.clock.now();
        let (ids, expired) = s.outbound.refill(|q| !q.message.is_expired(now));
        self.counters.dropped_expired += expired.len() as u64;
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
                    false,
                    v,
                );
                (p, i.message.received_at, i.message.origin)
            })
            .collect();
        for (p, received_at, origin) in &packets {
            self.write_publish(key, p, None);
            self.record_publish_to_write(*received_at, *origin, p.qos);
        }
    }

    /// After a reconnect, every unacknowledged delivery goes again: PUBLISH with DUP, or PUBREL
    /// where PUBREC already arrived [MQTT-4.4.0-1].
    pub(super) fn resend_inflight(&mut self, sid: u64) {
        let now = self.clock.now();
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(key) = s.connection else { return };
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
                    true,
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

    pub(super) fn on_pubrec(&mut self, key: usize, sid: u64, r: PubResp) {
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
                self.send(key, &Packet::PubRel(PubResp::new(r.packet_id)));
            }
            PubRecOutcome::Repeated => {
                self.send(key, &Packet::PubRel(PubResp::new(r.packet_id)));
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
