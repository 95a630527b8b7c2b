//! Persistence: the journal records a shard writes as durable state changes, acknowledgements
//! held until a sync covers them, the rebuild from the journal at start, and compaction.

use super::*;
use crate::durable::{RecoveredBody, RecoveredMsg, RecoveredSession};
use crate::records::MsgRecord;

impl ShardState {
    /// How far the journal is now (`NONE` without one), to tell later what an event appended.
    pub(super) fn journal_mark(&self) -> JournalSeq {
        self.durable.as_ref().map_or(JournalSeq::NONE, |d| d.mark())
    }

    /// Where to count from for the answer to a request of session `sid`: a persistent
    /// session's answer may rest on an earlier change to its state that is not yet synced
    /// (a repeated PUBREL, UNSUBSCRIBE or SUBSCRIBE changes nothing itself), so it waits for
    /// everything appended so far; any other waits for what the request itself appends.
    pub(super) fn answer_mark(&self, sid: u64) -> JournalSeq {
        if self.sessions.get(&sid).is_some_and(|s| s.journaled) {
            JournalSeq::NONE
        } else {
            self.journal_mark()
        }
    }

    /// The seq that what was done since `mark` must be synced through before it is
    /// acknowledged; `NONE` if nothing.
    pub(super) fn sync_needed_since(&self, mark: JournalSeq) -> JournalSeq {
        self.durable
            .as_ref()
            .map_or(JournalSeq::NONE, |d| d.need(mark))
    }

    /// The session's current connection, for an answer held back for it.
    pub(super) fn conn_ref(&self, sid: u64) -> ConnRef {
        let attachment = self.sessions.get(&sid).map_or(0, |s| s.attachment);
        ConnRef {
            session: sid,
            attachment,
        }
    }

    /// The connection a held-back answer may still go to: `None` once the session ended or
    /// another connection took it over.
    pub(super) fn conn_for(&self, to: ConnRef) -> Option<usize> {
        let s = self.sessions.get(&to.session)?;
        (s.attachment == to.attachment).then_some(s.connection()?)
    }

    /// Whether the last removal of `client_id`'s persistent session is not yet synced.
    pub(super) fn removal_unsynced(&self, client_id: &str) -> bool {
        self.removals
            .iter()
            .any(|(seq, c)| c.as_str() == client_id && !self.is_synced(*seq))
    }

    pub(super) fn is_synced(&self, seq: JournalSeq) -> bool {
        self.durable.as_ref().is_none_or(|d| d.is_synced(seq))
    }

    pub(super) fn jnote(&mut self, rec: Record) {
        if let Some(d) = self.durable.as_mut() {
            d.note(&rec);
        }
    }

    pub(super) fn jroom(&self) -> bool {
        self.durable.as_ref().is_none_or(|d| d.has_room())
    }

    /// Queues `what` until the journal is synced through `seq`. The queue stays in seq order:
    /// an older seq queued late waits for the newest one queued, which is no later than the
    /// last append and so is synced as soon as it is.
    pub(super) fn after_sync(&mut self, seq: JournalSeq, what: AfterSync) {
        if let Some(d) = self.durable.as_mut() {
            let seq = d.waiting.back().map_or(seq, |b| b.0.max(seq));
            d.waiting.push_back((seq, what));
        }
    }

    /// A sync job finished: record it and do what waited for it.
    pub fn on_synced(&mut self, result: std::io::Result<u64>, took: std::time::Duration) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        match result {
            Ok(seq) => d.journal.sync_done(seq),
            Err(e) => {
                d.journal.sync_failed();
                tracing::error!(shard = self.id, error = %e, "journal sync failed; retrying");
                return;
            }
        }
        record_us(
            &mut self.histograms.journal_commit_us,
            took.as_micros() as u64,
        );
        let synced = d.journal.synced_seq();
        while self.removals.front().is_some_and(|r| r.0 .0 <= synced) {
            self.removals.pop_front();
        }
        let mut ready = Vec::new();
        while d.waiting.front().is_some_and(|w| w.0 .0 <= synced) {
            ready.push(d.waiting.pop_front().expect("front exists").1);
        }
        self.open_gates(synced);
        for w in ready {
            match w {
                AfterSync::ReleaseAcks(sid) => self.release_acks(sid),
                AfterSync::MeshAck { peer, token, taken } => {
                    self.send_publish_ack(peer, token, taken)
                }
                AfterSync::SubAck {
                    to,
                    suback,
                    retained,
                } => {
                    if let Some(key) = self.conn_for(to) {
                        self.send(key, &Packet::SubAck(suback));
                        self.query_retained(retained);
                    }
                }
                AfterSync::Send { to, packet } => {
                    if let Some(key) = self.conn_for(to) {
                        self.send(key, &packet);
                    }
                }
                AfterSync::ConnAck { to, packet } => self.release_connack(to, packet),
                AfterSync::Route { session, msg, ack } => self.route_held(session, msg, ack),
            }
        }
    }

    /// Rebuilds sessions, subscriptions, deliveries and retained messages from a replayed
    /// journal. Runs before the shard accepts connections.
    pub fn restore(&mut self, rec: Recovered) {
        if let Some(d) = self.durable.as_mut() {
            d.next_msg_id = rec.max_msg_id + 1;
        }
        self.restore_token = RouteToken(self.new_token());
        for (client_id, rs) in rec.sessions {
            match self.restored_expiry(&rs) {
                Some(expiry) => self.restore_session(client_id, rs, expiry),
                // Expired while the broker was down: gone, like one that expires now.
                None => self.journal_removal(&ByteStr::from(client_id)),
            }
        }
        for (topic, r) in rec.retained {
            self.restore_retained(topic, r);
        }
    }

    /// What is left of a restored session's expiry interval; `None` if it ran out while the
    /// broker was down. Sessions that were connected at the crash count as disconnected now.
    fn restored_expiry(&self, rs: &RecoveredSession) -> Option<u32> {
        if rs.expiry_interval == u32::MAX {
            return Some(u32::MAX);
        }
        let gone_ms = if rs.disconnected_unix_ms == 0 {
            0
        } else {
            self.clock.unix_ms().saturating_sub(rs.disconnected_unix_ms)
        };
        let left = u64::from(rs.expiry_interval).saturating_sub(gone_ms / 1000);
        (left > 0).then_some(left as u32)
    }

    /// One persistent session as the journal left it: subscriptions (announced to the other
    /// shards; listening waits for their acknowledgements), QoS 2 receive state, and its
    /// deliveries, inflight ones to be resent at reconnect.
    fn restore_session(&mut self, client_id: String, rs: RecoveredSession, expiry: u32) {
        let protocol = match rs.protocol {
            3 => ProtocolVersion::V31,
            5 => ProtocolVersion::V5,
            _ => ProtocolVersion::V311,
        };
        let sid = self.next_session;
        self.next_session += 1;
        let mut s = Session::new(
            sid,
            &client_id,
            protocol,
            self.cfg.max_inflight as usize,
            self.cfg.max_queued_messages,
        );
        s.expiry_interval = expiry;
        s.set_disconnected_at(Some(self.now_s()));
        s.journaled = true;
        s.username = rs.username.map(Box::new);
        for (filter, (options, id)) in rs.subs {
            let subscription_id = (id != 0).then_some(id);
            let sub = Subscription {
                options,
                subscription_id,
            };
            s.subscriptions.insert(&filter, sub);
        }
        for (pid, routed) in rs.qos2_in {
            if let Some(pid) = PacketId::new(pid) {
                s.inbound_qos2.restore(pid, routed);
            }
        }
        for (_, m) in rs.msgs {
            self.restore_delivery(&mut s, m);
        }
        let subs: Vec<_> = s
            .subscriptions
            .iter()
            .map(|(f, sub)| (ByteStr::from(f), sub.clone()))
            .collect();
        self.sessions.insert(sid, Box::new(s));
        self.by_client.insert(&self.sessions, sid);
        self.watch_session(sid);
        let token = self.restore_token;
        for (filter, sub) in subs {
            self.restore_pending +=
                self.install_subscription(sid, &filter, sub.options, sub.subscription_id, token);
        }
    }

    /// A journaled delivery back into its session: inflight with its packet id and state, read
    /// back from the journal; or queued, as the location of its record (spill.rs).
    fn restore_delivery(&mut self, s: &mut Session, m: RecoveredMsg) {
        let inflight = matches!(
            m.state,
            records::STATE_AWAIT_ACK | records::STATE_AWAIT_PUBCOMP
        );
        let mut rec = match m.body {
            RecoveredBody::At { at, weight } if !inflight => {
                return s.outbound.spill(at.to_bits(), weight);
            }
            RecoveredBody::At { at, .. } => {
                let d = self.durable.as_ref();
                match d.and_then(|d| super::spill::read_delivery(d, at)) {
                    Some(rec) => rec,
                    // Read at open a moment ago: a bug or a disk fault (logged).
                    None => {
                        self.counters.journal_read_failures += 1;
                        return;
                    }
                }
            }
            RecoveredBody::Copy(rec) => rec,
        };
        (rec.packet_id, rec.state) = (m.packet_id, m.state);
        self.restore_record(s, *rec);
    }

    fn restore_record(&self, s: &mut Session, m: MsgRecord) {
        let body = Body {
            topic: ByteStr::from(m.topic),
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: m.properties,
        };
        let message = self.message(body, self.global_id(0), Expiry::AtUnixMs(m.expires_unix_ms));
        let inflight = matches!(
            m.state,
            records::STATE_AWAIT_ACK | records::STATE_AWAIT_PUBCOMP
        );
        match PacketId::new(m.packet_id).filter(|_| inflight) {
            Some(packet_id) => {
                let state = if m.state == records::STATE_AWAIT_PUBCOMP {
                    InflightState::AwaitPubComp
                } else if m.qos == QoS::ExactlyOnce {
                    InflightState::AwaitPubRec
                } else {
                    InflightState::AwaitPubAck
                };
                s.outbound.restore_inflight(Inflight {
                    packet_id,
                    qos: m.qos,
                    state,
                    message,
                    retain: m.retain,
                    subscription_ids: m.subscription_ids,
                    journal_id: m.id,
                    shared_group: 0,
                });
            }
            None => s.outbound.restore_queued(Queued {
                qos: m.qos,
                message,
                retain: m.retain,
                subscription_ids: m.subscription_ids,
                journal_id: m.id,
                shared_group: 0,
            }),
        }
    }

    /// A retained message back on its owner shard, unless it expired while the broker was down.
    fn restore_retained(&mut self, topic: String, r: RetainRecord) {
        let body = Body {
            topic: ByteStr::from(topic),
            payload: r.payload,
            qos: r.qos,
            retain: true,
            properties: r.properties,
        };
        let msg = self.message(body, self.global_id(0), Expiry::AtUnixMs(r.expires_unix_ms));
        if msg.is_expired(self.now()) {
            self.jnote(Record::RetainClear {
                topic: msg.topic.to_string(),
            });
            return;
        }
        let topic = msg.topic.clone();
        self.retained.insert(&topic, msg);
    }

    /// The journal record that re-creates a session as it is now.
    pub(super) fn session_record(&self, s: &Session, fresh: bool) -> Record {
        let disconnected_unix_ms = match (s.connection(), s.disconnected_at()) {
            (None, Some(t)) => self
                .clock
                .unix_ms()
                .saturating_sub(self.now_s().saturating_sub(t) * 1000)
                .max(1),
            (None, None) => self.clock.unix_ms(),
            (Some(_), _) => 0,
        };
        Record::Session {
            client_id: s.client_id.to_string(),
            expiry_interval: s.expiry_interval,
            protocol: match s.protocol {
                ProtocolVersion::V31 => 3,
                ProtocolVersion::V311 => 4,
                ProtocolVersion::V5 => 5,
            },
            disconnected_unix_ms,
            fresh,
            username: s.username.as_deref().cloned(),
        }
    }

    /// One step of compaction: start one if the journal has grown well past live state,
    /// re-append a bounded slice of live state, and once all of it is re-appended and synced,
    /// remove the segments it supersedes. Returns true while a sync is needed to go on.
    pub fn compact_step(&mut self) -> bool {
        let Some(d) = self.durable.as_mut() else {
            return false;
        };
        if d.checkpoint.is_none() {
            if !d.should_compact(self.clock.now()) {
                return false;
            }
            self.start_compaction();
        }
        let mut budget = durable::COMPACT_STEP_RECORDS;
        loop {
            let d = self.durable.as_mut().expect("checked");
            let cp = d.checkpoint.as_mut().expect("started");
            if cp.end_seq.is_some() || budget == 0 {
                break;
            }
            if let Some(cid) = cp.spilling.take() {
                let (n, done) = self.reappend_spilled(&cid, budget);
                budget = budget.saturating_sub(n);
                if !done {
                    let d = self.durable.as_mut().expect("checked");
                    d.checkpoint.as_mut().expect("started").spilling = Some(cid);
                }
            } else if let Some(cid) = cp.sessions.pop() {
                budget = budget.saturating_sub(self.reappend_session(&cid));
                let d = self.durable.as_mut().expect("checked");
                d.checkpoint.as_mut().expect("started").spilling = Some(cid);
            } else if let Some(topic) = cp.retained.pop() {
                budget -= 1;
                if let Some(m) = self.retained.get(&topic) {
                    let rec = retain_record(&*self.clock, m);
                    self.jnote(rec);
                }
            } else {
                let d = self.durable.as_mut().expect("checked");
                let last = d.journal.last_seq();
                let cp = d.checkpoint.as_mut().expect("started");
                cp.end_seq = Some(last);
                d.live_bytes = d.journal.stats().bytes_appended - cp.start_bytes;
            }
        }
        let d = self.durable.as_mut().expect("checked");
        let cp = d.checkpoint.as_ref().expect("started");
        let Some(end) = cp.end_seq else {
            return false;
        };
        if d.journal.synced_seq() < end {
            return true;
        }
        let (start, failed) = (cp.start_segment, cp.failed);
        if failed || self.spilled_before(start) {
            // A queued message lives only in a segment that would go: keep them all.
            debug_assert!(failed, "compaction left a queued message behind");
            tracing::error!(
                shard = self.id,
                "journal compaction abandoned; segments kept"
            );
            let d = self.durable.as_mut().expect("checked");
            d.checkpoint = None;
            d.appended_at_compaction = d.journal.stats().bytes_appended;
            d.compacted_at = Some(self.clock.now());
            return false;
        }
        let d = self.durable.as_mut().expect("checked");
        let mut freed = 0;
        while d.journal.segment_count() > 1 && d.journal.oldest_segment() < start {
            match d.journal.remove_oldest() {
                Ok(n) => freed += n,
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "journal segment removal failed");
                    break;
                }
            }
        }
        d.checkpoint = None;
        d.appended_at_compaction = d.journal.stats().bytes_appended;
        d.compacted_at = Some(self.clock.now());
        tracing::debug!(
            shard = self.id,
            freed,
            live = d.live_bytes,
            "journal compaction done"
        );
        false
    }

    /// A compaction starts from a list of what is live now: the journaled sessions and the
    /// retained messages (not `$SYS`), each re-appended later in bounded steps.
    fn start_compaction(&mut self) {
        let sessions = self
            .sessions
            .values()
            .filter(|s| s.journaled)
            .map(|s| s.client_id.to_string())
            .collect();
        let retained = self
            .retained
            .iter()
            .filter(|(t, _)| !t.starts_with("$SYS/"))
            .map(|(t, _)| t.to_owned())
            .collect();
        tracing::debug!(shard = self.id, "journal compaction started");
        let d = self.durable.as_mut().expect("compacting a journal");
        d.checkpoint = Some(durable::Checkpoint {
            start_segment: d.journal.active_segment(),
            start_bytes: d.journal.stats().bytes_appended,
            sessions,
            spilling: None,
            failed: false,
            retained,
            end_seq: None,
            bodies: HashMap::new(),
        });
    }

    /// Re-appends the whole state of one journaled session; returns the records written.
    pub(super) fn reappend_session(&mut self, client_id: &str) -> usize {
        let Some(sid) = self.by_client.get(&self.sessions, client_id) else {
            return 1;
        };
        let Some(s) = self.sessions.get(&sid) else {
            return 1;
        };
        if !s.journaled {
            return 1;
        }
        let mut recs = vec![self.session_record(s, false)];
        let cid = s.client_id.to_string();
        for (filter, sub) in s.subscriptions.iter() {
            recs.push(Record::Sub {
                client_id: cid.clone(),
                filter: filter.to_string(),
                options: sub.options,
                subscription_id: sub.subscription_id.unwrap_or(0),
            });
        }
        // A refused id's flow is over (its `Qos2Done` is in the journal): copied, it would
        // come back after a restart as a receipt that never ends, held against Receive Maximum.
        let receipts = s.inbound_qos2.ids();
        for (pid, routing) in receipts.filter(|(_, r)| *r != ringmq_session::Qos2Routing::Refused) {
            recs.push(Record::Qos2In {
                client_id: cid.clone(),
                packet_id: pid,
                routed: routing == ringmq_session::Qos2Routing::Routed,
            });
        }
        let mut n = recs.len();
        for r in recs {
            self.jnote(r);
        }
        // Deliveries are encoded from the session's entries, without owned copies.
        let (Some(d), Some(s)) = (self.durable.as_mut(), self.sessions.get(&sid)) else {
            return n;
        };
        for i in s.outbound.inflight().filter(|i| i.journal_id != 0) {
            let state = if i.state == InflightState::AwaitPubComp {
                records::STATE_AWAIT_PUBCOMP
            } else {
                records::STATE_AWAIT_ACK
            };
            d.note_msg(&msg_view(
                &*self.clock,
                &cid,
                i.journal_id,
                i.qos,
                i.retain,
                i.packet_id.get(),
                state,
                &i.message,
                &i.subscription_ids,
            ));
            n += 1;
        }
        for q in s.outbound.queued().filter(|q| q.journal_id != 0) {
            d.note_msg(&msg_view(
                &*self.clock,
                &cid,
                q.journal_id,
                q.qos,
                q.retain,
                0,
                records::STATE_QUEUED,
                &q.message,
                &q.subscription_ids,
            ));
            n += 1;
        }
        n
    }
}

/// The journal record of one delivery to a persistent session, borrowed from its entry.
#[allow(clippy::too_many_arguments)]
pub(super) fn msg_view<'a>(
    clock: &dyn Clock,
    client_id: &'a str,
    id: u64,
    qos: QoS,
    retain: bool,
    packet_id: u16,
    state: u8,
    m: &'a Message,
    subscription_ids: &'a [u32],
) -> MsgView<'a> {
    MsgView {
        client_id,
        id,
        qos,
        retain,
        packet_id,
        state,
        topic: m.topic.as_str(),
        payload: &m.payload,
        properties: m.properties.as_deref(),
        expires_unix_ms: env::instant_to_unix_ms(clock, m.expires_at),
        subscription_ids,
    }
}

pub(super) fn retain_record(clock: &dyn Clock, m: &Message) -> Record {
    Record::Retain(Box::new(RetainRecord {
        topic: m.topic.to_string(),
        qos: m.qos,
        payload: m.payload.clone(),
        properties: m.properties.as_ref().map(|p| (**p).clone()),
        expires_unix_ms: env::instant_to_unix_ms(clock, m.expires_at),
    }))
}
