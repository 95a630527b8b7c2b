//! What clients do of their own accord: connect, publish, subscribe, unsubscribe, leave, and
//! the timers that make them retransmit or ping.

use super::*;

impl Sim {
    /// Writes a packet on the client's current connection.
    pub(crate) fn send(&mut self, c: usize, p: &Packet) {
        let Some(conn) = self.clients[c].conn else {
            return;
        };
        let v = self.clients[c].version;
        let mut b = BytesMut::new();
        encode(p, v, &mut b).expect("the client encodes what it builds");
        let sc = &mut self.conns[conn];
        sc.c2b.extend(b.iter().copied());
        sc.written += b.len() as u64;
        let end = sc.written;
        match p {
            Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                let pid = p.packet_id.expect("qos > 0").get();
                // An empty payload (clearing a retained message) names no message: the id
                // no longer names the one sent under it before.
                match model::msg_id(&p.payload) {
                    Some(m) => sc.pubs.insert(pid, m),
                    None => sc.pubs.remove(&pid),
                };
                sc.ack_order.push_back((pid, end));
            }
            Packet::Disconnect(_) => sc.disconnect_end = Some(end),
            Packet::Connect(_) => sc.connect_end = end,
            Packet::Subscribe(s) => {
                sc.subs.insert(
                    s.packet_id.get(),
                    (
                        s.filters.iter().map(|f| f.filter.to_string()).collect(),
                        end,
                    ),
                );
            }
            Packet::Unsubscribe(u) => {
                sc.unsubs.insert(
                    u.packet_id.get(),
                    (u.filters.iter().map(|f| f.to_string()).collect(), end),
                );
            }
            _ => {}
        }
        self.clients[c].last_tx_ms = self.now_ms();
    }

    // ------------------------------------------------------------------ connecting

    /// Opens a connection and sends CONNECT, resuming the session when the client may.
    pub fn client_connect(&mut self, c: usize, force_clean: bool, with_will: bool) {
        let now = self.now_ms();
        let cl = &self.clients[c];
        let v5 = cl.v5();
        let force_clean = force_clean || cl.must_clean;
        let resume = !force_clean && cl.may_resume(now);
        // 3.1.1 has one flag for both: Clean Session 1 is a fresh session that ends with the
        // connection; a persistent client sends 0 and learns from Session Present.
        let (clean_start, persistent) = if !cl.persistent {
            (true, false)
        } else if v5 {
            (!resume, true)
        } else {
            (force_clean, !force_clean)
        };
        let is_probe = cl.is_probe;
        if !resume {
            self.discard_session(c, "clean start");
        }
        let mut will = None;
        let mut will_idx = None;
        if with_will && !is_probe {
            let qos = self.rng.below(3) as u8;
            let delay = if v5 && self.rng.chance(400) {
                self.rng.range(1, 8) as u32
            } else {
                0
            };
            let topic = format!("will/{}", self.clients[c].id);
            let w = self.model.wills.len();
            let msg = self.model.new_msg(c, &topic, qos, false, false, Some(w));
            self.model.msgs[msg as usize].first_sent = Some(self.ev + 1);
            self.model.wills.push(Will {
                msg,
                client: c,
                conn: self.conns.len(),
                delay_s: delay,
                session_ends: !persistent,
                end: None,
                crash_after: false,
            });
            will_idx = Some(w);
            will = Some(LastWill {
                topic: ByteStr::from(topic),
                payload: Bytes::from(format!("w{msg}.")),
                qos: QoS::from_u8(qos).expect("0..=2"),
                retain: false,
                properties: Properties {
                    will_delay_interval: (delay > 0).then_some(delay),
                    ..Properties::default()
                },
            });
        }
        let cl = &self.clients[c];
        let connect = Connect {
            protocol: cl.version,
            clean_start,
            keep_alive: cl.keep_alive,
            client_id: ByteStr::from(cl.id.as_str()),
            will,
            username: self.p.logins.then(|| ByteStr::from(cl.id.as_str())),
            password: self.p.logins.then(|| Bytes::from_static(b"sim-password")),
            properties: Properties {
                session_expiry_interval: (v5 && persistent).then_some(cl.expiry),
                receive_maximum: if v5 { cl.receive_maximum } else { None },
                ..Properties::default()
            },
        };
        let version = cl.version;
        let attached = self.clients[c].phase == Phase::Active;
        let offline_since = self.clients[c].offline_since_ms;
        let conn = self.new_conn(c, version, persistent);
        self.conns[conn].will = will_idx;
        self.conns[conn].resume_request = !clean_start;
        self.conns[conn].offline_since_ms = (!attached).then_some(offline_since);
        let cl = &mut self.clients[c];
        cl.conn = Some(conn);
        cl.phase = Phase::Connecting;
        cl.rx.clear();
        cl.silent = false;
        cl.asked_clean = clean_start;
        cl.asked_resume = resume;
        if clean_start {
            cl.must_clean = false;
        }
        let home = home_shard(cl.id.as_bytes(), self.p.nshards);
        let owner = self.conns[conn].owner.expect("accepted").0;
        self.log(format!(
            "client {c}: connects on conn {conn} via shard {owner} (home {home}), {}{}{}",
            if resume {
                "resume"
            } else if clean_start {
                "clean start"
            } else {
                "new session"
            },
            if persistent { ", persistent" } else { "" },
            will_idx.map_or(String::new(), |w| {
                let wl = &self.model.wills[w];
                format!(
                    ", will {} qos {} delay {}",
                    wl.msg, self.model.msgs[wl.msg as usize].qos, wl.delay_s
                )
            })
        ));
        self.send(c, &Packet::Connect(Box::new(connect)));
    }

    /// The client drops its session state (Clean Start, or the broker said it has none).
    pub(super) fn discard_session(&mut self, c: usize, why: &str) {
        let cl = &mut self.clients[c];
        let had = !cl.out.is_empty() || !cl.subs.is_empty() || cl.has_session;
        cl.out.clear();
        cl.in_qos2.clear();
        cl.op = None;
        cl.subs.clear();
        cl.unconfirmed = None;
        cl.has_session = false;
        cl.durable_session = false;
        cl.stale.clear();
        cl.stale_msgs.clear();
        cl.epoch += 1;
        if had {
            self.log(format!("client {c}: session state discarded ({why})"));
        }
    }

    /// The client stops using its connection (reset, abandon, disconnect, or it noticed the
    /// broker closed it).
    pub(crate) fn leave_conn(&mut self, c: usize, end: WillEnd) {
        let Some(conn) = self.clients[c].conn.take() else {
            return;
        };
        let now = self.now_ms();
        let ev = self.next_ev();
        let cl = &mut self.clients[c];
        // The session is detached since the last connection that had it; a connection that
        // never got its CONNACK does not count.
        if cl.phase == Phase::Active {
            let sc = &self.conns[conn];
            cl.offline_since_ms = if sc.broker_gone {
                now.min(sc.broker_gone_ms)
            } else {
                now
            };
        }
        cl.phase = Phase::Offline;
        cl.rx.clear();
        cl.silent = false;
        let sc = &mut self.conns[conn];
        sc.client_gone = true;
        sc.b2c.clear();
        for &(p, _) in &sc.ack_order {
            *self.clients[c].stale.entry(p).or_insert(0) += 1;
            if let Some(&m) = sc.pubs.get(&p) {
                self.clients[c].stale_msgs.insert(m);
            }
        }
        // Unanswered SUBSCRIBE / UNSUBSCRIBE ids: their late answer may come too (packet ids
        // are only kept from reuse, not counted).
        for &p in sc.subs.keys().chain(sc.unsubs.keys()) {
            self.clients[c].stale.entry(p).or_insert(0);
        }
        if let Some(w) = sc.will {
            let will = &mut self.model.wills[w];
            if will.end.is_none() {
                will.end = Some((ev, end));
            }
        }
        // A session that ends with its connection is gone for the client too.
        if !self.conns[conn].persistent {
            self.discard_session(c, "connection ended, session was not persistent");
        }
    }

    // ------------------------------------------------------------------ random behaviour

    pub fn client_act(&mut self, c: usize) {
        let phase = self.clients[c].phase;
        let silent = self.clients[c].silent;
        match phase {
            Phase::Offline => {
                let with_will = self.rng.chance(350);
                let force_clean = self.rng.chance(50);
                self.client_connect(c, force_clean, with_will);
            }
            Phase::Connecting => {
                // Gives up on a slow CONNACK now and then: a takeover of its own attempt.
                if self.rng.chance(30) {
                    self.log(format!("client {c}: abandons its connecting attempt"));
                    let conn = self.clients[c].conn.expect("connecting");
                    self.conns[conn].wild = true;
                    self.leave_conn(c, WillEnd::Due);
                }
            }
            Phase::Active if silent => {}
            Phase::Active => {
                // Disruptive actions (disconnects, resets, takeovers, silence) are scaled by
                // the seed's churn.
                let churn = |x: u64| (x * self.p.churn / 1000).max(1);
                let w = [
                    450,
                    150,
                    60,
                    30,
                    churn(40),
                    churn(15),
                    churn(45),
                    churn(30),
                    churn(10),
                    170,
                ];
                match self.rng.weighted(&w) {
                    0 => self.client_publish(c),
                    1 => self.client_subscribe(c),
                    2 => self.client_unsubscribe(c),
                    3 => {
                        self.send(c, &Packet::PingReq);
                    }
                    4 => {
                        self.log(format!("client {c}: DISCONNECT (normal)"));
                        self.send(
                            c,
                            &Packet::Disconnect(Box::new(Disconnect {
                                reason: ReasonCode::NORMAL_DISCONNECTION,
                                properties: Properties::default(),
                            })),
                        );
                        let conn = self.clients[c].conn.expect("active");
                        self.conns[conn].c2b_eof = true;
                        self.leave_conn(c, WillEnd::Normal);
                    }
                    5 if self.clients[c].v5() => {
                        self.log(format!("client {c}: DISCONNECT with will"));
                        self.send(
                            c,
                            &Packet::Disconnect(Box::new(Disconnect {
                                reason: ReasonCode::DISCONNECT_WITH_WILL,
                                properties: Properties::default(),
                            })),
                        );
                        let conn = self.clients[c].conn.expect("active");
                        self.conns[conn].c2b_eof = true;
                        self.leave_conn(c, WillEnd::Due);
                    }
                    6 => {
                        // The connection breaks: what had not arrived may be lost.
                        let conn = self.clients[c].conn.expect("active");
                        let sc = &mut self.conns[conn];
                        let unarrived = sc.c2b.len() - sc.arrived;
                        let keep = sc.arrived + self.rng.range(0, unarrived as u64) as usize;
                        sc.c2b.truncate(keep);
                        sc.c2b_eof = true;
                        sc.reset = true;
                        self.log(format!("client {c}: resets conn {conn}"));
                        self.leave_conn(c, WillEnd::Due);
                    }
                    7 => {
                        // Thinks the connection is dead and connects again while the broker
                        // still has it: a takeover.
                        let conn = self.clients[c].conn.expect("active");
                        self.log(format!("client {c}: abandons conn {conn} (takeover next)"));
                        self.leave_conn(c, WillEnd::Due);
                        let with_will = self.rng.chance(350);
                        let force_clean = self.rng.chance(50);
                        self.client_connect(c, force_clean, with_will);
                    }
                    8 => {
                        self.log(format!("client {c}: goes silent"));
                        let conn = self.clients[c].conn.expect("active");
                        if let Some(w) = self.conns[conn].will {
                            let ev = self.next_ev();
                            let will = &mut self.model.wills[w];
                            if will.end.is_none() {
                                will.end = Some((ev, WillEnd::Due));
                            }
                        }
                        self.clients[c].silent = true;
                    }
                    _ => {}
                }
            }
        }
    }

    fn client_publish(&mut self, c: usize) {
        let cl = &self.clients[c];
        let qos = match self.rng.below(10) {
            0..=1 => 0u8,
            2..=6 => 1,
            _ => 2,
        };
        if qos > 0 && cl.out.len() >= cl.window {
            return;
        }
        let topic = *self.rng.pick(TOPICS);
        let retain = self.rng.chance(120);
        let empty = retain && self.rng.chance(250);
        let id = self.model.new_msg(c, topic, qos, retain, empty, None);
        let payload = if empty {
            Bytes::new()
        } else {
            let pad = self.rng.below(120) as usize;
            let mut s = format!("m{id}.");
            for i in 0..pad {
                s.push((b'a' + (i % 26) as u8) as char);
            }
            Bytes::from(s)
        };
        let ev = self.next_ev();
        self.model.msgs[id as usize].first_sent = Some(ev);
        let p = if qos > 0 {
            Some(self.clients[c].alloc_pid(self.allow.contains(&"stale-ack")))
        } else {
            None
        };
        if let Some(p) = p {
            self.clients[c].out.push(OutMsg {
                pid: p,
                msg: id,
                qos: QoS::from_u8(qos).expect("0..=2"),
                retain,
                topic: topic.to_string(),
                payload: payload.clone(),
                released: false,
            });
        }
        self.log(format!(
            "client {c}: PUBLISH m{id} {topic} qos {qos}{}{}{}",
            if retain { " retain" } else { "" },
            if empty { " (empty: clears)" } else { "" },
            p.map_or(String::new(), |p| format!(" pid {p}"))
        ));
        self.send(
            c,
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::from_u8(qos).expect("0..=2"),
                retain,
                topic: ByteStr::from(topic),
                packet_id: p.map(pid),
                payload,
                properties: None,
            }),
        );
    }

    fn client_subscribe(&mut self, c: usize) {
        if self.clients[c].op.is_some() {
            return;
        }
        let mut filters = vec![self.rng.pick(FILTERS).to_string()];
        if self.rng.chance(200) {
            let f = self.rng.pick(FILTERS).to_string();
            if !filters.contains(&f) {
                filters.push(f);
            }
        }
        let p = self.clients[c].alloc_pid(self.allow.contains(&"stale-ack"));
        self.clients[c].op = Some(Op::Sub {
            pid: p,
            filters: filters.clone(),
        });
        self.log(format!("client {c}: SUBSCRIBE {filters:?} pid {p}"));
        self.send_op(c);
    }

    fn client_unsubscribe(&mut self, c: usize) {
        if self.clients[c].op.is_some() || self.clients[c].subs.is_empty() {
            return;
        }
        let keys: Vec<String> = self.clients[c].subs.keys().cloned().collect();
        let f = self.rng.pick(&keys).clone();
        // From now on the subscription promises nothing.
        self.clients[c].subs.remove(&f);
        let p = self.clients[c].alloc_pid(self.allow.contains(&"stale-ack"));
        self.clients[c].op = Some(Op::Unsub {
            pid: p,
            filters: vec![f.clone()],
        });
        self.log(format!("client {c}: UNSUBSCRIBE {f} pid {p}"));
        self.send_op(c);
    }

    /// Sends the pending SUBSCRIBE / UNSUBSCRIBE (again, after a reconnect).
    pub(crate) fn send_op(&mut self, c: usize) {
        let cl = &self.clients[c];
        let p = match &cl.op {
            Some(Op::Sub { pid: p, filters }) => Packet::Subscribe(Box::new(Subscribe {
                packet_id: pid(*p),
                filters: filters
                    .iter()
                    .map(|f| SubscribeFilter {
                        filter: ByteStr::from(f.as_str()),
                        options: SubscriptionOptions {
                            qos: QoS::from_u8(cl.sub_qos(f)).expect("0..=2"),
                            ..SubscriptionOptions::default()
                        },
                    })
                    .collect(),
                properties: Properties::default(),
            })),
            Some(Op::Unsub { pid: p, filters }) => Packet::Unsubscribe(Box::new(Unsubscribe {
                packet_id: pid(*p),
                filters: filters.iter().map(|f| ByteStr::from(f.as_str())).collect(),
                properties: Properties::default(),
            })),
            None => return,
        };
        self.send(c, &p);
    }

    /// Keep-alive: an idle active client pings at half its keep-alive.
    pub fn client_timers(&mut self) {
        let now = self.now_ms();
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if cl.phase == Phase::Active
                && !cl.silent
                && now.saturating_sub(cl.last_tx_ms) >= cl.keep_alive_ms() / 2
            {
                self.send(c, &Packet::PingReq);
            }
        }
    }

    /// Quiesce: an offline client reconnects (resuming when it may), nothing else is started.
    pub fn client_quiesce(&mut self, c: usize) {
        if self.clients[c].phase == Phase::Offline {
            self.client_connect(c, false, false);
        }
    }
}
