//! What clients do with what the broker sends: CONNACK, deliveries and acknowledgements, each
//! checked against the model the moment it crosses the wire.

use super::*;

impl Sim {
    pub fn client_can_receive(&self, conn: usize) -> bool {
        let sc = &self.conns[conn];
        !sc.client_gone
            && self.clients[sc.client].conn == Some(conn)
            && (!sc.b2c.is_empty() || sc.b2c_eof)
    }

    /// The client reads what arrived (a random part of it, or `all`).
    pub fn client_receive(&mut self, conn: usize, all: bool) {
        let c = self.conns[conn].client;
        let avail = self.conns[conn].b2c.len();
        let n = if all { avail } else { self.rng.split(avail) };
        let bytes: Vec<u8> = self.conns[conn].b2c.drain(..n).collect();
        self.clients[c].rx.extend_from_slice(&bytes);
        let v = self.clients[c].version;
        loop {
            if self.clients[c].conn != Some(conn) {
                return;
            }
            match decode_packet(&mut self.clients[c].rx, v, usize::MAX) {
                Ok(Some(p)) => self.client_packet(c, conn, p),
                Ok(None) => break,
                Err(e) => {
                    self.fail(
                        "protocol",
                        format!(
                            "client {c} cannot decode what the broker sent on conn {conn}: {e}"
                        ),
                    );
                    return;
                }
            }
        }
        let sc = &self.conns[conn];
        if sc.b2c.is_empty() && sc.b2c_eof && self.clients[c].conn == Some(conn) {
            self.log(format!("client {c}: conn {conn} closed by the broker"));
            let end = if self.clients[c].silent {
                WillEnd::Due
            } else {
                WillEnd::Unknown
            };
            self.leave_conn(c, end);
        }
    }

    fn client_packet(&mut self, c: usize, conn: usize, p: Packet) {
        let silent = self.clients[c].silent;
        match p {
            Packet::ConnAck(a) => {
                self.on_connack(c, conn, a.session_present, a.reason, &a.properties)
            }
            Packet::Publish(p) => self.on_publish(c, p, silent),
            Packet::PubAck(r) => {
                let cl = &mut self.clients[c];
                let Some(i) = cl
                    .out
                    .iter()
                    .position(|o| o.pid == r.packet_id.get() && o.qos == QoS::AtLeastOnce)
                else {
                    self.log(format!(
                        "client {c}: PUBACK pid {} for nothing",
                        r.packet_id
                    ));
                    return;
                };
                let o = cl.out.remove(i);
                if self.refused_for_full_queue(c, r.reason, o.msg) {
                    return;
                }
                if r.reason.is_error() {
                    self.fail(
                        "protocol",
                        format!(
                            "client {c}: PUBACK {:?} for message {} (the journal is unbounded)",
                            r.reason, o.msg
                        ),
                    );
                    return;
                }
                self.on_acked(c, o.msg);
            }
            Packet::PubRec(r) => {
                let cl = &mut self.clients[c];
                let Some(i) = cl
                    .out
                    .iter()
                    .position(|o| o.pid == r.packet_id.get() && o.qos == QoS::ExactlyOnce)
                else {
                    self.log(format!(
                        "client {c}: PUBREC pid {} for nothing",
                        r.packet_id
                    ));
                    return;
                };
                if r.reason.is_error() {
                    let o = cl.out.remove(i);
                    if self.refused_for_full_queue(c, r.reason, o.msg) {
                        return;
                    }
                    self.fail(
                        "protocol",
                        format!("client {c}: PUBREC {:?} for message {}", r.reason, o.msg),
                    );
                    return;
                }
                let first = !cl.out[i].released;
                cl.out[i].released = true;
                let msg = cl.out[i].msg;
                if cl.persistent {
                    cl.durable_session = true;
                }
                if first {
                    self.on_acked(c, msg);
                }
                if !silent {
                    self.send(c, &Packet::PubRel(PubResp::new(r.packet_id)));
                }
            }
            Packet::PubComp(r) => {
                let cl = &mut self.clients[c];
                if let Some(i) = cl
                    .out
                    .iter()
                    .position(|o| o.pid == r.packet_id.get() && o.released)
                {
                    cl.out.remove(i);
                    if cl.persistent {
                        cl.durable_session = true;
                    }
                }
            }
            Packet::PubRel(r) => {
                self.clients[c].in_qos2.remove(&r.packet_id.get());
                if !silent {
                    self.send(c, &Packet::PubComp(PubResp::new(r.packet_id)));
                }
            }
            Packet::SubAck(s) => {
                let ev = self.next_ev();
                let id = s.packet_id.get();
                let cl = &mut self.clients[c];
                let current = matches!(&cl.op, Some(Op::Sub { pid: p, .. }) if *p == id);
                if !current {
                    // The second answer to an ambiguous SUBACK: now the subscription is in.
                    if let Some((p, filters)) = cl.unconfirmed.take() {
                        if p == id {
                            for f in &filters {
                                if let Some(sub) = cl.subs.get_mut(f) {
                                    if sub.established == u64::MAX {
                                        sub.established = ev;
                                    }
                                }
                            }
                        } else {
                            cl.unconfirmed = Some((p, filters));
                        }
                    }
                    self.log(format!("client {c}: SUBACK pid {id} for nothing"));
                    return;
                }
                let Some(Op::Sub { filters, .. }) = cl.op.take() else {
                    unreachable!("checked")
                };
                // The tap could not tell whether this answers the SUBSCRIBE sent here or its
                // copy left unanswered on an earlier connection: the subscription counts from
                // the second SUBACK with this id.
                let ambiguous = self.conns[conn].ambiguous_subacks.remove(&id);
                let established = if ambiguous { u64::MAX } else { ev };
                let cl = &mut self.clients[c];
                if ambiguous {
                    cl.unconfirmed = Some((id, filters.clone()));
                }
                if cl.persistent {
                    cl.durable_session = true;
                }
                for (f, code) in filters.iter().zip(s.reason_codes.iter()) {
                    if code.is_error() {
                        self.fail(
                            "protocol",
                            format!("client {c}: SUBSCRIBE {f} refused: {code:?}"),
                        );
                        continue;
                    }
                    let cl = &mut self.clients[c];
                    cl.subs.entry(f.clone()).or_insert(SubState {
                        qos: code.0,
                        established,
                    });
                }
                self.log(format!(
                    "client {c}: SUBACK {filters:?} {:?}",
                    s.reason_codes
                ));
            }
            Packet::UnsubAck(u) => {
                let cl = &mut self.clients[c];
                if matches!(&cl.op, Some(Op::Unsub { pid: p, .. }) if *p == u.packet_id.get()) {
                    cl.op = None;
                    if cl.persistent {
                        cl.durable_session = true;
                    }
                }
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                self.log(format!(
                    "client {c}: DISCONNECT from the broker {:?}",
                    d.reason
                ));
            }
            other => {
                self.fail(
                    "protocol",
                    format!("client {c}: unexpected packet from the broker: {other:?}"),
                );
            }
        }
    }

    fn on_connack(
        &mut self,
        c: usize,
        conn: usize,
        present: bool,
        reason: ReasonCode,
        props: &Properties,
    ) {
        if self.clients[c].phase != Phase::Connecting {
            self.fail(
                "protocol",
                format!("client {c}: CONNACK while {:?}", self.clients[c].phase),
            );
            return;
        }
        if reason.is_error() {
            self.fail(
                "protocol",
                format!("client {c}: CONNACK refused {reason:?}"),
            );
            return;
        }
        let clean = self.clients[c].asked_clean;
        self.log(format!(
            "client {c}: CONNACK on conn {conn}, session present {present}"
        ));
        if clean && present {
            self.fail(
                "session",
                format!(
                    "client {c}: CONNACK with Session Present 1 after Clean Start [MQTT-3.2.2-1]"
                ),
            );
            return;
        }
        if !clean && !present {
            // The session the client resumes is gone although it cannot have expired.
            let durable = self.clients[c].durable_session;
            let mut lost = if self.p.power_loss {
                durable
            } else {
                self.clients[c].has_session
            };
            // The broker got the CONNECT later than it was sent: the session may have
            // expired meanwhile.
            let cl = &self.clients[c];
            if cl.version == ProtocolVersion::V5 && cl.expiry != u32::MAX {
                let gone = self.conns[conn]
                    .connect_seen_ms
                    .saturating_sub(cl.offline_since_ms);
                if gone + EXPIRY_MARGIN_MS >= u64::from(cl.expiry) * 1000 {
                    lost = false;
                }
            }
            // One of its own abandoned connecting attempts got there late: it replaced the
            // session (Clean Start) or took it over and lived on without the client.
            let confirmed = self.clients[c].session_confirmed;
            if let Some(w) = self.conns.iter().position(|x| {
                x.client == c && x.wild && x.connect_seen.is_some_and(|e| e > confirmed)
            }) {
                if lost {
                    self.log(format!(
                        "client {c}: session replaced by its own late CONNECT on conn {w}"
                    ));
                }
                lost = false;
            }
            if lost {
                self.fail(
                    "session",
                    format!(
                        "client {c}: persistent session lost (CONNACK Session Present 0 on resume)"
                    ),
                );
                return;
            }
            self.discard_session(c, "broker has no session");
        }
        if present && !self.clients[c].asked_resume {
            // [MQTT-3.2.2-4] no session state here, one there: close, start clean next.
            self.log(format!(
                "client {c}: Session Present 1 but it holds no session state: closes"
            ));
            self.clients[c].must_clean = true;
            let sc = &mut self.conns[conn];
            sc.c2b_eof = true;
            sc.reset = true;
            self.leave_conn(c, WillEnd::Due);
            return;
        }
        if let Some(ka) = props.server_keep_alive {
            self.clients[c].keep_alive = ka;
        }
        if present && self.replaced_after(c, self.clients[c].session_confirmed) {
            // One of its own abandoned attempts got there when the session could have expired
            // (or started clean): what it resumes now may be a new session. The client cannot
            // know; the checks must not count on its old subscriptions.
            self.log(format!(
                "client {c}: its session may have been replaced by its own late CONNECT"
            ));
            // (Its QoS 2 receive state stays: the client cannot know, and if the session was
            // in fact resumed, the broker resends what it holds under those ids.)
            let cl = &mut self.clients[c];
            cl.subs.clear();
            cl.epoch += 1;
        }
        let persistent = self.conns[conn].persistent;
        let ev = self.next_ev();
        // The session is as confirmed as of when the broker took this CONNECT.
        let confirmed = self.conns[conn].connect_seen.unwrap_or(ev);
        let cl = &mut self.clients[c];
        cl.phase = Phase::Active;
        cl.has_session = persistent;
        cl.session_confirmed = confirmed;
        if present {
            // Retransmit in the original order [MQTT-4.4.0-1] [MQTT-4.6.0-1].
            let resend: Vec<Packet> = cl
                .out
                .iter()
                .map(|o| {
                    if o.released {
                        Packet::PubRel(PubResp::new(pid(o.pid)))
                    } else {
                        Packet::Publish(Publish {
                            dup: true,
                            qos: o.qos,
                            retain: o.retain,
                            topic: ByteStr::from(o.topic.as_str()),
                            packet_id: Some(pid(o.pid)),
                            payload: o.payload.clone(),
                            properties: None,
                        })
                    }
                })
                .collect();
            let again: Vec<u64> = cl
                .out
                .iter()
                .filter(|o| !o.released)
                .map(|o| o.msg)
                .collect();
            for m in again {
                self.model.msgs[m as usize].resent = true;
            }
            if !resend.is_empty() {
                self.log(format!("client {c}: retransmits {} packets", resend.len()));
            }
            for p in &resend {
                self.send(c, p);
            }
        }
        self.send_op(c);
    }

    fn on_publish(&mut self, c: usize, p: Publish, silent: bool) {
        let Some(msg) = model::msg_id(&p.payload) else {
            if !p.payload.is_empty() {
                self.fail(
                    "protocol",
                    format!("client {c}: PUBLISH with a foreign payload"),
                );
                return;
            }
            // An empty retained publish forwarded live: acknowledge, nothing to check.
            self.answer_publish(c, &p, silent);
            return;
        };
        if msg as usize >= self.model.msgs.len() {
            self.fail(
                "protocol",
                format!("client {c}: PUBLISH of unknown message {msg}"),
            );
            return;
        }
        let topic = self.model.msgs[msg as usize].topic.clone();
        if p.topic.as_str() != topic {
            self.fail(
                "protocol",
                format!(
                    "client {c}: message {msg} arrived on topic {} instead of {topic}",
                    p.topic
                ),
            );
            return;
        }
        let qos = p.qos as u8;
        let first = match p.qos {
            QoS::ExactlyOnce => !self.clients[c]
                .in_qos2
                .contains(&p.packet_id.expect("qos 2").get()),
            _ => true,
        };
        // The order rule covers messages first sent after one of the client's current
        // subscriptions matching them was established, at QoS 1 or 2.
        let m = &self.model.msgs[msg as usize];
        let sent = m.first_sent.unwrap_or(u64::MAX);
        let mq = m.qos;
        let cl = &self.clients[c];
        let ordered = cl
            .subs
            .iter()
            .any(|(f, s)| model::matches(f, &topic) && s.established < sent && s.qos.min(mq) > 0);
        let epoch = cl.epoch;
        self.log(format!(
            "client {c}: got m{msg} {topic} qos {qos}{}{}{}",
            if p.dup { " dup" } else { "" },
            if p.retain { " retained" } else { "" },
            if first { "" } else { " (known pid: not new)" }
        ));
        self.stats.deliveries += 1;
        if let Some((kind, what)) = self
            .model
            .on_receive(self.ev, c, epoch, msg, qos, p.retain, first, ordered)
        {
            // The publisher's own late Clean Start CONNECT replaced its session after it sent
            // the message: its retransmission was a new message to the broker.
            let m = &self.model.msgs[msg as usize];
            let sent = m.first_sent.unwrap_or(0);
            // A message that missed the subscription on its first routing (its route was still
            // being announced) arrives late, with the publisher's retransmission.
            let kind = if kind == "order" && self.route_in_flight(c, msg) {
                "suback-route"
            } else {
                kind
            };
            if kind == "exactly-once" && self.replaced_after(m.publisher, sent) {
                self.log(format!(
                    "client {c}: second copy of m{msg}: its publisher's session was replaced by \
                     its own late CONNECT"
                ));
            } else {
                self.fail(kind, what);
            }
        }
        if self.clients[c].is_probe && p.retain {
            self.clients[c]
                .probe_retained
                .entry(topic)
                .or_default()
                .push(msg);
        }
        self.answer_publish(c, &p, silent);
    }

    fn answer_publish(&mut self, c: usize, p: &Publish, silent: bool) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                if !silent {
                    self.send(
                        c,
                        &Packet::PubAck(PubResp::new(p.packet_id.expect("qos 1"))),
                    );
                }
            }
            QoS::ExactlyOnce => {
                let id = p.packet_id.expect("qos 2");
                self.clients[c].in_qos2.insert(id.get());
                if !silent {
                    self.send(c, &Packet::PubRec(PubResp::new(id)));
                }
            }
        }
    }

    /// The publisher saw a successful PUBACK / PUBREC: from now on every subscription that
    /// was established before the message was first sent, and stays, must get it.
    /// A PUBACK/PUBREC 0x97 (Quota exceeded) for a session queue at its limit, which runs with
    /// a queue limit may answer an MQTT 5 publisher: the flow is over and the message not
    /// taken (the client gives it up; nobody may get it, see `check_quiesced`).
    fn refused_for_full_queue(&mut self, c: usize, reason: ReasonCode, msg: u64) -> bool {
        if reason != ReasonCode::QUOTA_EXCEEDED || self.p.queue_limit == 0 {
            return false;
        }
        self.stats.refused += 1;
        self.log(format!("client {c}: m{msg} refused 0x97 (a full queue)"));
        true
    }

    fn on_acked(&mut self, c: usize, msg: u64) {
        let ev = self.next_ev();
        self.stats.acked += 1;
        let m = &self.model.msgs[msg as usize];
        if m.acked.is_some() {
            return;
        }
        let sent = m.first_sent.unwrap_or(u64::MAX);
        let (topic, qos, empty) = (m.topic.clone(), m.qos, m.empty);
        let mut obligations = Vec::new();
        if !empty {
            for (d, cl) in self.clients.iter().enumerate() {
                for (f, s) in &cl.subs {
                    if model::matches(f, &topic) && s.established < sent && s.qos.min(qos) > 0 {
                        obligations.push(Obligation {
                            client: d,
                            epoch: cl.epoch,
                            filter: f.clone(),
                            established: s.established,
                        });
                    }
                }
            }
        }
        let m = &mut self.model.msgs[msg as usize];
        m.acked = Some(ev);
        m.obligations = obligations;
        self.log(format!("client {c}: m{msg} acknowledged"));
    }
}
