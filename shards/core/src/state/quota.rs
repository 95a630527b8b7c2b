//! MQTT 5 publishers answered 0x97 (Quota exceeded) for full session queues, all or nothing.
//!
//! Only queues of offline sessions refuse: a connected consumer, however slow, drains its
//! queue, and its publishers are slowed down instead (their answers wait, backpressure.rs), as
//! 3.1.x publishers always are. Refusing there only makes closed-loop publishers, whose window
//! a refusal reopens, send again at once and take the CPU the consumer needs (measured: 1,000
//! MQTT 5 publishers to one connected subscriber, 3,424 msgs/s delivered refusing, 245,782
//! waiting; bench/results/2026-12-04-vm-issue12-fanin-qos1-v5-final.md).
//!
//! A refusal must mean that nobody got the message: the publisher is free to send it again,
//! or not. Decided where a full queue meets the message, it would be partial (other sessions,
//! on this shard or others, took it already), and a retransmission would then duplicate it
//! there. So the publisher's shard decides, before routing, from marks: an offline session
//! whose queue reaches its limits marks the filters of its QoS 1/2 subscriptions, and the
//! other shards hear of a filter's first mark and of its last unmark (`ShardMsg::FullRoute`),
//! as they hear of routes. An MQTT 5 QoS 1/2 publish whose topic matches a marked filter
//! anywhere is refused before it goes anywhere, and its publisher is not read until the marks
//! that refused it clear, so that it does not spin against the full queue.
//!
//! What the marks do not cover falls back to deferring the answer (backpressure.rs), which
//! drops nothing: a mark still on its way to another shard, a 3.1.x publisher (no negative
//! PUBACK), a subscription made while marked. A mark clears when the session connects, or
//! once its queue is down to three quarters of its limits, so that a queue at its limit does
//! not mark and unmark per message.

use super::backpressure::ReadWait;
use super::*;
use crate::config::QueueFull;
use ringmq_router::LocalInterest;

/// Sessions whose queues are full, as far as refusing publishes goes.
#[derive(Default)]
pub(super) struct FullMarks {
    /// Marked sessions of this shard, each with the filters it marked.
    sessions: HashMap<u64, Vec<ByteStr>>,
    /// Marks per filter on this shard: the other shards hear of the first and the last.
    local: LocalInterest,
    /// Filter -> shards (this one included) with a marked session subscribed to it.
    routes: RouteTable,
}

impl FullMarks {
    /// Shard `shard` has a marked session subscribed to `filter` (`full`), or no longer has.
    fn route(&mut self, filter: &str, shard: u16, full: bool) {
        if full {
            self.routes.add(filter, shard);
        } else {
            self.routes.remove(filter, shard);
        }
    }

    /// Whether a message to `topic` would reach a marked session on some shard.
    fn blocks(&self, topic: &str) -> bool {
        !self.routes.is_empty() && !self.routes.shards_for(topic).is_empty()
    }

    /// Marked sessions on this shard.
    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }
}

impl ShardState {
    /// Shard `shard` marked `filter` full, or unmarked it: publishers refused for it are read
    /// again once nothing blocks their topic.
    pub(super) fn on_full_route(&mut self, filter: &str, shard: u16, full: bool) {
        self.full.route(filter, shard, full);
        if !full {
            self.end_waits(|st, w| matches!(w, ReadWait::Room(t) if !st.full.blocks(t)));
        }
    }

    /// `sid` was refused for a full queue on `topic`: besides the 0x97, its connection is not
    /// read until the queue drains, so that a client which publishes again at once (its window
    /// reopened by the refusal) does not spin against the full queue, taking the CPU the
    /// subscriber needs to drain it.
    pub(super) fn wait_for_room(&mut self, sid: u64, topic: &ByteStr) {
        if self.full.blocks(topic) {
            self.wait_for(sid, ReadWait::Room(topic.clone()));
        }
    }

    /// Whether an MQTT 5 client's QoS 1/2 `msg` from session `sid` is refused for a full queue
    /// (counted): then it goes nowhere, and its answer is 0x97.
    ///
    /// Also refused while an earlier refusal of the session has not been written to connection
    /// `key`: were it lost with the connection, the client would send the refused message
    /// again after later ones the broker took, and subscribers would get them out of order.
    /// (Once it is written the client may have it, and a message sent again after it is a
    /// new one [MQTT 5 section 4.3.3]; answers go in order, so an unanswered refusal is the
    /// session's last answer slot.)
    pub(super) fn refuse_for_full_queue(&mut self, sid: u64, key: usize, msg: &Message) -> bool {
        if msg.qos == QoS::AtMostOnce {
            return false;
        }
        let unsent = self
            .conns
            .get(key)
            .and_then(|c| c.extra.as_ref())
            .is_some_and(|x| x.refusal_unsent);
        let unanswered = unsent
            || self
                .acks
                .get(&sid)
                .and_then(VecDeque::back)
                .is_some_and(|a| a.taken.is_refused());
        if !unanswered && !self.full.blocks(&msg.topic) {
            return false;
        }
        self.counters.refused_queue_full += 1;
        true
    }

    /// After a QoS 1/2 message queued for `sid`: the queue of an offline session that reached
    /// its limits marks the filters of the session's QoS 1/2 subscriptions. Only those that
    /// surely queue here: a shared subscription picks another member, and No Local ones skip
    /// their own publisher.
    pub(super) fn mark_if_full(&mut self, sid: u64) {
        if self.cfg.queue_full != QueueFull::Backpressure || self.full.sessions.contains_key(&sid) {
            return;
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if s.connection().is_some() || !s.outbound.is_full(self.cfg.max_queued_bytes) {
            return;
        }
        let filters: Vec<ByteStr> = s
            .subscriptions
            .iter()
            .filter(|(f, sub)| {
                sub.options.qos != QoS::AtMostOnce
                    && !sub.options.no_local
                    && !f.starts_with("$share/")
            })
            .map(|(f, _)| ByteStr::from(f))
            .collect();
        for f in &filters {
            if self.full.local.incr(f) {
                self.announce_full(f, true);
            }
        }
        self.full.sessions.insert(sid, filters);
    }

    /// `sid`'s queue shrank, its session connected, or it ended: its marks go (an offline
    /// session's once its queue is drained to three quarters of its limits).
    pub(super) fn unmark_if_drained(&mut self, sid: u64) {
        if self.full.sessions.is_empty() {
            return;
        }
        let limit = self.cfg.max_queued_bytes;
        if self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.connection().is_none() && !s.outbound.is_drained(limit))
        {
            return;
        }
        let Some(filters) = self.full.sessions.remove(&sid) else {
            return;
        };
        for f in &filters {
            if self.full.local.decr(f) {
                self.announce_full(f, false);
            }
        }
    }

    /// `sid` unsubscribed from `filter`: its mark of it goes.
    pub(super) fn unmark_filter(&mut self, sid: u64, filter: &str) {
        if self.full.sessions.is_empty() {
            return;
        }
        let Some(marked) = self.full.sessions.get_mut(&sid) else {
            return;
        };
        let Some(i) = marked.iter().position(|f| f.as_str() == filter) else {
            return;
        };
        let f = marked.swap_remove(i);
        if self.full.local.decr(&f) {
            self.announce_full(&f, false);
        }
    }

    fn announce_full(&mut self, filter: &ByteStr, full: bool) {
        let me = self.id as u16;
        self.on_full_route(filter, me, full);
        for peer in 0..self.nshards {
            if peer != self.id {
                self.fx.batches[peer].push(ShardMsg::FullRoute {
                    filter: filter.clone(),
                    from: me,
                    full,
                });
            }
        }
    }
}
