//! One executor: a thread running an edge-triggered epoll loop over its share of the devices.
//!
//! Memory per device is one small `Dev` (no task, no buffer): reads go into one per-executor
//! scratch buffer, only a partial frame is kept per device; writes of many PUBLISHes for a
//! connection are built in one per-executor buffer and sent with one `send`; only what the
//! kernel did not take is kept per device. Open-loop publishing runs off the loop's 1 ms tick
//! (every publisher sends what is due by its intended times), not a timer per device.

use crate::churn::{self, ChurnPlan};
use crate::payload::{write_header, Header, Schedule, HEADER_LEN};
use crate::stats::{new_hist, Counters, Seen, SeqTracker};
use crate::sys::{self, now_ns};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use ringmq_codec::{
    decode_packet, encode, encode_publish_header, ByteStr, Connect, Packet, Properties,
    ProtocolVersion, PubResp, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

mod churning;
mod connect;
mod io;
mod packets;
mod publish;
mod ws;

use io::raw_send;
pub use publish::publish_header;

const READ_CHUNK: usize = 64 * 1024;
const RBUF_CAP: usize = 256 * 1024;
const MAX_READ_ROUNDS: usize = 8;
/// Messages one publisher appends per pass (open loop), so one late publisher cannot hog.
const MAX_BATCH: u64 = 1024;
/// TCP handshakes in flight per executor.
const MAX_PENDING_HANDSHAKES: usize = 1024;
const MAX_PACKET: usize = ringmq_codec::MAX_REMAINING_LENGTH + 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Publishes to `topic`.
    Pub,
    /// Subscribes to `topic` (a filter) and tracks publishers `pub_base..pub_base+pub_count`.
    Sub,
    /// Only connects.
    Plain,
}

#[derive(Clone, Debug)]
pub struct DevSpec {
    pub global: u32,
    pub role: Role,
    /// Publisher id (Pub).
    pub id: u32,
    pub topic: String,
    pub pub_base: u32,
    pub pub_count: u32,
}

/// Settings shared by all executors of a run.
#[derive(Clone, Debug)]
pub struct RunCfg {
    pub addr: SocketAddrV4,
    pub source_ips: Option<(u32, u32)>,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub payload: usize,
    pub keep_alive: u16,
    /// New connections per second for one executor.
    pub connect_rate: f64,
    pub ramp_start_ns: u64,
    pub ramp_deadline_ns: u64,
    pub duration_ns: u64,
    /// Per publisher, msgs/s; 0 = closed loop.
    pub rate: f64,
    pub window: u32,
    /// QoS 0 closed loop: `window` counts messages not yet received by a subscriber of the
    /// run (fed back through `Shared::seen`), not messages per flush.
    pub end_to_end: bool,
    pub client_prefix: String,
    /// Total publishers of the run (staggering of open-loop schedules).
    pub total_pubs: u64,
    /// session-churn: subscribers are persistent-session devices that go offline and back.
    pub churn: Option<ChurnCfg>,
    /// Subscribers keep a persistent session (3.1.1 Clean Session 0; MQTT 5 Clean Start 1 with
    /// Session Expiry Interval `session_expiry`), so a durable broker journals their QoS 1/2
    /// deliveries.
    pub persistent_subs: bool,
    /// MQTT 5 Session Expiry Interval (seconds) of persistent subscribers.
    pub session_expiry: u32,
    /// Publishers send each message to `<prefix><k>`, k a pseudo-random one of `count` topics
    /// (like session-churn), instead of their own topic.
    pub targets: Option<(String, u32)>,
    /// Connect over TLS with this configuration, asking for this server name.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// connect-storm --warm-up: a first round connects and disconnects every device.
    pub warm_up: bool,
    /// TLS sessions are resumed: each device keeps its own tickets.
    pub tls_resume: bool,
    /// MQTT over WebSocket at this request path (`--ws`).
    pub ws: Option<String>,
}

/// session-churn settings: `devices` subscribers `bench/churn/<i>` cycling per `plan`;
/// publishers send each message to a pseudo-random one of them.
#[derive(Clone, Copy, Debug)]
pub struct ChurnCfg {
    pub devices: u32,
    pub plan: ChurnPlan,
}

/// MQTT 5 Session Expiry Interval of churning devices (seconds).
pub const CHURN_SESSION_EXPIRY: u32 = 300;

/// Live numbers the coordinator reads for progress and the end of the drain.
#[derive(Default)]
#[repr(align(128))]
pub struct Live {
    pub up: AtomicU64,
    pub subs_up: AtomicU64,
    pub sent: AtomicU64,
    pub recv: AtomicU64,
    pub unique: AtomicU64,
    pub errors: AtomicU64,
    pub inflight: AtomicU64,
}

pub struct Shared {
    /// Executors that allocated their buffers (the RSS baseline is taken after this).
    pub inited: AtomicUsize,
    /// Set once the baseline is taken: executors may start connecting.
    pub start: AtomicBool,
    /// Executors done with their ramp-up.
    pub ready: AtomicUsize,
    /// Measurement start (CLOCK_MONOTONIC ns); 0 until the coordinator says go.
    pub go_ns: AtomicU64,
    /// Stop: disconnect and return.
    pub end: AtomicBool,
    pub live: Vec<Live>,
    pub first_error: Mutex<Option<String>>,
    /// With an end-to-end window: per publisher id, one past the highest sequence number a
    /// subscriber received.
    pub seen: Vec<AtomicU32>,
}

impl Shared {
    /// `n` executors; `publishers` counters of receipts (0 without an end-to-end window).
    pub fn new(n: usize, publishers: usize) -> Shared {
        Shared {
            inited: AtomicUsize::new(0),
            start: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            go_ns: AtomicU64::new(0),
            end: AtomicBool::new(false),
            live: (0..n).map(|_| Live::default()).collect(),
            first_error: Mutex::new(None),
            seen: (0..publishers).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

pub struct ExecResult {
    pub counters: Counters,
    pub latency: Histogram<u64>,
    /// Publisher side: PUBLISH (its stamped time: the intended time in open loop) to its
    /// PUBACK (QoS 1) or PUBREC (QoS 2), µs.
    pub puback: Histogram<u64>,
    pub connack: Histogram<u64>,
    /// session-churn: latency of deliveries published while the device was offline.
    pub queued: Histogram<u64>,
    /// session-churn: CONNACK latency of reconnects.
    pub reconnack: Histogram<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    TcpConnecting,
    WaitConnAck,
    WaitSubAck,
    Ready,
    Closing,
    Closed,
}

struct Dev {
    fd: i32,
    st: St,
    role: Role,
    last_tx_s: u32,
    /// Index into `pubs` / `subs`.
    role_idx: u32,
    t_connect_ns: u64,
    /// Partial frame left from the last read.
    rx: Vec<u8>,
    /// Bytes the kernel did not take yet (ciphertext with TLS).
    tx: Vec<u8>,
    /// The TLS session, with --tls.
    tls: Option<Box<rustls::ClientConnection>>,
    /// The WebSocket state, with --ws.
    ws: Option<Box<ws::WsClient>>,
}

struct PubSt {
    dev: u32,
    id: u32,
    seq: u32,
    inflight: u32,
    max_inflight: u32,
    sched: Option<Schedule>,
    /// In the open-loop timer heap.
    queued: bool,
    hdr: Vec<u8>,
    /// Offset of the packet id in `hdr` (QoS > 0).
    pid_off: Option<usize>,
    /// QoS > 0: (packet id, stamped send time) of the unacknowledged PUBLISHes, oldest first.
    unacked: VecDeque<(u16, u64)>,
    /// End-to-end window: sequence numbers below this count as done (released after a stall).
    e2e_floor: u32,
    /// End-to-end window: when it was first seen full without a receipt since (0: not full).
    e2e_full_since: u64,
}

struct SubSt {
    track: SeqTracker,
}

/// session-churn state of one device (indexed like `devs`).
#[derive(Clone, Copy, Default)]
struct ChurnDev {
    /// Meant to be online (connected or reconnecting).
    online: bool,
    /// The current connection attempt is a reconnect (not part of the ramp-up).
    reconnecting: bool,
    /// When the current connection's CONNECT went out: deliveries stamped earlier were
    /// queued by the broker while the device was offline.
    t_online_ns: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Phase {
    Ramp,
    WaitGo,
    Measure,
    Drain,
}

pub struct Exec {
    cfg: Arc<RunCfg>,
    idx: usize,
    shared: Arc<Shared>,
    ep: i32,
    specs: Vec<DevSpec>,
    devs: Vec<Dev>,
    pubs: Vec<PubSt>,
    subs: Vec<SubSt>,
    rbuf: BytesMut,
    /// Ciphertext as received (TLS).
    cbuf: Vec<u8>,
    /// WebSocket: frames to send, and what TLS decrypted before unframing.
    wsout: Vec<u8>,
    wsin: BytesMut,
    /// Ciphertext to send (TLS).
    wtls: Vec<u8>,
    wbuf: Vec<u8>,
    obuf: BytesMut,
    payload_tpl: Vec<u8>,
    ping: Vec<u8>,
    requeue: Vec<u32>,
    /// Open loop: (next intended send time, publisher index), earliest first.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    c: Counters,
    lat: Histogram<u64>,
    puback: Histogram<u64>,
    connack: Histogram<u64>,
    queued: Histogram<u64>,
    reconnack: Histogram<u64>,
    churn: Vec<ChurnDev>,
    /// session-churn: (next state check, device index), earliest first.
    churn_heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// session-churn publishers: PUBLISH header and packet id offset per device topic.
    topic_hdrs: Vec<(Vec<u8>, Option<usize>)>,
    disc: Vec<u8>,
    next_connect: usize,
    /// When connecting started (the second round's start after a warm-up).
    ramp_start_ns: u64,
    /// A warm-up round is still to be completed.
    warming: bool,
    /// Each device's own TLS settings, so that it keeps the tickets of its own sessions (a
    /// shared store keeps only a few per server name); made at its first connect.
    tls_dev: Vec<Option<Arc<rustls::ClientConfig>>>,
    pending_handshakes: usize,
    settled: usize,
    up: u64,
    subs_up: u64,
    inflight_total: u64,
    phase: Phase,
    t_start: u64,
    t_end: u64,
    now_s: u32,
    t0: u64,
}

fn qos_u8(q: QoS) -> u8 {
    q as u8
}

impl Exec {
    pub fn new(cfg: Arc<RunCfg>, idx: usize, shared: Arc<Shared>, specs: Vec<DevSpec>) -> Exec {
        let (ramp_start_ns, warming) = (cfg.ramp_start_ns, cfg.warm_up);
        // SAFETY: epoll_create1 has no preconditions.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1 failed");
        let mut payload_tpl = vec![0u8; cfg.payload.max(HEADER_LEN)];
        for (i, b) in payload_tpl[HEADER_LEN..].iter_mut().enumerate() {
            *b = b'a' + (i % 26) as u8;
        }
        let mut ping = BytesMut::new();
        encode(&Packet::PingReq, cfg.version, &mut ping).expect("encode PINGREQ");
        let mut disc = BytesMut::new();
        encode(&Packet::Disconnect(Box::default()), cfg.version, &mut disc)
            .expect("encode DISCONNECT");
        let c = Counters {
            devices: specs.len() as u64,
            ..Default::default()
        };
        let t0 = now_ns();
        Exec {
            devs: Vec::with_capacity(specs.len()),
            specs,
            cfg,
            idx,
            shared,
            ep,
            pubs: Vec::new(),
            subs: Vec::new(),
            rbuf: BytesMut::with_capacity(RBUF_CAP),
            cbuf: Vec::new(),
            wsout: Vec::new(),
            wsin: BytesMut::new(),
            wtls: Vec::new(),
            wbuf: Vec::with_capacity(256 * 1024),
            obuf: BytesMut::with_capacity(16 * 1024),
            payload_tpl,
            ping: ping.to_vec(),
            requeue: Vec::new(),
            heap: BinaryHeap::new(),
            c,
            lat: new_hist(),
            puback: new_hist(),
            connack: new_hist(),
            queued: new_hist(),
            reconnack: new_hist(),
            churn: Vec::new(),
            churn_heap: BinaryHeap::new(),
            topic_hdrs: Vec::new(),
            disc: disc.to_vec(),
            next_connect: 0,
            ramp_start_ns,
            warming,
            tls_dev: Vec::new(),
            pending_handshakes: 0,
            settled: 0,
            up: 0,
            subs_up: 0,
            inflight_total: 0,
            phase: Phase::Ramp,
            t_start: 0,
            t_end: 0,
            now_s: 0,
            t0,
        }
    }

    fn error(&mut self, msg: String) {
        self.c.errors += 1;
        let mut fe = self.shared.first_error.lock().unwrap();
        if fe.is_none() {
            *fe = Some(msg);
        }
    }

    pub fn run(mut self) -> ExecResult {
        // Touch the scratch buffers so they are part of the RSS baseline, not of "per device".
        self.rbuf.resize(RBUF_CAP, 0);
        self.rbuf.clear();
        self.wbuf.resize(self.wbuf.capacity(), 0);
        self.wbuf.clear();
        self.shared.inited.fetch_add(1, Relaxed);
        while !self.shared.start.load(Relaxed) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let mut events: Vec<libc::epoll_event> =
            vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut timeout_ns: u64 = 0;
        loop {
            self.poll(&mut events, timeout_ns);
            let now = now_ns();
            let s = ((now - self.t0) / 1_000_000_000) as u32;
            let second_tick = s != self.now_s;
            self.now_s = s;

            let (busy, next_due) = self.step(now);
            if self.phase >= Phase::WaitGo && self.shared.end.load(Relaxed) {
                break;
            }
            if second_tick && self.cfg.keep_alive > 0 {
                self.pings();
            }
            self.publish_live();
            timeout_ns = self.timeout(busy, next_due);
        }
        self.close_all();
        self.publish_live();
        // SAFETY: our epoll fd.
        unsafe { libc::close(self.ep) };
        ExecResult {
            counters: self.c,
            latency: self.lat,
            puback: self.puback,
            connack: self.connack,
            queued: self.queued,
            reconnack: self.reconnack,
        }
    }

    /// Advances the run's phase at `now`: connecting, waiting for the go, then publishing.
    /// Returns whether a publisher made progress (poll again at once) and, in open loop, when
    /// the next message is due.
    fn step(&mut self, now: u64) -> (bool, Option<u64>) {
        let mut busy = false;
        let mut next_due: Option<u64> = None;
        match self.phase {
            Phase::Ramp => {
                self.connect_more(now);
                if self.warming && self.settled == self.specs.len() {
                    self.warm_up_done(now);
                } else if self.settled == self.specs.len() || now >= self.cfg.ramp_deadline_ns {
                    self.abandon_handshakes();
                    if self.cfg.churn.is_none() {
                        self.specs = Vec::new();
                    }
                    self.phase = Phase::WaitGo;
                    self.shared.ready.fetch_add(1, Relaxed);
                }
            }
            Phase::WaitGo => {
                let go = self.shared.go_ns.load(Relaxed);
                if go != 0 && now >= go {
                    self.t_start = go;
                    self.t_end = go + self.cfg.duration_ns;
                    self.phase = Phase::Measure;
                    self.init_schedules();
                    self.init_churn();
                }
            }
            Phase::Measure | Phase::Drain => {
                if self.phase == Phase::Measure && now >= self.t_end {
                    self.phase = Phase::Drain;
                    self.churn_all_online(now);
                }
                if self.phase == Phase::Measure {
                    self.churn_step(now);
                }
                if self.cfg.rate > 0.0 {
                    // Keeps going in the drain for messages intended before the end
                    // that a blocked connection could not take yet.
                    next_due = self.publish_open(now);
                } else {
                    busy = self.publish_closed(now);
                }
            }
        }
        (busy, next_due)
    }

    /// How long the loop may sleep: not at all while a publisher makes progress or reads
    /// were cut short, 1 ms while connecting, else until the next open-loop message (10 ms
    /// at most, so the end of the run and keep-alive are noticed).
    fn timeout(&self, busy: bool, next_due: Option<u64>) -> u64 {
        if busy || !self.requeue.is_empty() {
            0
        } else if self.phase == Phase::Ramp || self.phase == Phase::WaitGo {
            1_000_000
        } else {
            // An end-to-end window waits for receipts that another executor may take.
            let most = if self.cfg.end_to_end {
                1_000_000
            } else {
                10_000_000
            };
            match next_due {
                Some(t) => t.saturating_sub(now_ns()).min(most),
                None => most,
            }
        }
    }

    fn publish_live(&self) {
        let l = &self.shared.live[self.idx];
        l.up.store(self.up, Relaxed);
        l.subs_up.store(self.subs_up, Relaxed);
        l.sent.store(self.c.sent, Relaxed);
        l.recv.store(self.c.received, Relaxed);
        l.unique.store(self.c.unique, Relaxed);
        l.errors.store(self.c.errors, Relaxed);
        l.inflight.store(self.inflight_total, Relaxed);
    }
}
