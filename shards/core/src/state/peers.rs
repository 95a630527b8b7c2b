//! Messages from other shards: one handler per kind of [`ShardMsg`].

use super::*;

impl ShardState {
    /// A batch from another shard, in the order it sent them.
    pub fn on_batch(&mut self, batch: Batch) {
        for msg in batch {
            self.on_peer_msg(msg);
        }
    }

    fn on_peer_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Handoff(h) => self.adopt(*h),
            ShardMsg::Publish { msg, ack, sent_at } => self.on_peer_publish(msg, ack, sent_at),
            ShardMsg::PublishAck { token, taken } => self.on_publish_ack(token, taken),
            ShardMsg::RouteAdd {
                filter,
                from,
                token,
            } => {
                self.routes.add(&filter, from);
                self.fx.batches[from as usize].push(ShardMsg::RouteAck { token });
            }
            ShardMsg::RouteAck { token } => self.on_route_ack(token),
            ShardMsg::RouteRemove { filter, from } => self.routes.remove(&filter, from),
            ShardMsg::FullRoute { filter, from, full } => self.on_full_route(&filter, from, full),
            ShardMsg::ShareJoin { key, member, token } => self.on_share_join(key, member, token),
            ShardMsg::ShareLeave {
                key,
                shard,
                session,
            } => {
                if let Ok(Some(sh)) = parse_shared(&key, usize::MAX) {
                    self.shared.leave(&key, sh.filter, shard, session);
                }
            }
            ShardMsg::SharedPublish {
                msg,
                key,
                session,
                ack,
                hops,
            } => self.on_shared_publish(msg, key, session, ack, hops),
            ShardMsg::RetainSet { msg, ack } => self.on_retain_set(msg, ack),
            ShardMsg::RetainQuery(q) => self.answer_retained(*q),
            ShardMsg::RetainReply(r) => self.deliver_retained(*r),
            ShardMsg::MetricsRequest { reply_to, token } => {
                let metrics = Box::new(self.metrics_snapshot());
                self.fx.batches[reply_to as usize].push(ShardMsg::MetricsReply { token, metrics });
            }
            ShardMsg::MetricsReply { token, metrics } => {
                self.fx.metrics_replies.push((token, metrics));
            }
        }
    }

    /// Deliver to this shard's subscribers; with `ack`, answer once it is durable here.
    fn on_peer_publish(&mut self, msg: Message, ack: Option<AckToken>, sent_at: Instant) {
        self.counters.cross_shard_in += 1;
        let hop = self.now().saturating_duration_since(sent_at).as_micros() as u64;
        record_us(&mut self.histograms.cross_shard_hop_us, hop);
        let before = self.journal_mark();
        let peer = (msg.origin >> 48) as usize;
        self.delivery_refused = false;
        self.begin_deliveries(peer, ack);
        let matched = self.deliver_local(&msg);
        let refused = std::mem::take(&mut self.delivery_refused);
        self.answer_peer(before, peer, ack, Taken::new(matched, refused));
    }

    /// Answers the publisher's shard, unless deliveries here deferred the answer.
    fn answer_peer(
        &mut self,
        before: JournalSeq,
        peer: usize,
        ack: Option<AckToken>,
        taken: Taken,
    ) {
        let deferred = self.end_deliveries(taken);
        if let Some(token) = ack.filter(|_| !deferred) {
            self.ack_when_durable(before, peer, token, taken);
        }
    }

    fn on_share_join(&mut self, key: ByteStr, member: Member, token: RouteToken) {
        if let Ok(Some(sh)) = parse_shared(&key, usize::MAX) {
            self.shared.join(&key, sh.filter, member);
        }
        if token != RouteToken::NONE {
            self.fx.batches[member.shard as usize].push(ShardMsg::RouteAck { token });
        }
    }

    /// Deliver to one member of a shared group; if it left meanwhile, another one takes it
    /// (at most `hops` more times).
    fn on_shared_publish(
        &mut self,
        msg: Message,
        key: ByteStr,
        session: u64,
        ack: Option<AckToken>,
        hops: u8,
    ) {
        self.counters.cross_shard_in += 1;
        let before = self.journal_mark();
        let peer = (msg.origin >> 48) as usize;
        self.delivery_refused = false;
        self.begin_deliveries(peer, ack);
        let gid = self.shared.id(&key);
        let mut matched = gid.is_some_and(|g| self.deliver_shared_local(session, g, &msg));
        if let Some(g) = gid.filter(|_| !matched && hops > 0) {
            match self.shared.pick(g, Some((self.id as u16, session))) {
                Some(m) if m.shard as usize == self.id => {
                    matched = self.deliver_shared_local(m.session, g, &msg);
                }
                Some(m) => {
                    // Its shard answers the publisher; nothing was delivered (or deferred) here.
                    self.end_deliveries(Taken::NoSubscribers);
                    self.fx.batches[m.shard as usize].push(ShardMsg::SharedPublish {
                        msg,
                        key,
                        session: m.session,
                        ack,
                        hops: hops - 1,
                    });
                    return;
                }
                None => {}
            }
        }
        let refused = std::mem::take(&mut self.delivery_refused);
        self.answer_peer(before, peer, ack, Taken::new(matched, refused));
    }

    /// Store a retained message owned here; with `ack`, answer once it is durable.
    fn on_retain_set(&mut self, msg: Message, ack: Option<AckToken>) {
        let peer = (msg.origin >> 48) as usize;
        let before = self.journal_mark();
        let stored = self.retain_set(msg);
        if let Some(token) = ack {
            self.ack_when_durable(before, peer, token, Taken::new(false, !stored));
        }
    }

    /// Answers an acknowledged cross-shard message once what it wrote here is durable.
    pub(super) fn ack_when_durable(
        &mut self,
        before: JournalSeq,
        peer: usize,
        token: AckToken,
        taken: Taken,
    ) {
        let need = self.sync_needed_since(before);
        if need != JournalSeq::NONE {
            self.after_sync(need, AfterSync::MeshAck { peer, token, taken });
        } else {
            self.send_publish_ack(peer, token, taken);
        }
    }

    /// Answers the shard that holds a publisher's acknowledgement. That can be this shard: a
    /// shared subscription's member elsewhere that could not take the message passed it to
    /// a member here, on the publisher's shard (the mesh has no channel to oneself).
    pub(super) fn send_publish_ack(&mut self, peer: usize, token: AckToken, taken: Taken) {
        if peer == self.id {
            self.on_publish_ack(token, taken);
        } else {
            self.fx.batches[peer].push(ShardMsg::PublishAck { token, taken });
        }
    }
}
