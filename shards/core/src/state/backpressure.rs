//! Full session queues (`--queue-full`). By default nothing is acknowledged and then dropped:
//! a QoS 1/2 message for a session whose queue is at its limits is queued beyond them while
//! its publisher's PUBACK/PUBREC waits until the queue is under its limits again. The
//! publisher's window fills and it slows down: the queue grows by at most the windows of the
//! publishers that feed it.
//!
//! MQTT 5 publishers could be answered 0x97 (Quota exceeded) instead, but the refusal is
//! partial (other sessions, on this shard or others, may have taken the message), and the
//! simulator found what follows from that: a retransmission after a lost answer delivers the
//! message out of order where it was refused, and QoS 2 receipts of refused messages need
//! their own handling across restarts. Waiting has none of that.
//!
//! The answer of a publish waits for every shard it went to (`AckSlot::remaining`); a shard
//! that deferred some of its deliveries counts them per publish (`deferred_tokens`) and answers
//! once the last session they wait for drains, or ends.

use super::*;
use crate::config::QueueFull;

/// What a publishing session is not read until.
pub(super) enum ReadWait {
    /// Peer shard's backlog is down to a quarter of [`PEER_BACKLOG_MAX`].
    Peer(u16),
    /// No full queue of an offline session blocks this topic any more (quota.rs).
    Room(ByteStr),
}

/// What a full queue lets a delivery do.
pub(super) enum Admit {
    /// Queue it (the policy made room, or nobody waits for an answer).
    Queue,
    /// Queue it beyond the limit and defer this publisher's answer.
    Defer((u16, AckToken)),
    /// Not for this session: dropped (counted).
    Skip,
}

impl ShardState {
    /// What the queue-full policy says of one more QoS 1/2 delivery to `sid`, whose queue is
    /// full (checked by the caller, which holds the session already: this runs only then).
    pub(super) fn admit_to_full(&mut self, sid: u64) -> Admit {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Admit::Skip;
        };
        match self.cfg.queue_full {
            QueueFull::DropNew => {
                self.counters.dropped_queue_full += 1;
                Admit::Skip
            }
            QueueFull::DropOldest => {
                let (durable, clock) = (self.durable.as_ref(), &*self.clock);
                let load = |at| super::spill::load_spilled(durable, clock, at);
                if let Some(jid) = s.outbound.drop_oldest(load) {
                    self.counters.dropped_queue_full += 1;
                    self.delivery_done(sid, jid);
                }
                Admit::Queue
            }
            QueueFull::Backpressure => match self.current_ack {
                Some(a) => Admit::Defer(a),
                // A will, a retained message for a new subscription: nobody to slow down,
                // and nothing that may be lost.
                None => Admit::Queue,
            },
        }
    }

    /// The answer `a` waits for `sid`'s queue to go under its limits.
    pub(super) fn defer_answer(&mut self, sid: u64, a: (u16, AckToken)) {
        self.deferred.entry(sid).or_default().push(a);
        self.new_deferrals += 1;
        self.counters.acks_deferred += 1;
    }

    /// Deliveries of one publish on this shard begin: `ack` is the token its publisher (on
    /// shard `peer`) waits with, if it waits.
    pub(super) fn begin_deliveries(&mut self, peer: usize, ack: Option<AckToken>) {
        self.current_ack = ack.map(|t| (peer as u16, t));
        self.new_deferrals = 0;
    }

    /// They ended: whether some deferred the answer, which then goes with `taken` once the
    /// last of them is released ([`ShardState::release_deferred`]).
    pub(super) fn end_deliveries(&mut self, taken: Taken) -> bool {
        let a = self.current_ack.take();
        let n = std::mem::take(&mut self.new_deferrals);
        match a {
            Some(a) if n > 0 => {
                self.deferred_tokens.insert(a, (n, taken));
                true
            }
            _ => false,
        }
    }

    /// `sid`'s queue may be under its limits again, or the session ended: the answers
    /// deferred on it go (each once every session its publish waited for here released it).
    pub(super) fn release_deferred(&mut self, sid: u64) {
        if self.deferred.is_empty() {
            return;
        }
        let limit = self.cfg.max_queued_bytes;
        if self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.outbound.is_full(limit))
        {
            return;
        }
        let Some(waiting) = self.deferred.remove(&sid) else {
            return;
        };
        for (peer, token) in waiting {
            let Some(left) = self.deferred_tokens.get_mut(&(peer, token)) else {
                continue;
            };
            left.0 -= 1;
            if left.0 > 0 {
                continue;
            }
            let (_, taken) = self
                .deferred_tokens
                .remove(&(peer, token))
                .expect("present");
            if peer as usize == self.id {
                self.on_publish_ack(token, taken);
            } else {
                // Everything written so far durable first, the deferred delivery included.
                self.ack_when_durable(JournalSeq::NONE, peer as usize, token, taken);
            }
        }
    }

    /// Stops or restarts reading the session's connection by how many answers it is owed. A
    /// publisher whose messages wait for full queues (or for the journal, or other shards)
    /// then waits in TCP instead of filling the broker's memory; other connections go on.
    ///
    /// A connection is never left unread while the broker waits for something from it: a
    /// session with deliveries inflight needs its PUBACK/PUBREC/PUBCOMP to drain its queue,
    /// and its own answers, or another paused publisher's, may wait for that queue (a client
    /// subscribed to what it publishes; two clients publishing to each other). So a session
    /// with anything inflight is read whatever it is owed.
    ///
    /// A publisher whose QoS 1/2 message went to a peer shard far behind waits too, until that
    /// backlog drains (a credit per pair of shards): the mesh spill stays bounded, and
    /// publishers whose messages do not go there are read on.
    pub(super) fn pace_reads(&mut self, sid: u64) {
        let owed = self.acks.get(&sid).map_or(0, VecDeque::len);
        // `--max-pending-acks`: an MQTT 5 client is held to the server's Receive Maximum by
        // the protocol, a 3.1.x client by nothing but this.
        let at = self.cfg.max_pending_acks.max(1);
        let waits = !self.read_waits.is_empty() && self.read_waits.contains_key(&sid);
        if owed < at && !waits && !self.reads_paused(sid) {
            return;
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(key) = s.connection() else {
            return;
        };
        // Being taken over: read dry, whatever it is owed, so that all it sent counts.
        let taken_over = !self.deferred_connects.is_empty()
            && self
                .deferred_connects
                .values()
                .any(|d| d.connect.client_id.as_str() == s.client_id.as_str());
        let awaited = s.outbound.inflight_len() > 0 || taken_over;
        let Some(conn) = self.conns.get(key).filter(|c| c.close.is_none()) else {
            return;
        };
        let paused = conn.reads_paused();
        let pause = !awaited && (waits || if paused { owed > at / 4 } else { owed >= at });
        if pause == paused {
            return;
        }
        let now = self.now_ms();
        let conn = &mut self.conns[key];
        conn.set_reads_paused(pause);
        if pause {
            self.counters.reads_paused += 1;
        } else {
            // Silent while it was not read: its keep-alive starts over.
            conn.last_rx_ms = now;
        }
        self.fx.reads.push((key, !pause));
    }

    /// `sid`'s publish went to `peer`, which is far behind: it is not read until that drains.
    pub(super) fn wait_for_peer(&mut self, sid: u64, peer: Option<u16>) {
        if let Some(peer) = peer {
            self.wait_for(sid, ReadWait::Peer(peer));
        }
    }

    /// `sid` is not read until `w` is over ([`ShardState::end_waits`]).
    pub(super) fn wait_for(&mut self, sid: u64, w: ReadWait) {
        self.read_waits.insert(sid, w);
        self.pace_reads(sid);
    }

    /// The sessions whose wait `over` says is over are read again.
    pub(super) fn end_waits(&mut self, over: impl Fn(&Self, &ReadWait) -> bool) {
        if self.read_waits.is_empty() {
            return;
        }
        let ended: Vec<u64> = (self.read_waits.iter())
            .filter(|(_, w)| over(self, w))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in ended {
            self.read_waits.remove(&sid);
            self.pace_reads(sid);
        }
    }

    /// The driver's count of batches waiting for peer shard `peer` beyond its channel. Once it
    /// is down to a quarter of [`PEER_BACKLOG_MAX`], the publishers waiting for it are read
    /// again.
    pub fn set_peer_backlog(&mut self, peer: usize, n: usize) {
        self.peer_backlog[peer] = n;
        if n <= PEER_BACKLOG_MAX / 4 {
            self.end_waits(|_, w| matches!(w, ReadWait::Peer(p) if usize::from(*p) == peer));
        }
    }

    /// The driver reads connection `key` again (`Effects::reads`): first what was read but
    /// left unhandled while it was paused. Called by the driver, not from inside an event, so
    /// that a connection's packets are never handled in the middle of another's.
    pub fn resume_reading(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| !c.reads_paused()) {
            self.process_held_input(key);
        }
    }

    fn reads_paused(&self, sid: u64) -> bool {
        let key = self.sessions.get(&sid).and_then(|s| s.connection());
        key.and_then(|k| self.conns.get(k))
            .is_some_and(|c| c.reads_paused())
    }

    /// A delivery to `sid` went inflight on connection `key`: if that is not being read, it
    /// is again, for the acknowledgement. One look at the connection per delivery.
    pub(super) fn awaiting_from(&mut self, sid: u64, key: usize) {
        if self.conns.get(key).is_some_and(Conn::reads_paused) {
            self.pace_reads(sid);
        }
    }
}
