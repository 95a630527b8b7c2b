//! Persistence: the journal records a shard writes as durable state changes, acknowledgements
//! held until a sync covers them, the rebuild from the journal at start, and compaction.

use super::*;

impl ShardState {
    /// Last journal seq appended (0 without a journal).
    pub(super) fn jseq(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.journal.last_seq())
    }

    /// The seq that what was done since `before` must be synced through before it is
    /// acknowledged; 0 if nothing.
    pub(super) fn jneed(&self, before: u64) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.need(before))
    }

    pub(super) fn jsynced(&self, seq: u64) -> bool {
        seq == 0
            || self
                .durable
                .as_ref()
                .is_none_or(|d| !d.gates() || d.journal.synced_seq() >= seq)
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
    pub(super) fn after_sync(&mut self, seq: u64, what: AfterSync) {
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
        let mut ready = Vec::new();
        while d.waiting.front().is_some_and(|w| w.0 <= synced) {
            ready.push(d.waiting.pop_front().expect("front exists").1);
        }
        for w in ready {
            match w {
                AfterSync::ReleaseAcks(sid) => self.release_acks(sid),
                AfterSync::MeshAck {
                    peer,
                    token,
                    matched,
                    refused,
                } => self.fx.batches[peer].push(ShardMsg::PublishAck {
                    token,
                    matched,
                    refused,
                }),
                AfterSync::SubAck {
                    session,
                    suback,
                    retained,
                } => {
                    if let Some(key) = self.sessions.get(&session).and_then(|s| s.connection) {
                        self.send(key, &Packet::SubAck(suback));
                        self.query_retained(retained);
                    }
                }
                AfterSync::Send { session, packet } => {
                    if let Some(key) = self.sessions.get(&session).and_then(|s| s.connection) {
                        self.send(key, &packet);
                    }
                }
            }
        }
    }

    /// Rebuilds sessions, subscriptions, deliveries and retained messages from a replayed
    /// journal. Runs before the shard accepts connections.
    pub fn restore(&mut self, rec: Recovered) {
        let now_ms = self.clock.unix_ms();
        let origin = self.global_id(0);
        let now = self.now();
        let mut expired = Vec::new();
        if let Some(d) = self.durable.as_mut() {
            d.next_msg_id = rec.max_msg_id + 1;
        }
        self.restore_token = self.next_token;
        self.next_token += 1;
        let token = self.restore_token;
        for (client_id, rs) in rec.sessions {
            // Sessions that were connected at the crash are taken as disconnected now.
            let gone_ms = if rs.disconnected_unix_ms == 0 {
                0
            } else {
                now_ms.saturating_sub(rs.disconnected_unix_ms)
            };
            let expiry = if rs.expiry_interval == u32::MAX {
                u32::MAX
            } else {
                let left = u64::from(rs.expiry_interval).saturating_sub(gone_ms / 1000);
                if left == 0 {
                    expired.push(client_id);
                    continue;
                }
                left as u32
            };
            let protocol = match rs.protocol {
                3 => ProtocolVersion::V31,
                5 => ProtocolVersion::V5,
                _ => ProtocolVersion::V311,
            };
            let sid = self.next_session;
            self.next_session += 1;
            let cid = ByteStr::from(client_id);
            let mut s = Session::new(
                sid,
                cid.clone(),
                protocol,
                self.cfg.max_inflight as usize,
                self.cfg.max_queued_messages,
            );
            s.expiry_interval = expiry;
            s.disconnected_at = Some(self.now_s());
            s.journaled = true;
            let mut restored_subs = Vec::new();
            for (filter, (options, id)) in rs.subs {
                let filter = ByteStr::from(filter);
                let subscription_id = (id != 0).then_some(id);
                s.subscriptions.insert(
                    filter.clone(),
                    Subscription {
                        options,
                        subscription_id,
                    },
                );
                restored_subs.push((filter, options, subscription_id));
            }
            for pid in rs.qos2_in {
                if let Some(pid) = PacketId::new(pid) {
                    s.inbound_qos2.on_publish(pid);
                }
            }
            for (_, m) in rs.msgs {
                let message = Message {
                    topic: ByteStr::from(m.topic),
                    payload: m.payload,
                    qos: m.qos,
                    retain: m.retain,
                    properties: m.properties.map(Arc::new),
                    origin,
                    expires_at: env::unix_ms_to_instant(&*self.clock, m.expires_unix_ms),
                    received_at: now,
                };
                let pid = PacketId::new(m.packet_id);
                match (m.state, pid) {
                    (records::STATE_AWAIT_ACK | records::STATE_AWAIT_PUBCOMP, Some(packet_id)) => {
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
                    _ => s.outbound.restore_queued(Queued {
                        qos: m.qos,
                        message,
                        retain: m.retain,
                        subscription_ids: m.subscription_ids,
                        journal_id: m.id,
                        shared_group: 0,
                    }),
                }
            }
            self.by_client.insert(cid, sid);
            self.sessions.insert(sid, Box::new(s));
            for (filter, options, subscription_id) in restored_subs {
                self.restore_pending +=
                    self.install_subscription(sid, &filter, options, subscription_id, token);
            }
        }
        for client_id in expired {
            self.jnote(Record::SessionGone { client_id });
        }
        for (topic, r) in rec.retained {
            let msg = Message {
                topic: ByteStr::from(topic),
                payload: r.payload,
                qos: r.qos,
                retain: true,
                properties: r.properties.map(Arc::new),
                origin,
                expires_at: env::unix_ms_to_instant(&*self.clock, r.expires_unix_ms),
                received_at: now,
            };
            if msg.is_expired(now) {
                self.jnote(Record::RetainClear {
                    topic: msg.topic.to_string(),
                });
                continue;
            }
            let topic = msg.topic.clone();
            self.retained.insert(&topic, msg);
        }
    }

    /// The journal record that re-creates a session as it is now.
    pub(super) fn session_record(&self, s: &Session, fresh: bool) -> Record {
        let disconnected_unix_ms = match (s.connection, s.disconnected_at) {
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
            d.checkpoint = Some(durable::Checkpoint {
                start_segment: d.journal.active_segment(),
                start_bytes: d.journal.stats().bytes_appended,
                sessions,
                retained,
                end_seq: None,
            });
        }
        let mut budget = durable::COMPACT_STEP_RECORDS;
        loop {
            let d = self.durable.as_mut().expect("checked");
            let cp = d.checkpoint.as_mut().expect("started");
            if cp.end_seq.is_some() || budget == 0 {
                break;
            }
            if let Some(cid) = cp.sessions.pop() {
                budget = budget.saturating_sub(self.reappend_session(&cid));
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
        let start = cp.start_segment;
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

    /// Re-appends the whole state of one journaled session; returns the records written.
    pub(super) fn reappend_session(&mut self, client_id: &str) -> usize {
        let Some(&sid) = self.by_client.get(&ByteStr::from(client_id)) else {
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
        for pid in s.inbound_qos2.ids() {
            recs.push(Record::Qos2In {
                client_id: cid.clone(),
                packet_id: pid,
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
