//! The checks made where packets cross the wire and at the end of a run: acknowledgements
//! against the journal at the moment the broker emits them (durability, order, which
//! connection they answer), then after quiesce the delivery obligations, wills and retained
//! messages, and after teardown an empty broker.

use crate::client::{Op, OutMsg, Phase};
use crate::model::{self, WillEnd};
use crate::world::{RunPhase, Sim};
use bytes::Bytes;
use ringmq_codec::{decode_packet, ByteStr, Packet, PacketId, Publish, QoS};
use ringmq_core::config::home_shard;
use ringmq_core::mesh::ShardMsg;
use std::collections::BTreeSet;

fn pid(p: u16) -> PacketId {
    PacketId::new(p).expect("packet ids start at 1")
}

impl Sim {
    // ------------------------------------------------------------------ the tap

    /// Decodes what the broker just emitted on a connection and checks each acknowledgement
    /// against the journal at this very moment.
    pub fn check_tap(&mut self, conn: usize, k: usize) {
        if self.conns[conn].tap_failed {
            return;
        }
        let v = self.conns[conn].version;
        loop {
            let p = match decode_packet(&mut self.conns[conn].tap, v, usize::MAX) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    self.conns[conn].tap_failed = true;
                    self.fail(
                        "protocol",
                        format!("shard {k} emitted an undecodable packet on conn {conn}: {e}"),
                    );
                    return;
                }
            };
            self.tap_packet(conn, k, p);
        }
    }

    fn tap_packet(&mut self, conn: usize, k: usize, p: Packet) {
        let c = self.conns[conn].client;
        let home = home_shard(self.clients[c].id.as_bytes(), self.p.nshards);
        match &p {
            // A refusal (0x97 for a full queue) answers its PUBLISH too: it takes its place in
            // the order, and nothing more.
            Packet::PubAck(r) | Packet::PubRec(r) => {
                let what = if matches!(p, Packet::PubAck(_)) {
                    "PUBACK"
                } else {
                    "PUBREC"
                };
                let id = r.packet_id.get();
                // Whose answer is it? This connection's oldest unanswered PUBLISH, if the
                // broker has read it; else one left unanswered on an earlier connection of the
                // session; else it breaks the order, or answers nothing at all.
                let had_stale = self.conns[conn].stale.get(&id).is_some_and(|n| *n > 0);
                let sc = &mut self.conns[conn];
                let read = sc.read;
                let front = sc.ack_order.front().copied();
                if front.is_some_and(|(p, end)| p == id && end <= read) {
                    sc.ack_order.pop_front();
                    // The same id was left unanswered on an earlier connection: this may be
                    // that late answer, while the PUBLISH read here is still being routed.
                    if had_stale {
                        if let Some(o) = self.clients[c].out.iter().find(|o| o.pid == id) {
                            self.model.msgs[o.msg as usize].stale_acked = true;
                        }
                    }
                } else if sc.stale.get(&id).is_some_and(|n| *n > 0) {
                    *sc.stale.get_mut(&id).expect("checked") -= 1;
                    // The client will take it for the answer to what it now has under that id.
                    if let Some(o) = self.clients[c].out.iter().find(|o| o.pid == id) {
                        self.model.msgs[o.msg as usize].stale_acked = true;
                    }
                    self.fail(
                        "stale-ack",
                        format!(
                            "{what} pid {id} on conn {conn} (client {c}) answers a PUBLISH \
                         received on an earlier connection of the session"
                        ),
                    );
                    return;
                } else if let Some(i) = sc
                    .ack_order
                    .iter()
                    .position(|&(p, end)| p == id && end <= read)
                {
                    let (front, _) = front.expect("non-empty");
                    sc.ack_order.remove(i);
                    // With PUBLISHes of the session left unanswered on an earlier connection,
                    // whose answer this is cannot be told.
                    let kind = if !self.conns[conn].stale_history {
                        "ack-order"
                    } else {
                        "stale-ack"
                    };
                    if let Some(o) = self.clients[c].out.iter().find(|o| o.pid == id) {
                        self.model.msgs[o.msg as usize].stale_acked = true;
                    }
                    self.fail(
                        kind,
                        format!(
                            "[MQTT-4.6.0-2/3] {what} pid {id} on conn {conn} (client {c}) before \
                         the answer to the earlier PUBLISH pid {front}"
                        ),
                    );
                    return;
                } else {
                    if let Some(o) = self.clients[c].out.iter().find(|o| o.pid == id) {
                        self.model.msgs[o.msg as usize].stale_acked = true;
                    }
                    self.fail(
                        "stale-ack",
                        format!(
                            "{what} pid {id} on conn {conn} (client {c}) answers no PUBLISH \
                         the broker read on this connection"
                        ),
                    );
                    return;
                }
                let Some(&msg) = self.conns[conn].pubs.get(&id) else {
                    return;
                };
                if r.reason.is_error() {
                    self.log(format!(
                        "shard {k}: refuses m{msg} (pid {id}) on conn {conn}"
                    ));
                    self.model.msgs[msg as usize].refused = true;
                    return;
                }
                for s in 0..self.shards.len() {
                    self.scan(s);
                }
                if matches!(p, Packet::PubRec(_)) {
                    // The message's own routing to other shards must be complete first.
                    let n = self.p.nshards;
                    let in_flight = (0..n).find(|&to| {
                        self.mesh[k * n + to].iter().flatten().any(|m| match m {
                            ShardMsg::Publish {
                                msg: x,
                                ack: Some(_),
                                ..
                            }
                            | ShardMsg::RetainSet {
                                msg: x,
                                ack: Some(_),
                            } => model::msg_id(&x.payload) == Some(msg),
                            _ => false,
                        })
                    });
                    if let Some(to) = in_flight {
                        self.model.msgs[msg as usize].early_pubrec = true;
                        self.fail(
                            "durability-qos2",
                            format!(
                                "shard {k} sent PUBREC pid {id} (m{msg}, client {c}) while \
                                 the message is still on its way to shard {to}"
                            ),
                        );
                        return;
                    }
                }
                if matches!(p, Packet::PubRec(_))
                    && self.conns[conn].persistent
                    && !self.discarded_later(conn)
                {
                    let synced = self.synced(home);
                    if self.jlogs[home].qos2_durable(c, id, synced) != Some(true) {
                        self.model.msgs[msg as usize].early_pubrec = true;
                        self.fail(
                            "durability-qos2",
                            format!(
                                "durability: shard {k} sent PUBREC pid {id} (m{msg}, client {c}) \
                             before the journal of shard {home} holds the QoS 2 packet id as \
                             received (synced to {synced})"
                            ),
                        );
                        return;
                    }
                }
                // The same message left unanswered on an earlier connection: this may be the
                // answer to that transmission, which waited for its own routing only.
                if had_stale && self.conns[conn].stale_msgs.contains(&msg) {
                    return;
                }
                for s in 0..self.shards.len() {
                    let synced = self.synced(s);
                    if let Err((sub, seq)) = self.jlogs[s].copies_synced(msg, synced) {
                        let hint = if had_stale {
                            format!(
                                " (pid {id} was also left unanswered on an earlier connection \
                                 of the session: this may be that late answer, taken for the \
                                 new message's)"
                            )
                        } else {
                            String::new()
                        };
                        self.fail(
                            "durability",
                            format!(
                            "durability: shard {k} sent {what} for m{msg} (client {c}, pid {id}) \
                             while shard {s} has its delivery to client {sub} only at journal \
                             seq {seq}, synced to {synced}{hint}"
                        ),
                        );
                        return;
                    }
                }
            }
            Packet::ConnAck(a) if !a.reason.is_error() && !self.conns[conn].resume_request => {
                // A clean start replaces the session: a power loss must not bring the old one
                // back (its subscriptions, deliveries and pending QoS 2 packet ids) after the
                // client was told it is gone.
                self.scan(home);
                let synced = self.synced(home);
                if self.jlogs[home].old_session_durable(c, synced) {
                    let ev = self.next_ev();
                    self.model.connack_risk.push((c, ev));
                    self.fail(
                        "durability-connack",
                        format!(
                            "durability: shard {k} sent CONNACK (Clean Start) to client {c} while \
                             its synced journal (to {synced}) still holds the session being \
                             replaced"
                        ),
                    );
                }
            }
            Packet::PubComp(r) if self.conns[conn].persistent && !self.discarded_later(conn) => {
                let id = r.packet_id.get();
                self.scan(home);
                let synced = self.synced(home);
                if self.jlogs[home].qos2_durable(c, id, synced) == Some(true) {
                    self.fail(
                        "durability-pubcomp",
                        format!(
                            "durability: shard {k} sent PUBCOMP pid {id} (client {c}) while the \
                         synced journal of shard {home} still holds the packet id as unreleased"
                        ),
                    );
                }
            }
            Packet::SubAck(s) => {
                let id = s.packet_id.get();
                let read = self.conns[conn].read;
                let readable = self.conns[conn]
                    .subs
                    .get(&id)
                    .is_some_and(|(_, end)| *end <= read);
                let filters = if readable {
                    self.conns[conn].subs.remove(&id).map(|(f, _)| f)
                } else {
                    None
                };
                let Some(filters) = filters else {
                    self.fail(
                        "stale-ack",
                        format!(
                            "SUBACK pid {id} on conn {conn} (client {c}) answers no SUBSCRIBE \
                         the broker read on this connection"
                        ),
                    );
                    return;
                };
                if self.conns[conn].stale.contains_key(&id) {
                    self.conns[conn].ambiguous_subacks.insert(id);
                }
                let read_ev = self.conns[conn].sub_read.remove(&id).unwrap_or(u64::MAX);
                // Every other shard must know the route first, or a message published there
                // after the SUBACK misses the subscription: every announcement of the filter
                // made before the broker read the SUBSCRIBE has arrived. (One made later, for
                // another subscriber, may still be on its way.)
                for (f, code) in filters.iter().zip(s.reason_codes.iter()) {
                    if code.is_error() {
                        continue;
                    }
                    if let Some(r) = self.route_adds.iter().find(|r| {
                        r.from == k && r.delivered.is_none() && r.filter == *f && r.sent <= read_ev
                    }) {
                        let to = r.to;
                        self.fail(
                            "suback-route",
                            format!(
                                "shard {k} sent SUBACK pid {id} for {f} (client {c}) while its \
                                 RouteAdd({f}) to shard {to} is still in flight"
                            ),
                        );
                        return;
                    }
                }
                // A Clean Start of the client read after the SUBSCRIBE ended the session on
                // purpose: a SUBACK still on its way to the old connection proves nothing.
                let replaced = self.conns.iter().any(|x| {
                    x.client == c
                        && !x.resume_request
                        && x.connect_seen.is_some_and(|e| e > read_ev)
                });
                if !self.conns[conn].persistent || replaced {
                    return;
                }
                self.scan(home);
                let synced = self.synced(home);
                for (f, code) in filters.iter().zip(s.reason_codes.iter()) {
                    if !code.is_error() && !self.jlogs[home].sub_durable(c, f, synced) {
                        self.fail(
                            "durability-sub",
                            format!(
                                "durability: shard {k} sent SUBACK pid {id} for {f} (client {c}) \
                             before the subscription is in the synced journal of shard {home} \
                             (synced to {synced})"
                            ),
                        );
                        return;
                    }
                }
            }
            Packet::UnsubAck(u) => {
                let id = u.packet_id.get();
                let read = self.conns[conn].read;
                let readable = self.conns[conn]
                    .unsubs
                    .get(&id)
                    .is_some_and(|(_, end)| *end <= read);
                let filters = if readable {
                    self.conns[conn].unsubs.remove(&id).map(|(f, _)| f)
                } else {
                    None
                };
                let Some(filters) = filters else {
                    self.fail(
                        "stale-ack",
                        format!(
                            "UNSUBACK pid {id} on conn {conn} (client {c}) answers no UNSUBSCRIBE \
                         the broker read on this connection"
                        ),
                    );
                    return;
                };
                if !self.conns[conn].persistent || self.discarded_later(conn) {
                    return;
                }
                self.scan(home);
                let synced = self.synced(home);
                for f in &filters {
                    if !self.jlogs[home].unsub_durable(c, f, synced) {
                        self.fail(
                            "durability-sub",
                            format!(
                            "durability: shard {k} sent UNSUBACK pid {id} for {f} (client {c}) \
                             while the synced journal of shard {home} still holds the \
                             subscription"
                        ),
                        );
                        return;
                    }
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ end of run

    /// After quiesce: every obligation kept, wills as due, retained messages as published.
    pub fn check_quiesced(&mut self) {
        // At least once: every acknowledged message reached every subscription that was
        // established before it was first sent and is still there.
        let mut missing: Vec<(&'static str, String)> = Vec::new();
        for (id, m) in self.model.msgs.iter().enumerate() {
            if m.acked.is_none() {
                continue;
            }
            for o in &m.obligations {
                let cl = &self.clients[o.client];
                let alive = cl.epoch == o.epoch
                    && cl
                        .subs
                        .get(&o.filter)
                        .is_some_and(|s| s.established == o.established)
                    && !self.replaced_after(o.client, o.established);
                if alive && !self.model.received[o.client].contains(&(id as u64)) {
                    // A known way to lose one: a QoS 2 message routed before a crash, whose
                    // retransmission is then taken for a duplicate.
                    // The subscription's route was still on its way to the publisher's shard
                    // when the message was sent (see "suback-route").
                    let route_in_flight = self.route_in_flight(o.client, id as u64);
                    let kind = if m.qos == 2 && m.crash_before_ack {
                        "qos2-crash"
                    } else if self.resurrected(m.publisher, m.first_sent.unwrap_or(0))
                        || self.resurrected(o.client, o.established)
                    {
                        "durability-connack"
                    } else if m.early_pubrec {
                        "durability-qos2"
                    } else if route_in_flight {
                        "suback-route"
                    } else {
                        "at-least-once"
                    };
                    missing.push((
                        kind,
                        format!(
                            "at least once: message {id} (publisher {}, topic {}, qos {}) was \
                         acknowledged but never reached client {} (subscribed to {} since \
                         event {}, same session)",
                            m.publisher, m.topic, m.qos, o.client, o.filter, o.established
                        ),
                    ));
                }
            }
        }
        // A refusal is all or nothing: a message whose only transmission was refused
        // reached nobody.
        for (id, m) in self.model.msgs.iter().enumerate() {
            if !m.refused || m.resent {
                continue;
            }
            if let Some(d) =
                (0..self.clients.len()).find(|&d| self.model.received[d].contains(&(id as u64)))
            {
                missing.push((
                    "refused-delivered",
                    format!(
                        "message {id} (publisher {}, topic {}) was answered 0x97 on its only \
                         transmission, yet client {d} received it",
                        m.publisher, m.topic
                    ),
                ));
            }
        }
        // Wills.
        let mut will_errors = Vec::new();
        for w in &self.model.wills {
            let m = &self.model.msgs[w.msg as usize];
            let got: Vec<usize> = (0..self.clients.len())
                .filter(|&d| self.model.received[d].contains(&w.msg))
                .collect();
            let Some((end_ev, mut end)) = w.end else {
                continue;
            };
            // The broker may have ended the connection (and sent the will) before the client
            // left it.
            let end_ev = end_ev.min(self.conns[w.conn].close_ev.unwrap_or(u64::MAX));
            // A crash after that may have taken the will (it is not journaled).
            let crash_after = w.crash_after || self.model.crashes.iter().any(|&e| e > end_ev);
            // A DISCONNECT the broker never read (the connection was closed, taken over or
            // lost first) did not end the connection normally.
            let sc = &self.conns[w.conn];
            if end == WillEnd::Normal && sc.disconnect_end.is_none_or(|d| sc.read < d) {
                end = WillEnd::Unknown;
            }
            match end {
                WillEnd::Normal | WillEnd::Crash | WillEnd::NotAccepted if !got.is_empty() => {
                    will_errors.push(format!(
                        "will: the will {} of client {} was published although its connection \
                         ended with {} (received by {got:?})",
                        w.msg,
                        w.client,
                        match end {
                            WillEnd::Normal => "DISCONNECT 0x00 [MQTT-3.1.2-10]",
                            WillEnd::Crash => "the broker's crash",
                            _ => "its CONNECT never accepted",
                        }
                    ));
                }
                // A resuming CONNECT taken after this connection's own is a new connection to
                // the session (it took this one over, or came after it ended): the delayed
                // will is not sent [MQTT-3.1.3-9].
                WillEnd::Due
                    if !crash_after
                        && (w.delay_s == 0
                            || w.session_ends
                            || !self.resumed_after(
                                w.client,
                                self.conns[w.conn]
                                    .connect_seen
                                    .unwrap_or(end_ev)
                                    .min(end_ev),
                            )) =>
                {
                    // Must have been published: to every subscription established before the
                    // connection ended that is still there.
                    for (d, cl) in self.clients.iter().enumerate() {
                        let must = cl.subs.iter().any(|(f, s)| {
                            model::matches(f, &m.topic)
                                && s.established < end_ev
                                && s.qos.min(m.qos) > 0
                        });
                        if must && !self.model.received[d].contains(&w.msg) {
                            will_errors.push(format!(
                                "will: the will {} (qos {}, delay {} s) of client {} was due \
                                 (connection ended at event {end_ev}) but never reached \
                                 client {d}",
                                w.msg, m.qos, w.delay_s, w.client
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        for (kind, e) in missing.into_iter().take(5) {
            self.fail(kind, e);
        }
        for e in will_errors.into_iter().take(5) {
            self.fail("will", e);
        }
        if self.failed {
            return;
        }
        self.check_retained();
    }

    /// Whether a session of `client` may have been brought back by a power loss after event
    /// `ev` (a Clean Start CONNACK went out unsynced before it, a power loss came after).
    pub fn resurrected(&self, client: usize, ev: u64) -> bool {
        self.model
            .connack_risk
            .iter()
            .any(|&(c, at)| c == client && at < ev && self.model.last_power_loss > at)
    }

    /// Whether, when message `msg` was first sent, a route announcement for a filter matching
    /// it was on its way from `subscriber`'s shard to the publisher's (see "suback-route").
    pub fn route_in_flight(&self, subscriber: usize, msg: u64) -> bool {
        let m = &self.model.msgs[msg as usize];
        let n = self.p.nshards;
        let from = home_shard(self.clients[subscriber].id.as_bytes(), n);
        let to = home_shard(self.clients[m.publisher].id.as_bytes(), n);
        let sent = m.first_sent.unwrap_or(0);
        self.route_adds.iter().any(|r| {
            r.from == from
                && r.to == to
                && model::matches(&r.filter, &m.topic)
                && r.sent < sent
                && r.delivered.is_none_or(|d| d > sent)
        })
    }

    /// Whether a CONNECT the client had given up on reached the broker after event `ev` and may
    /// have started a new session (Clean Start, or the session had expired by then): it
    /// replaced the session behind the client's back (the client, resuming later, gets Session
    /// Present 1 from the new session and cannot tell).
    pub fn replaced_after(&self, client: usize, ev: u64) -> bool {
        let cl = &self.clients[client];
        let expiry_ms = (cl.version == ringmq_codec::ProtocolVersion::V5 && cl.expiry != u32::MAX)
            .then(|| u64::from(cl.expiry) * 1000);
        self.conns.iter().any(|x| {
            x.client == client
                && x.wild
                && x.connect_seen.is_some_and(|e| e > ev)
                && (!x.resume_request
                    // Resuming a session that had expired by then starts a new one.
                    || x.offline_since_ms.zip(expiry_ms).is_some_and(|(o, exp)| {
                        x.connect_seen_ms.saturating_sub(o) + 5_000 >= exp
                    }))
        })
    }

    /// Whether the broker has read a Clean Start of the client on a later connection than
    /// `conn`: the client discarded the session on purpose, so an answer still going out on
    /// `conn` concerns state the client will never ask about again, and whether that state
    /// is in the synced journal proves nothing.
    fn discarded_later(&self, conn: usize) -> bool {
        let c = self.conns[conn].client;
        self.conns[conn + 1..]
            .iter()
            .any(|x| x.client == c && !x.resume_request && x.connect_seen.is_some())
    }

    /// Whether the broker took a CONNECT of `client` resuming its session after event `ev`
    /// (which cancels a delayed will), whether or not the client saw the CONNACK.
    fn resumed_after(&self, client: usize, ev: u64) -> bool {
        self.conns.iter().any(|x| {
            x.client == client && x.resume_request && x.connect_seen.is_some_and(|e| e > ev)
        })
    }

    /// A fresh client subscribes to everything and compares the retained messages it gets
    /// with what the acknowledged retained publishes allow.
    fn check_retained(&mut self) {
        let probe = self.p.nclients;
        self.log("--- retained check ---".into());
        self.client_connect(probe, true, false);
        self.settle();
        self.clients[probe].op = Some(Op::Sub {
            pid: 1,
            filters: vec!["#".into()],
        });
        self.send_op(probe);
        self.settle();
        if self.clients[probe].op.is_some() {
            self.fail(
                "retained",
                "retained check: the probe's SUBSCRIBE was not answered".into(),
            );
            return;
        }
        let seen = std::mem::take(&mut self.clients[probe].probe_retained);
        let topics: BTreeSet<String> = self
            .model
            .retained
            .keys()
            .cloned()
            .chain(seen.keys().cloned())
            .collect();
        for t in topics {
            let got = seen.get(&t).cloned().unwrap_or_default();
            if got.len() > 1 {
                self.fail(
                    "retained",
                    format!("retained: topic {t} delivered {got:?} on one subscribe"),
                );
                return;
            }
            let pubs = self.model.retained.get(&t).cloned().unwrap_or_default();
            let value = got.first().copied();
            if let Err(e) = self.retained_allowed(&t, &pubs, value) {
                // The QoS 2 retransmission after a crash taken for a duplicate (see
                // "qos2-crash") loses retained messages the same way.
                let qos2_crash = pubs.iter().any(|&y| {
                    let m = &self.model.msgs[y as usize];
                    m.qos == 2 && m.crash_before_ack && m.acked.is_some()
                });
                // Or acknowledged early and lost in a crash (see "durability-qos2").
                let early = pubs
                    .iter()
                    .any(|&y| self.model.msgs[y as usize].early_pubrec);
                let kind = if qos2_crash {
                    "qos2-crash"
                } else if early {
                    "durability-qos2"
                } else {
                    "retained"
                };
                self.fail(kind, e);
                return;
            }
        }
        self.send(probe, &Packet::Disconnect(Box::default()));
        let conn = self.clients[probe].conn.expect("connected");
        self.conns[conn].c2b_eof = true;
        self.leave_conn(probe, WillEnd::Normal);
        self.settle();
    }

    /// Whether `value` (a message id, or none) may be the retained message of `topic` now.
    /// A retained publish P is superseded if another one was acknowledged... no: if another
    /// publish Y was first sent after P was acknowledged (and Y was acknowledged, so it was
    /// surely applied after P). Unacknowledged publishes may or may not have been applied.
    fn retained_allowed(
        &self,
        topic: &str,
        pubs: &[u64],
        value: Option<u64>,
    ) -> Result<(), String> {
        // An acknowledgement that may have been a late answer to an earlier transmission says
        // nothing about when the broker applied the message.
        let acked = |m: &model::MsgInfo| m.acked.filter(|_| !m.stale_acked);
        let superseded = |acked_at: u64, except: Option<u64>| {
            pubs.iter().copied().find(|&y| {
                Some(y) != except && {
                    let m = &self.model.msgs[y as usize];
                    acked(m).is_some() && m.first_sent.is_some_and(|s| s > acked_at)
                }
            })
        };
        let describe = |y: u64| {
            let m = &self.model.msgs[y as usize];
            format!(
                "m{y} ({}, sent at event {}, acknowledged at event {})",
                if m.empty { "empty: clears" } else { "a value" },
                m.first_sent.unwrap_or(0),
                m.acked.unwrap_or(0)
            )
        };
        match value {
            Some(v) => {
                if !pubs.contains(&v) {
                    return Err(format!(
                        "retained: topic {topic} holds m{v}, which was never published retained \
                         there"
                    ));
                }
                let m = &self.model.msgs[v as usize];
                if let Some(at) = acked(m) {
                    if let Some(y) = superseded(at, Some(v)) {
                        return Err(format!(
                            "retained: topic {topic} holds {} but {} was acknowledged later \
                             and sent after it",
                            describe(v),
                            describe(y)
                        ));
                    }
                }
                Ok(())
            }
            None => {
                // Nothing retained: the initial state, or a clear, that nothing acknowledged
                // was sent after.
                let clears = pubs
                    .iter()
                    .copied()
                    .filter(|&y| self.model.msgs[y as usize].empty);
                let mut candidates: Vec<(Option<u64>, u64)> = vec![(None, 0)];
                for y in clears {
                    let m = &self.model.msgs[y as usize];
                    candidates.push((Some(y), acked(m).unwrap_or(u64::MAX)));
                }
                for (who, at) in &candidates {
                    let sup = pubs.iter().copied().find(|&y| {
                        Some(y) != *who && {
                            let m = &self.model.msgs[y as usize];
                            !m.empty && acked(m).is_some() && m.first_sent.is_some_and(|s| s > *at)
                        }
                    });
                    if sup.is_none() {
                        return Ok(());
                    }
                }
                let last = pubs
                    .iter()
                    .copied()
                    .filter(|&y| {
                        let m = &self.model.msgs[y as usize];
                        !m.empty && m.acked.is_some()
                    })
                    .max_by_key(|&y| self.model.msgs[y as usize].acked);
                Err(format!(
                    "retained: topic {topic} holds nothing, but {} was acknowledged and nothing \
                     clears it",
                    last.map_or("?".into(), describe)
                ))
            }
        }
    }

    /// Everyone leaves (persistent sessions end), retained messages are cleared; the broker
    /// must be left with nothing, in memory and in its journals.
    pub fn teardown(&mut self) {
        self.phase = RunPhase::Teardown;
        self.log("--- teardown ---".into());
        for c in 0..self.p.nclients {
            if self.clients[c].phase == Phase::Active {
                self.send(c, &Packet::Disconnect(Box::default()));
                let conn = self.clients[c].conn.expect("active");
                self.conns[conn].c2b_eof = true;
                self.leave_conn(c, WillEnd::Normal);
            }
        }
        self.settle();
        // A clean, non-persistent connection replaces each session; then it leaves too.
        for c in 0..self.p.nclients {
            self.clients[c].persistent = false;
            self.client_connect(c, true, false);
        }
        self.settle();
        for c in 0..self.p.nclients {
            if self.clients[c].phase != Phase::Active {
                self.fail(
                    "teardown",
                    format!("teardown: client {c} could not connect"),
                );
                return;
            }
            self.send(c, &Packet::Disconnect(Box::default()));
            let conn = self.clients[c].conn.expect("active");
            self.conns[conn].c2b_eof = true;
            self.leave_conn(c, WillEnd::Normal);
        }
        // The probe clears every retained topic.
        let probe = self.p.nclients;
        self.client_connect(probe, true, false);
        self.settle();
        let topics: Vec<String> = self.model.retained.keys().cloned().collect();
        for t in &topics {
            let id = self.model.new_msg(probe, t, 1, true, true, None);
            let ev = self.next_ev();
            self.model.msgs[id as usize].first_sent = Some(ev);
            let p = self.clients[probe].alloc_pid(false);
            self.clients[probe].out.push(OutMsg {
                pid: p,
                msg: id,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: t.clone(),
                payload: Bytes::new(),
                released: false,
            });
            self.send(
                probe,
                &Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    topic: ByteStr::from(t.as_str()),
                    packet_id: Some(pid(p)),
                    payload: Bytes::new(),
                    properties: None,
                }),
            );
        }
        self.settle();
        if !self.clients[probe].out.is_empty() {
            self.fail(
                "teardown",
                "teardown: retained clears not acknowledged".into(),
            );
            return;
        }
        self.send(probe, &Packet::Disconnect(Box::default()));
        let conn = self.clients[probe].conn.expect("active");
        self.conns[conn].c2b_eof = true;
        self.leave_conn(probe, WillEnd::Normal);
        for _ in 0..10 {
            self.settle();
            self.advance(1000);
        }
        self.settle();
        if self.failed {
            return;
        }
        for k in 0..self.shards.len() {
            let st = &self.shards[k].st;
            let g = st.metrics_snapshot().gauges;
            let waiting = st.durable.as_ref().map_or(0, |d| d.waiting.len());
            let sessions: Vec<String> = st
                .sessions
                .values()
                .map(|s| s.client_id.to_string())
                .collect();
            if !st.conns.is_empty()
                || !sessions.is_empty()
                || g.subscriptions != 0
                || g.retained_messages != 0
                || waiting != 0
            {
                let conns = st.conns.len();
                self.fail(
                    "teardown",
                    format!(
                    "teardown: shard {k} is left with {conns} connections, sessions {sessions:?}, \
                     {} subscriptions, {} retained messages, {waiting} acknowledgements waiting",
                    g.subscriptions, g.retained_messages
                ),
                );
                return;
            }
        }
        // And the journals agree: a restart finds nothing either.
        self.crash(false);
        for k in 0..self.shards.len() {
            let st = &self.shards[k].st;
            let g = st.metrics_snapshot().gauges;
            if !st.sessions.is_empty() || g.retained_messages != 0 {
                let sessions: Vec<String> = st
                    .sessions
                    .values()
                    .map(|s| s.client_id.to_string())
                    .collect();
                self.fail(
                    "teardown",
                    format!(
                        "teardown: after a restart shard {k} recovered sessions {sessions:?} and \
                     {} retained messages from its journal",
                        g.retained_messages
                    ),
                );
                return;
            }
        }
    }
}
