//! PUBLISH in: validation, acknowledgements in order and after every shard took the message,
//! routing to local and remote subscribers and shared groups, retained messages, wills.

use super::*;

impl ShardState {
    pub(super) fn on_publish(&mut self, key: usize, sid: u64, mut p: Publish) {
        // [MQTT-3.2.2-11] above Maximum QoS; [MQTT-3.2.2-14] RETAIN without Retain Available.
        if p.qos as u8 > self.cfg.max_qos {
            return self.close_conn(key, Close::Error(ReasonCode::QOS_NOT_SUPPORTED));
        }
        if p.retain && !self.cfg.retain_available {
            return self.close_conn(key, Close::Error(ReasonCode::RETAIN_NOT_SUPPORTED));
        }
        // [MQTT-3.3.4-6] Subscription Identifiers are the server's to send, never the client's.
        if p.properties
            .as_ref()
            .is_some_and(|pr| !pr.subscription_identifiers.is_empty())
        {
            return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
        }
        if let Some(alias) = p.properties.as_ref().and_then(|pr| pr.topic_alias) {
            // [MQTT-3.3.2-8] 0 and [MQTT-3.3.2-9] above Topic Alias Maximum are invalid.
            let max = self.cfg.topic_alias_maximum;
            if alias == 0 || alias > max {
                return self.close_conn(key, Close::Error(ReasonCode::TOPIC_ALIAS_INVALID));
            }
            let conn = &mut self.conns[key];
            let table = &mut conn.extra.get_or_insert_with(Box::default).input;
            if table.len() < max as usize {
                table.resize(max as usize, None);
            }
            let slot = &mut table[alias as usize - 1];
            if p.topic.is_empty() {
                // An alias never set on this connection is a protocol error (3.3.2.3.4).
                match slot {
                    Some(t) => p.topic = t.clone(),
                    None => return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR)),
                }
            } else if validate_topic_name(&p.topic, self.cfg.max_topic_levels).is_ok() {
                // Kept for the connection's life: not a slice of the read buffer.
                *slot = Some(ByteStr::from(p.topic.as_str()));
            }
        }
        if validate_topic_name(&p.topic, self.cfg.max_topic_levels).is_err() {
            return self.close_conn(key, Close::Error(ReasonCode::TOPIC_NAME_INVALID));
        }
        self.counters.msgs_in[p.qos as usize] += 1;
        let origin = self.global_id(sid);
        let durable = p.qos != QoS::AtMostOnce || p.retain;
        let mut expires_at = None;
        let properties = p.properties.and_then(|mut pr| {
            pr.topic_alias = None;
            pr.subscription_identifiers.clear();
            if let Some(secs) = pr.message_expiry_interval {
                expires_at = Some(self.now() + std::time::Duration::from_secs(secs.into()));
            }
            (!pr.is_empty()).then(|| Arc::new(*pr))
        });
        let mut msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            origin,
            expires_at,
            received_at: self.now(),
        };
        if durable {
            // Held beyond this event: do not pin the shared read buffer.
            msg = msg.compacted();
        }
        let Some(id) = p.packet_id else {
            self.route(msg, None);
            return;
        };
        let before = self.jseq();
        if p.qos == QoS::ExactlyOnce {
            let max = self.cfg.max_inflight as usize;
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            if !s.inbound_qos2.on_publish(id) {
                // A retransmission of a message already routed [MQTT-4.3.3-9]: answer again.
                return self.queue_ack(sid, id, p.qos, None, true, 0, false);
            }
            if s.inbound_qos2.len() > max {
                // [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISHes than Receive Maximum.
                return self.close_conn(key, Close::Error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
            }
            if s.journaled {
                let client_id = s.client_id.to_string();
                self.jnote(Record::Qos2In {
                    client_id,
                    packet_id: id.get(),
                });
            }
        }
        let token = self.next_token;
        self.next_token += 1;
        self.delivery_refused = false;
        let routed = self.route(msg, Some(token));
        let refused = std::mem::take(&mut self.delivery_refused);
        let pending = (routed.awaiting > 0).then_some((token, routed.awaiting));
        let need = self.jneed(before);
        self.queue_ack(sid, id, p.qos, pending, routed.matched_here, need, refused);
    }

    /// Queues the PUBACK/PUBREC of a PUBLISH behind those of earlier PUBLISHes of the session,
    /// and sends every answer at the front that no longer waits for another shard.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_ack(
        &mut self,
        sid: u64,
        packet_id: PacketId,
        qos: QoS,
        pending: Option<(u64, usize)>,
        matched: bool,
        durable: u64,
        refused: bool,
    ) {
        let (token, remaining) = pending.unwrap_or((0, 0));
        if remaining > 0 {
            self.ack_owner.insert(token, sid);
        }
        self.acks.entry(sid).or_default().push_back(AckSlot {
            token,
            packet_id,
            qos,
            remaining,
            matched,
            durable,
            refused,
        });
        if durable > 0 {
            self.after_sync(durable, AfterSync::ReleaseAcks(sid));
        }
        self.release_acks(sid);
    }

    pub(super) fn on_publish_ack(&mut self, token: u64, matched: bool, refused: bool) {
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
        slot.matched |= matched;
        slot.refused |= refused;
        if slot.remaining == 0 {
            self.ack_owner.remove(&token);
            self.release_acks(sid);
        }
    }

    pub(super) fn release_acks(&mut self, sid: u64) {
        let key = self.sessions.get(&sid).and_then(|s| s.connection);
        let Some(q) = self.acks.get_mut(&sid) else {
            return;
        };
        let synced = self.durable.as_ref().map_or(u64::MAX, |d| {
            if d.gates() {
                d.journal.synced_seq()
            } else {
                u64::MAX
            }
        });
        let mut ready = Vec::new();
        while q
            .front()
            .is_some_and(|a| a.remaining == 0 && a.durable <= synced)
        {
            ready.push(q.pop_front().expect("front exists"));
        }
        if q.is_empty() {
            self.acks.remove(&sid);
        }
        let Some(key) = key else { return };
        for a in ready {
            if a.refused {
                // Not stored everywhere it had to be: never acknowledged as a success.
                // MQTT 5 says why; 3.1.x has no negative PUBACK, so the connection closes
                // unacknowledged and the client sends the message again later.
                self.counters.journal_refused_acks += 1;
                if !self.conns.get(key).is_some_and(|c| c.version.is_v5()) {
                    self.close_conn(key, Close::Error(ReasonCode::QUOTA_EXCEEDED));
                    return;
                }
                if a.qos == QoS::ExactlyOnce {
                    // A PUBREC with an error ends the flow: the id is free again.
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.inbound_qos2.on_pubrel(a.packet_id);
                    }
                }
                let mut r = PubResp::with_reason(a.packet_id, ReasonCode::QUOTA_EXCEEDED);
                if self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.problem_information)
                {
                    r.properties = Some(Box::new(Properties {
                        reason_string: reason_text(ReasonCode::QUOTA_EXCEEDED).map(ByteStr::from),
                        ..Properties::default()
                    }));
                }
                let packet = if a.qos == QoS::ExactlyOnce {
                    Packet::PubRec(r)
                } else {
                    Packet::PubAck(r)
                };
                self.send(key, &packet);
                continue;
            }
            let reason = self.no_subscribers_reason(key, a.matched);
            let r = PubResp::with_reason(a.packet_id, reason);
            let packet = if a.qos == QoS::ExactlyOnce {
                Packet::PubRec(r)
            } else {
                Packet::PubAck(r)
            };
            self.send(key, &packet);
        }
    }

    pub(super) fn no_subscribers_reason(&self, key: usize, any: bool) -> ReasonCode {
        if !any && self.conns.get(key).is_some_and(|c| c.version.is_v5()) {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        }
    }

    /// Sends a message to every shard with a matching subscription and stores it if retained.
    /// With `ack`, the other shards it goes to answer `PublishAck`; their number is returned.
    pub(super) fn route(&mut self, msg: Message, ack: Option<u64>) -> Routed {
        let mut routed = Routed {
            matched_here: false,
            awaiting: 0,
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
            if msg.qos == QoS::AtMostOnce && self.peer_backlog[s as usize] > SPILL_MAX_BATCHES {
                self.counters.dropped_mesh_backlog += 1;
                continue;
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
                let Some(m) = self.shared.pick(gid, None) else {
                    continue;
                };
                if m.shard as usize == self.id {
                    routed.matched_here |= self.deliver_shared_local(m.session, gid, &msg);
                } else {
                    self.send_to_member(gid, m, &msg, ack);
                    routed.awaiting += usize::from(ack.is_some());
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
        ack: Option<u64>,
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

    /// Delivers to a local member of a shared subscription, with that subscription's options.
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
        self.deliver_to_session(sid, msg, qos, retain, ids, true, gid);
        true
    }

    /// Adds a subscription of a local session to the matching structures and tells the other
    /// shards; returns how many `RouteAck { token }` to expect.
    pub(super) fn install_subscription(
        &mut self,
        sid: u64,
        filter: &ByteStr,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        token: u64,
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
        // The first local subscriber of a filter is news for the other shards.
        let first = self.subs.subscribers(filter).next().is_none();
        self.subs.insert(filter, sid, entry);
        if first {
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
    }

    /// Publishes broker statistics as retained QoS 0 messages, like any publish but not
    /// counted as client traffic.
    pub fn publish_sys(&mut self, topics: Vec<(String, String)>) {
        let dropped = self.counters.dropped_no_subscriber;
        let now = self.now();
        for (topic, payload) in topics {
            let msg = Message {
                topic: ByteStr::from(topic),
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                // Session 0 is never a client's: no No Local match.
                origin: self.global_id(0),
                expires_at: None,
                received_at: now,
            };
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
        let mut props = w.properties;
        props.will_delay_interval = None;
        let expires_at = props
            .message_expiry_interval
            .map(|secs| self.now() + std::time::Duration::from_secs(secs.into()));
        let msg = Message {
            expires_at,
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: (!props.is_empty()).then(|| Arc::new(props)),
            origin,
            received_at: self.now(),
        }
        .compacted();
        self.counters.wills += 1;
        self.route(msg, None);
    }
}
