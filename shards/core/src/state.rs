//! Everything one shard knows, and every protocol decision it makes, as synchronous code.
//!
//! The async tasks in `runtime` only wait (for a readable socket, a writable socket, a batch from
//! another shard, a timer) and then call into [`ShardState`] with a single `borrow_mut` that never
//! lives across an await. So a packet is handled start to finish without yielding, and the
//! output it causes — on any connection of this shard, and to other shards — is flushed once at
//! the end of the event in a few vectored writes and at most one batch per peer shard.

use crate::config::{home_shard, Config};
use crate::durable::{self, AfterSync, Durable, Recovered};
use crate::io;
use crate::mesh::{Batch, Handoff, RetainQuery, RetainReply, ShardMsg};
use crate::metrics::{record_us, Counters, Gauges, Histograms, ShardMetrics};
use crate::records::{self, MsgView, Record, RetainRecord};
use crate::shared::{GroupId, Member, SharedGroups};
use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;
use ringmq_codec::{
    decode_packet, encode, encode_publish_header, encoded_len, publish_header_len, ByteStr,
    ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet, PacketId, Properties,
    ProtocolVersion, PubResp, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};
use ringmq_router::{
    has_wildcards, parse_shared, validate_topic_filter, validate_topic_name, RetainedStore,
    RouteTable, SubscriptionTree,
};
use ringmq_session::{
    Inflight, InflightState, Message, Offer, PubRecOutcome, Queued, Session, Subscription,
};
use slab::Slab;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// Batches waiting for a slow peer shard beyond its channel, above which QoS 0 publishes to it
/// are dropped (and counted) instead of queued. QoS 1/2 need no such bound: their PUBACK waits
/// for the peer, so each publisher's inflight window caps what it can have outstanding.
const SPILL_MAX_BATCHES: usize = 1024;
/// Spare room the read path asks for before each `recv`.
const READ_CHUNK: usize = 64 * 1024;
/// Payloads up to this size are copied behind their header into one chunk: a copy of a few
/// hundred bytes is cheaper than a separate iovec and a reference count.
const INLINE_PAYLOAD_MAX: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; nothing but CONNECT is allowed yet.
    AwaitConnect,
    /// CONNACK sent.
    Active,
}

/// Why a connection ends; decides the will, the DISCONNECT sent, and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// DISCONNECT with reason 0x00: the will is discarded [MQTT-3.1.2-10].
    Normal,
    /// MQTT 5 DISCONNECT 0x04: publish the will anyway.
    NormalWithWill,
    /// The peer closed or reset the socket without DISCONNECT.
    Eof,
    /// A protocol violation; MQTT 5 clients past CONNECT are told why.
    Error(ReasonCode),
    /// Nothing received for 1.5 times the keep-alive [MQTT-3.1.2-24].
    KeepAlive,
    /// No complete CONNECT within `--connect-timeout`.
    ConnectTimeout,
    /// Another connection took the client id [MQTT-3.1.4-3].
    TakenOver,
    /// CONNECT refused with a CONNACK failure code.
    Rejected,
    /// Handed to the client's home shard.
    Handoff,
    /// The server is shutting down (MQTT 5: DISCONNECT 0x8B).
    Shutdown,
}

impl Close {
    /// Index into `metrics::CLOSE_REASONS`.
    fn metric_index(self) -> usize {
        match self {
            Close::Normal => 0,
            Close::NormalWithWill => 1,
            Close::Eof => 2,
            Close::Error(_) => 3,
            Close::KeepAlive => 4,
            Close::ConnectTimeout => 5,
            Close::TakenOver => 6,
            Close::Rejected => 7,
            Close::Handoff => 8,
            Close::Shutdown => 9,
        }
    }

    fn publishes_will(self) -> bool {
        matches!(
            self,
            Close::NormalWithWill | Close::Eof | Close::Error(_) | Close::KeepAlive
        )
    }
}

/// One socket. Deliberately small and without buffers while idle: `partial` holds only the
/// unfinished tail of a frame and `out` only unwritten output.
pub struct Conn {
    pub fd: RawFd,
    pub phase: Phase,
    pub version: ProtocolVersion,
    pub session: Option<u64>,
    pub partial: BytesMut,
    pub out: VecDeque<Bytes>,
    pub out_bytes: usize,
    pub write_blocked: bool,
    pub dirty: bool,
    pub waker: Option<Waker>,
    pub close: Option<Close>,
    pub keep_alive_s: u16,
    pub last_rx_ms: u64,
    /// Accepted (or adopted) at this many µs of the shard's clock.
    pub opened_us: u64,
    handoff: Option<Box<Connect>>,
    /// Topic aliases in both directions and enhanced authentication state (MQTT 5); allocated
    /// on first use, so connections that use neither pay a pointer.
    extra: Option<Box<ConnExtra>>,
}

#[derive(Default)]
struct ConnExtra {
    /// Set by the client, indexed by alias - 1.
    input: Vec<Option<ByteStr>>,
    /// Used by the server towards the client, when the client allows them.
    out: Option<AliasOut>,
    /// The enhanced authentication method the connection authenticated with.
    auth_method: Option<ByteStr>,
    /// An AUTH exchange in progress.
    auth: Option<PendingAuth>,
}

/// An enhanced authentication exchange waiting for the client's next AUTH.
struct PendingAuth {
    method: ByteStr,
    session: Box<dyn crate::auth::AuthSession>,
    /// During CONNECT: the CONNECT to accept once authenticated. `None`: re-authentication.
    connect: Option<(Box<Connect>, Option<ByteStr>)>,
}

/// Server-to-client topic aliases of one connection: the first `max` distinct topics sent get
/// an alias each and are afterwards sent as an alias alone [MQTT-3.3.2-12].
struct AliasOut {
    max: u16,
    map: HashMap<ByteStr, u16>,
}

impl Conn {
    fn new(fd: RawFd, now_ms: u64, now_us: u64) -> Conn {
        Conn {
            fd,
            phase: Phase::AwaitConnect,
            version: ProtocolVersion::V311,
            session: None,
            partial: BytesMut::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            write_blocked: false,
            dirty: false,
            waker: None,
            close: None,
            keep_alive_s: 0,
            last_rx_ms: now_ms,
            opened_us: now_us,
            handoff: None,
            extra: None,
        }
    }

    fn wake(&mut self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

/// What one read of a socket found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// It filled all the room offered: more is probably waiting.
    Full,
    /// Less than the room offered: the socket is most likely drained.
    Partial,
    /// Nothing was there.
    Nothing,
    /// The connection is over.
    Closed,
}

/// A subscription as the matching tree stores it: small and `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubEntry {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// A SUBACK held back until every other shard has acknowledged the new routes, so that a
/// message published anywhere after the client saw its SUBACK reaches it.
struct PendingSubAck {
    session: u64,
    remaining: usize,
    suback: SubAck,
    retained: Vec<RetainQuery>,
    /// Journal seq that must be synced first (0: none).
    durable: u64,
}

/// A PUBACK or PUBREC waiting for other shards to take the message.
struct AckSlot {
    token: u64,
    packet_id: PacketId,
    qos: QoS,
    remaining: usize,
    matched: bool,
    /// Journal seq that must be synced first (0: none).
    durable: u64,
    /// A shard's journal had no room for it: answer 0x97, never success.
    refused: bool,
}

/// A will held back by its Will Delay Interval.
struct DelayedWill {
    session: u64,
    /// On the shard's millisecond clock.
    due_ms: u64,
    will: Box<LastWill>,
    origin: u64,
}

/// Where `route` sent a message.
struct Routed {
    matched_here: bool,
    /// Other shards that will answer with `PublishAck`.
    awaiting: usize,
}

/// A connection adopted from another shard, waiting for its task to be spawned by the runtime.
pub struct Adopted {
    pub key: usize,
    pub fd: RawFd,
}

pub struct ShardState {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Rc<Config>,
    pub conns: Slab<Conn>,
    /// Boxed so that the map's spare capacity costs a pointer, not a session.
    pub sessions: HashMap<u64, Box<Session>>,
    by_client: HashMap<ByteStr, u64>,
    next_session: u64,
    subs: SubscriptionTree<u64, SubEntry>,
    /// Which *other* shards have subscribers per filter; this shard's own are in `subs`.
    routes: RouteTable,
    retained: RetainedStore<Message>,
    /// Per peer shard: what this event sends there.
    outbox: Vec<Batch>,
    /// Per peer shard: where batches go that the channel could not take at once; a flusher
    /// task sends them in order. `spilled` counts those not yet sent: while it is above zero,
    /// later batches must queue behind them to keep the order.
    pub spill: Vec<Option<glommio::channels::local_channel::LocalSender<Batch>>>,
    pub spilled: Vec<Rc<Cell<usize>>>,
    pub senders: Option<Rc<Senders<Batch>>>,
    dirty: Vec<usize>,
    /// Shared read buffer: frames are split off it zero-copy; only partial tails are copied.
    scratch: BytesMut,
    /// Arena for encoded packets; each is split off as a `Bytes` without its own allocation.
    arena: BytesMut,
    match_buf: Vec<(u64, SubEntry)>,
    pending_subacks: HashMap<u64, PendingSubAck>,
    /// Per publishing session, its PUBACK/PUBREC answers in the order the PUBLISHes arrived
    /// [MQTT-4.6.0-2]; each is released once every shard it went to has taken it.
    acks: HashMap<u64, VecDeque<AckSlot>>,
    /// Token of an acknowledged cross-shard publish -> publishing session.
    ack_owner: HashMap<u64, u64>,
    next_token: u64,
    start: Instant,
    pub conn_count: Arc<AtomicUsize>,
    pub adopted: Vec<Adopted>,
    pub counters: Counters,
    pub histograms: Histograms,
    /// Scrapes waiting for other shards' `MetricsReply`, by token.
    pub metrics_pending:
        HashMap<u64, glommio::channels::local_channel::LocalSender<Box<ShardMetrics>>>,
    assigned_ids: u64,
    /// The journal, with the acknowledgements waiting for it; `None` runs without persistence.
    pub durable: Option<Durable>,
    /// Set by a delivery the journal had no room for, during one publish.
    delivery_refused: bool,
    /// Wills waiting for their Will Delay Interval or their session's end.
    delayed_wills: Vec<DelayedWill>,
    /// Every shared subscription group and its members on all shards.
    shared: SharedGroups,
    group_buf: Vec<GroupId>,
    /// Route acknowledgements still expected for the subscriptions restored at start; the
    /// shard listens only once every shard has none left.
    pub restore_pending: usize,
    restore_token: u64,
}

impl ShardState {
    pub fn new(id: usize, nshards: usize, cfg: Rc<Config>, conn_count: Arc<AtomicUsize>) -> Self {
        ShardState {
            id,
            nshards,
            cfg,
            conns: Slab::new(),
            sessions: HashMap::new(),
            by_client: HashMap::new(),
            next_session: 1,
            subs: SubscriptionTree::new(),
            routes: RouteTable::new(),
            retained: RetainedStore::new(),
            outbox: (0..nshards).map(|_| Vec::new()).collect(),
            spill: (0..nshards).map(|_| None).collect(),
            spilled: (0..nshards).map(|_| Rc::default()).collect(),
            senders: None,
            dirty: Vec::new(),
            scratch: BytesMut::new(),
            arena: BytesMut::new(),
            match_buf: Vec::new(),
            pending_subacks: HashMap::new(),
            acks: HashMap::new(),
            ack_owner: HashMap::new(),
            next_token: 1,
            start: Instant::now(),
            conn_count,
            adopted: Vec::new(),
            counters: Counters::default(),
            histograms: Histograms::default(),
            metrics_pending: HashMap::new(),
            assigned_ids: 0,
            durable: None,
            delivery_refused: false,
            delayed_wills: Vec::new(),
            shared: SharedGroups::default(),
            group_buf: Vec::new(),
            restore_pending: 0,
            restore_token: 0,
        }
    }

    // ---------------------------------------------------------------- journal

    /// Last journal seq appended (0 without a journal).
    fn jseq(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.journal.last_seq())
    }

    /// The seq that what was done since `before` must be synced through before it is
    /// acknowledged; 0 if nothing.
    fn jneed(&self, before: u64) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.need(before))
    }

    fn jsynced(&self, seq: u64) -> bool {
        seq == 0
            || self
                .durable
                .as_ref()
                .is_none_or(|d| !d.gates() || d.journal.synced_seq() >= seq)
    }

    fn jnote(&mut self, rec: Record) {
        if let Some(d) = self.durable.as_mut() {
            d.note(&rec);
        }
    }

    fn jroom(&self) -> bool {
        self.durable.as_ref().is_none_or(|d| d.has_room())
    }

    /// Queues `what` until the journal is synced through `seq`. The queue stays in seq order:
    /// an older seq queued late waits for the newest one queued, which is no later than the
    /// last append and so is synced as soon as it is.
    fn after_sync(&mut self, seq: u64, what: AfterSync) {
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
                } => self.outbox[peer].push(ShardMsg::PublishAck {
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
        self.flush();
    }

    /// Rebuilds sessions, subscriptions, deliveries and retained messages from a replayed
    /// journal. Runs before the shard accepts connections.
    pub fn restore(&mut self, rec: Recovered) {
        let now_ms = durable::unix_ms();
        let origin = self.global_id(0);
        let now = Instant::now();
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
                    expires_at: durable::unix_ms_to_instant(m.expires_unix_ms),
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
                expires_at: durable::unix_ms_to_instant(r.expires_unix_ms),
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
        self.flush();
    }

    /// The journal record that re-creates a session as it is now.
    fn session_record(&self, s: &Session, fresh: bool) -> Record {
        let disconnected_unix_ms = match (s.connection, s.disconnected_at) {
            (None, Some(t)) => durable::unix_ms()
                .saturating_sub(self.now_s().saturating_sub(t) * 1000)
                .max(1),
            (None, None) => durable::unix_ms(),
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
            if !d.should_compact() {
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
                    let rec = retain_record(m);
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
        d.compacted_at = Some(Instant::now());
        tracing::debug!(
            shard = self.id,
            freed,
            live = d.live_bytes,
            "journal compaction done"
        );
        false
    }

    /// Re-appends the whole state of one journaled session; returns the records written.
    fn reappend_session(&mut self, client_id: &str) -> usize {
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

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn now_s(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    fn global_id(&self, session: u64) -> u64 {
        ((self.id as u64) << 48) | session
    }

    // ---------------------------------------------------------------- connections

    /// Registers an accepted socket; the runtime spawns its task.
    pub fn add_conn(&mut self, fd: RawFd) -> usize {
        let now = self.now_ms();
        let now_us = self.now_us();
        self.counters.connections_accepted += 1;
        self.conns.insert(Conn::new(fd, now, now_us))
    }

    /// Called by the connection's task once `close` is set and the task is about to drop the
    /// socket: detach the session, publish the will, release what the connection held.
    pub fn finish_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let close = conn.close.unwrap_or(Close::Eof);
        // Best effort: a final DISCONNECT or CONNACK still queued.
        if !conn.out.is_empty() && !conn.write_blocked {
            let _ = io::send_chunks(conn.fd, &mut conn.out);
        }
        let conn = self.conns.remove(key);
        if close == Close::Handoff {
            // Not a close the client sees: counted apart from connections_closed.
            self.counters.closed_by[close.metric_index()] += 1;
            return;
        }
        self.conn_count.fetch_sub(1, Ordering::Relaxed);
        self.counters.connections_closed += 1;
        self.counters.closed_by[close.metric_index()] += 1;
        let Some(sid) = conn.session else { return };
        let now_s = self.now_s();
        let origin = self.global_id(sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.connection != Some(key) {
            return; // taken over: the session already belongs to another connection
        }
        s.connection = None;
        s.disconnected_at = Some(now_s);
        // Unsent acknowledgements die with the connection; the client resends those PUBLISHes.
        self.acks.remove(&sid);
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
                    self.delayed_wills.push(DelayedWill {
                        session: sid,
                        due_ms: self.now_ms() + wait_s * 1000,
                        will: w,
                        origin,
                    });
                }
            }
        }
        if ends {
            self.remove_session(sid);
        }
        self.flush();
    }

    /// Decides that a connection ends; its task notices, flushes and closes.
    pub fn close_conn(&mut self, key: usize, why: Close) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.close.is_some() {
            return;
        }
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
        let conn = &mut self.conns[key];
        conn.close = Some(why);
        conn.wake();
    }

    /// One turn of a connection's task: write what is pending, read and handle what arrived.
    /// Returns Ready when the connection must end.
    pub fn poll_conn(
        &mut self,
        key: usize,
        cx: &mut std::task::Context<'_>,
        stream: &mut glommio::net::TcpStream,
    ) -> std::task::Poll<()> {
        use futures_lite::{AsyncRead, AsyncWrite};
        use std::pin::Pin;
        use std::task::Poll;
        let mut budget = 16;
        loop {
            let conn = &mut self.conns[key];
            if conn.close.is_some() {
                return Poll::Ready(());
            }
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
            if conn.write_blocked {
                let front = conn.out.front().cloned();
                match front {
                    None => conn.write_blocked = false,
                    Some(chunk) => match Pin::new(&mut *stream).poll_write(cx, &chunk) {
                        Poll::Ready(Ok(n)) => {
                            io::consume(&mut conn.out, n);
                            conn.out_bytes -= n;
                            conn.write_blocked = false;
                            self.flush_conn(key);
                            continue;
                        }
                        Poll::Ready(Err(_)) => {
                            self.close_conn(key, Close::Eof);
                            continue;
                        }
                        Poll::Pending => {}
                    },
                }
            }
            if budget == 0 {
                // Let other connections run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            // Read what is there first: after a wake-up the socket is usually readable, and
            // asking glommio first would cost a one-byte recv on top of the real one.
            match self.on_readable(key, None) {
                Read::Full | Read::Closed => continue,
                Read::Partial | Read::Nothing => {}
            }
            // Drained: wait for readiness. glommio tries a non-blocking one-byte recv and
            // otherwise arms an io_uring poll; no buffer is lent to the kernel meanwhile.
            let mut one = [0u8; 1];
            match Pin::new(&mut *stream).poll_read(cx, &mut one) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.close_conn(key, Close::Eof);
                }
                Poll::Ready(Ok(_)) => {
                    self.on_readable(key, Some(one[0]));
                }
            }
        }
    }

    /// Reads what the socket has and handles every complete frame. `first` is a byte
    /// glommio's readiness probe already consumed.
    fn on_readable(&mut self, key: usize, first: Option<u8>) -> Read {
        let conn = &mut self.conns[key];
        let fd = conn.fd;
        let partial = std::mem::take(&mut conn.partial);
        let use_scratch = partial.is_empty();
        let mut buf = if use_scratch {
            std::mem::take(&mut self.scratch)
        } else {
            partial
        };
        buf.reserve(READ_CHUNK);
        let room = buf.capacity() - buf.len();
        if let Some(b) = first {
            buf.extend_from_slice(&[b]);
            self.counters.bytes_in += 1;
        }
        let mut eof = false;
        let mut got = 0;
        match io::recv_into(fd, &mut buf, READ_CHUNK) {
            Ok(0) => eof = true,
            Ok(n) => got = n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => eof = true,
        }
        if got == 0 && first.is_none() {
            // Nothing new: put the buffers back untouched.
            if use_scratch {
                self.scratch = buf;
            } else {
                self.conns[key].partial = buf;
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
                conn.partial = if use_scratch {
                    BytesMut::from(&buf[..])
                } else {
                    std::mem::take(&mut buf)
                };
            }
            if eof {
                self.close_conn(key, Close::Eof);
            }
        }
        if use_scratch {
            buf.clear();
            self.scratch = buf;
        }
        self.flush();
        match self.conns.get(key) {
            Some(c) if c.close.is_none() => {
                if got >= room - usize::from(first.is_some()) {
                    Read::Full
                } else {
                    Read::Partial
                }
            }
            _ => Read::Closed,
        }
    }

    /// Parses and handles every complete frame in `buf`, leaving a partial tail.
    fn process_frames(&mut self, key: usize, buf: &mut BytesMut) {
        loop {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.close.is_some() {
                return;
            }
            let version = conn.version;
            match decode_packet(buf, version, self.cfg.max_packet_size) {
                Ok(Some(p)) => {
                    self.counters.packets_in += 1;
                    self.on_packet(key, p);
                    if let Some(connect) = self.conns.get_mut(key).and_then(|c| c.handoff.take()) {
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

    fn on_decode_error(&mut self, key: usize, e: DecodeError) {
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

    fn on_packet(&mut self, key: usize, p: Packet) {
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
        let Some(sid) = self.conns[key].session else {
            self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
            return;
        };
        match p {
            Packet::Publish(p) => self.on_publish(key, sid, p),
            Packet::PubAck(r) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if let Some(jid) = s.outbound.on_puback(r.packet_id) {
                        self.delivery_done(sid, jid);
                        self.refill(sid);
                    }
                }
            }
            Packet::PubRec(r) => self.on_pubrec(key, sid, r),
            Packet::PubRel(r) => {
                let before = self.jseq();
                let (found, journaled) = self.sessions.get_mut(&sid).map_or((false, false), |s| {
                    (s.inbound_qos2.on_pubrel(r.packet_id), s.journaled)
                });
                let reason = if found {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                if found && journaled {
                    let client_id = self.sessions[&sid].client_id.to_string();
                    self.jnote(Record::Qos2Done {
                        client_id,
                        packet_id: r.packet_id.get(),
                    });
                }
                let packet = Packet::PubComp(PubResp::with_reason(r.packet_id, reason));
                // Once the id is released for good: were it forgotten in a crash after
                // PUBCOMP, the client's next message with that id would be taken for a
                // retransmission and lost.
                self.send_when_durable(before, key, sid, packet);
            }
            Packet::PubComp(r) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if let Some(jid) = s.outbound.on_pubcomp(r.packet_id) {
                        self.delivery_done(sid, jid);
                        self.refill(sid);
                    }
                }
            }
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

    // ---------------------------------------------------------------- CONNECT

    fn reject(&mut self, key: usize, reason: ReasonCode) {
        self.reject_with(key, reason, Properties::default());
    }

    fn reject_with(&mut self, key: usize, reason: ReasonCode, mut properties: Properties) {
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

    fn on_connect(&mut self, key: usize, mut c: Box<Connect>) {
        self.conns[key].version = c.protocol;
        let v5 = c.protocol.is_v5();
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
        let home = home_shard(c.client_id.as_bytes(), self.nshards);
        if home != self.id {
            self.conns[key].handoff = Some(c);
            return;
        }
        self.begin_connect(key, c, assigned);
    }

    /// Accepts a CONNECT on the client's home shard, after an AUTH exchange if it names an
    /// authentication method.
    fn begin_connect(&mut self, key: usize, c: Box<Connect>, assigned: Option<ByteStr>) {
        self.conns[key].version = c.protocol;
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
        let (step, session) = m.start(c.client_id.as_str(), &data);
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

    fn send_auth(
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
    fn on_auth(&mut self, key: usize, a: ringmq_codec::Auth) {
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
                    .session
                    .and_then(|sid| self.sessions.get(&sid))
                    .map(|s| s.client_id.to_string())
                    .unwrap_or_default();
                match m.start(&client_id, &data) {
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
    fn assign_client_id(&mut self) -> ByteStr {
        loop {
            self.assigned_ids += 1;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let id = format!("ringmq-{:x}-{}-{}", nanos, self.id, self.assigned_ids);
            if home_shard(id.as_bytes(), self.nshards) == self.id {
                return ByteStr::from(id);
            }
        }
    }

    fn hand_off(&mut self, key: usize, connect: Box<Connect>, leftover: Bytes) {
        let home = home_shard(connect.client_id.as_bytes(), self.nshards);
        let fd = self.conns[key].fd;
        match io::dup_fd(fd) {
            Ok(dup) => {
                self.outbox[home].push(ShardMsg::Handoff(Box::new(Handoff {
                    fd: dup,
                    connect,
                    leftover,
                    opened_at: self.start
                        + std::time::Duration::from_micros(self.conns[key].opened_us),
                })));
                self.counters.handoffs += 1;
                let conn = &mut self.conns[key];
                conn.close = Some(Close::Handoff);
                conn.wake();
            }
            Err(_) => self.reject(key, ReasonCode::SERVER_UNAVAILABLE),
        }
    }

    /// A connection from another shard: register it, answer its CONNECT, handle what followed.
    fn adopt(&mut self, h: Handoff) {
        let now = self.now_ms();
        let opened_us = h
            .opened_at
            .saturating_duration_since(self.start)
            .as_micros() as u64;
        let key = self.conns.insert(Conn::new(h.fd, now, opened_us));
        self.adopted.push(Adopted { key, fd: h.fd });
        self.begin_connect(key, h.connect, None);
        if !h.leftover.is_empty() {
            let mut buf = BytesMut::from(&h.leftover[..]);
            self.process_frames(key, &mut buf);
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.close.is_none() && !buf.is_empty() {
                    conn.partial = buf;
                }
            }
        }
    }

    fn accept_connect(
        &mut self,
        key: usize,
        mut c: Box<Connect>,
        assigned: Option<ByteStr>,
        auth: Option<(ByteStr, Option<Vec<u8>>)>,
    ) {
        let cfg = self.cfg.clone();
        // What the session keeps must not pin the shared read buffer it was sliced from.
        c.client_id = ByteStr::from(c.client_id.as_str());
        let will = c.will.take().map(|w| {
            Box::new(LastWill {
                topic: ByteStr::from(w.topic.as_str()),
                payload: Bytes::copy_from_slice(&w.payload),
                ..w
            })
        });
        let v5 = c.protocol.is_v5();
        let now_ms = self.now_ms();
        let mut session_present = false;
        if let Some(&sid) = self.by_client.get(&c.client_id) {
            let old = self.sessions.get(&sid).and_then(|s| s.connection);
            if let Some(old_key) = old {
                // Whatever the old connection already sent comes first: a DISCONNECT still in
                // its socket means no will and, for a clean session, no session to resume.
                if self.conns.get(old_key).is_some_and(|c| c.close.is_none()) {
                    self.on_readable(old_key, None);
                }
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
                session_present = true;
            }
        }
        let window = c
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(cfg.max_inflight)
            .max(1) as usize;
        let sid = if session_present {
            self.by_client[&c.client_id]
        } else {
            let sid = self.next_session;
            self.next_session += 1;
            let s = Session::new(
                sid,
                c.client_id.clone(),
                c.protocol,
                window,
                cfg.max_queued_messages,
            );
            self.sessions.insert(sid, Box::new(s));
            self.by_client.insert(c.client_id.clone(), sid);
            sid
        };
        let s = self.sessions.get_mut(&sid).expect("just ensured");
        s.protocol = c.protocol;
        s.outbound.set_window(window);
        let requested = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        // The server's maximum; an MQTT 5 client is told what it got [MQTT-3.2.2-?].
        s.expiry_interval = requested.min(cfg.max_session_expiry);
        let granted_expiry = (requested != s.expiry_interval).then_some(s.expiry_interval);
        s.max_packet_size = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
        s.problem_information = c.properties.request_problem_information != Some(0);
        s.will = will;
        s.connection = Some(key);
        s.disconnected_at = None;
        // A persistent session is journaled from its CONNECT on; one that became
        // non-persistent (MQTT 5 expiry now 0) leaves the journal.
        let persistent = s.expiry_interval > 0 && self.durable.is_some();
        let was = s.journaled;
        s.journaled = persistent;
        if persistent {
            let rec = self.session_record(&self.sessions[&sid], !session_present);
            self.jnote(rec);
        } else if was {
            self.jnote(Record::SessionGone {
                client_id: c.client_id.to_string(),
            });
        }

        // Keep-alive: the server's default for 0 and its maximum; MQTT 5 clients are told
        // through Server Keep Alive [MQTT-3.2.2-21].
        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        if keep_alive == 0 && cfg.default_keep_alive > 0 {
            keep_alive = cfg.default_keep_alive;
            server_keep_alive = Some(keep_alive);
        }
        if keep_alive > cfg.max_keep_alive {
            keep_alive = cfg.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }
        let conn = &mut self.conns[key];
        conn.version = c.protocol;
        conn.phase = Phase::Active;
        conn.session = Some(sid);
        conn.keep_alive_s = keep_alive;
        conn.last_rx_ms = now_ms;
        conn.extra = None;
        if let Some(max) = c.properties.topic_alias_maximum.filter(|m| *m > 0 && v5) {
            conn.extra.get_or_insert_with(Box::default).out = Some(AliasOut {
                max,
                map: HashMap::new(),
            });
        }
        if let Some((method, _)) = &auth {
            conn.extra.get_or_insert_with(Box::default).auth_method = Some(method.clone());
        }
        // A reconnect within the Will Delay Interval cancels the pending will [MQTT-3.1.3-9].
        if session_present {
            self.delayed_wills.retain(|w| w.session != sid);
        }

        let mut props = Properties::default();
        if v5 {
            props.receive_maximum = Some(cfg.max_inflight);
            props.maximum_packet_size = Some(cfg.max_packet_size as u32);
            // Absent means available (or QoS 2): only limits are announced.
            props.maximum_qos = (cfg.max_qos < 2).then_some(cfg.max_qos);
            props.retain_available = (!cfg.retain_available).then_some(0);
            props.wildcard_subscription_available = (!cfg.wildcard_subscriptions).then_some(0);
            props.subscription_identifier_available = (!cfg.subscription_identifiers).then_some(0);
            props.shared_subscription_available = (!cfg.shared_subscriptions).then_some(0);
            props.server_keep_alive = server_keep_alive;
            props.assigned_client_identifier = assigned;
            props.topic_alias_maximum =
                (cfg.topic_alias_maximum > 0).then_some(cfg.topic_alias_maximum);
            props.session_expiry_interval = granted_expiry;
            if let Some((method, data)) = &auth {
                // The CONNACK names the method the exchange used (section 4.12).
                props.authentication_method = Some(method.clone());
                props.authentication_data = data.clone().map(Bytes::from);
            }
            if c.properties.request_response_information == Some(1) {
                // A topic prefix this client may use for responses (section 4.10).
                props.response_information =
                    Some(ByteStr::from(format!("response/{}", c.client_id)));
            }
        }
        let ack = Packet::ConnAck(Box::new(ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties: props,
        }));
        self.send(key, &ack);
        self.counters.connects += 1;
        let waited = self.now_us().saturating_sub(self.conns[key].opened_us);
        record_us(&mut self.histograms.connect_to_connack_us, waited);
        tracing::debug!(shard = self.id, conn = key, client = %c.client_id, session_present, "connected");
        if session_present {
            self.resend_inflight(sid);
        }
        self.refill(sid);
    }

    /// Detaches a session from its old connection and closes that connection.
    fn take_over(&mut self, old_key: usize, sid: u64, resume: bool) {
        let origin = self.global_id(sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.connection != Some(old_key) {
            return;
        }
        s.connection = None;
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

    fn remove_session(&mut self, sid: u64) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        self.by_client.remove(&s.client_id);
        if s.journaled {
            self.jnote(Record::SessionGone {
                client_id: s.client_id.to_string(),
            });
        }
        for filter in s.subscriptions.keys() {
            self.uninstall_subscription(sid, filter);
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

    fn on_disconnect(&mut self, key: usize, sid: u64, d: Disconnect) {
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

    // ---------------------------------------------------------------- PUBLISH in

    fn on_publish(&mut self, key: usize, sid: u64, mut p: Publish) {
        // [MQTT-3.2.2-11] above Maximum QoS; [MQTT-3.2.2-14] RETAIN without Retain Available.
        if p.qos as u8 > self.cfg.max_qos {
            return self.close_conn(key, Close::Error(ReasonCode::QOS_NOT_SUPPORTED));
        }
        if p.retain && !self.cfg.retain_available {
            return self.close_conn(key, Close::Error(ReasonCode::RETAIN_NOT_SUPPORTED));
        }
        if let Some(alias) = p.properties.as_ref().and_then(|pr| pr.topic_alias) {
            // [MQTT-3.3.2-8] 0 and [MQTT-3.3.2-9] above Topic Alias Maximum are invalid.
            let max = self.cfg.topic_alias_maximum;
            if alias == 0 || alias > max {
                return self.close_conn(key, Close::Error(ReasonCode::TOPIC_ALIAS_INVALID));
            }
            let conn = &mut self.conns[key];
            let table = &mut conn.extra.get_or_insert_with(Box::default).input;
            if table.len() < max as usize {
                table.resize(max as usize, None);
            }
            let slot = &mut table[alias as usize - 1];
            if p.topic.is_empty() {
                // An alias never set on this connection is a protocol error (3.3.2.3.4).
                match slot {
                    Some(t) => p.topic = t.clone(),
                    None => return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR)),
                }
            } else if validate_topic_name(&p.topic, self.cfg.max_topic_levels).is_ok() {
                // Kept for the connection's life: not a slice of the read buffer.
                *slot = Some(ByteStr::from(p.topic.as_str()));
            }
        }
        if validate_topic_name(&p.topic, self.cfg.max_topic_levels).is_err() {
            return self.close_conn(key, Close::Error(ReasonCode::TOPIC_NAME_INVALID));
        }
        self.counters.msgs_in[p.qos as usize] += 1;
        let origin = self.global_id(sid);
        let durable = p.qos != QoS::AtMostOnce || p.retain;
        let mut expires_at = None;
        let properties = p.properties.and_then(|mut pr| {
            pr.topic_alias = None;
            pr.subscription_identifiers.clear();
            if let Some(secs) = pr.message_expiry_interval {
                expires_at = Some(Instant::now() + std::time::Duration::from_secs(secs.into()));
            }
            (!pr.is_empty()).then(|| Arc::new(*pr))
        });
        let mut msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            origin,
            expires_at,
            received_at: Instant::now(),
        };
        if durable {
            // Held beyond this event: do not pin the shared read buffer.
            msg = msg.compacted();
        }
        let Some(id) = p.packet_id else {
            self.route(msg, None);
            return;
        };
        let before = self.jseq();
        if p.qos == QoS::ExactlyOnce {
            let max = self.cfg.max_inflight as usize;
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            if !s.inbound_qos2.on_publish(id) {
                // A retransmission of a message already routed [MQTT-4.3.3-9]: answer again.
                return self.queue_ack(sid, id, p.qos, None, true, 0, false);
            }
            if s.inbound_qos2.len() > max {
                // [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISHes than Receive Maximum.
                return self.close_conn(key, Close::Error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
            }
            if s.journaled {
                let client_id = s.client_id.to_string();
                self.jnote(Record::Qos2In {
                    client_id,
                    packet_id: id.get(),
                });
            }
        }
        let token = self.next_token;
        self.next_token += 1;
        self.delivery_refused = false;
        let routed = self.route(msg, Some(token));
        let refused = std::mem::take(&mut self.delivery_refused);
        let pending = (routed.awaiting > 0).then_some((token, routed.awaiting));
        let need = self.jneed(before);
        self.queue_ack(sid, id, p.qos, pending, routed.matched_here, need, refused);
    }

    /// Queues the PUBACK/PUBREC of a PUBLISH behind those of earlier PUBLISHes of the session,
    /// and sends every answer at the front that no longer waits for another shard.
    #[allow(clippy::too_many_arguments)]
    fn queue_ack(
        &mut self,
        sid: u64,
        packet_id: PacketId,
        qos: QoS,
        pending: Option<(u64, usize)>,
        matched: bool,
        durable: u64,
        refused: bool,
    ) {
        let (token, remaining) = pending.unwrap_or((0, 0));
        if remaining > 0 {
            self.ack_owner.insert(token, sid);
        }
        self.acks.entry(sid).or_default().push_back(AckSlot {
            token,
            packet_id,
            qos,
            remaining,
            matched,
            durable,
            refused,
        });
        if durable > 0 {
            self.after_sync(durable, AfterSync::ReleaseAcks(sid));
        }
        self.release_acks(sid);
    }

    fn on_publish_ack(&mut self, token: u64, matched: bool, refused: bool) {
        let Some(&sid) = self.ack_owner.get(&token) else {
            return;
        };
        let Some(slot) = self
            .acks
            .get_mut(&sid)
            .and_then(|q| q.iter_mut().find(|a| a.token == token && a.remaining > 0))
        else {
            self.ack_owner.remove(&token);
            return;
        };
        slot.remaining -= 1;
        slot.matched |= matched;
        slot.refused |= refused;
        if slot.remaining == 0 {
            self.ack_owner.remove(&token);
            self.release_acks(sid);
        }
    }

    fn release_acks(&mut self, sid: u64) {
        let key = self.sessions.get(&sid).and_then(|s| s.connection);
        let Some(q) = self.acks.get_mut(&sid) else {
            return;
        };
        let synced = self.durable.as_ref().map_or(u64::MAX, |d| {
            if d.gates() {
                d.journal.synced_seq()
            } else {
                u64::MAX
            }
        });
        let mut ready = Vec::new();
        while q
            .front()
            .is_some_and(|a| a.remaining == 0 && a.durable <= synced)
        {
            ready.push(q.pop_front().expect("front exists"));
        }
        if q.is_empty() {
            self.acks.remove(&sid);
        }
        let Some(key) = key else { return };
        for a in ready {
            if a.refused {
                // Not stored everywhere it had to be: never acknowledged as a success.
                // MQTT 5 says why; 3.1.x has no negative PUBACK, so the connection closes
                // unacknowledged and the client sends the message again later.
                self.counters.journal_refused_acks += 1;
                if !self.conns.get(key).is_some_and(|c| c.version.is_v5()) {
                    self.close_conn(key, Close::Error(ReasonCode::QUOTA_EXCEEDED));
                    return;
                }
                if a.qos == QoS::ExactlyOnce {
                    // A PUBREC with an error ends the flow: the id is free again.
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.inbound_qos2.on_pubrel(a.packet_id);
                    }
                }
                let mut r = PubResp::with_reason(a.packet_id, ReasonCode::QUOTA_EXCEEDED);
                if self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.problem_information)
                {
                    r.properties = Some(Box::new(Properties {
                        reason_string: reason_text(ReasonCode::QUOTA_EXCEEDED).map(ByteStr::from),
                        ..Properties::default()
                    }));
                }
                let packet = if a.qos == QoS::ExactlyOnce {
                    Packet::PubRec(r)
                } else {
                    Packet::PubAck(r)
                };
                self.send(key, &packet);
                continue;
            }
            let reason = self.no_subscribers_reason(key, a.matched);
            let r = PubResp::with_reason(a.packet_id, reason);
            let packet = if a.qos == QoS::ExactlyOnce {
                Packet::PubRec(r)
            } else {
                Packet::PubAck(r)
            };
            self.send(key, &packet);
        }
    }

    fn no_subscribers_reason(&self, key: usize, any: bool) -> ReasonCode {
        if !any && self.conns.get(key).is_some_and(|c| c.version.is_v5()) {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        }
    }

    /// Sends a message to every shard with a matching subscription and stores it if retained.
    /// With `ack`, the other shards it goes to answer `PublishAck`; their number is returned.
    fn route(&mut self, msg: Message, ack: Option<u64>) -> Routed {
        let mut routed = Routed {
            matched_here: false,
            awaiting: 0,
        };
        if msg.retain {
            let owner = home_shard(msg.topic.as_bytes(), self.nshards);
            if owner == self.id {
                if !self.retain_set(msg.clone()) {
                    self.delivery_refused = true;
                }
            } else {
                self.outbox[owner].push(ShardMsg::RetainSet {
                    msg: msg.clone(),
                    ack,
                });
                routed.awaiting += usize::from(ack.is_some());
            }
        }
        routed.matched_here = self.deliver_local(&msg);
        let shards = self.routes.shards_for(&msg.topic);
        for s in shards.iter() {
            if msg.qos == QoS::AtMostOnce && self.spilled[s as usize].get() > SPILL_MAX_BATCHES {
                self.counters.dropped_mesh_backlog += 1;
                continue;
            }
            self.outbox[s as usize].push(ShardMsg::Publish {
                msg: msg.clone(),
                ack,
                sent_at: Instant::now(),
            });
            self.counters.cross_shard_out += 1;
            routed.awaiting += usize::from(ack.is_some());
        }
        if !self.shared.is_empty() {
            let mut groups = std::mem::take(&mut self.group_buf);
            groups.clear();
            self.shared.matching(&msg.topic, &mut groups);
            for &gid in &groups {
                let Some(m) = self.shared.pick(gid, None) else {
                    continue;
                };
                if m.shard as usize == self.id {
                    routed.matched_here |= self.deliver_shared_local(m.session, gid, &msg);
                } else {
                    self.send_to_member(gid, m, &msg, ack);
                    routed.awaiting += usize::from(ack.is_some());
                }
            }
            let any = !groups.is_empty();
            self.group_buf = groups;
            if any {
                return routed;
            }
        }
        if shards.is_empty() && !routed.matched_here {
            self.counters.dropped_no_subscriber += 1;
        }
        routed
    }

    /// Sends a message to the chosen member of a shared subscription on another shard (or
    /// delivers it here).
    fn send_to_member(&mut self, gid: GroupId, m: Member, msg: &Message, ack: Option<u64>) {
        if m.shard as usize == self.id {
            self.deliver_shared_local(m.session, gid, msg);
            return;
        }
        let Some(key) = self.shared.key(gid).cloned() else {
            return;
        };
        self.outbox[m.shard as usize].push(ShardMsg::SharedPublish {
            msg: msg.clone(),
            key,
            session: m.session,
            ack,
            hops: self.nshards.min(8) as u8,
        });
        self.counters.cross_shard_out += 1;
    }

    /// Delivers to a local member of a shared subscription, with that subscription's options.
    fn deliver_shared_local(&mut self, sid: u64, gid: GroupId, msg: &Message) -> bool {
        let Some(key) = self.shared.key(gid) else {
            return false;
        };
        let Some(sub) = self
            .sessions
            .get(&sid)
            .and_then(|s| s.subscriptions.get(key))
        else {
            return false;
        };
        let qos = sub.options.qos.min(msg.qos);
        let retain = sub.options.retain_as_published && msg.retain;
        let ids: Vec<u32> = sub.subscription_id.into_iter().collect();
        self.deliver_to_session(sid, msg, qos, retain, ids, true, gid);
        true
    }

    /// Adds a subscription of a local session to the matching structures and tells the other
    /// shards; returns how many `RouteAck { token }` to expect.
    fn install_subscription(
        &mut self,
        sid: u64,
        filter: &ByteStr,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        token: u64,
    ) -> usize {
        let mut awaiting = 0;
        if let Ok(Some(sh)) = parse_shared(filter, usize::MAX) {
            let member = Member {
                shard: self.id as u16,
                session: sid,
                options,
                subscription_id,
            };
            self.shared.join(filter, sh.filter, member);
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.outbox[peer].push(ShardMsg::ShareJoin {
                        key: filter.clone(),
                        member,
                        token,
                    });
                    awaiting += 1;
                }
            }
            return awaiting;
        }
        let entry = SubEntry {
            options,
            subscription_id,
        };
        // The first local subscriber of a filter is news for the other shards.
        let first = self.subs.subscribers(filter).next().is_none();
        self.subs.insert(filter, sid, entry);
        if first {
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.outbox[peer].push(ShardMsg::RouteAdd {
                        filter: filter.clone(),
                        from: self.id as u16,
                        token,
                    });
                    awaiting += 1;
                }
            }
        }
        awaiting
    }

    /// Removes a local session's subscription from the matching structures and tells the
    /// other shards when that changes what they send here.
    fn uninstall_subscription(&mut self, sid: u64, filter: &ByteStr) {
        if let Ok(Some(sh)) = parse_shared(filter, usize::MAX) {
            self.shared.leave(filter, sh.filter, self.id as u16, sid);
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.outbox[peer].push(ShardMsg::ShareLeave {
                        key: filter.clone(),
                        shard: self.id as u16,
                        session: sid,
                    });
                }
            }
            return;
        }
        self.subs.remove(filter, sid);
        self.drop_interest(filter);
    }

    /// Publishes broker statistics as retained QoS 0 messages, like any publish but not
    /// counted as client traffic.
    pub fn publish_sys(&mut self, topics: Vec<(String, String)>) {
        let dropped = self.counters.dropped_no_subscriber;
        let now = Instant::now();
        for (topic, payload) in topics {
            let msg = Message {
                topic: ByteStr::from(topic),
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                // Session 0 is never a client's: no No Local match.
                origin: self.global_id(0),
                expires_at: None,
                received_at: now,
            };
            self.route(msg, None);
        }
        self.counters.dropped_no_subscriber = dropped;
        self.flush();
    }

    /// Stores (or with an empty payload deletes) a retained message, journaled unless it is a
    /// `$SYS` statistic. False if the journal had no room for it: nothing changed.
    fn retain_set(&mut self, msg: Message) -> bool {
        let journaled = self.durable.is_some() && !msg.topic.starts_with("$SYS/");
        // [MQTT-3.3.1-10] an empty payload deletes; [MQTT-3.3.1-5] otherwise it replaces.
        if msg.payload.is_empty() || msg.is_expired(Instant::now()) {
            if self.retained.remove(&msg.topic).is_some() && journaled {
                self.jnote(Record::RetainClear {
                    topic: msg.topic.to_string(),
                });
            }
            return true;
        }
        if journaled {
            if !self.jroom() {
                self.counters.dropped_journal_full += 1;
                return false;
            }
            let rec = retain_record(&msg);
            let d = self.durable.as_mut().expect("journaled");
            if let Err(e) = d.write(&rec) {
                d.write_errors += 1;
                tracing::error!(shard = self.id, error = %e, "journal append failed");
                return false;
            }
        }
        let topic = msg.topic.clone();
        self.retained.insert(&topic, msg);
        true
    }

    fn publish_will(&mut self, w: LastWill, origin: u64) {
        let mut props = w.properties;
        props.will_delay_interval = None;
        let expires_at = props
            .message_expiry_interval
            .map(|secs| Instant::now() + std::time::Duration::from_secs(secs.into()));
        let msg = Message {
            expires_at,
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: (!props.is_empty()).then(|| Arc::new(props)),
            origin,
            received_at: Instant::now(),
        }
        .compacted();
        self.counters.wills += 1;
        self.route(msg, None);
    }

    // ---------------------------------------------------------------- delivery

    /// Delivers to this shard's subscribers. One delivery per session, at the highest QoS of its
    /// matching subscriptions, with all their identifiers [MQTT-3.3.4-2] [MQTT-3.3.4-3].
    fn deliver_local(&mut self, msg: &Message) -> bool {
        let mut m = std::mem::take(&mut self.match_buf);
        m.clear();
        self.subs
            .for_each_match(&msg.topic, |sid, e| m.push((sid, *e)));
        if m.len() > 1 {
            m.sort_unstable_by_key(|x| x.0);
        }
        let mut delivered = false;
        let mut i = 0;
        while i < m.len() {
            let sid = m[i].0;
            let mut qos: Option<QoS> = None;
            let mut rap = false;
            let mut ids = Vec::new();
            while i < m.len() && m[i].0 == sid {
                let e = m[i].1;
                i += 1;
                // [MQTT-3.8.3-3] No Local: not back to the publishing session.
                if e.options.no_local && msg.origin == self.global_id(sid) {
                    continue;
                }
                qos = Some(qos.map_or(e.options.qos, |q| q.max(e.options.qos)));
                rap |= e.options.retain_as_published;
                if let Some(id) = e.subscription_id {
                    ids.push(id);
                }
            }
            if let Some(q) = qos {
                delivered = true;
                // [MQTT-3.3.1-12] live deliveries clear the retain flag unless Retain As Published.
                self.deliver_to_session(sid, msg, q.min(msg.qos), rap && msg.retain, ids, true, 0);
            }
        }
        self.match_buf = m;
        delivered
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_to_session(
        &mut self,
        sid: u64,
        msg: &Message,
        qos: QoS,
        retain: bool,
        ids: Vec<u32>,
        live: bool,
        shared_group: GroupId,
    ) {
        // Retained messages were received long ago: no publish-to-write latency for them.
        let received = live.then_some(msg);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        // Read the clock only for messages that can expire: this runs once per subscriber.
        if msg.expires_at.is_some() && msg.is_expired(Instant::now()) {
            self.counters.dropped_expired += 1;
            return;
        }
        let conn = s.connection;
        let v = s.protocol;
        let check_size = s.max_packet_size != u32::MAX;
        // Built once, for the size check and for the write; not at all for an offline session
        // without a size limit. The packet id is a placeholder of the same length until the
        // inflight window assigns one.
        let mut p = (check_size || conn.is_some())
            .then(|| make_publish(msg, qos, retain, &ids, Some(PacketId::MIN), false, v));
        // [MQTT-3.1.2-24] never send a packet larger than the client's Maximum Packet Size.
        if let Some(p) = p.as_ref().filter(|_| check_size) {
            let size = publish_header_len(p, v) + p.payload.len();
            if size > s.max_packet_size as usize {
                self.counters.dropped_too_large += 1;
                return;
            }
        }
        if qos == QoS::AtMostOnce {
            match (conn, p) {
                (Some(key), Some(p)) => self.write_publish(key, &p, received),
                _ => self.counters.dropped_offline_qos0 += 1,
            }
            return;
        }
        // A persistent session's delivery is journaled before anyone is told it is stored.
        let journaled = s.journaled && self.durable.is_some();
        let mut journal_id = 0;
        if journaled {
            let d = self.durable.as_mut().expect("journaled");
            if !d.has_room() {
                self.counters.dropped_journal_full += 1;
                self.delivery_refused = true;
                return;
            }
            journal_id = d.next_msg_id;
            d.next_msg_id += 1;
        }
        let q = Queued {
            qos,
            message: msg.clone(),
            retain,
            subscription_ids: ids,
            journal_id,
            shared_group,
        };
        let offer = s.outbound.offer(q, conn.is_some());
        if journaled {
            // Encoded from the session's stored entry: nothing is copied to build the record.
            let stored = match offer {
                Offer::Send(id) => s
                    .outbound
                    .get(id)
                    .map(|i| (&i.subscription_ids, id.get(), records::STATE_AWAIT_ACK)),
                Offer::Queued => s
                    .outbound
                    .queued()
                    .last()
                    .map(|q| (&q.subscription_ids, 0, records::STATE_QUEUED)),
                Offer::Dropped => None,
            };
            if let Some((sub_ids, pid, state)) = stored {
                let view = msg_view(
                    s.client_id.as_str(),
                    journal_id,
                    qos,
                    retain,
                    pid,
                    state,
                    msg,
                    sub_ids,
                );
                let d = self.durable.as_mut().expect("journaled");
                if let Err(e) = d.write_msg(&view) {
                    // Kept in memory and delivered, but the publisher must not be told it is
                    // stored.
                    d.write_errors += 1;
                    self.delivery_refused = true;
                    tracing::error!(shard = self.id, error = %e, "journal append failed");
                }
            }
        }
        match offer {
            Offer::Send(id) => {
                // Offered as online, so the connection and the packet exist.
                if let (Some(key), Some(p)) = (conn, p.as_mut()) {
                    p.packet_id = Some(id);
                    self.write_publish(key, p, received);
                }
            }
            Offer::Queued => self.counters.queued += 1,
            Offer::Dropped => self.counters.dropped_queue_full += 1,
        }
    }

    /// Moves queued messages into free inflight slots and sends them.
    fn refill(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(key) = s.connection else { return };
        let now = Instant::now();
        let (ids, expired) = s.outbound.refill(|q| !q.message.is_expired(now));
        self.counters.dropped_expired += expired.len() as u64;
        if let Some(d) = self.durable.as_mut().filter(|_| s.journaled) {
            let cid = s.client_id.to_string();
            for jid in expired.iter().filter(|j| **j != 0) {
                d.note(&Record::MsgDone {
                    client_id: cid.clone(),
                    id: *jid,
                });
            }
            for id in &ids {
                if let Some(i) = s.outbound.get(*id).filter(|i| i.journal_id != 0) {
                    d.note(&Record::MsgState {
                        client_id: cid.clone(),
                        id: i.journal_id,
                        packet_id: id.get(),
                        state: records::STATE_AWAIT_ACK,
                    });
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        let v = s.protocol;
        let packets: Vec<(Publish, Instant, u64)> = ids
            .iter()
            .filter_map(|id| s.outbound.get(*id))
            .map(|i| {
                let p = make_publish(
                    &i.message,
                    i.qos,
                    i.retain,
                    &i.subscription_ids,
                    Some(i.packet_id),
                    false,
                    v,
                );
                (p, i.message.received_at, i.message.origin)
            })
            .collect();
        for (p, received_at, origin) in &packets {
            self.write_publish(key, p, None);
            self.record_publish_to_write(*received_at, *origin, p.qos);
        }
    }

    /// After a reconnect, every unacknowledged delivery goes again: PUBLISH with DUP, or PUBREL
    /// where PUBREC already arrived [MQTT-4.4.0-1].
    fn resend_inflight(&mut self, sid: u64) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(key) = s.connection else { return };
        let v = s.protocol;
        let mut packets = Vec::new();
        for i in s.outbound.inflight() {
            if i.state == InflightState::AwaitPubComp {
                packets.push(Packet::PubRel(PubResp::new(i.packet_id)));
            } else {
                packets.push(Packet::Publish(make_publish(
                    &i.message,
                    i.qos,
                    i.retain,
                    &i.subscription_ids,
                    Some(i.packet_id),
                    true,
                    v,
                )));
            }
        }
        for p in &packets {
            match p {
                Packet::Publish(p) => self.write_publish(key, p, None),
                other => self.send(key, other),
            }
        }
    }

    fn on_pubrec(&mut self, key: usize, sid: u64, r: PubResp) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let failed = r.reason.is_error();
        match s.outbound.on_pubrec(r.packet_id, failed) {
            PubRecOutcome::Failed(jid) => {
                self.delivery_done(sid, jid);
                self.refill(sid);
            }
            PubRecOutcome::Released(jid) => {
                if jid != 0 && s.journaled {
                    let client_id = s.client_id.to_string();
                    self.jnote(Record::MsgState {
                        client_id,
                        id: jid,
                        packet_id: r.packet_id.get(),
                        state: records::STATE_AWAIT_PUBCOMP,
                    });
                }
                self.send(key, &Packet::PubRel(PubResp::new(r.packet_id)));
            }
            PubRecOutcome::Repeated => {
                self.send(key, &Packet::PubRel(PubResp::new(r.packet_id)));
            }
            PubRecOutcome::Unknown => {
                if self.conns[key].version.is_v5() {
                    let rel =
                        PubResp::with_reason(r.packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
                    self.send(key, &Packet::PubRel(rel));
                }
            }
        }
    }

    /// A journaled delivery is finished (acknowledged, refused or expired).
    fn delivery_done(&mut self, sid: u64, jid: u64) {
        if jid == 0 {
            return;
        }
        if let Some(s) = self.sessions.get(&sid).filter(|s| s.journaled) {
            let client_id = s.client_id.to_string();
            self.jnote(Record::MsgDone { client_id, id: jid });
        }
    }

    // ---------------------------------------------------------------- SUBSCRIBE

    fn on_subscribe(&mut self, key: usize, sid: u64, sub: Subscribe) {
        if !self.cfg.subscription_identifiers && !sub.properties.subscription_identifiers.is_empty()
        {
            // Announced as unavailable in CONNACK (section 3.8.2.1.2).
            return self.close_conn(
                key,
                Close::Error(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED),
            );
        }
        let v5 = self.conns[key].version.is_v5();
        let levels = self.cfg.max_topic_levels;
        let max_subs = self.cfg.max_subscriptions_per_client;
        let subscription_id = sub.properties.subscription_identifiers.first().copied();
        let token = self.next_token;
        self.next_token += 1;
        let before = self.jseq();
        let mut awaiting = 0;
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        let max_qos = self.cfg.max_qos;
        for mut f in sub.filters {
            // Granted at most the server's Maximum QoS [MQTT-3.2.2-?].
            if f.options.qos as u8 > max_qos {
                f.options.qos = QoS::from_u8(max_qos).unwrap_or(QoS::AtMostOnce);
            }
            let shared = matches!(parse_shared(&f.filter, levels), Ok(Some(_)));
            let code = match parse_shared(&f.filter, levels) {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(Some(_)) if !self.cfg.shared_subscriptions => {
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(Some(_)) if f.options.no_local => {
                    // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                    return self.close_conn(key, Close::Error(ReasonCode::PROTOCOL_ERROR));
                }
                Ok(Some(sh)) if !self.cfg.wildcard_subscriptions && has_wildcards(sh.filter) => {
                    ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(Some(_)) => ReasonCode(f.options.qos as u8),
                Ok(None) => match validate_topic_filter(&f.filter, levels) {
                    Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                    Ok(()) if !self.cfg.wildcard_subscriptions && has_wildcards(&f.filter) => {
                        ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                    }
                    Ok(()) => ReasonCode(f.options.qos as u8),
                },
            };
            if code.is_error() {
                codes.push(code);
                continue;
            }
            let room = self.jroom();
            let s = self.sessions.get_mut(&sid).expect("connected session");
            let existed = s.subscriptions.contains_key(&f.filter);
            if !existed && s.subscriptions.len() >= max_subs {
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            if s.journaled && !room {
                // The journal is at --journal-max-bytes: a subscription it cannot keep is
                // refused rather than granted and forgotten at the next restart.
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            if s.journaled {
                let rec = Record::Sub {
                    client_id: s.client_id.to_string(),
                    filter: f.filter.to_string(),
                    options: f.options,
                    subscription_id: subscription_id.unwrap_or(0),
                };
                self.jnote(rec);
            }
            let s = self.sessions.get_mut(&sid).expect("connected session");
            // Kept for the session's life: an owned copy, not a slice of the read buffer.
            let filter = ByteStr::from(f.filter.as_str());
            s.subscriptions.insert(
                filter.clone(),
                Subscription {
                    options: f.options,
                    subscription_id,
                },
            );
            awaiting += self.install_subscription(sid, &filter, f.options, subscription_id, token);
            if shared {
                // Retained messages are not sent for a shared subscription (4.8.2).
                codes.push(code);
                continue;
            }
            use ringmq_codec::RetainHandling::*;
            let send_retained = match f.options.retain_handling {
                SendAtSubscribe => true,
                SendIfNew => !existed,
                DoNotSend => false,
            };
            if send_retained {
                retained.push(RetainQuery {
                    filter,
                    from: self.id as u16,
                    session: sid,
                    options: f.options,
                    subscription_id,
                });
            }
            codes.push(code);
        }
        if !v5 {
            // 3.1.x knows only 0x80 for a refused filter; the encoder maps, this keeps intent.
        }
        let mut properties = Properties::default();
        if v5
            && self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.problem_information)
        {
            // [MQTT-3.1.2-29] only when the client did not turn Request Problem Information off.
            properties.reason_string = codes
                .iter()
                .find_map(|c| reason_text(*c))
                .map(ByteStr::from);
        }
        let suback = SubAck {
            packet_id: sub.packet_id,
            reason_codes: codes,
            properties,
        };
        // A persistent session's SUBACK waits for its subscriptions to be durable.
        let need = self.jneed(before);
        if awaiting == 0 && need == 0 {
            self.send(key, &Packet::SubAck(Box::new(suback)));
            self.query_retained(retained);
        } else if awaiting == 0 {
            self.after_sync(
                need,
                AfterSync::SubAck {
                    session: sid,
                    suback: Box::new(suback),
                    retained,
                },
            );
        } else {
            self.pending_subacks.insert(
                token,
                PendingSubAck {
                    session: sid,
                    remaining: awaiting,
                    suback,
                    retained,
                    durable: need,
                },
            );
        }
    }

    fn on_route_ack(&mut self, token: u64) {
        if token == self.restore_token && self.restore_pending > 0 {
            self.restore_pending -= 1;
            return;
        }
        let Some(p) = self.pending_subacks.get_mut(&token) else {
            return;
        };
        p.remaining -= 1;
        if p.remaining > 0 {
            return;
        }
        let p = self.pending_subacks.remove(&token).expect("present");
        if !self.jsynced(p.durable) {
            return self.after_sync(
                p.durable,
                AfterSync::SubAck {
                    session: p.session,
                    suback: Box::new(p.suback),
                    retained: p.retained,
                },
            );
        }
        let conn = self.sessions.get(&p.session).and_then(|s| s.connection);
        if let Some(key) = conn {
            self.send(key, &Packet::SubAck(Box::new(p.suback)));
            self.query_retained(p.retained);
        }
    }

    /// Asks the owners of retained messages matching each new subscription: the one owner of
    /// an exact filter, every shard for a wildcard filter.
    fn query_retained(&mut self, queries: Vec<RetainQuery>) {
        for q in queries {
            if has_wildcards(&q.filter) {
                for peer in 0..self.nshards {
                    if peer != self.id {
                        self.outbox[peer].push(ShardMsg::RetainQuery(Box::new(q.clone())));
                    }
                }
                self.answer_retained(q);
            } else {
                let owner = home_shard(q.filter.as_bytes(), self.nshards);
                if owner == self.id {
                    self.answer_retained(q);
                } else {
                    self.outbox[owner].push(ShardMsg::RetainQuery(Box::new(q)));
                }
            }
        }
    }

    fn answer_retained(&mut self, q: RetainQuery) {
        let mut messages = Vec::new();
        let now = Instant::now();
        self.retained.for_each_match(&q.filter, |_, m| {
            if !m.is_expired(now) {
                messages.push(m.clone());
            }
        });
        if messages.is_empty() {
            return;
        }
        let reply = RetainReply {
            session: q.session,
            options: q.options,
            subscription_id: q.subscription_id,
            messages,
        };
        if q.from as usize == self.id {
            self.deliver_retained(reply);
        } else {
            self.outbox[q.from as usize].push(ShardMsg::RetainReply(Box::new(reply)));
        }
    }

    /// Retained messages go out with the retain flag set [MQTT-3.3.1-8].
    fn deliver_retained(&mut self, r: RetainReply) {
        let ids: Vec<u32> = r.subscription_id.into_iter().collect();
        for m in &r.messages {
            let qos = m.qos.min(r.options.qos);
            self.deliver_to_session(r.session, m, qos, true, ids.clone(), false, 0);
        }
    }

    fn on_unsubscribe(&mut self, key: usize, sid: u64, u: Unsubscribe) {
        let before = self.jseq();
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let (removed, journaled) = self.sessions.get_mut(&sid).map_or((false, false), |s| {
                (s.subscriptions.remove(f).is_some(), s.journaled)
            });
            if removed && journaled {
                let client_id = self.sessions[&sid].client_id.to_string();
                self.jnote(Record::Unsub {
                    client_id,
                    filter: f.to_string(),
                });
            }
            if removed {
                self.uninstall_subscription(sid, f);
                codes.push(ReasonCode::SUCCESS);
            } else {
                codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        self.send_when_durable(before, key, sid, Packet::UnsubAck(Box::new(ack)));
    }

    /// Sends `packet` now, or once the journal records written since `before` are synced.
    fn send_when_durable(&mut self, before: u64, key: usize, sid: u64, packet: Packet) {
        let need = self.jneed(before);
        if need > 0 {
            self.after_sync(
                need,
                AfterSync::Send {
                    session: sid,
                    packet,
                },
            );
        } else {
            self.send(key, &packet);
        }
    }

    /// After a local subscription to `filter` was removed: if it was the last one here, the
    /// other shards stop sending matching messages.
    fn drop_interest(&mut self, filter: &ByteStr) {
        if self.subs.subscribers(filter).next().is_none() {
            for peer in 0..self.nshards {
                if peer != self.id {
                    self.outbox[peer].push(ShardMsg::RouteRemove {
                        filter: filter.clone(),
                        from: self.id as u16,
                    });
                }
            }
        }
    }

    // ---------------------------------------------------------------- mesh in

    pub fn on_batch(&mut self, batch: Batch) {
        for msg in batch {
            match msg {
                ShardMsg::Handoff(h) => self.adopt(*h),
                ShardMsg::Publish { msg, ack, sent_at } => {
                    self.counters.cross_shard_in += 1;
                    let hop = sent_at.elapsed().as_micros() as u64;
                    record_us(&mut self.histograms.cross_shard_hop_us, hop);
                    let before = self.jseq();
                    self.delivery_refused = false;
                    let matched = self.deliver_local(&msg);
                    let refused = std::mem::take(&mut self.delivery_refused);
                    if let Some(token) = ack {
                        let peer = (msg.origin >> 48) as usize;
                        self.ack_when_durable(before, peer, token, matched, refused);
                    }
                }
                ShardMsg::PublishAck {
                    token,
                    matched,
                    refused,
                } => self.on_publish_ack(token, matched, refused),
                ShardMsg::RouteAdd {
                    filter,
                    from,
                    token,
                } => {
                    self.routes.add(&filter, from);
                    self.outbox[from as usize].push(ShardMsg::RouteAck { token });
                }
                ShardMsg::RouteAck { token } => self.on_route_ack(token),
                ShardMsg::ShareJoin { key, member, token } => {
                    if let Ok(Some(sh)) = parse_shared(&key, usize::MAX) {
                        self.shared.join(&key, sh.filter, member);
                    }
                    if token != 0 {
                        self.outbox[member.shard as usize].push(ShardMsg::RouteAck { token });
                    }
                }
                ShardMsg::ShareLeave {
                    key,
                    shard,
                    session,
                } => {
                    if let Ok(Some(sh)) = parse_shared(&key, usize::MAX) {
                        self.shared.leave(&key, sh.filter, shard, session);
                    }
                }
                ShardMsg::SharedPublish {
                    msg,
                    key,
                    session,
                    ack,
                    hops,
                } => {
                    self.counters.cross_shard_in += 1;
                    let before = self.jseq();
                    self.delivery_refused = false;
                    let gid = self.shared.id(&key);
                    let mut matched =
                        gid.is_some_and(|g| self.deliver_shared_local(session, g, &msg));
                    if !matched && hops > 0 {
                        // The member left meanwhile: another one takes it.
                        if let Some(g) = gid {
                            if let Some(m) = self.shared.pick(g, Some((self.id as u16, session))) {
                                if m.shard as usize == self.id {
                                    matched = self.deliver_shared_local(m.session, g, &msg);
                                } else {
                                    self.outbox[m.shard as usize].push(ShardMsg::SharedPublish {
                                        msg,
                                        key,
                                        session: m.session,
                                        ack,
                                        hops: hops - 1,
                                    });
                                    continue;
                                }
                            }
                        }
                    }
                    let refused = std::mem::take(&mut self.delivery_refused);
                    if let Some(token) = ack {
                        let peer = (msg.origin >> 48) as usize;
                        self.ack_when_durable(before, peer, token, matched, refused);
                    }
                }
                ShardMsg::RouteRemove { filter, from } => self.routes.remove(&filter, from),
                ShardMsg::RetainSet { msg, ack } => {
                    let peer = (msg.origin >> 48) as usize;
                    let before = self.jseq();
                    let stored = self.retain_set(msg);
                    if let Some(token) = ack {
                        self.ack_when_durable(before, peer, token, false, !stored);
                    }
                }
                ShardMsg::RetainQuery(q) => self.answer_retained(*q),
                ShardMsg::RetainReply(r) => self.deliver_retained(*r),
                ShardMsg::MetricsRequest { reply_to, token } => {
                    let metrics = Box::new(self.metrics_snapshot());
                    self.outbox[reply_to as usize].push(ShardMsg::MetricsReply { token, metrics });
                }
                ShardMsg::MetricsReply { token, metrics } => {
                    if let Some(tx) = self.metrics_pending.get(&token) {
                        // The scrape may have timed out and gone: then nobody listens.
                        let _ = tx.try_send(metrics);
                    }
                }
            }
        }
        self.flush();
    }

    /// Answers an acknowledged cross-shard message once what it wrote here is durable.
    fn ack_when_durable(
        &mut self,
        before: u64,
        peer: usize,
        token: u64,
        matched: bool,
        refused: bool,
    ) {
        let need = self.jneed(before);
        if need > 0 {
            self.after_sync(
                need,
                AfterSync::MeshAck {
                    peer,
                    token,
                    matched,
                    refused,
                },
            );
        } else {
            self.outbox[peer].push(ShardMsg::PublishAck {
                token,
                matched,
                refused,
            });
        }
    }

    // ---------------------------------------------------------------- metrics

    /// This shard's counters and histograms, and its gauges computed now.
    pub fn metrics_snapshot(&self) -> ShardMetrics {
        let mut g = Gauges {
            connections: self
                .conns
                .iter()
                .filter(|(_, c)| c.phase == Phase::Active && c.close.is_none())
                .count() as u64,
            sessions: self.sessions.len() as u64,
            subscriptions: self.subs.len() as u64,
            retained_messages: self.retained.len() as u64,
            ..Gauges::default()
        };
        for s in self.sessions.values() {
            g.queued_messages += s.outbound.queued_len() as u64;
            g.inflight_messages += s.outbound.inflight_len() as u64;
        }
        let mut counters = self.counters.clone();
        if let Some(d) = &self.durable {
            g.journal_bytes = d.journal.disk_bytes();
            g.journal_pending_acks = d.waiting.len() as u64;
            let st = d.journal.stats();
            counters.journal_appends = st.appends;
            counters.journal_bytes_appended = st.bytes_appended;
            counters.journal_syncs = st.syncs;
            counters.journal_segments_created = st.segments_created;
            counters.journal_segments_removed = st.segments_removed;
            counters.journal_sync_segment_creates = st.sync_segment_creates;
            counters.journal_write_errors = d.write_errors;
        }
        ShardMetrics {
            shard: self.id,
            counters,
            histograms: self.histograms.clone(),
            gauges: g,
        }
    }

    /// Starts a scrape: asks every other shard for its metrics, answered to `tx` under a new
    /// token (remove it from `metrics_pending` when done). Returns the token and this shard's
    /// own snapshot.
    pub fn start_scrape(
        &mut self,
        tx: glommio::channels::local_channel::LocalSender<Box<ShardMetrics>>,
    ) -> (u64, ShardMetrics) {
        let token = self.next_token;
        self.next_token += 1;
        for peer in 0..self.nshards {
            if peer != self.id {
                self.outbox[peer].push(ShardMsg::MetricsRequest {
                    reply_to: self.id as u16,
                    token,
                });
            }
        }
        self.metrics_pending.insert(token, tx);
        self.flush();
        (token, self.metrics_snapshot())
    }

    // ---------------------------------------------------------------- timers

    /// Periodic: connect timeouts, keep-alive, session expiry.
    pub fn tick(&mut self) {
        let now = self.now_ms();
        let now_us = self.now_us();
        let connect_timeout = self.cfg.connect_timeout.as_millis() as u64;
        let mut expired = Vec::new();
        for (key, c) in self.conns.iter() {
            if c.close.is_some() {
                continue;
            }
            match c.phase {
                Phase::AwaitConnect
                    if now_us.saturating_sub(c.opened_us) / 1000 >= connect_timeout =>
                {
                    expired.push((key, Close::ConnectTimeout));
                }
                Phase::Active
                    if c.keep_alive_s > 0
                        && now.saturating_sub(c.last_rx_ms) > u64::from(c.keep_alive_s) * 1500 =>
                {
                    expired.push((key, Close::KeepAlive));
                }
                _ => {}
            }
        }
        for (key, why) in expired {
            self.close_conn(key, why);
        }
        let now_s = self.now_s();
        let ended: Vec<u64> = self
            .sessions
            .values()
            .filter(|s| s.expired(now_s))
            .map(|s| s.id)
            .collect();
        for sid in ended {
            self.remove_session(sid);
        }
        if !self.delayed_wills.is_empty() {
            let now = self.now_ms();
            let mut i = 0;
            while i < self.delayed_wills.len() {
                if self.delayed_wills[i].due_ms <= now {
                    let w = self.delayed_wills.swap_remove(i);
                    self.publish_will(*w.will, w.origin);
                } else {
                    i += 1;
                }
            }
        }
        self.flush();
    }

    /// Graceful shutdown: every connection is told and closed; wills are not published,
    /// since the clients did nothing wrong and the subscribers are leaving too.
    pub fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_conn(key, Close::Shutdown);
        }
        self.flush();
        if let Some(d) = self.durable.as_mut() {
            if let Err(e) = d.journal.sync_blocking() {
                tracing::error!(shard = self.id, error = %e, "journal sync at shutdown failed");
            }
        }
    }

    // ---------------------------------------------------------------- output

    /// Encodes a control packet into the arena and queues it on the connection.
    pub fn send(&mut self, key: usize, p: &Packet) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let v = conn.version;
        let len = encoded_len(p, v);
        self.reserve_arena(len);
        if encode(p, v, &mut self.arena).is_err() {
            self.arena.clear();
            return;
        }
        let chunk = self.arena.split().freeze();
        self.counters.packets_out += 1;
        self.push_chunk(key, chunk);
    }

    fn reserve_arena(&mut self, len: usize) {
        if self.arena.capacity() < len {
            self.arena.reserve(len.max(64 * 1024));
        }
    }

    /// Queues a PUBLISH on a connection; with `received`, records its publish-to-write time.
    fn write_publish(&mut self, key: usize, p: &Publish, received: Option<&Message>) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.close.is_some() {
            return;
        }
        if p.qos == QoS::AtMostOnce && conn.out_bytes > self.cfg.max_outgoing_bytes {
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

    fn record_publish_to_write(&mut self, received_at: Instant, origin: u64, qos: QoS) {
        let us = received_at.elapsed().as_micros() as u64;
        let h = if (origin >> 48) as usize == self.id {
            &mut self.histograms.publish_to_write_local_us[qos as usize]
        } else {
            &mut self.histograms.publish_to_write_cross_us[qos as usize]
        };
        record_us(h, us);
    }

    fn push_chunk(&mut self, key: usize, chunk: Bytes) {
        let conn = &mut self.conns[key];
        conn.out_bytes += chunk.len();
        conn.out.push_back(chunk);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes what a connection has queued, without waiting.
    fn flush_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.write_blocked || conn.out.is_empty() {
            return;
        }
        match io::send_chunks(conn.fd, &mut conn.out) {
            Ok(n) => {
                conn.out_bytes -= n;
                self.counters.bytes_out += n as u64;
                if !conn.out.is_empty() {
                    conn.write_blocked = true;
                    conn.wake();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                conn.write_blocked = true;
                conn.wake();
            }
            Err(_) => {
                conn.out.clear();
                conn.out_bytes = 0;
                self.close_conn(key, Close::Eof);
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.out.is_empty() {
                // An idle connection keeps no output buffer.
                conn.out = VecDeque::new();
            }
        }
    }

    /// End of an event: write every connection that got output, send every peer its batch.
    pub fn flush(&mut self) {
        while !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            for key in dirty {
                if let Some(c) = self.conns.get_mut(key) {
                    c.dirty = false;
                    self.flush_conn(key);
                }
            }
        }
        self.flush_outbox();
    }

    fn flush_outbox(&mut self) {
        let Some(senders) = self.senders.clone() else {
            return;
        };
        for peer in 0..self.nshards {
            if self.outbox[peer].is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut self.outbox[peer]);
            let spilled = &self.spilled[peer];
            let batch = if spilled.get() > 0 {
                batch
            } else {
                match senders.try_send_to(peer, batch) {
                    Ok(()) => continue,
                    Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(b))) => {
                        self.counters.mesh_backpressure += 1;
                        b
                    }
                    Err(_) => {
                        self.counters.mesh_send_failed += 1;
                        continue;
                    }
                }
            };
            let spill = self.spill[peer]
                .as_ref()
                .expect("flushers start with the shard");
            if spill.try_send(batch).is_ok() {
                spilled.set(spilled.get() + 1);
            } else {
                self.counters.mesh_send_failed += 1;
            }
        }
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
fn reason_text(code: ReasonCode) -> Option<&'static str> {
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

/// The journal record of one delivery to a persistent session, borrowed from its entry.
#[allow(clippy::too_many_arguments)]
fn msg_view<'a>(
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
        expires_unix_ms: durable::instant_to_unix_ms(m.expires_at),
        subscription_ids,
    }
}

fn retain_record(m: &Message) -> Record {
    Record::Retain(Box::new(RetainRecord {
        topic: m.topic.to_string(),
        qos: m.qos,
        payload: m.payload.clone(),
        properties: m.properties.as_ref().map(|p| (**p).clone()),
        expires_unix_ms: durable::instant_to_unix_ms(m.expires_at),
    }))
}

/// The PUBLISH a subscriber receives. Properties are forwarded as published, plus this
/// subscriber's Subscription Identifiers.
fn make_publish(
    msg: &Message,
    qos: QoS,
    retain: bool,
    ids: &[u32],
    packet_id: Option<PacketId>,
    dup: bool,
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
        p.message_expiry_interval = msg.remaining_expiry(Instant::now());
        Some(Box::new(p))
    };
    Publish {
        dup,
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
#[cfg(test)]
mod tests {
    /// Per-connection memory is budgeted (target: 1 KiB per idle connection in all): these are
    /// the broker's own parts of it, so growth is a deliberate decision, not an accident.
    #[test]
    fn per_connection_structs_stay_within_budget() {
        // 152: +8 in 2026-11 for the topic alias tables (one pointer, allocated on use).
        assert!(std::mem::size_of::<super::Conn>() <= 152, "Conn grew");
        assert!(
            std::mem::size_of::<ringmq_session::Session>() <= 256,
            "Session grew"
        );
        assert!(
            std::mem::size_of::<super::SubEntry>() <= 12,
            "SubEntry grew"
        );
    }
}
