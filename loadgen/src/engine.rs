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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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
}

impl Shared {
    pub fn new(n: usize) -> Shared {
        Shared {
            inited: AtomicUsize::new(0),
            start: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            go_ns: AtomicU64::new(0),
            end: AtomicBool::new(false),
            live: (0..n).map(|_| Live::default()).collect(),
            first_error: Mutex::new(None),
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
    /// Bytes the kernel did not take yet.
    tx: Vec<u8>,
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
            let ts = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: events buffer is valid for its length; null sigmask.
            let n = unsafe {
                libc::epoll_pwait2(
                    self.ep,
                    events.as_mut_ptr(),
                    events.len() as i32,
                    &ts,
                    std::ptr::null(),
                )
            };
            let mut now = now_ns();
            for ev in events.iter().take(n.max(0) as usize) {
                let (flags, i) = (ev.events, ev.u64 as usize);
                self.on_event(i, flags, now);
            }
            if !self.requeue.is_empty() {
                let rq = std::mem::take(&mut self.requeue);
                for &i in &rq {
                    self.on_readable(i as usize);
                }
            }
            now = now_ns();
            let s = ((now - self.t0) / 1_000_000_000) as u32;
            let second_tick = s != self.now_s;
            self.now_s = s;

            let mut busy = false;
            let mut next_due: Option<u64> = None;
            match self.phase {
                Phase::Ramp => {
                    self.connect_more(now);
                    if self.settled == self.specs.len() || now >= self.cfg.ramp_deadline_ns {
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
            if self.phase >= Phase::WaitGo && self.shared.end.load(Relaxed) {
                break;
            }
            if second_tick && self.cfg.keep_alive > 0 {
                self.pings();
            }
            self.publish_live();
            timeout_ns = if busy || !self.requeue.is_empty() {
                0
            } else if self.phase == Phase::Ramp || self.phase == Phase::WaitGo {
                1_000_000
            } else {
                let now = now_ns();
                match next_due {
                    Some(t) => t.saturating_sub(now).min(10_000_000),
                    None => 10_000_000,
                }
            };
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

    // ---------------------------------------------------------------- connecting

    fn connect_more(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.cfg.ramp_start_ns) as f64 / 1e9;
        let allowed = (elapsed * self.cfg.connect_rate) as usize + 1;
        while self.next_connect < self.specs.len()
            && self.next_connect < allowed
            && self.pending_handshakes < MAX_PENDING_HANDSHAKES
        {
            let i = self.next_connect;
            self.next_connect += 1;
            self.start_connect(i, now);
        }
    }

    /// Starts a non-blocking connect for device `i` (from its source address, if any) and
    /// registers the socket with this loop's epoll under the device's index.
    fn open_socket(&self, i: usize) -> std::io::Result<i32> {
        let source = self
            .cfg
            .source_ips
            .map(|(start, count)| Ipv4Addr::from(start + self.specs[i].global % count));
        let fd = sys::start_connect(self.cfg.addr, source)?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        // SAFETY: valid fds and event.
        unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        Ok(fd)
    }

    fn start_connect(&mut self, i: usize, now: u64) {
        if self.c.first_attempt_ns == 0 {
            self.c.first_attempt_ns = now;
        }
        let role = self.specs[i].role;
        let mut dev = Dev {
            fd: -1,
            st: St::Closed,
            role,
            last_tx_s: self.now_s,
            role_idx: u32::MAX,
            t_connect_ns: now,
            rx: Vec::new(),
            tx: Vec::new(),
        };
        debug_assert_eq!(self.devs.len(), i);
        if self.cfg.churn.is_some() {
            self.churn.push(ChurnDev {
                online: true,
                ..Default::default()
            });
        }
        match self.open_socket(i) {
            Ok(fd) => {
                dev.fd = fd;
                dev.st = St::TcpConnecting;
                self.devs.push(dev);
                self.pending_handshakes += 1;
            }
            Err(e) => {
                self.devs.push(dev);
                self.settled += 1;
                self.error(format!("connect to {}: {e}", self.cfg.addr));
            }
        }
    }

    fn abandon_handshakes(&mut self) {
        for i in 0..self.devs.len() {
            if matches!(
                self.devs[i].st,
                St::TcpConnecting | St::WaitConnAck | St::WaitSubAck
            ) {
                self.fail(
                    i,
                    "ramp-up time limit reached before the device was ready".into(),
                );
            }
        }
        let never = self.specs.len().saturating_sub(self.devs.len());
        if never > 0 {
            self.c.errors += never as u64;
            let msg = format!("{never} devices not even attempted within the ramp-up limit (raise --ramp-up or --connect-rate)");
            self.error(msg);
            self.c.errors -= 1;
        }
    }

    fn fail(&mut self, i: usize, msg: String) {
        let d = &mut self.devs[i];
        let prev = d.st;
        if matches!(prev, St::Closed) {
            return;
        }
        if d.fd >= 0 {
            // SAFETY: our fd; closing removes it from the epoll set.
            unsafe { libc::close(d.fd) };
        }
        d.fd = -1;
        d.st = St::Closed;
        d.rx = Vec::new();
        d.tx = Vec::new();
        match prev {
            St::TcpConnecting | St::WaitConnAck | St::WaitSubAck => match self.churn.get_mut(i) {
                Some(c) if c.reconnecting => c.reconnecting = false,
                _ => {
                    self.pending_handshakes -= 1;
                    self.settled += 1;
                }
            },
            St::Ready => {
                self.up -= 1;
                if d.role == Role::Sub {
                    self.subs_up -= 1;
                }
            }
            _ => {}
        }
        if prev != St::Closing {
            self.error(msg);
        }
    }

    fn send_connect(&mut self, i: usize, now: u64) {
        let global = self.specs[i].global;
        let persistent = self.cfg.persistent_subs && self.specs[i].role == Role::Sub;
        let props = Properties {
            // Large enough for any window, so the broker does not hold back deliveries.
            receive_maximum: if self.cfg.version.is_v5() {
                Some(65535)
            } else {
                None
            },
            session_expiry_interval: if !self.cfg.version.is_v5() {
                None
            } else if self.cfg.churn.is_some() {
                Some(CHURN_SESSION_EXPIRY)
            } else if persistent {
                Some(self.cfg.session_expiry)
            } else {
                None
            },
            ..Default::default()
        };
        // session-churn keeps sessions: MQTT 5 starts clean once, 3.1.1 never is clean.
        let clean_start = match self.churn.get(i) {
            Some(c) => self.cfg.version.is_v5() && !c.reconnecting,
            // MQTT 5: a fresh session that outlives the connection (Session Expiry > 0).
            None if persistent => self.cfg.version.is_v5(),
            None => true,
        };
        let c = Connect {
            protocol: self.cfg.version,
            clean_start,
            keep_alive: self.cfg.keep_alive,
            client_id: ByteStr::from(format!("{}{}", self.cfg.client_prefix, global)),
            will: None,
            username: None,
            password: None,
            properties: props,
        };
        let mut b = BytesMut::new();
        encode(&Packet::Connect(Box::new(c)), self.cfg.version, &mut b).expect("encode CONNECT");
        self.devs[i].st = St::WaitConnAck;
        self.devs[i].t_connect_ns = now;
        self.send(i, &b);
    }

    fn on_connack(&mut self, i: usize, ack: &ringmq_codec::ConnAck, now: u64) {
        if self.devs[i].st != St::WaitConnAck {
            return self.fail(i, "unexpected CONNACK".into());
        }
        if ack.reason.is_error() {
            return self.fail(i, format!("CONNACK refused: {:?}", ack.reason));
        }
        let us = now.saturating_sub(self.devs[i].t_connect_ns) / 1000;
        if let Some(c) = self.churn.get_mut(i) {
            c.t_online_ns = self.devs[i].t_connect_ns;
            if c.reconnecting {
                c.reconnecting = false;
                self.reconnack.saturating_record(us.max(1));
                if self.phase == Phase::Measure {
                    // The drain's final reconnects are not churn.
                    self.c.reconnects += 1;
                }
                if !ack.session_present {
                    self.c.session_lost += 1;
                    self.error("CONNACK of a reconnect without session present".into());
                }
                let d = &mut self.devs[i];
                d.st = St::Ready;
                self.up += 1;
                if d.role == Role::Sub {
                    self.subs_up += 1;
                }
                return;
            }
        }
        self.connack.saturating_record(us.max(1));
        let spec = &self.specs[i];
        match spec.role {
            Role::Sub => {
                let s = Subscribe {
                    packet_id: NonZeroU16::new(1).unwrap(),
                    filters: vec![SubscribeFilter {
                        filter: ByteStr::from(spec.topic.as_str()),
                        options: SubscriptionOptions {
                            qos: self.cfg.qos,
                            ..Default::default()
                        },
                    }],
                    properties: Properties::default(),
                };
                let mut b = BytesMut::new();
                encode(&Packet::Subscribe(Box::new(s)), self.cfg.version, &mut b)
                    .expect("encode SUBSCRIBE");
                self.devs[i].role_idx = self.subs.len() as u32;
                self.subs.push(SubSt {
                    track: SeqTracker::new(spec.pub_base, spec.pub_count),
                });
                self.devs[i].st = St::WaitSubAck;
                self.send(i, &b);
            }
            Role::Pub => {
                let recv_max = ack.properties.receive_maximum.unwrap_or(u16::MAX) as u32;
                let targets = match (&self.cfg.churn, &self.cfg.targets) {
                    (Some(ch), _) => Some(("bench/churn/".to_string(), ch.devices)),
                    (None, Some((prefix, n))) => Some((prefix.clone(), *n)),
                    (None, None) => None,
                };
                if let (Some((prefix, n)), true) = (targets, self.topic_hdrs.is_empty()) {
                    self.topic_hdrs = (0..n)
                        .map(|d| {
                            publish_header(
                                &format!("{prefix}{d}"),
                                self.cfg.qos,
                                self.cfg.version,
                                self.payload_tpl.len(),
                            )
                        })
                        .collect();
                }
                let (hdr, pid_off) = publish_header(
                    &spec.topic,
                    self.cfg.qos,
                    self.cfg.version,
                    self.payload_tpl.len(),
                );
                let max_inflight = if self.cfg.qos == QoS::AtMostOnce {
                    u32::MAX
                } else if self.cfg.rate == 0.0 {
                    self.cfg.window.max(1).min(recv_max)
                } else {
                    recv_max.min(65000)
                };
                self.devs[i].role_idx = self.pubs.len() as u32;
                self.pubs.push(PubSt {
                    dev: i as u32,
                    id: spec.id,
                    seq: 0,
                    inflight: 0,
                    max_inflight,
                    sched: None,
                    queued: false,
                    hdr,
                    pid_off,
                    unacked: VecDeque::new(),
                });
                self.ready(i, now);
            }
            Role::Plain => self.ready(i, now),
        }
    }

    fn ready(&mut self, i: usize, now: u64) {
        let d = &mut self.devs[i];
        d.st = St::Ready;
        self.pending_handshakes -= 1;
        self.settled += 1;
        self.up += 1;
        self.c.connected += 1;
        match d.role {
            Role::Sub => {
                self.subs_up += 1;
                self.c.subs_connected += 1;
            }
            Role::Pub => self.c.pubs_connected += 1,
            Role::Plain => {}
        }
        self.c.last_ready_ns = now;
    }

    fn init_schedules(&mut self) {
        if self.cfg.rate > 0.0 {
            for (pi, p) in self.pubs.iter_mut().enumerate() {
                let s = Schedule::new(
                    self.t_start,
                    self.cfg.rate,
                    p.id as u64,
                    self.cfg.total_pubs,
                );
                p.sched = Some(s);
                p.queued = true;
                self.heap.push(Reverse((s.intended(0), pi as u32)));
            }
        }
    }

    /// Open loop: a publisher that was blocked (unsent bytes, full window) can send again.
    fn unblock(&mut self, pi: usize) {
        let p = &mut self.pubs[pi];
        if let Some(s) = p.sched {
            if !p.queued && self.phase >= Phase::Measure {
                let t = s.intended(p.seq as u64);
                if t < self.t_end {
                    p.queued = true;
                    self.heap.push(Reverse((t, pi as u32)));
                }
            }
        }
    }

    // ---------------------------------------------------------------- I/O

    fn on_event(&mut self, i: usize, flags: u32, now: u64) {
        let st = self.devs[i].st;
        match st {
            St::Closed => {}
            St::TcpConnecting => {
                let errbits = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
                if flags & (libc::EPOLLOUT as u32 | errbits) != 0 {
                    let e = sys::so_error(self.devs[i].fd);
                    if e != 0 || flags & errbits != 0 {
                        let e = if e == 0 { libc::ECONNREFUSED } else { e };
                        self.fail(
                            i,
                            format!("connect to {}: {}", self.cfg.addr, sys::strerror(e)),
                        );
                        return;
                    }
                    self.send_connect(i, now);
                }
            }
            _ => {
                if flags & libc::EPOLLOUT as u32 != 0 && !self.devs[i].tx.is_empty() {
                    self.flush(i);
                }
                if flags
                    & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                    != 0
                {
                    self.on_readable(i);
                }
            }
        }
    }

    /// Sends `data` now if nothing is queued, keeps what the kernel did not take.
    fn send(&mut self, i: usize, data: &[u8]) {
        let d = &mut self.devs[i];
        if d.fd < 0 || data.is_empty() {
            return;
        }
        d.last_tx_s = self.now_s;
        if !d.tx.is_empty() {
            d.tx.extend_from_slice(data);
            return;
        }
        match raw_send(d.fd, data) {
            Ok(n) if n == data.len() => {}
            Ok(n) => d.tx.extend_from_slice(&data[n..]),
            Err(e) => self.fail(i, format!("send: {}", sys::strerror(e))),
        }
    }

    fn flush(&mut self, i: usize) {
        let d = &mut self.devs[i];
        match raw_send(d.fd, &d.tx) {
            Ok(n) if n == d.tx.len() => {
                d.tx = Vec::new();
                if d.role == Role::Pub && d.role_idx != u32::MAX {
                    let pi = d.role_idx as usize;
                    self.unblock(pi);
                }
            }
            Ok(n) => {
                d.tx.drain(..n);
            }
            Err(e) => self.fail(i, format!("send: {}", sys::strerror(e))),
        }
    }

    fn on_readable(&mut self, i: usize) {
        if self.devs[i].fd < 0 {
            return;
        }
        let mut rbuf = std::mem::take(&mut self.rbuf);
        rbuf.clear();
        if !self.devs[i].rx.is_empty() {
            rbuf.extend_from_slice(&self.devs[i].rx);
            self.devs[i].rx = Vec::new();
        }
        let mut rounds = 0;
        let mut failure: Option<String> = None;
        let closing = self.devs[i].st == St::Closing;
        loop {
            rbuf.reserve(READ_CHUNK);
            let spare = rbuf.spare_capacity_mut();
            let want = spare.len();
            // SAFETY: writing into the spare capacity of rbuf; length set only to what recv wrote.
            let n = unsafe {
                libc::recv(
                    self.devs[i].fd,
                    spare.as_mut_ptr() as *mut libc::c_void,
                    want,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let n = n as usize;
                // SAFETY: recv initialized n bytes.
                unsafe { rbuf.set_len(rbuf.len() + n) };
                if closing {
                    rbuf.clear();
                } else if let Err(e) = self.process(i, &mut rbuf, now_ns()) {
                    failure = Some(e);
                    break;
                }
                if self.devs[i].fd < 0 {
                    break;
                }
                if n < want {
                    break;
                }
                rounds += 1;
                if rounds >= MAX_READ_ROUNDS {
                    self.requeue.push(i as u32);
                    break;
                }
            } else if n == 0 {
                if closing {
                    // SAFETY: our fd.
                    unsafe { libc::close(self.devs[i].fd) };
                    self.devs[i].fd = -1;
                    self.devs[i].st = St::Closed;
                } else {
                    failure = Some("connection closed by the broker".into());
                }
                break;
            } else {
                let e = sys::errno();
                if e == libc::EINTR {
                    continue;
                }
                if e != libc::EAGAIN {
                    failure = Some(format!("recv: {}", sys::strerror(e)));
                }
                break;
            }
        }
        if !self.obuf.is_empty() {
            let ob = std::mem::take(&mut self.obuf);
            self.send(i, &ob);
            self.obuf = ob;
            self.obuf.clear();
        }
        if let Some(msg) = failure {
            self.fail(i, msg);
        } else if !rbuf.is_empty() && self.devs[i].fd >= 0 {
            self.devs[i].rx = rbuf.to_vec();
        }
        rbuf.clear();
        self.rbuf = rbuf;
    }

    fn process(&mut self, i: usize, rbuf: &mut BytesMut, now: u64) -> Result<(), String> {
        loop {
            match decode_packet(rbuf, self.cfg.version, MAX_PACKET) {
                Ok(Some(p)) => self.on_packet(i, p, now)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("decode: {e}")),
            }
            if self.devs[i].fd < 0 {
                return Ok(());
            }
        }
    }

    fn on_packet(&mut self, i: usize, p: Packet, now: u64) -> Result<(), String> {
        let v = self.cfg.version;
        match p {
            Packet::Publish(p) => {
                let d = &self.devs[i];
                if d.role == Role::Sub && d.role_idx != u32::MAX {
                    let h = crate::payload::read_header(&p.payload);
                    match h {
                        // Sent before this run started: left over from an earlier run.
                        Some(h) if h.ts_ns < self.cfg.ramp_start_ns => self.c.stale += 1,
                        _ => {
                            self.c.received += 1;
                            if self.phase == Phase::Measure && now < self.t_end {
                                self.c.received_in_window += 1;
                            }
                            if let Some(h) = h {
                                let us = now.saturating_sub(h.ts_ns) / 1000;
                                match self.churn.get(i) {
                                    Some(c) if h.ts_ns < c.t_online_ns => {
                                        self.c.queued += 1;
                                        self.queued.saturating_record(us);
                                    }
                                    _ => self.lat.saturating_record(us),
                                }
                                let sub = &mut self.subs[d.role_idx as usize];
                                match sub.track.record(h.pub_id, h.seq) {
                                    Seen::New => self.c.unique += 1,
                                    Seen::Duplicate => self.c.duplicates += 1,
                                    Seen::Foreign => {}
                                }
                            }
                        }
                    }
                }
                if let Some(id) = p.packet_id {
                    let ack = match p.qos {
                        QoS::ExactlyOnce => Packet::PubRec(PubResp::new(id)),
                        _ => Packet::PubAck(PubResp::new(id)),
                    };
                    encode(&ack, v, &mut self.obuf).map_err(|e| e.to_string())?;
                }
            }
            Packet::PubAck(r) => {
                self.ack_latency(i, r.packet_id.get(), now);
                self.acked(i)
            }
            Packet::PubComp(_) => self.acked(i),
            Packet::PubRec(r) => {
                self.ack_latency(i, r.packet_id.get(), now);
                if r.reason.is_error() {
                    self.acked(i);
                } else {
                    encode(
                        &Packet::PubRel(PubResp::new(r.packet_id)),
                        v,
                        &mut self.obuf,
                    )
                    .map_err(|e| e.to_string())?;
                }
            }
            Packet::PubRel(r) => {
                encode(
                    &Packet::PubComp(PubResp::new(r.packet_id)),
                    v,
                    &mut self.obuf,
                )
                .map_err(|e| e.to_string())?;
            }
            Packet::ConnAck(a) => self.on_connack(i, &a, now),
            Packet::SubAck(a) => {
                if self.devs[i].st != St::WaitSubAck {
                    return Err("unexpected SUBACK".into());
                }
                if let Some(rc) = a.reason_codes.iter().find(|r| r.is_error()) {
                    return Err(format!("SUBSCRIBE refused: {rc:?}"));
                }
                self.ready(i, now);
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                return Err(format!("DISCONNECT from the broker: {:?}", d.reason));
            }
            other => return Err(format!("unexpected packet type {}", other.packet_type())),
        }
        Ok(())
    }

    /// Publisher side: records PUBLISH-to-PUBACK (QoS 1) / PUBLISH-to-PUBREC (QoS 2) latency
    /// from the time stamped into the PUBLISH (the intended send time in open loop).
    fn ack_latency(&mut self, i: usize, pid: u16, now: u64) {
        let d = &self.devs[i];
        if d.role != Role::Pub || d.role_idx == u32::MAX {
            return;
        }
        let p = &mut self.pubs[d.role_idx as usize];
        if let Some(ts) = take_unacked(&mut p.unacked, pid) {
            self.puback
                .saturating_record((now.saturating_sub(ts) / 1000).max(1));
            self.c.acked += 1;
            if self.phase == Phase::Measure && now < self.t_end {
                self.c.acked_in_window += 1;
            }
        }
    }

    fn acked(&mut self, i: usize) {
        let d = &self.devs[i];
        if d.role == Role::Pub && d.role_idx != u32::MAX {
            let pi = d.role_idx as usize;
            let p = &mut self.pubs[pi];
            if p.inflight > 0 {
                let was_full = p.inflight >= p.max_inflight;
                p.inflight -= 1;
                self.inflight_total -= 1;
                if was_full {
                    self.unblock(pi);
                }
            }
        }
    }

    // ---------------------------------------------------------------- publishing

    /// Closed loop: one pass over the publishers. Returns true if one made progress (so the
    /// loop polls again without sleeping).
    fn publish_closed(&mut self, now: u64) -> bool {
        if now >= self.t_end {
            return false;
        }
        let mut progress = false;
        let mut wbuf = std::mem::take(&mut self.wbuf);
        let w = if self.cfg.qos == QoS::AtMostOnce {
            self.cfg.window.max(1) as u64
        } else {
            MAX_BATCH
        };
        for pi in 0..self.pubs.len() {
            let di = self.pubs[pi].dev as usize;
            let d = &self.devs[di];
            if d.st != St::Ready || !d.tx.is_empty() {
                continue;
            }
            wbuf.clear();
            let p = &mut self.pubs[pi];
            let mut n = 0u64;
            while n < w && p.inflight < p.max_inflight {
                append_publish(&mut wbuf, p, &self.topic_hdrs, &self.payload_tpl, now);
                n += 1;
            }
            if n > 0 {
                self.sent_n(di, n, &wbuf);
                progress = true;
            }
        }
        self.wbuf = wbuf;
        progress
    }

    fn sent_n(&mut self, di: usize, n: u64, data: &[u8]) {
        if self.cfg.qos != QoS::AtMostOnce {
            self.inflight_total += n;
        }
        self.c.sent += n;
        self.send(di, data);
    }

    /// Open loop: sends every message intended by `now` (each stamped with its intended time),
    /// publisher by publisher from the timer heap. Returns when the next one is due.
    fn publish_open(&mut self, now: u64) -> Option<u64> {
        let mut wbuf = std::mem::take(&mut self.wbuf);
        let end = self.t_end;
        let mut budget = 64 * 1024u64;
        while let Some(&Reverse((t, pi))) = self.heap.peek() {
            if t > now || budget == 0 {
                break;
            }
            self.heap.pop();
            let pi = pi as usize;
            self.pubs[pi].queued = false;
            let di = self.pubs[pi].dev as usize;
            let d = &self.devs[di];
            if d.st != St::Ready || !d.tx.is_empty() {
                // Re-queued by `unblock` once its bytes are out.
                continue;
            }
            wbuf.clear();
            let p = &mut self.pubs[pi];
            let s = p.sched.expect("open loop");
            let mut n = 0u64;
            let mut next = s.intended(p.seq as u64);
            while n < MAX_BATCH && p.inflight < p.max_inflight && next <= now && next < end {
                append_publish(&mut wbuf, p, &self.topic_hdrs, &self.payload_tpl, next);
                n += 1;
                next = s.intended(p.seq as u64);
            }
            let window_open = p.inflight < p.max_inflight;
            if n > 0 {
                budget = budget.saturating_sub(n);
                self.sent_n(di, n, &wbuf);
            }
            if next < end && window_open && self.devs[di].tx.is_empty() && self.devs[di].fd >= 0 {
                self.pubs[pi].queued = true;
                self.heap.push(Reverse((next, pi as u32)));
            }
        }
        self.wbuf = wbuf;
        self.heap.peek().map(|r| r.0 .0)
    }

    // ---------------------------------------------------------------- session churn

    fn init_churn(&mut self) {
        if self.cfg.churn.is_none() {
            return;
        }
        for i in 0..self.devs.len() {
            if self.devs[i].role == Role::Sub {
                self.churn_heap.push(Reverse((self.t_start, i as u32)));
            }
        }
    }

    /// Takes every device whose time has come offline or back online.
    fn churn_step(&mut self, now: u64) {
        let Some(ch) = self.cfg.churn else { return };
        while let Some(&Reverse((t, i))) = self.churn_heap.peek() {
            if t > now {
                break;
            }
            self.churn_heap.pop();
            let i = i as usize;
            let global = self.specs[i].global as u64;
            let (want_on, next_rel) =
                ch.plan
                    .state_at(now - self.t_start, global, ch.devices as u64);
            let mut next = self.t_start + next_rel;
            if want_on && !self.churn[i].online {
                self.churn_online(i, now);
            } else if !want_on && self.churn[i].online {
                if self.devs[i].st == St::Ready {
                    self.churn_offline(i);
                } else if self.devs[i].st == St::Closed {
                    // Lost its connection (counted as an error); back at the next online time.
                    self.churn[i].online = false;
                } else {
                    // Still (re)connecting: try again shortly.
                    next = now + 10_000_000;
                }
            }
            self.churn_heap.push(Reverse((next, i as u32)));
        }
    }

    /// A clean DISCONNECT; the broker keeps the session and queues for the device.
    fn churn_offline(&mut self, i: usize) {
        self.churn[i].online = false;
        let disc = std::mem::take(&mut self.disc);
        self.send(i, &disc);
        self.disc = disc;
        let d = &mut self.devs[i];
        if d.fd < 0 {
            return;
        }
        if !d.tx.is_empty() {
            let _ = raw_send(d.fd, &d.tx);
        }
        // SAFETY: our fd.
        unsafe { libc::shutdown(d.fd, libc::SHUT_WR) };
        d.st = St::Closing;
        d.tx = Vec::new();
        d.rx = Vec::new();
        self.up -= 1;
        if d.role == Role::Sub {
            self.subs_up -= 1;
        }
    }

    /// Reconnects with the session kept (clean session 0 / clean start 0).
    fn churn_online(&mut self, i: usize, now: u64) {
        self.churn[i].online = true;
        let d = &mut self.devs[i];
        if d.st == St::Closing {
            // The broker did not close yet: the DISCONNECT went out, so this is still clean.
            if d.fd >= 0 {
                // SAFETY: our fd.
                unsafe { libc::close(d.fd) };
            }
            d.fd = -1;
            d.st = St::Closed;
        }
        if d.st != St::Closed {
            return;
        }
        match self.open_socket(i) {
            Ok(fd) => {
                let d = &mut self.devs[i];
                d.fd = fd;
                d.st = St::TcpConnecting;
                d.t_connect_ns = now;
                d.last_tx_s = self.now_s;
                self.churn[i].reconnecting = true;
            }
            Err(e) => self.error(format!("reconnect to {}: {e}", self.cfg.addr)),
        }
    }

    /// End of the window: every device comes back (and stays) online, so the broker can
    /// deliver what it queued during the drain.
    fn churn_all_online(&mut self, now: u64) {
        if self.cfg.churn.is_none() {
            return;
        }
        self.churn_heap.clear();
        for i in 0..self.devs.len() {
            if self.devs[i].role == Role::Sub && !self.churn[i].online {
                self.churn_online(i, now);
            }
        }
    }

    fn pings(&mut self) {
        let ka = self.cfg.keep_alive as u32;
        let idle = (ka * 3 / 4).max(1);
        let ping = std::mem::take(&mut self.ping);
        for i in 0..self.devs.len() {
            let d = &self.devs[i];
            if d.st == St::Ready && self.now_s.saturating_sub(d.last_tx_s) >= idle {
                self.send(i, &ping);
            }
        }
        self.ping = ping;
    }

    // ---------------------------------------------------------------- shutdown

    fn close_all(&mut self) {
        let mut disc = BytesMut::new();
        encode(
            &Packet::Disconnect(Box::default()),
            self.cfg.version,
            &mut disc,
        )
        .expect("encode DISCONNECT");
        let mut open = 0usize;
        for i in 0..self.devs.len() {
            match self.devs[i].st {
                St::Ready => {
                    self.send(i, &disc);
                    let d = &mut self.devs[i];
                    if d.fd >= 0 {
                        if !d.tx.is_empty() {
                            let _ = raw_send(d.fd, &d.tx);
                        }
                        // SAFETY: our fd.
                        unsafe { libc::shutdown(d.fd, libc::SHUT_WR) };
                        d.st = St::Closing;
                        d.tx = Vec::new();
                        self.up -= 1;
                        if d.role == Role::Sub {
                            self.subs_up -= 1;
                        }
                        open += 1;
                    }
                }
                St::Closed | St::Closing => {}
                _ => {
                    let d = &mut self.devs[i];
                    // SAFETY: our fd.
                    unsafe { libc::close(d.fd) };
                    d.fd = -1;
                    d.st = St::Closed;
                }
            }
        }
        // Wait (bounded) for the broker to close each connection, so it sees a clean
        // DISCONNECT rather than a reset.
        let deadline = now_ns() + 1_000_000_000;
        let mut events: Vec<libc::epoll_event> =
            vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        while open > 0 && now_ns() < deadline {
            // SAFETY: valid buffer.
            let n =
                unsafe { libc::epoll_wait(self.ep, events.as_mut_ptr(), events.len() as i32, 10) };
            for ev in events.iter().take(n.max(0) as usize) {
                let i = ev.u64 as usize;
                if self.devs[i].st == St::Closing {
                    self.on_readable(i);
                    if self.devs[i].st != St::Closing {
                        open -= 1;
                    }
                }
            }
        }
        for d in &mut self.devs {
            if d.fd >= 0 {
                // SAFETY: our fd.
                unsafe { libc::close(d.fd) };
                d.fd = -1;
                d.st = St::Closed;
            }
        }
    }
}

fn raw_send(fd: i32, data: &[u8]) -> Result<usize, i32> {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: valid slice.
        let n = unsafe {
            libc::send(
                fd,
                data[off..].as_ptr() as *const libc::c_void,
                data.len() - off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            off += n as usize;
        } else {
            let e = sys::errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                break;
            }
            return Err(e);
        }
    }
    Ok(off)
}

/// Appends the next PUBLISH of `p`: to its own topic, or with `topic_hdrs` (session-churn) to
/// the device topic `churn::target` picks.
#[inline]
fn append_publish(
    wbuf: &mut Vec<u8>,
    p: &mut PubSt,
    topic_hdrs: &[(Vec<u8>, Option<usize>)],
    tpl: &[u8],
    ts: u64,
) {
    let start = wbuf.len();
    let (hdr, pid_off) = if topic_hdrs.is_empty() {
        (&p.hdr[..], p.pid_off)
    } else {
        let (h, o) = &topic_hdrs[churn::target(p.id, p.seq, topic_hdrs.len() as u32) as usize];
        (&h[..], *o)
    };
    wbuf.extend_from_slice(hdr);
    if let Some(off) = pid_off {
        let pid = (p.seq % 65535) as u16 + 1;
        wbuf[start + off..start + off + 2].copy_from_slice(&pid.to_be_bytes());
        p.inflight += 1;
        p.unacked.push_back((pid, ts));
    }
    let ps = wbuf.len();
    wbuf.extend_from_slice(tpl);
    write_header(
        &mut wbuf[ps..ps + HEADER_LEN],
        Header {
            ts_ns: ts,
            pub_id: p.id,
            seq: p.seq,
        },
    );
    p.seq = p.seq.wrapping_add(1);
}

/// Removes packet id `pid` from the unacknowledged PUBLISHes and returns its send time.
/// Brokers acknowledge in order, so this is nearly always the front entry.
#[inline]
fn take_unacked(q: &mut VecDeque<(u16, u64)>, pid: u16) -> Option<u64> {
    if q.front().map(|e| e.0) == Some(pid) {
        return q.pop_front().map(|e| e.1);
    }
    let k = q.iter().position(|e| e.0 == pid)?;
    q.remove(k).map(|e| e.1)
}

/// The PUBLISH fixed + variable header for `topic` (encoded once per publisher by the codec)
/// and where its packet id sits, found by encoding with two different ids.
pub fn publish_header(
    topic: &str,
    qos: QoS,
    v: ProtocolVersion,
    payload_len: usize,
) -> (Vec<u8>, Option<usize>) {
    let payload = Bytes::from(vec![0u8; payload_len]);
    let mk = |pid: u16| Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: if qos_u8(qos) > 0 {
            NonZeroU16::new(pid)
        } else {
            None
        },
        payload: payload.clone(),
        properties: None,
    };
    let mut a = BytesMut::new();
    encode_publish_header(&mk(0x0101), v, &mut a).expect("encode PUBLISH header");
    if qos == QoS::AtMostOnce {
        return (a.to_vec(), None);
    }
    let mut b = BytesMut::new();
    encode_publish_header(&mk(0x0202), v, &mut b).expect("encode PUBLISH header");
    let off = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .expect("packet id position");
    (a.to_vec(), Some(off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_codec::decode_packet;

    #[test]
    fn publish_header_patch_decodes() {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let tpl = vec![7u8; 64];
                let (hdr, pid_off) = publish_header("bench/fanin/42", qos, v, tpl.len());
                let mut p = PubSt {
                    dev: 0,
                    id: 42,
                    seq: 65534,
                    inflight: 0,
                    max_inflight: 10,
                    sched: None,
                    queued: false,
                    hdr,
                    pid_off,
                    unacked: VecDeque::new(),
                };
                let mut w = Vec::new();
                append_publish(&mut w, &mut p, &[], &tpl, 123_456_789);
                append_publish(&mut w, &mut p, &[], &tpl, 123_456_790);
                if qos == QoS::AtMostOnce {
                    assert!(p.unacked.is_empty());
                } else {
                    let v: Vec<_> = p.unacked.iter().copied().collect();
                    assert_eq!(v, vec![(65535, 123_456_789), (1, 123_456_790)]);
                }
                let mut buf = BytesMut::from(&w[..]);
                for (k, expect_pid) in [(0u32, 65535u16), (1, 1)] {
                    let Packet::Publish(pb) = decode_packet(&mut buf, v, 1 << 20).unwrap().unwrap()
                    else {
                        panic!("not a publish")
                    };
                    assert_eq!(pb.topic.as_str(), "bench/fanin/42");
                    assert_eq!(pb.qos, qos);
                    assert_eq!(pb.payload.len(), 64);
                    if qos != QoS::AtMostOnce {
                        assert_eq!(pb.packet_id.unwrap().get(), expect_pid);
                    }
                    let h = crate::payload::read_header(&pb.payload).unwrap();
                    assert_eq!(h.pub_id, 42);
                    assert_eq!(h.seq, 65534 + k);
                    assert_eq!(h.ts_ns, 123_456_789 + k as u64);
                }
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn unacked_in_and_out_of_order() {
        let mut q: VecDeque<(u16, u64)> = [(1, 10), (2, 20), (3, 30)].into_iter().collect();
        assert_eq!(take_unacked(&mut q, 1), Some(10));
        assert_eq!(take_unacked(&mut q, 3), Some(30));
        assert_eq!(take_unacked(&mut q, 3), None, "acknowledged once");
        assert_eq!(take_unacked(&mut q, 9), None, "unknown id");
        assert_eq!(take_unacked(&mut q, 2), Some(20));
        assert!(q.is_empty());
    }
}
