//! Connections and input: registering and finishing connections, deciding a close, reading
//! bytes into frames, and dispatching each packet to its handler.

use super::*;

impl ShardState {
    /// Registers an accepted socket; the driver starts reading it.
    /// A connection accepted on listener `listener` (its index in `Config::all_listeners`).
    pub fn add_conn(&mut self, socket: SocketId, listener: u8) -> usize {
        let now = self.now_ms();
        // Strictly increasing on a shard, so that of two connections accepted in the same
        // microsecond the later is still the newer one (stale CONNECTs, connect.rs).
        let now_us = self.now_us().max(self.last_opened_us + 1);
        self.last_opened_us = now_us;
        self.counters.connections_accepted += 1;
        let key = self.conns.insert(Conn::new(socket, listener, now, now_us));
        self.watch_conn(key);
        key
    }

    /// Called by the driver once `close` is set and the socket is closed (or handed over):
    /// detach the session, publish the will, release what the connection held.
    pub fn finish_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        self.forget_gate(key);
        let close = conn.close.unwrap_or(Close::Eof);
        if close == Close::Handoff {
            // Not a close the client sees: counted apart from connections_closed.
            self.counters.closed_by[close.metric_index()] += 1;
            return;
        }
        self.counters.connections_closed += 1;
        self.counters.closed_by[close.metric_index()] += 1;
        let Some(sid) = conn.session() else { return };
        let now_s = self.now_s();
        let origin = self.global_id(sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.connection() != Some(key) {
            return; // taken over: the session already belongs to another connection
        }
        s.set_connection(None);
        s.set_disconnected_at(Some(now_s));
        let will = s.will.take();
        let ends = s.expiry_interval == 0;
        if s.journaled && !ends {
            let rec = self.session_record(&self.sessions[&sid], false);
            self.jnote(rec);
        }
        if close.publishes_will() {
            if let Some(w) = will {
                // Sent at the earlier of the Will Delay Interval and the session's end
                // [MQTT-3.1.3-9]; a session ending now sends it now.
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                if delay == 0 || ends {
                    self.publish_will(*w, origin);
                } else {
                    let expiry = self.sessions[&sid].expiry_interval;
                    let wait_s = u64::from(delay.min(expiry));
                    let due_ms = self.now_ms() + wait_s * 1000;
                    self.delayed_wills.push(DelayedWill {
                        session: sid,
                        due_ms,
                        will: w,
                        origin,
                    });
                    self.watch_will(sid, due_ms);
                }
            }
        }
        if ends {
            self.remove_session(sid);
        } else {
            self.watch_session(sid);
        }
    }

    /// Decides that a connection ends; the driver writes what is queued and closes it.
    pub fn close_conn(&mut self, key: usize, why: Close) {
        if self.conns.get(key).is_none_or(|c| c.close.is_some()) {
            return;
        }
        // Output held for a sync never reaches a connection that ends first: the session
        // keeps what it was (PUBLISHes go again at its next connection), and nothing sent
        // after it may overtake it.
        self.seal_gate(key);
        let conn = &mut self.conns[key];
        let reason = match why {
            Close::Error(r) => Some(r),
            Close::KeepAlive => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            Close::TakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
            Close::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            _ => None,
        };
        if let Close::Error(r) = why {
            self.counters.protocol_errors += 1;
            self.counters.protocol_errors_by.add(r.0);
            tracing::debug!(
                shard = self.id,
                conn = key,
                reason = r.0,
                "closing on protocol error"
            );
        }
        // The server sends DISCONNECT only to MQTT 5 clients, only after CONNACK [MQTT-3.14.0-1].
        if let Some(r) = reason {
            if conn.version.is_v5() && conn.phase == Phase::Active {
                let d = Packet::Disconnect(Box::new(Disconnect {
                    reason: r,
                    properties: Properties {
                        reason_string: reason_text(r).map(ByteStr::from),
                        ..Properties::default()
                    },
                }));
                self.send(key, &d);
            }
        }
        self.conns[key].close = Some(why);
        self.fx.closes.push(key);
    }

    /// The buffer the driver reads a connection's next bytes into: the unfinished frame the
    /// connection holds, or else the shard's scratch buffer, with at least [`READ_CHUNK`]
    /// bytes of room. Give it back with [`ShardState::on_read`].
    pub fn read_buffer(&mut self, key: usize) -> BytesMut {
        let partial = self.conns[key].take_partial();
        let mut buf = if partial.is_empty() {
            std::mem::take(&mut self.scratch)
        } else {
            partial
        };
        buf.reserve(READ_CHUNK);
        buf
    }

    /// The driver read `got` new bytes at the end of `buf` (from [`ShardState::read_buffer`]),
    /// `room` being the spare capacity it offered; `eof` when the peer closed or the read
    /// failed. Handles every complete frame and keeps the unfinished tail.
    pub fn on_read(
        &mut self,
        key: usize,
        mut buf: BytesMut,
        got: usize,
        room: usize,
        eof: bool,
    ) -> Read {
        // The scratch buffer is the one that held no bytes before this read.
        let use_scratch = buf.len() == got;
        if got == 0 {
            // Nothing new: put the buffers back untouched.
            if use_scratch {
                self.scratch = buf;
            } else {
                self.conns[key].keep_partial(buf);
            }
            if eof {
                self.close_conn(key, Close::Eof);
                return Read::Closed;
            }
            return Read::Nothing;
        }
        self.counters.bytes_in += got as u64;
        let now = self.now_ms();
        self.conns[key].last_rx_ms = now;
        self.process_frames(key, &mut buf);
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.close.is_none() && !buf.is_empty() {
                let tail = if use_scratch {
                    BytesMut::from(&buf[..])
                } else {
                    std::mem::take(&mut buf)
                };
                conn.keep_partial(tail);
            }
            if eof {
                self.close_conn(key, Close::Eof);
            }
        }
        if use_scratch {
            buf.clear();
            self.scratch = buf;
        }
        match self.conns.get(key) {
            Some(c) if c.close.is_none() => {
                if got >= room {
                    Read::Full
                } else {
                    Read::Partial
                }
            }
            _ => Read::Closed,
        }
    }

    /// Parses and handles every complete frame in `buf`, leaving a partial tail.
    pub(super) fn process_frames(&mut self, key: usize, buf: &mut BytesMut) {
        loop {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            // Not read while paused (backpressure.rs): what was read already waits too, as the
            // connection's partial input, for `resume_reading`.
            if conn.close.is_some()
                || conn.reads_paused()
                || matches!(conn.phase, Phase::AwaitTakeover | Phase::AwaitSync)
            {
                return;
            }
            // [MQTT-3.1.0-1] the first packet must be CONNECT: a connection that starts with
            // anything else is closed on its first byte, without waiting for the length it
            // declares.
            let first_packet = conn.phase == Phase::AwaitConnect
                && conn.extra.as_ref().is_none_or(|x| x.auth.is_none());
            if first_packet && buf.first().is_some_and(|b| b >> 4 != 1) {
                self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
                return;
            }
            let version = conn.version;
            match decode_packet(buf, version, self.cfg.max_packet_size) {
                Ok(Some(p)) => {
                    self.counters.packets_in += 1;
                    self.on_packet(key, p);
                    if let Some(connect) = self
                        .conns
                        .get_mut(key)
                        .and_then(|c| c.extra.as_mut()?.handoff.take())
                    {
                        let leftover = buf.split().freeze();
                        self.hand_off(key, connect, leftover);
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.on_decode_error(key, e);
                    return;
                }
            }
        }
    }

    pub(super) fn on_decode_error(&mut self, key: usize, e: DecodeError) {
        let conn = &self.conns[key];
        tracing::debug!(shard = self.id, conn = key, error = %e, "bad packet");
        if conn.phase == Phase::AwaitConnect {
            if let DecodeError::UnsupportedProtocolVersion(_) = e {
                // [MQTT-3.1.2-2] CONNACK return code 1 (0x84 in MQTT 5), then close. The
                // client's version is unknown, so answer in the 3.1.1 format both understand.
                let mut b = BytesMut::new();
                let _ = encode(
                    &Packet::ConnAck(Box::new(ConnAck {
                        session_present: false,
                        reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                        properties: Properties::default(),
                    })),
                    ProtocolVersion::V311,
                    &mut b,
                );
                self.push_chunk(key, b.freeze());
                self.counters.connections_rejected += 1;
                self.counters
                    .rejected_by
                    .add(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION.0);
                self.close_conn(key, Close::Rejected);
                return;
            }
        }
        self.close_conn(key, Close::Error(e.reason_code()));
    }

    /// Whether an acknowledgement from the client has the type its outgoing flow expects.
    /// Unknown packet ids pass: a late retransmission after a resend is harmless.
    fn ack_fits_flow(&self, sid: u64, p: &Packet) -> bool {
        let (id, allowed): (_, &[InflightState]) = match p {
            Packet::PubAck(r) => (r.packet_id, &[InflightState::AwaitPubAck]),
            Packet::PubRec(r) => (
                r.packet_id,
                &[InflightState::AwaitPubRec, InflightState::AwaitPubComp],
            ),
            Packet::PubComp(r) => (r.packet_id, &[InflightState::AwaitPubComp]),
            _ => return true,
        };
        self.sessions
            .get(&sid)
            .and_then(|s| s.outbound.get(id))
            .is_none_or(|i| allowed.contains(&i.state))
    }

    pub(super) fn on_packet(&mut self, key: usize, p: Packet) {
        let phase = self.conns[key].phase;
        if phase == Phase::AwaitConnect {
            let exchanging = self.conns[key]
                .extra
                .as_ref()
                .is_some_and(|a| a.auth.is_some());
            match p {
                Packet::Connect(c) if !exchanging => self.on_connect(key, c),
                Packet::Auth(a) if exchanging => self.on_auth(key, *a),
                // [MQTT-3.1.0-1] the first packet must be CONNECT; [MQTT-4.12.0-?] during
                // the exchange only AUTH.
                _ => self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR)),
            }
            return;
        }
        let Some(sid) = self.conns[key].session() else {
            self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
            return;
        };
        if !self.ack_fits_flow(sid, &p) {
            // [MQTT-4.8.0-1] e.g. PUBREC for a QoS 1 PUBLISH, PUBACK for a PUBREL: the
            // message would otherwise keep its Receive Maximum slot for ever.
            self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
            return;
        }
        match p {
            Packet::Publish(p) => self.on_publish(key, sid, p),
            Packet::PubAck(r) => self.on_puback(sid, r),
            Packet::PubRec(r) => self.on_pubrec(key, sid, r),
            Packet::PubRel(r) => self.on_pubrel(key, sid, r),
            Packet::PubComp(r) => self.on_pubcomp(sid, r),
            Packet::Subscribe(s) => self.on_subscribe(key, sid, *s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(key, sid, *u),
            Packet::PingReq => self.send(key, &Packet::PingResp),
            Packet::Auth(a) => self.on_auth(key, *a),
            Packet::Disconnect(d) => self.on_disconnect(key, sid, *d),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol error; so is AUTH without an
            // authentication method, and any packet only a server sends.
            _ => self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR)),
        }
    }
}
