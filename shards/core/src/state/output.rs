//! Output: encoding packets into the shard's arena, queuing them per connection, and the
//! [`Effects`] the driver takes after each event.

use super::*;

/// Output queued for one connection, not yet written. The queue and its byte count live in one
/// allocation made when the first chunk is queued and released when the driver has written the
/// last: an idle connection holds a null pointer.
#[derive(Default)]
pub struct Output(Option<Box<Pending>>);

#[derive(Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.chunks.is_empty())
    }

    /// Bytes queued and not yet written.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.bytes)
    }

    fn push(&mut self, chunk: Bytes) {
        let p = self.0.get_or_insert_with(Box::default);
        p.bytes += chunk.len();
        p.chunks.push_back(chunk);
    }

    /// The queued chunks, for the driver to write from the front and remove what it wrote
    /// (then report with [`ShardState::wrote`]); `None` when nothing is queued.
    pub fn chunks_mut(&mut self) -> Option<&mut VecDeque<Bytes>> {
        self.0.as_mut().map(|p| &mut p.chunks)
    }

    /// Everything queued, leaving the connection without output.
    pub fn take(&mut self) -> VecDeque<Bytes> {
        self.0.take().map(|p| p.chunks).unwrap_or_default()
    }

    fn wrote(&mut self, n: usize) {
        if let Some(p) = self.0.as_mut() {
            p.bytes = p.bytes.saturating_sub(n);
            if p.chunks.is_empty() {
                self.0 = None;
            }
        }
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }
}

impl ShardState {
    /// Encodes a control packet into the arena and queues it on the connection.
    /// A packet larger than the client's Maximum Packet Size goes without its Reason String and
    /// User Properties; if even that does not fit it is not sent, and a CONNACK that cannot be
    /// sent closes the connection [MQTT-3.1.2-24], [MQTT-3.2.2-19/20], [MQTT-3.9.2-1],
    /// [MQTT-3.14.2-3/4].
    pub fn send(&mut self, key: usize, p: &Packet) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let v = conn.version;
        let mut len = encoded_len(p, v);
        let limit = conn.extra.as_ref().and_then(|x| x.max_packet_size);
        let trimmed;
        let p = match limit {
            Some(max) if len > max as usize => {
                trimmed = without_diagnostics(p);
                len = encoded_len(&trimmed, v);
                if len > max as usize {
                    self.counters.dropped_too_large += 1;
                    if matches!(p, Packet::ConnAck(_)) {
                        self.close_conn(key, Close::Error(ReasonCode::PACKET_TOO_LARGE));
                    }
                    return;
                }
                &trimmed
            }
            _ => p,
        };
        self.reserve_arena(len);
        if encode(p, v, &mut self.arena).is_err() {
            self.arena.clear();
            return;
        }
        let chunk = self.arena.split().freeze();
        self.counters.packets_out += 1;
        self.push_chunk(key, chunk);
    }

    pub(super) fn reserve_arena(&mut self, len: usize) {
        if self.arena.capacity() < len {
            self.arena.reserve(len.max(64 * 1024));
        }
    }

    /// Queues a PUBLISH on a connection; with `received`, records its publish-to-write time.
    pub(super) fn write_publish(&mut self, key: usize, p: &Publish, received: Option<&Message>) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.close.is_some() {
            return;
        }
        if p.qos == QoS::AtMostOnce && conn.out.bytes() > self.cfg.max_outgoing_bytes {
            self.counters.dropped_slow_consumer += 1;
            return;
        }
        let v = conn.version;
        let aliased = self.conns[key]
            .extra
            .as_mut()
            .and_then(|a| a.out.as_mut())
            .and_then(|a| with_topic_alias(a, p));
        let p = aliased.as_ref().unwrap_or(p);
        let hl = publish_header_len(p, v);
        self.reserve_arena(hl + INLINE_PAYLOAD_MAX);
        if encode_publish_header(p, v, &mut self.arena).is_err() {
            self.arena.clear();
            return;
        }
        self.counters.msgs_out[p.qos as usize] += 1;
        if let Some(m) = received {
            self.record_publish_to_write(m.received_at, m.origin, p.qos);
        }
        if p.payload.len() <= INLINE_PAYLOAD_MAX {
            self.arena.extend_from_slice(&p.payload);
            let chunk = self.arena.split().freeze();
            self.push_chunk(key, chunk);
        } else {
            let header = self.arena.split().freeze();
            self.push_chunk(key, header);
            self.push_chunk(key, p.payload.clone());
        }
    }

    pub(super) fn record_publish_to_write(&mut self, received_at: Instant, origin: u64, qos: QoS) {
        let us = self
            .now()
            .saturating_duration_since(received_at)
            .as_micros() as u64;
        let h = if (origin >> 48) as usize == self.id {
            &mut self.histograms.publish_to_write_local_us[qos as usize]
        } else {
            &mut self.histograms.publish_to_write_cross_us[qos as usize]
        };
        record_us(h, us);
    }

    pub(super) fn push_chunk(&mut self, key: usize, chunk: Bytes) {
        if let Some(g) = self.gates.iter_mut().find(|g| g.key == key) {
            g.held.push_back(chunk);
            return;
        }
        self.conns[key].out.push(chunk);
        self.want_write(key);
    }

    /// Puts a connection with queued output on the driver's list of writes.
    pub fn want_write(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.dirty() && !conn.out.is_empty() {
            conn.set_dirty(true);
            self.fx.writes.push(key);
        }
    }

    /// Holds the connection's output, what is queued and what comes next, until the journal
    /// is synced through `seq` (nothing if `NONE`).
    pub(super) fn gate_output(&mut self, key: usize, seq: JournalSeq) {
        if seq == JournalSeq::NONE {
            return;
        }
        match self.gates.iter_mut().find(|g| g.key == key) {
            // Already held: everything waits for the later sync.
            Some(g) => g.seq = g.seq.max(seq),
            None => self.gates.push(Gate {
                seq,
                key,
                held: VecDeque::new(),
            }),
        }
    }

    /// The journal is synced through `synced`: output held for it goes.
    pub(super) fn open_gates(&mut self, synced: u64) {
        while let Some(i) = self.gates.iter().position(|g| g.seq.0 <= synced) {
            let g = self.gates.swap_remove(i);
            for chunk in g.held {
                self.push_chunk(g.key, chunk);
            }
        }
    }

    /// The connection ends: what was held for it, and anything after, is never sent (the
    /// session still has it); the gate goes with the connection (`forget_gate`).
    pub(super) fn seal_gate(&mut self, key: usize) {
        if let Some(g) = self.gates.iter_mut().find(|g| g.key == key) {
            g.seq = JournalSeq(u64::MAX);
            g.held.clear();
        }
    }

    pub(super) fn forget_gate(&mut self, key: usize) {
        if !self.gates.is_empty() {
            self.gates.retain(|g| g.key != key);
        }
    }

    /// What the events since the last call caused, for the driver to carry out.
    pub fn take_effects(&mut self) -> Effects {
        let mut fx = Effects::new(self.nshards);
        self.swap_effects(&mut fx);
        fx
    }

    /// [`ShardState::take_effects`] without allocating: the driver hands back the `spare` it
    /// emptied ([`Effects::clear`]) after the previous call and gets the new effects in it.
    pub fn swap_effects(&mut self, spare: &mut Effects) {
        debug_assert!(spare.is_empty(), "effects not carried out");
        spare.batches.resize_with(self.nshards, Vec::new);
        std::mem::swap(&mut self.fx, spare);
        let fx = spare;
        for &key in &fx.writes {
            if let Some(c) = self.conns.get_mut(key) {
                c.set_dirty(false);
            }
        }
        fx.writes.retain(|&k| self.conns.contains(k));
        if let Some(d) = self.durable.as_mut() {
            fx.sync = std::mem::take(&mut d.sync_wanted);
        }
    }

    /// Whether any event left something for the driver to do.
    pub fn has_effects(&self) -> bool {
        !self.fx.is_empty() || self.durable.as_ref().is_some_and(|d| d.sync_wanted)
    }

    /// The driver wrote `n` bytes from the front of a connection's output (and removed them
    /// from `Conn::out`). An idle connection keeps no output buffer.
    pub fn wrote(&mut self, key: usize, n: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        self.counters.bytes_out += n as u64;
        conn.out.wrote(n);
        if let Some(x) = conn.extra.as_mut() {
            if conn.out.bytes() == 0 {
                x.refusal_unsent = false;
            }
            self.pace_retained(key);
        }
    }

    /// Writing to the connection failed: the socket is broken, its output goes nowhere.
    pub fn write_failed(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.clear();
        self.close_conn(key, Close::Eof);
    }
}

/// `p` as sent over a connection with server-to-client topic aliases: a topic seen before goes
/// as its alias alone, a new one gets the next free alias; `None` once all are taken and the
/// topic is not among them (then the full topic goes, without alias).
fn with_topic_alias(a: &mut AliasOut, p: &Publish) -> Option<Publish> {
    let (alias, known) = match a.map.get(&p.topic) {
        Some(n) => (*n, true),
        None if (a.map.len() as u16) < a.max => {
            let n = a.map.len() as u16 + 1;
            a.map.insert(ByteStr::from(p.topic.as_str()), n);
            (n, false)
        }
        None => return None,
    };
    let mut q = p.clone();
    q.properties.get_or_insert_with(Box::default).topic_alias = Some(alias);
    if known {
        q.topic = ByteStr::from("");
    }
    Some(q)
}

/// The Reason String sent with a failure code, where the client allows it.
pub(super) fn reason_text(code: ReasonCode) -> Option<&'static str> {
    Some(match code {
        ReasonCode::QUOTA_EXCEEDED => "quota exceeded: the broker's journal or a limit is full",
        ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED => "shared subscriptions are disabled",
        ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED => "wildcard subscriptions are disabled",
        ReasonCode::TOPIC_FILTER_INVALID => "invalid topic filter",
        ReasonCode::TOPIC_NAME_INVALID => "invalid topic name",
        ReasonCode::BAD_AUTHENTICATION_METHOD => "authentication method not supported",
        ReasonCode::QOS_NOT_SUPPORTED => "QoS above the server's Maximum QoS",
        ReasonCode::RETAIN_NOT_SUPPORTED => "retained messages are disabled",
        ReasonCode::USE_ANOTHER_SERVER => "use the server in Server Reference",
        ReasonCode::SERVER_MOVED => "the server moved to Server Reference",
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "client identifier not valid",
        ReasonCode::PROTOCOL_ERROR => "protocol error",
        _ => return None,
    })
}

/// The PUBLISH a subscriber receives. Properties are forwarded as published, plus this
/// subscriber's Subscription Identifiers.
#[allow(clippy::too_many_arguments)]
pub(super) fn make_publish(
    now: Instant,
    msg: &Message,
    qos: QoS,
    retain: bool,
    ids: &[u32],
    packet_id: Option<PacketId>,
    dup: Dup,
    v: ProtocolVersion,
) -> Publish {
    let properties = if !v.is_v5() {
        None
    } else if ids.is_empty() && msg.expires_at.is_none() {
        msg.properties.as_ref().map(|p| Box::new((**p).clone()))
    } else {
        let mut p = msg
            .properties
            .as_ref()
            .map(|p| (**p).clone())
            .unwrap_or_default();
        p.subscription_identifiers = ids.to_vec();
        // [MQTT-3.3.2-6] what is left of the interval after waiting in the server.
        p.message_expiry_interval = msg.remaining_expiry(now);
        Some(Box::new(p))
    };
    Publish {
        dup: dup == Dup::Again,
        qos,
        retain,
        topic: msg.topic.clone(),
        packet_id: if qos == QoS::AtMostOnce {
            None
        } else {
            packet_id
        },
        payload: msg.payload.clone(),
        properties,
    }
}

/// `p` without the properties a client can do without: Reason String and User Properties.
fn without_diagnostics(p: &Packet) -> Packet {
    fn strip(props: &mut Properties) {
        props.reason_string = None;
        props.user_properties.clear();
    }
    let mut p = p.clone();
    match &mut p {
        Packet::ConnAck(a) => strip(&mut a.properties),
        Packet::SubAck(a) => strip(&mut a.properties),
        Packet::UnsubAck(a) => strip(&mut a.properties),
        Packet::Disconnect(d) => strip(&mut d.properties),
        Packet::Auth(a) => strip(&mut a.properties),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            if let Some(props) = r.properties.as_mut() {
                strip(props);
            }
        }
        _ => {}
    }
    p
}
