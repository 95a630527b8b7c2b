//! PUBLISH in: validation, acknowledgements in order and after every shard took the message,
//! routing to local and remote subscribers and shared groups, retained messages, wills.

use super::*;

impl ShardState {
    pub(super) fn on_publish(&mut self, key: usize, sid: u64, mut p: Publish) {
        if let Err(reason) = self.check_publish(key, &mut p) {
            return self.close_conn(key, Close::Error(reason));
        }
        self.counters.msgs_in[p.qos as usize] += 1;
        if self.acl.is_some() && !self.may_write(sid, &p.topic) {
            return self.deny_publish(key, sid, &p);
        }
        let origin = self.global_id(sid);
        let durable = p.qos != QoS::AtMostOnce || p.retain;
        let body = Body {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties.map(|b| *b),
        };
        let mut msg = self.message(body, origin, Expiry::FromInterval);
        if durable {
            // Held beyond this event: do not pin the shared read buffer.
            msg = msg.compacted();
        }
        let Some(id) = p.packet_id else {
            if self.is_held(sid) {
                return self.hold(sid, None, msg);
            }
            self.route(msg, None);
            return;
        };
        let before = self.journal_mark();
        if p.qos == QoS::ExactlyOnce {
            match self.receive_qos2(sid, id, p.dup) {
                Qos2In::New => {}
                Qos2In::Gone => return,
                // A retransmission of a message already routed [MQTT-4.3.3-9]: answer again,
                // once the first answer could have gone (it waits behind it in the queue) and
                // what routing it wrote is durable (maybe written by an earlier event).
                Qos2In::Again => {
                    let need = self.sync_needed_since(JournalSeq::NONE);
                    return self.queue_ack(key, sid, id, p.qos, None, Taken::Delivered, need);
                }
                Qos2In::Refused => {
                    // Refused again (0x97), but counted once, when it was first refused. Its
                    // records were made durable for the first answer, which this one follows.
                    let none = JournalSeq::NONE;
                    return self.queue_ack(key, sid, id, p.qos, None, Taken::QueueFull, none);
                }
                Qos2In::TooMany => {
                    // [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISHes than Receive Maximum.
                    let reason = ReasonCode::RECEIVE_MAXIMUM_EXCEEDED;
                    return self.close_conn(key, Close::Error(reason));
                }
            }
        }
        // An offline session it would reach has a full queue: an MQTT 5 publisher hears 0x97,
        // nobody gets the message, and the publisher is not read until there is room (quota.rs).
        if self.conns[key].version.is_v5() && self.refuse_for_full_queue(sid, key, &msg) {
            if p.qos == QoS::ExactlyOnce {
                // At once: a retransmission read before the answer goes is refused too.
                self.settle_refused_qos2(sid, id);
            }
            let need = self.sync_needed_since(before);
            self.queue_ack(key, sid, id, p.qos, None, Taken::QueueFull, need);
            return self.wait_for_room(sid, &msg.topic);
        }
        // A QoS 2 receipt just journaled (a persistent session), or earlier PUBLISHes of the
        // session still held: see `held.rs`.
        let receipt =
            p.qos == QoS::ExactlyOnce && self.sync_needed_since(before) != JournalSeq::NONE;
        if receipt || self.is_held(sid) {
            return self.hold(sid, Some((id, p.qos)), msg);
        }
        let token = AckToken(self.new_token());
        self.delivery_refused = false;
        let routed = self.route(msg, Some(token));
        self.wait_for_peer(sid, routed.congested);
        let refused = std::mem::take(&mut self.delivery_refused);
        let pending = (routed.awaiting > 0).then_some((token, routed.awaiting));
        let taken = Taken::new(routed.matched_here, refused);
        if p.qos == QoS::ExactlyOnce && routed.routing_done() && !taken.is_refused() {
            self.qos2_routed(sid, id);
        }
        let need = self.sync_needed_since(before);
        self.queue_ack(key, sid, id, p.qos, pending, taken, need);
    }

    /// What makes a PUBLISH from a client a protocol error, checked before anything is done
    /// with it; resolves a topic alias into the topic.
    fn check_publish(&mut self, key: usize, p: &mut Publish) -> Result<(), ReasonCode> {
        // [MQTT-3.2.2-11] above Maximum QoS; [MQTT-3.2.2-14] RETAIN without Retain Available.
        if p.qos as u8 > self.cfg.max_qos {
            return Err(ReasonCode::QOS_NOT_SUPPORTED);
        }
        if p.retain && !self.cfg.retain_available {
            return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
        let props = p.properties.as_deref();
        // [MQTT-3.3.4-6] Subscription Identifiers are the server's to send, never the client's.
        if props.is_some_and(|pr| !pr.subscription_identifiers.is_empty()) {
            return Err(ReasonCode::PROTOCOL_ERROR);
        }
        if let Some(alias) = props.and_then(|pr| pr.topic_alias) {
            self.resolve_alias(key, alias, p)?;
        }
        if validate_topic_name(&p.topic, self.cfg.max_topic_levels).is_err() {
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
        Ok(())
    }

    /// A client's topic alias: an empty topic takes the alias's topic, a topic sets it.
    fn resolve_alias(&mut self, key: usize, alias: u16, p: &mut Publish) -> Result<(), ReasonCode> {
        // [MQTT-3.3.2-8] 0 and [MQTT-3.3.2-9] above Topic Alias Maximum are invalid.
        let max = self.cfg.topic_alias_maximum;
        if alias == 0 || alias > max {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        let conn = &mut self.conns[key];
        let table = &mut conn.extra.get_or_insert_with(Box::default).input;
        if table.len() < max as usize {
            table.resize(max as usize, None);
        }
        let slot = &mut table[alias as usize - 1];
        if p.topic.is_empty() {
            // An alias never set on this connection is a protocol error (3.3.2.3.4).
            p.topic = slot.clone().ok_or(ReasonCode::PROTOCOL_ERROR)?;
        } else if validate_topic_name(&p.topic, self.cfg.max_topic_levels).is_ok() {
            // Kept for the connection's life: not a slice of the read buffer.
            *slot = Some(ByteStr::from(p.topic.as_str()));
        }
        Ok(())
    }

    /// Records the packet id of a QoS 2 PUBLISH until its PUBREL (journaled for a persistent
    /// session), so that a retransmission is not routed twice.
    pub(super) fn receive_qos2(&mut self, sid: u64, id: PacketId, dup: bool) -> Qos2In {
        let max = self.cfg.max_inflight as usize;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Qos2In::Gone;
        };
        match s.inbound_qos2.on_publish(id, dup) {
            Qos2Seen::Again => return Qos2In::Again,
            Qos2Seen::Refused => return Qos2In::Refused,
            // Its receipt is in the journal already.
            Qos2Seen::Unknown => return Qos2In::New,
            Qos2Seen::New => {}
        }
        if s.inbound_qos2.unreleased() > max {
            // Not received: the connection closes, and the retransmission is new.
            s.inbound_qos2.on_pubrel(id);
            return Qos2In::TooMany;
        }
        if s.journaled {
            let client_id = s.client_id.to_string();
            self.jnote(Record::Qos2In {
                client_id,
                packet_id: id.get(),
                routed: false,
            });
        }
        Qos2In::New
    }

    /// PUBREL for a QoS 2 PUBLISH received: its packet id is released, and PUBCOMP goes once
    /// that is durable. Were the id forgotten in a crash after PUBCOMP, the client's next
    /// message with that id would be taken for a retransmission and lost.
    pub(super) fn on_pubrel(&mut self, key: usize, sid: u64, r: PubResp) {
        let before = self.answer_mark(sid);
        if !self.sessions.contains_key(&sid) {
            return;
        }
        let reason = if self.forget_qos2(sid, r.packet_id) {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        let packet = Packet::PubComp(PubResp::with_reason(r.packet_id, reason));
        self.send_when_durable(before, key, sid, packet);
    }

    /// Queues the PUBACK/PUBREC of a PUBLISH (read on connection `key`) behind those of
    /// earlier PUBLISHes of the session, and sends every answer at the front that no longer
    /// waits for another shard or the journal.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_ack(
        &mut self,
        key: usize,
        sid: u64,
        packet_id: PacketId,
        qos: QoS,
        pending: Option<(AckToken, usize)>,
        taken: Taken,
        sync_before: JournalSeq,
    ) {
        // The common case: nothing to wait for, nothing queued before it.
        if pending.is_none() && sync_before == JournalSeq::NONE && !self.acks.contains_key(&sid) {
            let a = AckSlot {
                attachment: 0,
                token: AckToken(0),
                packet_id,
                qos,
                remaining: 0,
                taken,
                sync_before,
                marked: true,
            };
            self.answer_publish(key, sid, &a);
            return;
        }
        let (token, remaining) = pending.unwrap_or((AckToken(0), 0));
        let slot = AckSlot {
            attachment: self.conn_ref(sid).attachment,
            token,
            packet_id,
            qos,
            remaining,
            taken,
            sync_before,
            marked: false,
        };
        self.push_ack_slot(sid, slot);
        if sync_before != JournalSeq::NONE {
            self.after_sync(sync_before, AfterSync::ReleaseAcks(sid));
        }
        self.release_acks(sid);
    }

    /// Queues an answer slot behind the session's earlier ones; one that waits for other
    /// shards is found again by its token.
    pub(super) fn push_ack_slot(&mut self, sid: u64, slot: AckSlot) {
        if slot.remaining > 0 {
            self.ack_owner.insert(slot.token, sid);
        }
        self.acks.entry(sid).or_default().push_back(slot);
        self.pace_reads(sid);
    }

    pub(super) fn on_publish_ack(&mut self, token: AckToken, taken: Taken) {
        let Some(&sid) = self.ack_owner.get(&token) else {
            return;
        };
        let Some(slot) = self
            .acks
            .get_mut(&sid)
            .and_then(|q| q.iter_mut().find(|a| a.token == token && a.remaining > 0))
        else {
            self.ack_owner.remove(&token);
            return;
        };
        slot.remaining -= 1;
        slot.taken = slot.taken.max(taken);
        if slot.remaining == 0 {
            self.ack_owner.remove(&token);
            self.release_acks(sid);
        }
    }

    pub(super) fn release_acks(&mut self, sid: u64) {
        self.release_ready_acks(sid);
        self.pace_reads(sid);
    }

    fn release_ready_acks(&mut self, sid: u64) {
        let mut ready = Vec::new();
        while let Some(q) = self.acks.get_mut(&sid) {
            let durable = self.durable.as_ref();
            let mut mark = None;
            while let Some(a) = q.front() {
                if a.remaining > 0 || !durable.is_none_or(|d| d.is_synced(a.sync_before)) {
                    break;
                }
                if a.qos == QoS::ExactlyOnce && !a.taken.is_refused() && !a.marked {
                    mark = Some(a.packet_id);
                    break;
                }
                ready.push(q.pop_front().expect("front exists"));
            }
            if q.is_empty() {
                self.acks.remove(&sid);
            }
            let Some(pid) = mark else { break };
            // A QoS 2 message routed to other shards: its routing is recorded as finished,
            // and PUBREC waits for that record too (see `held.rs`).
            let before = self.journal_mark();
            self.qos2_routed(sid, pid);
            let need = self.sync_needed_since(before);
            let front = self.acks.get_mut(&sid).and_then(|q| q.front_mut());
            let front = front.expect("still there");
            front.marked = true;
            if need != JournalSeq::NONE {
                front.sync_before = need;
                self.after_sync(need, AfterSync::ReleaseAcks(sid));
                break;
            }
        }
        if ready.is_empty() {
            return;
        }
        let (attachment, key) = self
            .sessions
            .get(&sid)
            .map_or((0, None), |s| (s.attachment, s.connection()));
        for a in ready
            .iter()
            .filter(|a| a.qos == QoS::ExactlyOnce && a.taken.is_refused())
        {
            if key.is_none() || a.attachment != attachment {
                self.settle_refused_qos2(sid, a.packet_id);
            }
        }
        // Owed on a connection that is gone: the client sends the PUBLISH again.
        let Some(key) = key else {
            return;
        };
        for a in ready.iter().filter(|a| a.attachment == attachment) {
            if !self.answer_publish(key, sid, a) {
                return;
            }
        }
    }

    /// A QoS 2 PUBLISH was refused. Its receipt must not make a retransmission look routed.
    /// An MQTT 5 client's flow is over, but the answer may be lost with the connection: a
    /// retransmission (DUP) is refused again, a new message under the id is routed. The mark
    /// lives in memory and the journal records the flow as done, so after a restart the id
    /// is free (a retransmission then is routed again: a duplicate, never a loss). A 3.1.x
    /// client is never told (its connection closes): its retransmission is routed anew.
    fn settle_refused_qos2(&mut self, sid: u64, id: PacketId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !s.protocol.is_v5() {
            self.forget_qos2(sid, id);
            return;
        }
        s.inbound_qos2.refused(id);
        // The flow is over: a restart must not bring the receipt back as unfinished.
        self.note_qos2_done(sid, id);
    }

    /// Drops the receipt of a QoS 2 packet id, durably for a persistent session; whether
    /// there was one.
    fn forget_qos2(&mut self, sid: u64, id: PacketId) -> bool {
        let found = self
            .sessions
            .get_mut(&sid)
            .is_some_and(|s| s.inbound_qos2.on_pubrel(id));
        if found {
            self.note_qos2_done(sid, id);
        }
        found
    }

    /// Journals the end of a QoS 2 packet id's flow, for a persistent session.
    fn note_qos2_done(&mut self, sid: u64, id: PacketId) {
        if let Some(s) = self.sessions.get(&sid).filter(|s| s.journaled) {
            let client_id = s.client_id.to_string();
            self.jnote(Record::Qos2Done {
                client_id,
                packet_id: id.get(),
            });
        }
    }

    /// Sends the PUBACK/PUBREC of a PUBLISH; false if that closed the connection instead.
    fn answer_publish(&mut self, key: usize, sid: u64, a: &AckSlot) -> bool {
        let r = if a.taken.is_refused() {
            // Not stored everywhere it had to be: never acknowledged as a success. MQTT 5
            // says why; 3.1.x has no negative PUBACK, so the connection closes unacknowledged
            // and the client sends the message again later.
            if a.taken == Taken::Refused {
                self.counters.journal_refused_acks += 1;
            }
            if a.qos == QoS::ExactlyOnce {
                self.settle_refused_qos2(sid, a.packet_id);
            }
            if !self.conns.get(key).is_some_and(|c| c.version.is_v5()) {
                self.close_conn(key, Close::Error(ReasonCode::QUOTA_EXCEEDED));
                return false;
            }
            let problem_information = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.problem_information);
            let mut r = PubResp::with_reason(a.packet_id, ReasonCode::QUOTA_EXCEEDED);
            if problem_information {
                r.properties = Some(Box::new(Properties {
                    reason_string: reason_text(ReasonCode::QUOTA_EXCEEDED).map(ByteStr::from),
                    ..Properties::default()
                }));
            }
            r
        } else if a.taken == Taken::NotAuthorized {
            let v5 = self.conns.get(key).is_some_and(|c| c.version.is_v5());
            if !v5 {
                PubResp::with_reason(a.packet_id, ReasonCode::SUCCESS)
            } else {
                if a.qos == QoS::ExactlyOnce {
                    // A PUBREC of 0x80 or more ends the flow (MQTT 5 4.3.3): no PUBREL.
                    self.settle_refused_qos2(sid, a.packet_id);
                }
                PubResp::with_reason(a.packet_id, ReasonCode::NOT_AUTHORIZED)
            }
        } else {
            let reason = self.no_subscribers_reason(key, a.taken);
            PubResp::with_reason(a.packet_id, reason)
        };
        let packet = if a.qos == QoS::ExactlyOnce {
            Packet::PubRec(r)
        } else {
            Packet::PubAck(r)
        };
        self.send(key, &packet);
        if a.taken.is_refused() {
            if let Some(c) = self.conns.get_mut(key) {
                c.extra.get_or_insert_with(Box::default).refusal_unsent = true;
            }
        }
        true
    }

    /// The reason code of a PUBACK/PUBREC not refused: 0x10 (No matching subscribers) for an
    /// MQTT 5 publisher when no subscription matched anywhere, else success.
    pub(super) fn no_subscribers_reason(&self, key: usize, taken: Taken) -> ReasonCode {
        let v5 = self.conns.get(key).is_some_and(|c| c.version.is_v5());
        if taken == Taken::NoSubscribers && v5 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        }
    }

    /// Sends a message to every shard with a matching subscription and stores it if retained.
    /// With `ack`, the other shards it goes to answer `PublishAck`; their number is returned,
    /// one more if deliveries here deferred the answer (backpressure.rs).
    pub(super) fn route(&mut self, msg: Message, ack: Option<AckToken>) -> Routed {
        self.begin_deliveries(self.id, ack);
        let mut routed = self.route_everywhere(msg, ack);
        if self.end_deliveries(Taken::Delivered) {
            routed.awaiting += 1;
            routed.deferred_here = true;
        }
        routed
    }

    fn route_everywhere(&mut self, msg: Message, ack: Option<AckToken>) -> Routed {
        let mut routed = Routed {
            matched_here: false,
            awaiting: 0,
            deferred_here: false,
            congested: None,
        };
        if msg.retain {
            let owner = home_shard(msg.topic.as_bytes(), self.nshards);
            if owner == self.id {
                if !self.retain_set(msg.clone()) {
                    self.delivery_refused = true;
                }
            } else {
                self.fx.batches[owner].push(ShardMsg::RetainSet {
                    msg: msg.clone(),
                    ack,
                });
                routed.awaiting += usize::from(ack.is_some());
            }
        }
        routed.matched_here = self.deliver_local(&msg);
        let shards = self.routes.shards_for(&msg.topic);
        for s in shards.iter() {
            if self.peer_backlog[s as usize] > PEER_BACKLOG_MAX {
                if msg.qos == QoS::AtMostOnce {
                    self.counters.dropped_mesh_backlog += 1;
                    continue;
                }
                routed.congested = Some(s);
            }
            let sent_at = self.clock.now();
            self.fx.batches[s as usize].push(ShardMsg::Publish {
                msg: msg.clone(),
                ack,
                sent_at,
            });
            self.counters.cross_shard_out += 1;
            routed.awaiting += usize::from(ack.is_some());
        }
        if !self.shared.is_empty() {
            let mut groups = std::mem::take(&mut self.group_buf);
            groups.clear();
            self.shared.matching(&msg.topic, &mut groups);
            for &gid in &groups {
                // A member here that cannot take it (the ACL) passes it to the next one.
                for _ in 0..self.shared.members(gid) {
                    let Some(m) = self.shared.pick(gid, None) else {
                        break;
                    };
                    if m.shard as usize != self.id {
                        self.send_to_member(gid, m, &msg, ack);
                        routed.awaiting += usize::from(ack.is_some());
                        break;
                    }
                    if self.deliver_shared_local(m.session, gid, &msg) {
                        routed.matched_here = true;
                        break;
                    }
                }
            }
            let any = !groups.is_empty();
            self.group_buf = groups;
            if any {
                return routed;
            }
        }
        if shards.is_empty() && !routed.matched_here {
            self.counters.dropped_no_subscriber += 1;
        }
        routed
    }

    /// Sends a message to the chosen member of a shared subscription on another shard (or
    /// delivers it here).
    pub(super) fn send_to_member(
        &mut self,
        gid: GroupId,
        m: Member,
        msg: &Message,
        ack: Option<AckToken>,
    ) {
        if m.shard as usize == self.id {
            self.deliver_shared_local(m.session, gid, msg);
            return;
        }
        let Some(key) = self.shared.key(gid).cloned() else {
            return;
        };
        self.fx.batches[m.shard as usize].push(ShardMsg::SharedPublish {
            msg: msg.clone(),
            key,
            session: m.session,
            ack,
            hops: self.nshards.min(8) as u8,
        });
        self.counters.cross_shard_out += 1;
    }

    /// Delivers to a local member of a shared subscription, with that subscription's options;
    /// false if it cannot take it (no such session or subscription, or the ACL keeps it from
    /// reading the topic), and the caller offers it to another member.
    pub(super) fn deliver_shared_local(&mut self, sid: u64, gid: GroupId, msg: &Message) -> bool {
        let Some(key) = self.shared.key(gid) else {
            return false;
        };
        let Some(sub) = self
            .sessions
            .get(&sid)
            .and_then(|s| s.subscriptions.get(key))
        else {
            return false;
        };
        let qos = sub.options.qos.min(msg.qos);
        let retain = sub.options.retain_as_published && msg.retain;
        let ids: Vec<u32> = sub.subscription_id.into_iter().collect();
        let d = Delivery {
            qos,
            retain,
            subscription_ids: ids,
            source: Source::Publish,
            shared_group: gid,
        };
        self.deliver_to_session(sid, msg, d)
    }

    /// Adds a subscription of a local session to the matching structures and tells the other
    /// shards; returns how many `RouteAck { token }` to expect.
    pub(super) fn install_subscription(
        &mut self,
        sid: u64,
        filter: &ByteStr,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        token: RouteToken,
    ) -> usize {
        let mut awaiting = 0;
        if let Ok(Some(sh)) = parse_shared(filter, usize::MAX) {
            let member = Member {
                shard: self.id as u16,
                session: sid,
                options,
                subscription_id,
            };
            self.shared.join(filter, sh.filter, member);
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.fx.batches[peer].push(ShardMsg::ShareJoin {
                        key: filter.clone(),
                        member,
                        token,
                    });
                    awaiting += 1;
                }
            }
            return awaiting;
        }
        let entry = SubEntry {
            options,
            subscription_id,
        };
        // The first local subscriber of a filter is news for the other shards; a later one
        // while that news is in flight must wait for it too.
        let first = self.subs.subscribers(filter).next().is_none();
        let in_flight = !first
            && self
                .announcing
                .get(filter)
                .is_some_and(|t| self.pending_subacks.contains_key(t));
        self.subs.insert(filter, sid, entry);
        if (first || in_flight) && self.nshards > 1 && token != self.restore_token {
            self.announcing.insert(filter.clone(), token);
            self.announced_now.push(filter.clone());
        }
        if first || in_flight {
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.fx.batches[peer].push(ShardMsg::RouteAdd {
                        filter: filter.clone(),
                        from: self.id as u16,
                        token,
                    });
                    awaiting += 1;
                }
            }
        }
        awaiting
    }

    /// Removes a local session's subscription from the matching structures and tells the
    /// other shards when that changes what they send here.
    pub(super) fn uninstall_subscription(&mut self, sid: u64, filter: &ByteStr) {
        if let Ok(Some(sh)) = parse_shared(filter, usize::MAX) {
            self.shared.leave(filter, sh.filter, self.id as u16, sid);
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.fx.batches[peer].push(ShardMsg::ShareLeave {
                        key: filter.clone(),
                        shard: self.id as u16,
                        session: sid,
                    });
                }
            }
            return;
        }
        self.subs.remove(filter, sid);
        self.drop_interest(filter);
        self.unmark_filter(sid, filter);
    }

    /// Publishes broker statistics as retained QoS 0 messages, like any publish but not
    /// counted as client traffic.
    pub fn publish_sys(&mut self, topics: Vec<(String, String)>) {
        let dropped = self.counters.dropped_no_subscriber;
        for (topic, payload) in topics {
            let body = Body {
                topic: ByteStr::from(topic),
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
            };
            // Session 0 is never a client's: no No Local match.
            let msg = self.message(body, self.global_id(0), Expiry::FromInterval);
            self.route(msg, None);
        }
        self.counters.dropped_no_subscriber = dropped;
    }

    /// Stores (or with an empty payload deletes) a retained message, journaled unless it is a
    /// `$SYS` statistic. False if the journal had no room for it: nothing changed.
    pub(super) fn retain_set(&mut self, msg: Message) -> bool {
        let journaled = self.durable.is_some() && !msg.topic.starts_with("$SYS/");
        // [MQTT-3.3.1-10] an empty payload deletes; [MQTT-3.3.1-5] otherwise it replaces.
        if msg.payload.is_empty() || msg.is_expired(self.now()) {
            if self.retained.remove(&msg.topic).is_some() && journaled {
                self.jnote(Record::RetainClear {
                    topic: msg.topic.to_string(),
                });
            }
            return true;
        }
        if journaled {
            if !self.jroom() {
                self.counters.dropped_journal_full += 1;
                return false;
            }
            let rec = retain_record(&*self.clock, &msg);
            let d = self.durable.as_mut().expect("journaled");
            if let Err(e) = d.write(&rec) {
                d.write_errors += 1;
                tracing::error!(shard = self.id, error = %e, "journal append failed");
                return false;
            }
        }
        let topic = msg.topic.clone();
        self.retained.insert(&topic, msg);
        true
    }

    pub(super) fn publish_will(&mut self, w: LastWill, origin: u64) {
        // Checked at CONNECT, and again now with the rules in force, while its session is
        // there to say who publishes it (wills go from the session's home shard).
        if self.acl.is_some() {
            let sid = origin & ((1 << 48) - 1);
            let mine = (origin >> 48) as usize == self.id && self.sessions.contains_key(&sid);
            if mine && !self.may_write(sid, &w.topic) {
                return;
            }
        }
        let body = Body {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: Some(w.properties),
        };
        let msg = self.message(body, origin, Expiry::FromInterval).compacted();
        self.counters.wills += 1;
        self.route(msg, None);
    }

    /// The one place a [`Message`] is made: the properties that belong to one hop (Topic
    /// Alias, Subscription Identifiers, Will Delay Interval) are dropped, the expiry is set
    /// [MQTT-3.3.2-5], and an empty property set is not kept.
    pub(super) fn message(&self, body: Body, origin: u64, expiry: Expiry) -> Message {
        let now = self.now();
        // Most messages (every MQTT 3.1.x one) have no properties: nothing to build for them.
        let properties = body.properties.and_then(|mut p| {
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            p.will_delay_interval = None;
            (!p.is_empty()).then(|| Arc::new(p))
        });
        let interval = properties.as_ref().and_then(|p| p.message_expiry_interval);
        let expires_at = match expiry {
            Expiry::FromInterval => {
                interval.map(|secs| now + std::time::Duration::from_secs(secs.into()))
            }
            Expiry::AtUnixMs(ms) => env::unix_ms_to_instant(&*self.clock, ms),
        };
        Message {
            topic: body.topic,
            payload: body.payload,
            qos: body.qos,
            retain: body.retain,
            properties,
            origin,
            expires_at,
            received_at: now,
        }
    }
}

/// What a message is made of, before the broker adds where it came from and when it expires.
pub(super) struct Body {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<Properties>,
}

/// Where a message's expiry comes from.
pub(super) enum Expiry {
    /// Its Message Expiry Interval property, counted from now.
    FromInterval,
    /// A wall-clock deadline read back from the journal (0: none).
    AtUnixMs(u64),
}

/// What a QoS 2 PUBLISH's packet id says.
pub(super) enum Qos2In {
    /// First seen: route it.
    New,
    /// A retransmission of one already routed: answer again only.
    Again,
    /// The session is gone: nothing to answer.
    Gone,
    /// More unanswered QoS 2 PUBLISHes than Receive Maximum.
    TooMany,
    /// A retransmission of one refused (MQTT 5): refuse again.
    Refused,
}
