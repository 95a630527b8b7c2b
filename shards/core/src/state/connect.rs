//! CONNECT and AUTH: negotiation, hand-off to the home shard, adoption, takeover of a
//! connected session, session removal, DISCONNECT. Password checks are in `login.rs`.

use super::login::Login;
use super::*;

impl ShardState {
    pub(super) fn reject(&mut self, key: usize, reason: ReasonCode) {
        self.reject_with(key, reason, Properties::default());
    }

    pub(super) fn reject_with(
        &mut self,
        key: usize,
        reason: ReasonCode,
        mut properties: Properties,
    ) {
        if self.conns[key].version.is_v5() {
            // A CONNACK may always carry a Reason String [MQTT-3.2.2-19 allows it here].
            properties.reason_string = reason_text(reason).map(ByteStr::from);
        }
        let ack = Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason,
            properties,
        }));
        self.send(key, &ack);
        self.counters.connections_rejected += 1;
        self.counters.rejected_by.add(reason.0);
        self.close_conn(key, Close::Rejected);
    }

    /// What the connection learns from its CONNECT before anything is answered: the version
    /// to answer in, and the largest packet the client takes [MQTT-3.1.2-24].
    fn note_connect(&mut self, key: usize, c: &Connect) {
        let conn = &mut self.conns[key];
        conn.version = c.protocol;
        if let Some(max) = c
            .properties
            .maximum_packet_size
            .filter(|_| c.protocol.is_v5())
        {
            conn.extra.get_or_insert_with(Box::default).max_packet_size = Some(max);
        }
    }

    /// The transport verified who the client is (`use_identity_as_username`): that name
    /// replaces the username of its CONNECT, and `None` refuses the CONNECT.
    pub fn set_identity(&mut self, key: usize, name: Option<String>) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.extra.get_or_insert_with(Box::default).identity = Some(name.map(ByteStr::from));
        }
    }

    pub(super) fn on_connect(&mut self, key: usize, mut c: Box<Connect>) {
        self.note_connect(key, &c);
        let v5 = c.protocol.is_v5();
        let identified = self.conns[key]
            .extra
            .as_mut()
            .and_then(|x| x.identity.take());
        let identified = match identified {
            Some(Some(name)) => {
                c.username = Some(name);
                c.password = None;
                true
            }
            Some(None) => return self.reject(key, ReasonCode::NOT_AUTHORIZED),
            None => false,
        };
        if let Some(m) = c.properties.authentication_method.as_ref().filter(|_| v5) {
            if self.cfg.auth.find(m).is_none() {
                // Not a configured method [MQTT-4.12.0-1].
                return self.reject(key, ReasonCode::BAD_AUTHENTICATION_METHOD);
            }
        }
        if let Some(reference) = &self.cfg.server_reference {
            // Server redirection (MQTT 5 section 4.11); 3.1.x has no way to say where to go.
            if !v5 {
                return self.reject(key, ReasonCode::SERVER_UNAVAILABLE);
            }
            let code = if self.cfg.server_moved {
                ReasonCode::SERVER_MOVED
            } else {
                ReasonCode::USE_ANOTHER_SERVER
            };
            let props = Properties {
                server_reference: Some(ByteStr::from(reference.as_str())),
                ..Properties::default()
            };
            return self.reject_with(key, code, props);
        }
        if let Some(w) = &c.will {
            if validate_topic_name(&w.topic, self.cfg.max_topic_levels).is_err() {
                return self.reject(key, ReasonCode::TOPIC_NAME_INVALID);
            }
            // [MQTT-3.2.2-12] a will above Maximum QoS; [MQTT-3.2.2-13] a retained will
            // without Retain Available.
            if w.qos as u8 > self.cfg.max_qos {
                return self.reject(key, ReasonCode::QOS_NOT_SUPPORTED);
            }
            if w.retain && !self.cfg.retain_available {
                return self.reject(key, ReasonCode::RETAIN_NOT_SUPPORTED);
            }
        }
        let mut assigned = None;
        if c.client_id.is_empty() {
            // [MQTT-3.1.3-8] 3.1.1 refuses an empty id with Clean Session 0; 3.1 always needs one.
            if c.protocol == ProtocolVersion::V31 || (!v5 && !c.clean_start) {
                return self.reject(key, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            let id = self.assign_client_id();
            c.client_id = id.clone();
            assigned = Some(id);
        }
        match self.login(key, &c, identified) {
            Login::Pass => {}
            Login::Refuse(reason) => return self.reject(key, reason),
            Login::Check => return self.check_password(key, c, assigned),
        }
        self.route_connect(key, c, assigned, false);
    }

    /// Goes on with an accepted CONNECT here, or hands it to its client's home shard with
    /// what the client sent after it: the rest of the buffer being read, or, once the CONNECT
    /// `waited` for its password check, the input the connection held meanwhile.
    pub(super) fn route_connect(
        &mut self,
        key: usize,
        c: Box<Connect>,
        assigned: Option<ByteStr>,
        waited: bool,
    ) {
        let home = home_shard(c.client_id.as_bytes(), self.nshards);
        if home != self.id {
            let conn = &mut self.conns[key];
            if waited {
                let leftover = conn.take_partial().freeze();
                return self.hand_off(key, c, leftover);
            }
            conn.extra.get_or_insert_with(Box::default).handoff = Some(c);
            return;
        }
        self.begin_connect(key, c, assigned);
    }

    /// Accepts a CONNECT on the client's home shard, after an AUTH exchange if it names an
    /// authentication method.
    pub(super) fn begin_connect(&mut self, key: usize, c: Box<Connect>, assigned: Option<ByteStr>) {
        self.conns[key].version = c.protocol;
        if !self.will_allowed(&c) {
            return self.reject(key, ReasonCode::NOT_AUTHORIZED);
        }
        let method = c
            .properties
            .authentication_method
            .as_ref()
            .filter(|_| c.protocol.is_v5())
            .map(|m| ByteStr::from(m.as_str()));
        let Some(method) = method else {
            return self.accept_connect(key, c, assigned, None);
        };
        let Some(m) = self.cfg.auth.find(&method).cloned() else {
            return self.reject(key, ReasonCode::BAD_AUTHENTICATION_METHOD);
        };
        let data = c.properties.authentication_data.clone().unwrap_or_default();
        let (step, session) = m.start(c.client_id.as_str(), &data, &mut *self.entropy);
        match (step, session) {
            (crate::auth::AuthStep::Success(d), _) => {
                self.accept_connect(key, c, assigned, Some((method, d)))
            }
            (crate::auth::AuthStep::Continue(d), Some(session)) => {
                self.send_auth(key, ReasonCode::CONTINUE_AUTHENTICATION, &method, Some(d));
                self.conns[key].extra.get_or_insert_with(Box::default).auth = Some(PendingAuth {
                    method,
                    session,
                    connect: Some((c, assigned)),
                });
            }
            _ => self.reject(key, ReasonCode::NOT_AUTHORIZED),
        }
    }

    pub(super) fn send_auth(
        &mut self,
        key: usize,
        reason: ReasonCode,
        method: &ByteStr,
        data: Option<Vec<u8>>,
    ) {
        let a = Packet::Auth(Box::new(ringmq_codec::Auth {
            reason,
            properties: Properties {
                authentication_method: Some(method.clone()),
                authentication_data: data.map(Bytes::from),
                ..Properties::default()
            },
        }));
        self.send(key, &a);
    }

    /// An AUTH from the client: the next step of an exchange, or the start of a
    /// re-authentication (0x19) with the method used at CONNECT (section 4.12.1).
    pub(super) fn on_auth(&mut self, key: usize, a: ringmq_codec::Auth) {
        use crate::auth::AuthStep;
        let method = a.properties.authentication_method.clone();
        let data = a.properties.authentication_data.clone().unwrap_or_default();
        let active = self.conns[key].phase == Phase::Active;
        let extra = self.conns[key].extra.get_or_insert_with(Box::default);
        let pending = extra.auth.take();
        let used = extra.auth_method.clone();
        let step = match (a.reason, pending) {
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(mut p))
                if method.as_deref() == Some(p.method.as_str()) =>
            {
                let step = p.session.step(&data);
                (step, p)
            }
            (ReasonCode::RE_AUTHENTICATE, None) if active && method.is_some() && method == used => {
                let name = method.expect("checked");
                let Some(m) = self.cfg.auth.find(&name).cloned() else {
                    return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
                };
                let client_id = self.conns[key]
                    .session()
                    .and_then(|sid| self.sessions.get(&sid))
                    .map(|s| s.client_id.to_string())
                    .unwrap_or_default();
                match m.start(&client_id, &data, &mut *self.entropy) {
                    (AuthStep::Continue(d), Some(session)) => {
                        self.send_auth(key, ReasonCode::CONTINUE_AUTHENTICATION, &name, Some(d));
                        self.conns[key].extra.get_or_insert_with(Box::default).auth =
                            Some(PendingAuth {
                                method: name,
                                session,
                                connect: None,
                            });
                        return;
                    }
                    (AuthStep::Success(d), _) => {
                        return self.send_auth(key, ReasonCode::SUCCESS, &name, d);
                    }
                    _ => return self.close_conn(key, Close::Error(ReasonCode::NOT_AUTHORIZED)),
                }
            }
            // Any other AUTH is a protocol error [MQTT-4.12.0-?].
            _ => return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR)),
        };
        match step {
            (AuthStep::Continue(d), p) => {
                self.send_auth(key, ReasonCode::CONTINUE_AUTHENTICATION, &p.method, Some(d));
                self.conns[key].extra.get_or_insert_with(Box::default).auth = Some(p);
            }
            (AuthStep::Success(d), p) => match p.connect {
                Some((c, assigned)) => self.accept_connect(key, c, assigned, Some((p.method, d))),
                None => self.send_auth(key, ReasonCode::SUCCESS, &p.method, d),
            },
            (AuthStep::Fail, p) => {
                if p.connect.is_some() {
                    self.reject(key, ReasonCode::NOT_AUTHORIZED);
                } else {
                    self.close_conn(key, Close::Error(ReasonCode::NOT_AUTHORIZED));
                }
            }
        }
    }

    /// An id unique in this process whose home is this shard, so the session needs no handoff.
    pub(super) fn assign_client_id(&mut self) -> ByteStr {
        loop {
            self.assigned_ids += 1;
            let nonce = self.entropy.next_u64();
            let id = format!("ringmq-{:x}-{}-{}", nonce, self.id, self.assigned_ids);
            if home_shard(id.as_bytes(), self.nshards) == self.id {
                return ByteStr::from(id);
            }
        }
    }

    /// Sends the connection to its client's home shard; the driver passes the socket on.
    pub(super) fn hand_off(&mut self, key: usize, connect: Box<Connect>, leftover: Bytes) {
        let home = home_shard(connect.client_id.as_bytes(), self.nshards);
        self.fx.batches[home].push(ShardMsg::Handoff(Box::new(Handoff {
            socket: self.conns[key].socket,
            listener: self.conns[key].listener,
            connect,
            leftover,
            opened_at: self.start + std::time::Duration::from_micros(self.conns[key].opened_us),
            transport: None,
        })));
        self.fx.handoffs = true;
        self.counters.handoffs += 1;
        self.conns[key].close = Some(Close::Handoff);
        self.fx.closes.push(key);
    }

    /// A connection from another shard: register it, answer its CONNECT, handle what followed.
    pub(super) fn adopt(&mut self, h: Handoff) {
        let now = self.now_ms();
        let opened_us = h
            .opened_at
            .saturating_duration_since(self.start)
            .as_micros() as u64;
        let key = self
            .conns
            .insert(Conn::new(h.socket, h.listener, now, opened_us));
        self.watch_conn(key);
        self.fx.adopted.push(Adopted {
            key,
            socket: h.socket,
            listener: h.listener,
            transport: h.transport,
        });
        self.note_connect(key, &h.connect);
        self.begin_connect(key, h.connect, None);
        if !h.leftover.is_empty() {
            let mut buf = BytesMut::from(&h.leftover[..]);
            self.process_frames(key, &mut buf);
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.close.is_none() && !buf.is_empty() {
                    conn.keep_partial(buf);
                }
            }
        }
    }

    /// Accepts a CONNECT on the home shard. If the client id's session is still connected
    /// elsewhere, whatever that connection already sent comes first (a DISCONNECT still in its
    /// socket means no will and, for a clean session, no session to resume): the CONNECT waits
    /// while the driver reads the old socket dry ([`Effects::drains`]), then calls
    /// [`ShardState::resume_connect`].
    pub(super) fn accept_connect(
        &mut self,
        key: usize,
        c: Box<Connect>,
        assigned: Option<ByteStr>,
        auth: Option<AuthDone>,
    ) {
        let opened_us = self.conns[key].opened_us;
        let newer = self
            .by_client
            .get(&self.sessions, &c.client_id)
            .and_then(|sid| self.sessions.get(&sid))
            .is_some_and(|s| s.opened_us > opened_us);
        if newer {
            // The client connected again on a newer connection, which was answered first: this
            // CONNECT is one it gave up on, and is taken over by what came after it.
            tracing::debug!(shard = self.id, conn = key, client = %c.client_id, "stale CONNECT");
            self.counters.takeovers += 1;
            return self.close_conn(key, Close::TakenOver);
        }
        let old = self
            .by_client
            .get(&self.sessions, &c.client_id)
            .and_then(|sid| self.sessions.get(&sid))
            .and_then(|s| s.connection())
            .filter(|&old| self.conns.get(old).is_some_and(|c| c.close.is_none()));
        match old {
            Some(old) => {
                self.conns[key].phase = Phase::AwaitTakeover;
                self.deferred_connects.insert(
                    key,
                    DeferredConnect {
                        connect: c,
                        assigned,
                        auth,
                    },
                );
                // The old connection is read dry, paused or not (backpressure.rs): a DISCONNECT
                // it sent before the takeover still counts [MQTT-3.1.2-10].
                self.conns[old].set_reads_paused(false);
                self.fx.drains.push(Drain { old, new: key });
            }
            None => self.accept_connect_now(key, c, assigned, auth),
        }
    }

    /// The old connection of a takeover was read dry: accept the CONNECT that waited for it,
    /// then handle what the client sent after it.
    pub fn resume_connect(&mut self, key: usize) {
        let Some(d) = self.deferred_connects.remove(&key) else {
            return;
        };
        if self.conns.get(key).is_none_or(|c| c.close.is_some()) {
            return;
        }
        self.conns[key].phase = Phase::AwaitConnect;
        self.accept_connect_now(key, d.connect, d.assigned, d.auth);
        self.process_held_input(key);
    }

    /// Handles what the client sent while its CONNECT waited.
    pub(super) fn process_held_input(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut buf = conn.take_partial();
        if !buf.is_empty() {
            self.process_frames(key, &mut buf);
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.close.is_none() && !buf.is_empty() {
                    conn.keep_partial(buf);
                }
            }
        }
    }

    /// The removal a Clean Start CONNECT waited for is synced: CONNACK, then the input held.
    pub(super) fn release_connack(&mut self, to: ConnRef, ack: Packet) {
        let Some(key) = self.conn_for(to) else {
            return;
        };
        if self.conns[key].phase != Phase::AwaitSync || self.conns[key].close.is_some() {
            return;
        }
        self.conns[key].phase = Phase::Active;
        self.watch_conn(key);
        self.send_connack(key, to.session, &ack, false);
        self.process_held_input(key);
    }

    pub(super) fn accept_connect_now(
        &mut self,
        key: usize,
        mut c: Box<Connect>,
        assigned: Option<ByteStr>,
        auth: Option<AuthDone>,
    ) {
        let granted = negotiate(&self.cfg, &c, assigned, auth.as_ref());
        // What the session keeps must not pin the shared read buffer it was sliced from.
        c.client_id = ByteStr::from(c.client_id.as_str());
        let will = c.will.take().map(|w| {
            Box::new(LastWill {
                topic: ByteStr::from(w.topic.as_str()),
                payload: Bytes::copy_from_slice(&w.payload),
                ..w
            })
        });
        let (sid, session_present) = self.attach_session(key, &c, &granted, will);
        self.activate_conn(key, &c, sid, &granted, auth);
        // A reconnect within the Will Delay Interval cancels the pending will [MQTT-3.1.3-9].
        if session_present {
            self.delayed_wills.retain(|w| w.session != sid);
        }
        let user = c.username.as_ref().map_or("", |u| u.as_str());
        tracing::debug!(
            shard = self.id,
            conn = key,
            client = %c.client_id,
            user,
            session_present,
            "connected"
        );
        let ack = Packet::ConnAck(Box::new(ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties: granted.connack,
        }));
        if !session_present && self.removal_unsynced(&c.client_id) {
            let need = self.sync_needed_since(JournalSeq::NONE);
            self.conns[key].phase = Phase::AwaitSync;
            let to = self.conn_ref(sid);
            return self.after_sync(need, AfterSync::ConnAck { to, packet: ack });
        }
        if session_present && self.sessions.get(&sid).is_some_and(|s| s.journaled) {
            // A resumed persistent session's CONNACK, and the PUBLISH/PUBREL resends after it,
            // go once the journal has everything so far: lost in a power loss, the
            // re-attachment would leave the session counted as offline since its last
            // disconnect (and expire it), and a PUBREL resent for an unsynced PUBREC would
            // be followed, after the restart, by the PUBLISH again [MQTT-4.3.3-6].
            self.gate_output(key, self.sync_needed_since(JournalSeq::NONE));
        }
        self.send_connack(key, sid, &ack, session_present);
    }

    /// Sends the CONNACK, then what the session has for the client.
    fn send_connack(&mut self, key: usize, sid: u64, ack: &Packet, session_present: bool) {
        self.send(key, ack);
        self.counters.connects += 1;
        let waited = self.now_us().saturating_sub(self.conns[key].opened_us);
        record_us(&mut self.histograms.connect_to_connack_us, waited);
        if session_present {
            self.resend_inflight(sid);
        }
        self.refill(sid);
    }

    /// The session a CONNECT gets: the existing one (taken over from its connection, unless
    /// Clean Start or it ended with that connection), or a new one. Returns its id and whether
    /// it was present.
    fn attach_session(
        &mut self,
        key: usize,
        c: &Connect,
        granted: &Granted,
        will: Option<Box<LastWill>>,
    ) -> (u64, bool) {
        let mut resumed = None;
        if let Some(sid) = self.by_client.get(&self.sessions, &c.client_id) {
            let old = self.sessions.get(&sid).and_then(|s| s.connection());
            if let Some(old_key) = old {
                self.take_over(old_key, sid, !c.clean_start);
            }
            // A session that ends with its connection ends with the one just taken over too
            // [MQTT-3.1.2-6]: it is not there to resume.
            let ended = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.expiry_interval == 0);
            if c.clean_start || ended {
                self.remove_session(sid);
            } else {
                resumed = Some(sid);
            }
        }
        let session_present = resumed.is_some();
        let sid = resumed.unwrap_or_else(|| self.new_session(c, granted.window));
        let s = self.sessions.get_mut(&sid).expect("just ensured");
        s.protocol = c.protocol;
        s.outbound.set_window(granted.window);
        s.expiry_interval = granted.expiry_interval;
        s.max_packet_size = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
        s.problem_information = c.properties.request_problem_information != Some(0);
        s.will = will;
        s.opened_us = self.conns[key].opened_us;
        if self.cfg.acl_file.is_some() {
            s.username = c.username.as_deref().map(|u| Box::new(u.to_owned()));
        }
        s.set_connection(Some(key));
        s.attachment = s.attachment.wrapping_add(1);
        s.set_disconnected_at(None);
        // What held the old connection back is not the new one's (it is read from the start).
        self.read_waits.remove(&sid);
        self.journal_session_change(sid, session_present);
        (sid, session_present)
    }

    fn new_session(&mut self, c: &Connect, window: usize) -> u64 {
        let sid = self.next_session;
        self.next_session += 1;
        let s = Session::new(
            sid,
            c.client_id.as_str(),
            c.protocol,
            window,
            self.cfg.max_queued_messages,
        );
        self.sessions.insert(sid, Box::new(s));
        self.by_client.insert(&self.sessions, sid);
        sid
    }

    /// A persistent session is journaled from its CONNECT on; one that became non-persistent
    /// (MQTT 5 expiry now 0) leaves the journal.
    fn journal_session_change(&mut self, sid: u64, session_present: bool) {
        let s = self.sessions.get_mut(&sid).expect("attached");
        let persistent = s.expiry_interval > 0 && self.durable.is_some();
        let was = std::mem::replace(&mut s.journaled, persistent);
        if persistent {
            let rec = self.session_record(&self.sessions[&sid], !session_present);
            self.jnote(rec);
        } else if was {
            let client_id = s.client_id.to_string();
            self.jnote(Record::SessionGone { client_id });
        }
    }

    /// The connection is now the session's: active, with the keep-alive it was granted and
    /// its per-connection MQTT 5 state.
    fn activate_conn(
        &mut self,
        key: usize,
        c: &Connect,
        sid: u64,
        granted: &Granted,
        auth: Option<AuthDone>,
    ) {
        let now_ms = self.now_ms();
        let conn = &mut self.conns[key];
        conn.version = c.protocol;
        conn.phase = Phase::Active;
        conn.set_session(sid);
        conn.keep_alive_s = granted.keep_alive_s;
        conn.last_rx_ms = now_ms;
        // The AUTH exchange is over; the client's packet size limit stays.
        let max_packet_size = conn.extra.as_ref().and_then(|x| x.max_packet_size);
        conn.extra = max_packet_size.map(|m| {
            Box::new(ConnExtra {
                max_packet_size: Some(m),
                ..ConnExtra::default()
            })
        });
        let aliases = c.properties.topic_alias_maximum;
        if let Some(max) = aliases.filter(|m| *m > 0 && c.protocol.is_v5()) {
            conn.extra.get_or_insert_with(Box::default).out = Some(AliasOut {
                max,
                map: HashMap::new(),
            });
        }
        if let Some((method, _)) = auth {
            conn.extra.get_or_insert_with(Box::default).auth_method = Some(method);
        }
        self.watch_conn(key);
    }

    /// Detaches a session from its old connection and closes that connection.
    pub(super) fn take_over(&mut self, old_key: usize, sid: u64, resume: bool) {
        let origin = self.global_id(sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.connection() != Some(old_key) {
            return;
        }
        s.set_connection(None);
        // The old connection ends without DISCONNECT from its client: its will is due, unless
        // it has a Will Delay Interval and the new connection continues the session
        // [MQTT-3.1.3-9].
        let will = s.will.take();
        if let Some(w) = will {
            let delayed = w.properties.will_delay_interval.is_some_and(|d| d > 0);
            if !(delayed && resume) {
                self.publish_will(*w, origin);
            }
        }
        self.counters.takeovers += 1;
        self.close_conn(old_key, Close::TakenOver);
    }

    /// Writes that the session of `client_id` is gone; a Clean Start of that client is
    /// answered only once this is synced (`removal_unsynced`), or a power loss could bring the
    /// old session back after the client was told it is gone.
    pub(super) fn journal_removal(&mut self, client_id: &ByteStr) {
        self.jnote(Record::SessionGone {
            client_id: client_id.to_string(),
        });
        if let Some(d) = self.durable.as_ref().filter(|d| d.gates()) {
            self.removals.push_back((d.mark(), client_id.clone()));
        }
    }

    pub(super) fn remove_session(&mut self, sid: u64) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        self.by_client.remove(&s.client_id, sid);
        // Answers it still owed have no connection to go to (`sid` is never reused).
        self.acks.remove(&sid);
        self.read_waits.remove(&sid);
        // Answers others' publishes deferred on its queue go: the queue is gone.
        self.release_deferred(sid);
        self.unmark_if_drained(sid);
        if s.journaled {
            self.journal_removal(&ByteStr::from(s.client_id.as_str()));
        }
        for filter in s.subscriptions.keys() {
            self.uninstall_subscription(sid, &ByteStr::from(filter));
        }
        // Deliveries a shared subscription gave this session and it never acknowledged go to
        // another member of the group (4.8.2).
        let me = (self.id as u16, sid);
        let mut again: Vec<(GroupId, Message)> = Vec::new();
        for i in s.outbound.inflight().filter(|i| i.shared_group != 0) {
            if i.state != InflightState::AwaitPubComp {
                again.push((i.shared_group, i.message.clone()));
            }
        }
        for q in s.outbound.queued().filter(|q| q.shared_group != 0) {
            again.push((q.shared_group, q.message.clone()));
        }
        for (gid, msg) in again {
            if let Some(m) = self.shared.pick(gid, Some(me)) {
                self.send_to_member(gid, m, &msg, None);
            }
        }
        // The session ended before its will's delay ran out: the will goes now.
        if let Some(i) = self.delayed_wills.iter().position(|w| w.session == sid) {
            let w = self.delayed_wills.swap_remove(i);
            self.publish_will(*w.will, w.origin);
        }
    }

    pub(super) fn on_disconnect(&mut self, key: usize, sid: u64, d: Disconnect) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            if let Some(e) = d.properties.session_expiry_interval {
                // [MQTT-3.14.2-2] a session that ended with the connection cannot be revived.
                if s.expiry_interval == 0 && e != 0 {
                    return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
                }
                s.expiry_interval = e;
            }
        }
        let why = if d.reason == ReasonCode::DISCONNECT_WITH_WILL {
            Close::NormalWithWill
        } else {
            Close::Normal
        };
        if why == Close::Normal {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.will = None;
            }
        }
        self.close_conn(key, why);
    }
}
