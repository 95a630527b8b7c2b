//! SUBSCRIBE and UNSUBSCRIBE: subscriptions, route announcements to other shards, SUBACK held
//! for route acknowledgements and the journal, retained queries.

use super::*;
use ringmq_codec::SubscribeFilter;

impl ShardState {
    pub(super) fn on_subscribe(&mut self, key: usize, sid: u64, sub: Subscribe) {
        let ids = &sub.properties.subscription_identifiers;
        if !self.cfg.subscription_identifiers && !ids.is_empty() {
            // Announced as unavailable in CONNACK (section 3.8.2.1.2).
            let reason = ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED;
            return self.close_conn(key, Close::Error(reason));
        }
        let subscription_id = ids.first().copied();
        let token = RouteToken(self.new_token());
        let before = self.answer_mark(sid);
        let mut awaiting = 0;
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        for mut f in sub.filters {
            // Granted at most the server's Maximum QoS [MQTT-3.2.2-?].
            if f.options.qos as u8 > self.cfg.max_qos {
                f.options.qos = QoS::from_u8(self.cfg.max_qos).unwrap_or(QoS::AtMostOnce);
            }
            let Some((code, shared)) = self.filter_verdict(&f) else {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
            };
            let code = if code.is_error() {
                code
            } else if !self.may_subscribe(sid, &f.filter) {
                // 3.1.x answers 0x80 (Failure).
                ReasonCode::NOT_AUTHORIZED
            } else {
                match self.subscribe_one(sid, &f, shared, subscription_id, token) {
                    Ok(added) => {
                        awaiting += added.awaiting;
                        retained.extend(added.retained);
                        code
                    }
                    Err(refused) => refused,
                }
            };
            codes.push(code);
        }
        let suback = SubAck {
            packet_id: sub.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        self.answer_subscribe(key, sid, suback, retained, awaiting, token, before);
    }

    /// What a filter is granted before looking at the session: its reason code (the granted
    /// QoS, or why it is refused) and whether it is a shared subscription. `None`: a protocol
    /// error that ends the connection.
    fn filter_verdict(&self, f: &SubscribeFilter) -> Option<(ReasonCode, bool)> {
        let cfg = &self.cfg;
        let granted = ReasonCode(f.options.qos as u8);
        let code = match parse_shared(&f.filter, cfg.max_topic_levels) {
            Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
            Ok(Some(_)) if !cfg.shared_subscriptions => {
                ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            }
            Ok(Some(_)) if f.options.no_local => return None,
            Ok(Some(sh)) if !cfg.wildcard_subscriptions && has_wildcards(sh.filter) => {
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
            }
            Ok(Some(_)) => return Some((granted, true)),
            Ok(None) => match validate_topic_filter(&f.filter, cfg.max_topic_levels) {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(()) if !cfg.wildcard_subscriptions && has_wildcards(&f.filter) => {
                    ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(()) => granted,
            },
        };
        Some((code, false))
    }

    /// Adds (or replaces) one subscription of the session: journaled if the session is, in
    /// the tree, announced to other shards. `Err`: the reason it is refused.
    fn subscribe_one(
        &mut self,
        sid: u64,
        f: &SubscribeFilter,
        shared: bool,
        subscription_id: Option<u32>,
        token: RouteToken,
    ) -> Result<Subscribed, ReasonCode> {
        let room = self.jroom();
        let max_subs = self.cfg.max_subscriptions_per_client;
        let s = self.sessions.get_mut(&sid).expect("connected session");
        let existed = s.subscriptions.contains_key(&f.filter);
        // At --journal-max-bytes, a subscription the journal cannot keep is refused rather
        // than granted and forgotten at the next restart.
        if (!existed && s.subscriptions.len() >= max_subs) || (s.journaled && !room) {
            return Err(ReasonCode::QUOTA_EXCEEDED);
        }
        if s.journaled {
            let rec = Record::Sub {
                client_id: s.client_id.to_string(),
                filter: f.filter.to_string(),
                options: f.options,
                subscription_id: subscription_id.unwrap_or(0),
            };
            self.jnote(rec);
        }
        let s = self.sessions.get_mut(&sid).expect("connected session");
        // Kept for the session's life: an owned copy, not a slice of the read buffer, and not
        // shared with the retained query (a shared copy carries a 24-byte header for as long as
        // the subscription lives).
        let sub = Subscription {
            options: f.options,
            subscription_id,
        };
        s.subscriptions.insert(&f.filter, sub);
        let filter = ByteStr::from(f.filter.as_str());
        let awaiting = self.install_subscription(sid, &filter, f.options, subscription_id, token);
        use ringmq_codec::RetainHandling::*;
        // Retained messages are not sent for a shared subscription (4.8.2).
        let send_retained = !shared
            && match f.options.retain_handling {
                SendAtSubscribe => true,
                SendIfNew => !existed,
                DoNotSend => false,
            };
        let retained = send_retained.then(|| RetainQuery {
            filter,
            from: self.id as u16,
            session: sid,
            options: f.options,
            subscription_id,
        });
        Ok(Subscribed { awaiting, retained })
    }

    /// Sends the SUBACK (with the Reason String of its first refusal, for an MQTT 5 client that
    /// did not turn Request Problem Information off [MQTT-3.1.2-29]) once every other shard
    /// acknowledged the new routes and a persistent session's subscriptions are durable; then
    /// asks for the retained messages.
    #[allow(clippy::too_many_arguments)]
    fn answer_subscribe(
        &mut self,
        key: usize,
        sid: u64,
        mut suback: SubAck,
        retained: Vec<RetainQuery>,
        awaiting: usize,
        token: RouteToken,
        before: JournalSeq,
    ) {
        let problem_information = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.problem_information);
        if self.conns[key].version.is_v5() && problem_information {
            suback.properties.reason_string = suback
                .reason_codes
                .iter()
                .find_map(|c| reason_text(*c))
                .map(ByteStr::from);
        }
        let need = self.sync_needed_since(before);
        let to = self.conn_ref(sid);
        let announced = std::mem::take(&mut self.announced_now);
        if awaiting == 0 && need == JournalSeq::NONE {
            self.send(key, &Packet::SubAck(Box::new(suback)));
            self.query_retained(retained);
        } else if awaiting == 0 {
            let suback = Box::new(suback);
            let after = AfterSync::SubAck {
                to,
                suback,
                retained,
            };
            self.after_sync(need, after);
        } else {
            let pending = PendingSubAck {
                to,
                remaining: awaiting,
                announced,
                suback,
                retained,
                sync_before: need,
            };
            self.pending_subacks.insert(token, pending);
        }
    }

    pub(super) fn on_route_ack(&mut self, token: RouteToken) {
        if token == self.restore_token && self.restore_pending > 0 {
            self.restore_pending -= 1;
            return;
        }
        let Some(p) = self.pending_subacks.get_mut(&token) else {
            return;
        };
        p.remaining -= 1;
        if p.remaining > 0 {
            return;
        }
        let p = self.pending_subacks.remove(&token).expect("present");
        for f in &p.announced {
            if self.announcing.get(f) == Some(&token) {
                self.announcing.remove(f);
            }
        }
        if !self.is_synced(p.sync_before) {
            return self.after_sync(
                p.sync_before,
                AfterSync::SubAck {
                    to: p.to,
                    suback: Box::new(p.suback),
                    retained: p.retained,
                },
            );
        }
        if let Some(key) = self.conn_for(p.to) {
            self.send(key, &Packet::SubAck(Box::new(p.suback)));
            self.query_retained(p.retained);
        }
    }

    /// Asks the owners of retained messages matching each new subscription: the one owner of
    /// an exact filter, every shard for a wildcard filter.
    pub(super) fn query_retained(&mut self, queries: Vec<RetainQuery>) {
        for q in queries {
            if has_wildcards(&q.filter) {
                for peer in 0..self.nshards {
                    if peer != self.id {
                        self.fx.batches[peer].push(ShardMsg::RetainQuery(Box::new(q.clone())));
                    }
                }
                self.answer_retained(q);
            } else {
                let owner = home_shard(q.filter.as_bytes(), self.nshards);
                if owner == self.id {
                    self.answer_retained(q);
                } else {
                    self.fx.batches[owner].push(ShardMsg::RetainQuery(Box::new(q)));
                }
            }
        }
    }

    pub(super) fn answer_retained(&mut self, q: RetainQuery) {
        let mut messages = Vec::new();
        let now = self.now();
        self.retained.for_each_match(&q.filter, |_, m| {
            if !m.is_expired(now) {
                messages.push(m.clone());
            }
        });
        if messages.is_empty() {
            return;
        }
        let reply = RetainReply {
            session: q.session,
            options: q.options,
            subscription_id: q.subscription_id,
            messages,
        };
        if q.from as usize == self.id {
            self.deliver_retained(reply);
        } else {
            self.fx.batches[q.from as usize].push(ShardMsg::RetainReply(Box::new(reply)));
        }
    }

    /// Retained messages for a new subscription, with the retain flag set [MQTT-3.3.1-8].
    /// QoS 1/2 ones are paced by the session's
    /// inflight window and queue; QoS 0 ones by the connection's output: those that would take
    /// it past half of `--max-outgoing-bytes` wait on the connection and follow as it drains
    /// ([`ShardState::pace_retained`]), so a subscriber to `#` gets every retained message at
    /// its own pace instead of losing what overflows its socket as a slow consumer.
    pub(super) fn deliver_retained(&mut self, r: RetainReply) {
        let key = self.sessions.get(&r.session).and_then(|s| s.connection());
        for m in r.messages {
            let qos = m.qos.min(r.options.qos);
            if let Some(key) = key.filter(|_| qos == QoS::AtMostOnce) {
                let conn = &mut self.conns[key];
                let waiting = conn.extra.as_ref().is_some_and(|x| !x.retained.is_empty());
                if waiting || conn.out.bytes() >= self.cfg.max_outgoing_bytes / 2 {
                    let x = conn.extra.get_or_insert_with(Box::default);
                    let ids = r.subscription_id.into_iter().collect();
                    x.retained.push_back((m, true, ids));
                    continue;
                }
            }
            let d = Delivery {
                qos,
                retain: true,
                subscription_ids: r.subscription_id.into_iter().collect(),
                source: Source::Retained,
                shared_group: 0,
            };
            self.deliver_to_session(r.session, &m, d);
        }
    }

    /// Moves waiting QoS 0 retained messages into the connection's output while it is under
    /// half of `--max-outgoing-bytes`; called as the output drains.
    pub(super) fn pace_retained(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (Some(sid), Some(x)) = (conn.session, conn.extra.as_mut()) else {
            return;
        };
        if x.retained.is_empty() || conn.close.is_some() {
            return;
        }
        let low = self.cfg.max_outgoing_bytes / 2;
        while self.conns[key].out.bytes() < low {
            let x = self.conns[key].extra.as_mut().expect("checked");
            let Some((m, retain, subscription_ids)) = x.retained.pop_front() else {
                x.retained = VecDeque::new();
                break;
            };
            let d = Delivery {
                qos: QoS::AtMostOnce,
                retain,
                subscription_ids,
                source: Source::Retained,
                shared_group: 0,
            };
            self.deliver_to_session(sid.get(), &m, d);
        }
    }

    pub(super) fn on_unsubscribe(&mut self, key: usize, sid: u64, u: Unsubscribe) {
        let before = self.answer_mark(sid);
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let (removed, journaled) = self.sessions.get_mut(&sid).map_or((false, false), |s| {
                (s.subscriptions.remove(f).is_some(), s.journaled)
            });
            if removed && journaled {
                let client_id = self.sessions[&sid].client_id.to_string();
                self.jnote(Record::Unsub {
                    client_id,
                    filter: f.to_string(),
                });
            }
            if removed {
                self.uninstall_subscription(sid, f);
                codes.push(ReasonCode::SUCCESS);
            } else {
                codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        self.send_when_durable(before, key, sid, Packet::UnsubAck(Box::new(ack)));
    }

    /// Sends `packet` now, or once the journal records written since `before` are synced.
    pub(super) fn send_when_durable(
        &mut self,
        before: JournalSeq,
        key: usize,
        sid: u64,
        packet: Packet,
    ) {
        let need = self.sync_needed_since(before);
        if need != JournalSeq::NONE {
            let to = self.conn_ref(sid);
            self.after_sync(need, AfterSync::Send { to, packet });
        } else {
            self.send(key, &packet);
        }
    }

    /// After a local subscription to `filter` was removed: if it was the last one here, the
    /// other shards stop sending matching messages.
    pub(super) fn drop_interest(&mut self, filter: &ByteStr) {
        if self.subs.subscribers(filter).next().is_none() {
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.fx.batches[peer].push(ShardMsg::RouteRemove {
                        filter: filter.clone(),
                        from: self.id as u16,
                    });
                }
            }
        }
    }
}

/// A subscription added: route acknowledgements it waits for, and its retained query.
struct Subscribed {
    awaiting: usize,
    retained: Option<RetainQuery>,
}
