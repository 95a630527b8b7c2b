//! Everything one shard knows, and every protocol decision it makes, as synchronous code with
//! no I/O.
//!
//! The driver (the glommio crate, or the simulator) calls in with events — bytes read on a
//! connection, a connection closed, a batch from another shard, a journal sync done, a timer
//! tick — and applies what the event caused, collected in [`Effects`]: output queued per
//! connection, batches per peer shard, connections to close or adopt, metric replies, a sync
//! to start. So a packet is handled start to finish without yielding, and its output is
//! written once at the end of the event in a few vectored writes and at most one batch per peer.

use crate::config::{home_shard, Config};
use crate::durable::{self, AfterSync, ConnRef, Durable, JournalSeq, Recovered};
use crate::env::{self, Clock, Entropy};
use crate::mesh::{AckToken, RouteToken, ScrapeToken, Taken};
use crate::mesh::{Batch, Handoff, RetainQuery, RetainReply, ShardMsg};
use crate::metrics::{record_us, Counters, Gauges, Histograms, ShardMetrics};
use crate::negotiate::{negotiate, AuthDone, Granted};
use crate::records::{self, MsgView, Record, RetainRecord};
use crate::shared::{GroupId, Member, SharedGroups};
use bytes::{Bytes, BytesMut};
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
    Inflight, InflightState, Message, Offer, PubRecOutcome, Qos2Seen, Queued, Session, Subscription,
};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

mod authz;
mod backpressure;
mod clients;
mod conn;
mod connect;
mod deliver;
mod held;
mod login;
mod output;
mod peers;
mod persist;
mod publish;
mod quota;
mod spill;
mod subscribe;
mod timers;

use deliver::{Delivery, Dup, Source};
pub use output::Output;
use output::{make_publish, reason_text};
use persist::{msg_view, retain_record};
use publish::{Body, Expiry};

/// Batches waiting for a slow peer shard beyond its channel, above which QoS 0 publishes to it
/// are dropped (and counted) instead of queued, and a publisher whose QoS 1/2 message goes to
/// it is not read until the backlog is down to a quarter of this (backpressure.rs).
pub const PEER_BACKLOG_MAX: usize = 1024;
/// Spare room the read path offers before each `recv`.
pub const READ_CHUNK: usize = 64 * 1024;
/// Payloads up to this size are copied behind their header into one chunk: a copy of a few
/// hundred bytes is cheaper than a separate iovec and a reference count.
const INLINE_PAYLOAD_MAX: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; nothing but CONNECT is allowed yet.
    AwaitConnect,
    /// CONNECT read; it waits while the connection it takes over is read dry, and so does
    /// everything after it.
    AwaitTakeover,
    /// CONNECT accepted with Clean Start over a persistent session: the CONNACK, and what
    /// the client sent after the CONNECT, wait until the session's removal is synced, so that
    /// a power loss cannot bring back a session the client was told is gone [MQTT-3.1.2-4].
    AwaitSync,
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
    /// The transport under MQTT failed: a TLS handshake, certificate or record the driver
    /// refused (it sent the TLS alert itself).
    Transport,
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
            Close::Transport => 10,
        }
    }

    fn publishes_will(self) -> bool {
        matches!(
            self,
            Close::NormalWithWill
                | Close::Eof
                | Close::Error(_)
                | Close::KeepAlive
                | Close::Transport
        )
    }
}

/// One socket. Deliberately small (64 bytes; a million of them are a slab of 64 MB) and
/// without buffers while idle: `partial` holds only the unfinished tail of a frame and `out`
/// only unwritten output, each allocated while there is some.
pub struct Conn {
    pub socket: SocketId,
    pub phase: Phase,
    pub version: ProtocolVersion,
    /// [`Conn::write_blocked`] and [`Conn::dirty`], as bits: the listener's byte needed the
    /// room of one of them.
    flags: u8,
    pub close: Option<Close>,
    pub keep_alive_s: u16,
    /// The listener it was accepted on (its index in `Config::all_listeners`).
    pub listener: u8,
    /// The deadline (ms, low 32 bits) of the connection's timer entry that counts.
    timer_due: u32,
    /// The attached session; session ids start at 1.
    session: Option<NonZeroU64>,
    partial: Option<Box<BytesMut>>,
    pub out: Output,
    pub last_rx_ms: u64,
    /// Accepted (or adopted) at this many µs of the shard's clock.
    pub opened_us: u64,
    /// Topic aliases in both directions, enhanced authentication state (MQTT 5) and a CONNECT
    /// waiting to be handed to its home shard; allocated on first use, so connections that use
    /// none of them pay a pointer.
    extra: Option<Box<ConnExtra>>,
}

const WRITE_BLOCKED: u8 = 1;
const DIRTY: u8 = 2;

impl Conn {
    /// The socket did not take all of the output: nothing more is written until it is
    /// writable again.
    pub fn write_blocked(&self) -> bool {
        self.flags & WRITE_BLOCKED != 0
    }

    pub fn set_write_blocked(&mut self, blocked: bool) {
        self.set_flag(WRITE_BLOCKED, blocked);
    }

    /// Output was queued and the connection is in `Effects::writes`.
    pub fn dirty(&self) -> bool {
        self.flags & DIRTY != 0
    }

    pub fn set_dirty(&mut self, dirty: bool) {
        self.set_flag(DIRTY, dirty);
    }

    fn set_flag(&mut self, bit: u8, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }

    /// Whether the broker stopped reading it (`Effects::reads`): the driver arms no receive
    /// and the simulator delivers no bytes while this holds.
    pub fn reads_paused(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.reads_paused)
    }

    fn set_reads_paused(&mut self, paused: bool) {
        if paused || self.extra.is_some() {
            self.extra.get_or_insert_with(Box::default).reads_paused = paused;
        }
    }
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
    /// The client's Maximum Packet Size (MQTT 5), for every packet sent to it.
    max_packet_size: Option<u32>,
    /// A CONNECT read here whose client id lives on another shard, until the hand-off.
    handoff: Option<Box<Connect>>,
    /// QoS 0 retained messages for a new subscription waiting for room in the output, and
    /// the QoS 0 messages that came after them (kept behind them, in order), with their retain
    /// flag and subscription identifiers (see `state/subscribe.rs`, `deliver_retained`).
    retained: VecDeque<(Message, bool, Vec<u32>)>,
    /// Not read from while its session owes many answers (`backpressure.rs`, `pace_reads`):
    /// here rather than in `Conn`, which every idle connection pays for.
    reads_paused: bool,
    /// A refusal (0x97) is in the output and not yet written: until it is, later PUBLISHes
    /// of the session are refused too (`quota.rs`).
    refusal_unsent: bool,
    /// The identity the transport verified (a client certificate's), which replaces the
    /// CONNECT's username; `Some(None)`: one is required and the client has none.
    identity: Option<Option<ByteStr>>,
    /// A CONNECT whose username and password are being checked ([`CredentialCheck`]).
    login: Option<Box<PendingLogin>>,
}

/// A CONNECT waiting for the driver's verdict on its password; the connection is not read
/// meanwhile.
struct PendingLogin {
    token: u64,
    connect: Box<Connect>,
    assigned: Option<ByteStr>,
    /// When the check was asked for (ms of the shard's clock).
    asked_ms: u64,
    /// Refused: the CONNACK goes at this time (ms), not before ([`LOGIN_FAILURE_DELAY_MS`]).
    refuse_at: Option<u64>,
}

/// A failed login is answered this long after the check was asked for, however long the
/// check took, so that timing tells nothing about which part was wrong, and a client guessing
/// passwords gets at most a few guesses a second per connection.
pub const LOGIN_FAILURE_DELAY_MS: u64 = 250;

/// A username and password for the driver to verify against the password file, off the
/// shard's thread; the answer comes back through [`ShardState::credentials_checked`].
#[derive(Debug)]
pub struct CredentialCheck {
    pub key: usize,
    pub token: u64,
    pub username: String,
    /// `None`: the CONNECT had none (refused, after the same work).
    pub password: Option<Vec<u8>>,
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
    /// The id of the attached session.
    pub fn session(&self) -> Option<u64> {
        self.session.map(NonZeroU64::get)
    }

    fn set_session(&mut self, sid: u64) {
        self.session = Some(NonZeroU64::new(sid).expect("session ids start at 1"));
    }

    /// The unfinished frame, or an empty buffer.
    fn take_partial(&mut self) -> BytesMut {
        self.partial.take().map(|b| *b).unwrap_or_default()
    }

    /// Keeps an unfinished frame until more bytes arrive (nothing if `buf` is empty).
    fn keep_partial(&mut self, buf: BytesMut) {
        self.partial = (!buf.is_empty()).then(|| Box::new(buf));
    }

    fn new(socket: SocketId, listener: u8, now_ms: u64, now_us: u64) -> Conn {
        Conn {
            socket,
            listener,
            phase: Phase::AwaitConnect,
            version: ProtocolVersion::V311,
            flags: 0,
            close: None,
            keep_alive_s: 0,
            timer_due: 0,
            session: None,
            partial: None,
            out: Output::default(),
            last_rx_ms: now_ms,
            opened_us: now_us,
            extra: None,
        }
    }
}

/// What one read of a socket found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
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
    to: ConnRef,
    remaining: usize,
    /// Filters whose announcement this SUBSCRIBE made (see `ShardState::announcing`).
    announced: Vec<ByteStr>,
    suback: SubAck,
    retained: Vec<RetainQuery>,
    /// How far the journal must be synced first.
    sync_before: JournalSeq,
}

/// Output of a connection held back until a sync: chunks go here instead of `Conn::out`, so
/// the driver cannot write them with earlier output; dropped if the connection ends first.
struct Gate {
    seq: JournalSeq,
    key: usize,
    held: VecDeque<Bytes>,
}

/// A PUBACK or PUBREC waiting for other shards to take the message.
struct AckSlot {
    /// The session's connection the PUBLISH came on (`Session::attachment`): the answer is
    /// sent only there, but kept in the queue in any case, so that the answer to a
    /// retransmission on the next connection still waits behind it.
    attachment: u32,
    token: AckToken,
    packet_id: PacketId,
    qos: QoS,
    remaining: usize,
    /// How far the journal must be synced first.
    sync_before: JournalSeq,
    /// What the shards it went to did with it, so far.
    taken: Taken,
    /// QoS 2: its routing is recorded as finished (`held.rs`).
    marked: bool,
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
    /// Other shards that will answer with `PublishAck`, and this one if its answer waits for
    /// full queues here (`deferred_here`).
    awaiting: usize,
    deferred_here: bool,
    /// A peer shard it went to is far behind ([`PEER_BACKLOG_MAX`]): its publisher waits.
    congested: Option<u16>,
}

impl Routed {
    /// Whether every shard has the message: only the answer may still wait, for full queues
    /// here. A QoS 2 message's routing is then recorded as finished at once, so that a crash
    /// while the answer waits does not make its retransmission look unrouted.
    fn routing_done(&self) -> bool {
        self.awaiting == usize::from(self.deferred_here)
    }
}

/// A connection adopted from another shard, waiting for the driver to watch its socket.
#[derive(Debug)]
pub struct Adopted {
    pub key: usize,
    pub socket: SocketId,
    pub listener: u8,
    /// The driver's state of the connection's transport, as the handing shard left it.
    pub transport: Option<Transport>,
}

/// What a driver keeps of a connection's transport (a TLS session) while the connection moves
/// to its home shard: opaque to the core, which only carries it.
pub type Transport = Box<dyn std::any::Any + Send>;

/// The driver's handle for a connection's socket (the file descriptor in the glommio driver, a
/// connection number in the simulator). The core only stores it and hands it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketId(pub i32);

impl Effects {
    pub fn new(nshards: usize) -> Effects {
        Effects {
            batches: (0..nshards).map(|_| Vec::new()).collect(),
            ..Effects::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.closes.is_empty()
            && self.adopted.is_empty()
            && self.drains.is_empty()
            && self.metrics_replies.is_empty()
            && self.reads.is_empty()
            && self.credential_checks.is_empty()
            && !self.sync
            && self.batches.iter().all(|b| b.is_empty())
    }

    /// Empties it for reuse, keeping what it allocated.
    pub fn clear(&mut self) {
        self.writes.clear();
        self.closes.clear();
        self.batches.iter_mut().for_each(Vec::clear);
        self.handoffs = false;
        self.adopted.clear();
        self.drains.clear();
        self.metrics_replies.clear();
        self.reads.clear();
        self.credential_checks.clear();
        self.sync = false;
    }
}

/// A CONNECT waiting for the connection it takes over to be read dry.
struct DeferredConnect {
    connect: Box<Connect>,
    assigned: Option<ByteStr>,
    auth: Option<AuthDone>,
}

/// Read connection `old` until nothing more is there, then call
/// [`ShardState::resume_connect`] for `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    pub old: usize,
    pub new: usize,
}

/// What events caused, for the driver to carry out; drained with [`ShardState::take_effects`].
#[derive(Debug, Default)]
pub struct Effects {
    /// Connections with output queued (`Conn::out`), in the order they got it.
    pub writes: Vec<usize>,
    /// Connections whose end was decided: the driver stops reading, writes what is queued,
    /// closes the socket (or, for [`Close::Handoff`], lets it go) and calls
    /// [`ShardState::finish_conn`].
    pub closes: Vec<usize>,
    /// Per peer shard: the messages to send it, in order.
    pub batches: Vec<Batch>,
    /// Some batch carries a [`ShardMsg::Handoff`] whose socket the driver must pass on.
    pub handoffs: bool,
    /// Connections handed over by another shard, now registered here.
    pub adopted: Vec<Adopted>,
    /// Takeovers waiting for the old connection to be read dry.
    pub drains: Vec<Drain>,
    /// Metrics other shards sent for a scrape this shard started, by its token.
    pub metrics_replies: Vec<(ScrapeToken, Box<ShardMetrics>)>,
    /// Journal records were appended: the driver's journal task should sync under its policy.
    pub sync: bool,
    /// Connections to stop reading from (`false`: the kernel's socket buffer and then TCP
    /// hold the client back) or to read again (`true`), in order ([`Conn::reads_paused`]).
    pub reads: Vec<(usize, bool)>,
    /// Passwords to verify (`--password-file`); each answer goes to
    /// [`ShardState::credentials_checked`].
    pub credential_checks: Vec<CredentialCheck>,
}

pub struct ShardState {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Rc<Config>,
    pub conns: Slab<Conn>,
    /// Boxed so that the map's spare capacity costs a pointer, not a session.
    pub sessions: HashMap<u64, Box<Session>>,
    by_client: clients::ClientIndex,
    next_session: u64,
    subs: SubscriptionTree<u64, SubEntry>,
    /// Which *other* shards have subscribers per filter; this shard's own are in `subs`.
    routes: RouteTable,
    retained: RetainedStore<Message>,
    /// What the events since the driver last looked caused; `fx.batches[peer]` is what goes
    /// to each peer shard.
    fx: Effects,
    /// CONNECTs waiting for [`ShardState::resume_connect`], by connection.
    deferred_connects: HashMap<usize, DeferredConnect>,
    /// Per peer shard: batches the driver could not yet hand to the mesh. Above
    /// [`PEER_BACKLOG_MAX`], QoS 0 to that peer is dropped.
    pub peer_backlog: Vec<usize>,
    /// Shared read buffer: frames are split off it zero-copy; only partial tails are copied.
    scratch: BytesMut,
    /// Arena for encoded packets; each is split off as a `Bytes` without its own allocation.
    arena: BytesMut,
    match_buf: Vec<(u64, SubEntry)>,
    pending_subacks: HashMap<RouteToken, PendingSubAck>,
    /// Filters whose `RouteAdd` is not yet acknowledged by every peer, with the token of the
    /// latest announcement. A later local subscriber of such a filter announces it again (the
    /// add is idempotent; the mesh keeps order), so its SUBACK also waits until every peer
    /// routes the filter here.
    announcing: HashMap<ByteStr, RouteToken>,
    /// Client ids whose persistent session was removed by a record not yet synced, with that
    /// record's seq, oldest first; a power loss now would bring the session back.
    removals: VecDeque<(JournalSeq, ByteStr)>,
    /// Connections whose output is held until the journal is synced through the seq: a QoS 2
    /// PUBLISH to a persistent session goes once its packet id is durable (see `deliver.rs`).
    gates: Vec<Gate>,
    /// Per publishing session, its PUBLISHes held until the journal has a QoS 2 receipt (see
    /// `held.rs`); later ones wait behind them, so the session's messages keep their order.
    held: HashMap<u64, usize>,
    /// Filters announced by the SUBSCRIBE being handled; moved into its `PendingSubAck`.
    announced_now: Vec<ByteStr>,
    /// Per publishing session, its PUBACK/PUBREC answers in the order the PUBLISHes arrived
    /// [MQTT-4.6.0-2]; each is released once every shard it went to has taken it.
    acks: HashMap<u64, VecDeque<AckSlot>>,
    /// Token of an acknowledged cross-shard publish -> publishing session.
    ack_owner: HashMap<AckToken, u64>,
    next_token: u64,
    /// The shard's clock at construction: `now_ms` and `now_us` count from it.
    start: Instant,
    clock: Box<dyn Clock>,
    entropy: Box<dyn Entropy>,
    pub counters: Counters,
    pub histograms: Histograms,
    /// The driver's backlogs as of its last tick, for the metrics (the driver sets them).
    pub backlogs: crate::metrics::Backlogs,
    assigned_ids: u64,
    /// The ACL in force (`--acl-file`); `None`: everything is allowed.
    acl: Option<Arc<crate::acl::Acl>>,
    /// Tokens of password checks, so that an answer for a connection that has gone (and whose
    /// key was reused) is ignored.
    login_tokens: u64,
    /// The opening time given to the latest accepted connection (`add_conn`).
    last_opened_us: u64,
    /// The journal, with the acknowledgements waiting for it; `None` runs without persistence.
    pub durable: Option<Durable>,
    /// Set by a delivery the journal had no room for, during one publish.
    delivery_refused: bool,
    /// The acknowledged publish being delivered on this shard now: its publisher's shard and
    /// token, so that a full session queue can defer its answer (`--queue-full`).
    current_ack: Option<(u16, AckToken)>,
    /// Answers the deliveries of the current publish deferred on this shard.
    new_deferrals: u32,
    /// Per session whose queue went beyond its limits: the answers waiting for it to go under
    /// them again, as (publisher's shard, token).
    deferred: HashMap<u64, Vec<(u16, AckToken)>>,
    /// Per publish with answers deferred here: how many are left, and what it became.
    deferred_tokens: HashMap<(u16, AckToken), (u32, Taken)>,
    /// Sessions with full queues, here and on other shards, for refusing MQTT 5 publishes.
    full: quota::FullMarks,
    /// Publishing sessions not read until something outside them changes (backpressure.rs).
    read_waits: HashMap<u64, backpressure::ReadWait>,
    /// While one message is delivered to several local sessions: the journal record that holds
    /// it once written, which the other delivery records refer to (spill.rs).
    shared_body: Option<Option<ringmq_journal::RecordLoc>>,
    /// Wills waiting for their Will Delay Interval or their session's end.
    delayed_wills: Vec<DelayedWill>,
    /// Connect timeouts, keep-alives, session expiry and will delays.
    timers: timers::Timers,
    /// Every shared subscription group and its members on all shards.
    shared: SharedGroups,
    group_buf: Vec<GroupId>,
    /// Route acknowledgements still expected for the subscriptions restored at start; the
    /// shard listens only once every shard has none left.
    pub restore_pending: usize,
    restore_token: RouteToken,
}

impl ShardState {
    pub fn new(
        id: usize,
        nshards: usize,
        cfg: Rc<Config>,
        clock: Box<dyn Clock>,
        entropy: Box<dyn Entropy>,
    ) -> Self {
        ShardState {
            id,
            nshards,
            cfg,
            conns: Slab::new(),
            sessions: HashMap::new(),
            by_client: clients::ClientIndex::new(),
            next_session: 1,
            subs: SubscriptionTree::new(),
            routes: RouteTable::new(),
            retained: RetainedStore::new(),
            fx: Effects::new(nshards),
            peer_backlog: vec![0; nshards],
            deferred_connects: HashMap::new(),
            scratch: BytesMut::new(),
            arena: BytesMut::new(),
            match_buf: Vec::new(),
            pending_subacks: HashMap::new(),
            announcing: HashMap::new(),
            announced_now: Vec::new(),
            removals: VecDeque::new(),
            held: HashMap::new(),
            gates: Vec::new(),
            acks: HashMap::new(),
            ack_owner: HashMap::new(),
            next_token: 1,
            start: clock.now(),
            clock,
            entropy,
            counters: Counters::default(),
            backlogs: Default::default(),
            histograms: Histograms::default(),
            assigned_ids: 0,
            acl: None,
            login_tokens: 0,
            last_opened_us: 0,
            durable: None,
            delivery_refused: false,
            current_ack: None,
            new_deferrals: 0,
            deferred: HashMap::new(),
            deferred_tokens: HashMap::new(),
            full: quota::FullMarks::default(),
            read_waits: HashMap::new(),
            shared_body: None,
            delayed_wills: Vec::new(),
            timers: timers::Timers::default(),
            shared: SharedGroups::default(),
            group_buf: Vec::new(),
            restore_pending: 0,
            restore_token: RouteToken::NONE,
        }
    }

    /// A fresh number for a token: acknowledgements, route announcements and scrapes draw
    /// from one counter, so no two waits of this shard share a number.
    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// The time, from the clock the driver gave.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    pub fn now_ms(&self) -> u64 {
        self.now().duration_since(self.start).as_millis() as u64
    }

    pub fn now_us(&self) -> u64 {
        self.now().duration_since(self.start).as_micros() as u64
    }

    fn now_s(&self) -> u64 {
        self.now().duration_since(self.start).as_secs()
    }

    fn global_id(&self, session: u64) -> u64 {
        ((self.id as u64) << 48) | session
    }

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
            queues_full: self.full.len() as u64,
            backlogs: self.backlogs,
            ..Gauges::default()
        };
        for s in self.sessions.values() {
            g.queued_messages += s.outbound.queued_len() as u64;
            g.queued_in_journal += s.outbound.spilled_len() as u64;
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

    /// Starts a scrape: asks every other shard for its metrics, whose answers come back as
    /// [`Effects::metrics_replies`] under the returned token, with this shard's own snapshot.
    pub fn start_scrape(&mut self) -> (ScrapeToken, ShardMetrics) {
        let token = ScrapeToken(self.new_token());
        for peer in 0..self.nshards {
            if peer != self.id {
                self.fx.batches[peer].push(ShardMsg::MetricsRequest {
                    reply_to: self.id as u16,
                    token,
                });
            }
        }
        (token, self.metrics_snapshot())
    }

    // ---------------------------------------------------------------- timers

    /// Periodic: connect timeouts, keep-alive, session expiry, delayed wills; costs what is
    /// due, not what exists (`timers.rs`).
    pub fn tick(&mut self) {
        self.fire_timers();
    }

    /// Graceful shutdown: every connection is told and closed; wills are not published,
    /// since the clients did nothing wrong and the subscribers are leaving too.
    pub fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_conn(key, Close::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Per-connection memory is budgeted (target: 1 KiB per idle connection in all): these are
    /// the broker's own parts of it, so growth is a deliberate decision, not an accident.
    #[test]
    fn per_connection_structs_stay_within_budget() {
        // 152: +8 in 2026-11 for the topic alias tables (one pointer, allocated on use).
        // 64 since 2026-12-04 (output, partial frame and hand-off moved behind pointers).
        assert!(std::mem::size_of::<super::Conn>() <= 64, "Conn grew");
        assert!(
            // 152: +8 on 2026-12-05 for the username the ACL needs (a thin pointer), +8 for
            // the opening time of its latest connection (stale CONNECTs, connect.rs).
            std::mem::size_of::<ringmq_session::Session>() <= 152,
            "Session grew"
        );
        assert!(
            std::mem::size_of::<super::SubEntry>() <= 12,
            "SubEntry grew"
        );
    }
}
