//! Simulated MQTT clients (3.1.1 and 5.0) that behave like correct clients: packet ids,
//! QoS 1/2 flows in both directions, retransmission with DUP on a resumed session, keep-alive,
//! wills, resubscription after a lost session. And the checks made where packets cross the
//! wire: acknowledgements at the moment the broker emits them, deliveries as clients get them.

use crate::model::{self, Obligation, Will, WillEnd};
use crate::rng::Rng;
use crate::world::Sim;
use bytes::{Bytes, BytesMut};
use ringmq_codec::{
    decode_packet, encode, ByteStr, Connect, Disconnect, LastWill, Packet, PacketId, Properties,
    ProtocolVersion, PubResp, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions, Unsubscribe,
};
use ringmq_core::config::home_shard;
use std::collections::{BTreeMap, BTreeSet};

pub const TOPICS: &[&str] = &["a", "a/b", "a/c", "b/x", "b/y"];
pub const FILTERS: &[&str] = &["a", "a/b", "a/+", "a/#", "b/+", "+/x", "#", "will/#"];
/// Slack for the broker's whole-second expiry arithmetic.
const EXPIRY_MARGIN_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Offline,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    Active,
}

/// An outgoing QoS 1/2 message not yet completely acknowledged, in the order first sent.
#[derive(Debug)]
pub struct OutMsg {
    pub pid: u16,
    pub msg: u64,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    pub payload: Bytes,
    /// PUBREC received, PUBREL sent: waiting for PUBCOMP.
    pub released: bool,
}

#[derive(Debug)]
pub enum Op {
    Sub { pid: u16, filters: Vec<String> },
    Unsub { pid: u16, filters: Vec<String> },
}

impl Op {
    fn pid(&self) -> u16 {
        match self {
            Op::Sub { pid, .. } | Op::Unsub { pid, .. } => *pid,
        }
    }
}

#[derive(Debug)]
pub struct SubState {
    pub qos: u8,
    /// Event at which the SUBACK was seen.
    pub established: u64,
}

pub struct Client {
    pub id: String,
    pub version: ProtocolVersion,
    /// Wants a persistent session (3.1.1 Clean Session 0, v5 expiry > 0).
    pub persistent: bool,
    /// v5 Session Expiry Interval when persistent.
    pub expiry: u32,
    pub keep_alive: u16,
    pub receive_maximum: Option<u16>,
    /// Allocates the lowest free packet id (else the next one in sequence).
    pub lowest_pid: bool,
    /// Outgoing QoS 1/2 messages in flight at most.
    pub window: usize,
    pub conn: Option<usize>,
    pub phase: Phase,
    pub rx: BytesMut,
    /// The client believes the broker holds its persistent session.
    pub has_session: bool,
    /// A journal-gated acknowledgement arrived in this session.
    pub durable_session: bool,
    /// Session incarnation, as the client knows it.
    pub epoch: u64,
    pub offline_since_ms: u64,
    pub out: Vec<OutMsg>,
    pub in_qos2: BTreeSet<u16>,
    pub op: Option<Op>,
    pub subs: BTreeMap<String, SubState>,
    /// A SUBACK that may have been the late answer to an earlier connection's SUBSCRIBE: the
    /// packet id and filters waiting for the second answer.
    pub unconfirmed: Option<(u16, Vec<String>)>,
    next_pid: u16,
    pub last_tx_ms: u64,
    /// Sends nothing until the broker closes the connection.
    pub silent: bool,
    /// The Clean Start flag of the CONNECT in flight.
    asked_clean: bool,
    /// Event at which the client last saw its persistent session confirmed (CONNACK).
    session_confirmed: u64,
    /// The CONNECT in flight asks to resume the session the client holds state for.
    asked_resume: bool,
    /// The next CONNECT must start clean (the broker holds a session the client has no
    /// state for).
    must_clean: bool,
    pub is_probe: bool,
    /// Per packet id: PUBLISHes of earlier connections of this session that the client never
    /// saw answered there (their acknowledgement may come on a later connection).
    pub stale: BTreeMap<u16, u32>,
    /// The messages those PUBLISHes carried.
    pub stale_msgs: BTreeSet<u64>,
    /// Retained messages the probe collected, by topic.
    pub probe_retained: BTreeMap<String, Vec<u64>>,
}

impl Client {
    pub fn random(i: usize, rng: &mut Rng, max_inflight: u16) -> Client {
        let version = if rng.chance(500) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let persistent = rng.chance(650);
        let expiry = *rng.pick(&[30u32, 300, 3600, u32::MAX]);
        let keep_alive = if version == ProtocolVersion::V5 {
            *rng.pick(&[0u16, 5, 10, 30])
        } else {
            *rng.pick(&[5u16, 10, 30])
        };
        let receive_maximum =
            (version == ProtocolVersion::V5 && rng.chance(400)).then(|| rng.range(1, 6) as u16);
        Client {
            id: format!("c{i}"),
            version,
            persistent,
            expiry,
            keep_alive,
            receive_maximum,
            lowest_pid: rng.chance(500),
            window: (max_inflight as usize).min(8),
            conn: None,
            phase: Phase::Offline,
            rx: BytesMut::new(),
            has_session: false,
            durable_session: false,
            epoch: 0,
            offline_since_ms: 0,
            out: Vec::new(),
            in_qos2: BTreeSet::new(),
            op: None,
            subs: BTreeMap::new(),
            unconfirmed: None,
            next_pid: 1,
            last_tx_ms: 0,
            silent: false,
            asked_clean: true,
            session_confirmed: 0,
            asked_resume: false,
            must_clean: false,
            is_probe: false,
            stale: BTreeMap::new(),
            stale_msgs: BTreeSet::new(),
            probe_retained: BTreeMap::new(),
        }
    }

    pub fn probe(i: usize) -> Client {
        let mut rng = Rng::new(0);
        let mut c = Client::random(i, &mut rng, 32);
        c.id = "probe".into();
        c.version = ProtocolVersion::V5;
        c.persistent = false;
        c.keep_alive = 60;
        c.receive_maximum = None;
        c.is_probe = true;
        c
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {} ka {}s{}{}",
            self.id,
            self.version,
            if !self.persistent {
                "clean".to_string()
            } else if self.version == ProtocolVersion::V5 {
                format!("persistent (expiry {})", self.expiry)
            } else {
                "persistent".to_string()
            },
            self.keep_alive,
            self.receive_maximum
                .map_or(String::new(), |r| format!(" receive-max {r}")),
            if self.lowest_pid { " lowest-pid" } else { "" }
        )
    }

    fn v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    /// A free packet id. With `avoid_stale`, not one that may still get a late answer from
    /// an earlier connection (a workaround for a known broker issue, so that runs tolerating
    /// it do not trip over its consequences).
    pub(crate) fn alloc_pid(&mut self, avoid_stale: bool) -> u16 {
        let used = |p: u16, c: &Client| {
            c.out.iter().any(|o| o.pid == p)
                || c.op.as_ref().is_some_and(|o| o.pid() == p)
                || (avoid_stale && c.stale.contains_key(&p))
        };
        if self.lowest_pid {
            let mut p = 1;
            while used(p, self) {
                p += 1;
            }
            return p;
        }
        loop {
            let p = self.next_pid;
            self.next_pid = if p == u16::MAX { 1 } else { p + 1 };
            if !used(p, self) {
                return p;
            }
        }
    }

    /// The subscription qos a client always uses for a filter (so that re-subscribing never
    /// changes what an established subscription promises).
    fn sub_qos(&self, filter: &str) -> u8 {
        let h = model_hash(&self.id) ^ model_hash(filter);
        (h % 3) as u8
    }

    /// Whether a reconnect may resume the session: the client believes it exists and it
    /// cannot have expired yet.
    fn may_resume(&self, now_ms: u64) -> bool {
        if !self.persistent || !self.has_session {
            return false;
        }
        if self.version != ProtocolVersion::V5 || self.expiry == u32::MAX {
            return true;
        }
        now_ms.saturating_sub(self.offline_since_ms) + EXPIRY_MARGIN_MS
            < u64::from(self.expiry) * 1000
    }

    /// Effective keep-alive in ms (what the broker enforces).
    fn keep_alive_ms(&self) -> u64 {
        let ka = if self.keep_alive == 0 {
            60
        } else {
            self.keep_alive
        };
        u64::from(ka) * 1000
    }
}

fn model_hash(s: &str) -> u64 {
    ringmq_core::config::fnv1a_64(s.as_bytes())
}

fn pid(p: u16) -> PacketId {
    PacketId::new(p).expect("packet ids start at 1")
}

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
                if let Some(m) = model::msg_id(&p.payload) {
                    sc.pubs.insert(pid, m);
                }
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
            username: None,
            password: None,
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
    fn discard_session(&mut self, c: usize, why: &str) {
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

    // ------------------------------------------------------------------ receiving

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
