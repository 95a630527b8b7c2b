//! The simulated world: shards (real [`ShardState`]s on a virtual clock), the network between
//! them and the clients, the journal task, crashes; and [`Sim::apply`], which carries out the
//! core's [`ringmq_core::Effects`] the way the glommio driver (`shards/shard/src/driver.rs`)
//! does.

use crate::client::{Client, Phase};
use crate::jlog::{self, JLog};
use crate::model::{self, Model, WillEnd};
use crate::rng::Rng;
use crate::trace::Trace;
use crate::{Bug, Options, Stats};
use bytes::{Buf, BytesMut};
use ringmq_codec::ProtocolVersion;
use ringmq_core::config::Fsync;
use ringmq_core::durable::{self, Durable};
use ringmq_core::env::{ManualClock, SplitMix64};
use ringmq_core::mesh::{Batch, ShardMsg};
use ringmq_core::state::READ_CHUNK;
use ringmq_core::{Close, Config, Read, ShardState, SocketId};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod driver;
mod faults;
mod settle;

/// The broker's timer period (`TICK` in shards/shard/src/runtime.rs).
pub const TICK_MS: u64 = 250;
/// Wall clock the virtual clock starts at (what the journal stores as Unix milliseconds).
const START_UNIX_MS: u64 = 1_800_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPhase {
    /// Random clients, faults and crashes.
    Chaos,
    /// No more faults or new work: everything in flight completes.
    Quiesce,
    /// Everyone leaves; the broker must end up empty.
    Teardown,
}

/// What one seed chose for its run.
#[derive(Debug)]
pub struct Params {
    pub nshards: usize,
    pub nclients: usize,
    pub segment_bytes: u64,
    pub fsync: Fsync,
    pub max_inflight: u16,
    /// Crash chance per step, in millionths.
    pub crash_ppm: u64,
    /// Crashes are power losses (unsynced journal tails lost) rather than process kills.
    pub power_loss: bool,
    pub steps: usize,
    /// Scale of disruptive events (disconnects, resets, takeovers, long stalls), per mille.
    pub churn: u64,
    /// Queued messages at which a session's queue is full (`--queue-full backpressure`); 0:
    /// large enough never to be reached.
    pub queue_limit: usize,
    /// Clients log in with a username and password, checked (asynchronously, as the driver's
    /// verifier threads do) before their CONNECT goes on, and an ACL that allows everything is
    /// applied to every publish, subscription and delivery.
    pub logins: bool,
}

pub struct Shard {
    pub st: ShardState,
    /// Connections whose end the core decided; their task has not finished them yet.
    pub finishing: Vec<usize>,
    /// Records were appended: the journal task should sync.
    pub bell: bool,
    /// Highest seq a sync job really made durable (what a power loss keeps).
    pub real_durable: u64,
    /// Password checks asked for and not yet answered: (connection key, token).
    pub logins: Vec<(usize, u64)>,
}

/// One TCP connection between a client and the broker. Its number is the `SocketId` the core
/// stores, so a handed-over connection keeps it.
pub struct Conn {
    pub client: usize,
    pub version: ProtocolVersion,
    /// The session asked for is persistent (its acknowledgements depend on the journal).
    pub persistent: bool,
    /// The shard and connection key reading it now.
    pub owner: Option<(usize, usize)>,
    /// Bytes the client wrote; the first `arrived` of them are in the broker's socket buffer.
    pub c2b: VecDeque<u8>,
    pub arrived: usize,
    /// The client closed its side after `c2b`.
    pub c2b_eof: bool,
    /// The client reset the connection: the broker's writes may fail.
    pub reset: bool,
    /// A write failed: every later one does too.
    pub write_failed: bool,
    /// Bytes the broker wrote, not yet read by the client.
    pub b2c: VecDeque<u8>,
    /// The broker closed its side after `b2c`.
    pub b2c_eof: bool,
    /// The client no longer reads this connection.
    pub client_gone: bool,
    /// The broker finished the connection (or died), and when (virtual ms).
    pub broker_gone: bool,
    pub broker_gone_ms: u64,
    /// What the broker emitted, decoded at the moment of emission for the checks.
    pub tap: BytesMut,
    pub tap_failed: bool,
    /// PUBLISH packet ids the client sent here -> message.
    pub pubs: std::collections::HashMap<u16, u64>,
    /// QoS 1/2 PUBLISH packet ids in the order the client sent them here, not yet answered,
    /// with the stream offset where each PUBLISH ends.
    pub ack_order: VecDeque<(u16, u64)>,
    /// SUBSCRIBE / UNSUBSCRIBE packet ids the client sent here -> filters, end offset.
    pub subs: std::collections::HashMap<u16, (Vec<String>, u64)>,
    pub unsubs: std::collections::HashMap<u16, (Vec<String>, u64)>,
    /// SUBSCRIBE packet id -> the event at which the broker had read all of it.
    pub sub_read: std::collections::HashMap<u16, u64>,
    /// Bytes the client wrote / the broker read, since the connection opened.
    pub written: u64,
    pub read: u64,
    /// Where the client's DISCONNECT ends in the stream, if it sent one.
    pub disconnect_end: Option<u64>,
    /// Where its CONNECT ends, and the event at which the client's home shard got it.
    pub connect_end: u64,
    pub connect_seen: Option<u64>,
    pub connect_seen_ms: u64,
    /// Its CONNECT asks to resume the session (Clean Start 0).
    pub resume_request: bool,
    /// Since when the session was detached when the client opened it (`None` if it was still
    /// attached to a connection the client was leaving: a takeover).
    pub offline_since_ms: Option<u64>,
    /// The client gave up on it before CONNACK: arriving late, its CONNECT can replace the
    /// session the client resumed meanwhile (Clean Start), or take it over and keep it on a
    /// connection the client no longer uses.
    pub wild: bool,
    /// The will this connection carries (index into the model's wills).
    pub will: Option<usize>,
    /// When the core decided to close it (not a handoff).
    pub close_ev: Option<u64>,
    /// When it opened, the session had requests left unanswered on earlier connections: their
    /// packet ids (with how many PUBLISHes each) and messages.
    pub stale_history: bool,
    pub stale: std::collections::BTreeMap<u16, u32>,
    pub stale_msgs: std::collections::BTreeSet<u64>,
    /// SUBACKs the tap could not attribute (their packet id was also left unanswered on an
    /// earlier connection).
    pub ambiguous_subacks: std::collections::BTreeSet<u16>,
}

impl Conn {
    fn done(&self) -> bool {
        self.broker_gone && (self.client_gone || (self.b2c.is_empty() && !self.b2c_eof))
    }
}

pub struct Sim {
    pub rng: Rng,
    pub clock: Rc<ManualClock>,
    pub cfg: Rc<Config>,
    pub dir: PathBuf,
    pub p: Params,
    pub shards: Vec<Shard>,
    /// Batches in flight per ordered pair of shards (`from * n + to`), in order.
    pub mesh: Vec<VecDeque<Batch>>,
    pub conns: Vec<Conn>,
    /// Connections not yet done with.
    pub live: Vec<usize>,
    pub clients: Vec<Client>,
    pub model: Model,
    pub jlogs: Vec<JLog>,
    pub trace: Trace,
    pub step: u64,
    /// Strictly increasing event counter: the model's notion of time.
    pub ev: u64,
    /// Broker incarnation (bumped by each crash).
    pub epoch: u32,
    pub phase: RunPhase,
    pub bug: Option<Bug>,
    /// Violation kinds counted but not failed on.
    pub allow: Vec<&'static str>,
    pub next_tick_ms: u64,
    pub stats: Stats,
    /// Set when a check fails: the run stops at the end of the step.
    pub failed: bool,
    /// Every `RouteAdd` sent: (from, to, filter, sent at, delivered at).
    pub route_adds: Vec<RouteFlight>,
    /// SUBSCRIBEs read in this step, stamped in `sub_read` once the effects are applied.
    sub_reads: Vec<(usize, u16)>,
}

/// A route announcement crossing the mesh.
pub struct RouteFlight {
    pub from: usize,
    pub to: usize,
    pub filter: String,
    pub sent: u64,
    /// When the peer got it (or the crash that lost it).
    pub delivered: Option<u64>,
}

impl Sim {
    pub fn new(opts: &Options) -> Sim {
        let seed = opts.seed;
        let mut rng = Rng::new(seed);
        let nshards = rng.range(1, 3) as usize;
        let nclients = rng.range(2, 6) as usize;
        let segment_bytes = *rng.pick(&[4096u64, 8192, 16384, 65536]);
        let fsync = if rng.chance(300) {
            Fsync::Always
        } else {
            Fsync::Every(Duration::from_millis(2))
        };
        let max_inflight = *rng.pick(&[2u16, 4, 32]);
        let crash_ppm = opts
            .crash_ppm
            .unwrap_or_else(|| *rng.pick(&[0u64, 300, 600, 1000]));
        let power_loss = opts.power_loss.unwrap_or_else(|| rng.chance(500));
        let steps = opts.steps.unwrap_or(3000);
        let churn = *rng.pick(&[150u64, 1000, 2500]);
        // From a stream of its own, so that the seeds of the other parameters keep their runs.
        let mut qrng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let queue_limit = if qrng.chance(333) {
            qrng.range(1, 6) as usize
        } else {
            0
        };
        let logins = Rng::new(seed ^ 0x5851_f42d_4c95_7f2d).chance(333);
        let p = Params {
            nshards,
            nclients,
            segment_bytes,
            fsync,
            max_inflight,
            crash_ppm,
            power_loss,
            steps,
            churn,
            queue_limit,
            logins,
        };
        let dir = data_dir(seed);
        let cfg = Config {
            shards: nshards,
            data_dir: dir.clone(),
            fsync,
            journal_segment_bytes: segment_bytes,
            max_inflight,
            // A full queue drops nothing acknowledged (backpressure): publishers wait for their
            // PUBACK/PUBREC until the queue drains, and every check applies as it is.
            max_queued_messages: if queue_limit == 0 {
                1_000_000
            } else {
                queue_limit
            },
            // With a queue limit, publishers also owe few answers before their connection stops
            // being read (the reads resume as the answers go).
            max_pending_acks: if queue_limit == 0 {
                1024
            } else {
                queue_limit + 1
            },
            // The core only needs to know that there are passwords and an ACL: the simulator
            // answers the checks and hands the shards the rules (`open_shard`).
            password_file: logins.then(|| PathBuf::from("/sim/passwd")),
            acl_file: logins.then(|| PathBuf::from("/sim/acl")),
            ..Config::default()
        };
        let clock = Rc::new(ManualClock::new(Instant::now(), START_UNIX_MS));
        let mut clients = Vec::new();
        for i in 0..nclients {
            clients.push(Client::random(i, &mut rng, max_inflight));
        }
        // The probe: a plain client the checks use at the end.
        clients.push(Client::probe(nclients));
        let model = Model::new(clients.len());
        let mut sim = Sim {
            rng,
            clock,
            cfg: Rc::new(cfg),
            dir,
            p,
            shards: Vec::new(),
            mesh: (0..nshards * nshards).map(|_| VecDeque::new()).collect(),
            conns: Vec::new(),
            live: Vec::new(),
            clients,
            model,
            jlogs: (0..nshards).map(|_| JLog::default()).collect(),
            trace: Trace::new(opts.trace_len),
            step: 0,
            ev: 0,
            epoch: 0,
            phase: RunPhase::Chaos,
            bug: opts.bug,
            allow: opts.allow.clone(),
            next_tick_ms: TICK_MS,
            stats: Stats::default(),
            failed: false,
            route_adds: Vec::new(),
            sub_reads: Vec::new(),
        };
        let line = format!(
            "seed {seed}: {} shards, {} clients, segment {} B, fsync {:?}, max_inflight {}, \
             churn {}, crash {} ppm ({}), queue limit {}, bug {:?}",
            sim.p.nshards,
            sim.p.nclients,
            sim.p.segment_bytes,
            sim.p.fsync,
            sim.p.max_inflight,
            sim.p.churn,
            sim.p.crash_ppm,
            if sim.p.power_loss {
                "power loss"
            } else {
                "process kill"
            },
            sim.p.queue_limit,
            sim.bug
        );
        sim.log(line);
        for c in 0..sim.clients.len() {
            let s = sim.clients[c].describe();
            sim.log(format!("client {c}: {s}"));
        }
        sim.boot();
        sim
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed.get().as_millis() as u64
    }

    pub fn log(&mut self, line: String) {
        let now = self.now_ms();
        self.trace.push(self.step, now, line);
    }

    pub fn next_ev(&mut self) -> u64 {
        self.ev += 1;
        self.ev
    }

    /// A check failed. Kinds the run tolerates (known findings, `Options::allow`) are
    /// counted and traced, and the run goes on.
    pub fn fail(&mut self, kind: &'static str, what: String) {
        if self.allow.contains(&kind) {
            *self.model.tolerated.entry(kind).or_insert(0) += 1;
            self.log(format!("TOLERATED {kind}: {what}"));
            return;
        }
        self.log(format!("VIOLATION {kind}: {what}"));
        self.model.violation(kind, what);
        self.failed = true;
    }

    // ------------------------------------------------------------------------ the run

    pub fn run(&mut self) {
        while self.stats.steps < self.p.steps as u64 && !self.failed {
            self.chaos_step();
        }
        if self.failed {
            return;
        }
        self.quiesce();
        if self.failed {
            return;
        }
        self.check_quiesced();
        if self.failed {
            return;
        }
        self.teardown();
    }

    fn chaos_step(&mut self) {
        self.step += 1;
        self.stats.steps += 1;
        // Time moves a little most steps, sometimes a lot.
        let dt = match self.rng.below(1_000_000) {
            0..=299_999 => self.rng.range(0, 3),
            300_000..=319_999 => self.rng.range(50, 1000),
            x if x < 320_000 + self.p.churn => self.rng.range(5_000, 40_000),
            _ => 0,
        };
        self.advance(dt);
        if self.p.crash_ppm > 0 && self.rng.below(1_000_000) < self.p.crash_ppm {
            let power = self.p.power_loss && self.rng.chance(700);
            self.crash(power);
            return;
        }
        // Candidate events, by kind.
        let arrive: Vec<usize> = self
            .live
            .iter()
            .copied()
            .filter(|&c| self.conns[c].arrived < self.conns[c].c2b.len())
            .collect();
        let read: Vec<usize> = self
            .live
            .iter()
            .copied()
            .filter(|&c| self.readable(c))
            .collect();
        let recv: Vec<usize> = self
            .live
            .iter()
            .copied()
            .filter(|&c| self.client_can_receive(c))
            .collect();
        let mesh = self.mesh.iter().any(|q| !q.is_empty());
        let writable: Vec<(usize, usize)> = (0..self.shards.len())
            .flat_map(|k| {
                self.shards[k]
                    .st
                    .conns
                    .iter()
                    .filter(|(_, c)| c.write_blocked() && c.close.is_none())
                    .map(move |(key, _)| (k, key))
            })
            .collect();
        let finishing: Vec<usize> = (0..self.shards.len())
            .filter(|&k| !self.shards[k].finishing.is_empty())
            .collect();
        let journal: Vec<usize> = (0..self.shards.len())
            .filter(|&k| self.unsynced(k) || self.shards[k].bell)
            .collect();
        let logins: Vec<usize> = (0..self.shards.len())
            .filter(|&k| !self.shards[k].logins.is_empty())
            .collect();
        let weights = [
            if arrive.is_empty() { 0 } else { 20 },
            if read.is_empty() { 0 } else { 25 },
            if recv.is_empty() { 0 } else { 25 },
            if mesh { 20 } else { 0 },
            if writable.is_empty() { 0 } else { 5 },
            if finishing.is_empty() { 0 } else { 6 },
            if journal.is_empty() { 0 } else { 10 },
            if logins.is_empty() { 0 } else { 8 },
            18,
        ];
        match self.rng.weighted(&weights) {
            0 => {
                let c = *self.rng.pick(&arrive);
                let sc = &mut self.conns[c];
                let left = sc.c2b.len() - sc.arrived;
                let n = self.rng.split(left);
                sc.arrived += n;
            }
            1 => {
                let c = *self.rng.pick(&read);
                let (k, key) = self.conns[c].owner.expect("readable");
                let avail = self.conns[c].arrived;
                let max = self.rng.split(avail).max(1);
                self.read(k, key, max);
                self.apply(k);
            }
            2 => {
                let c = *self.rng.pick(&recv);
                self.client_receive(c, false);
            }
            3 => {
                self.deliver_any_batch();
            }
            4 => {
                let (k, key) = *self.rng.pick(&writable);
                self.writable(k, key);
            }
            5 => {
                let k = *self.rng.pick(&finishing);
                let i = self.rng.index(self.shards[k].finishing.len());
                self.finish(k, i);
            }
            6 => {
                let k = *self.rng.pick(&journal);
                self.journal_turn(k);
            }
            7 => {
                // The verifier threads answer in any order.
                let k = *self.rng.pick(&logins);
                let i = self.rng.index(self.shards[k].logins.len());
                self.answer_login(k, i);
            }
            _ => {
                let c = self.rng.index(self.p.nclients);
                self.client_act(c);
            }
        }
        self.prune();
    }

    /// Whether the broker side of a connection has something to read.
    fn readable(&self, c: usize) -> bool {
        let sc = &self.conns[c];
        let Some((k, key)) = sc.owner else {
            return false;
        };
        let Some(conn) = self.shards[k].st.conns.get(key) else {
            return false;
        };
        conn.close.is_none()
            && !conn.reads_paused()
            && (sc.arrived > 0 || (sc.c2b_eof && sc.arrived == sc.c2b.len() && !sc.broker_gone))
    }

    fn prune(&mut self) {
        let conns = &self.conns;
        self.live.retain(|&c| !conns[c].done());
    }

    pub fn new_conn(&mut self, client: usize, version: ProtocolVersion, persistent: bool) -> usize {
        let c = self.conns.len();
        self.conns.push(Conn {
            client,
            version,
            persistent,
            owner: None,
            c2b: VecDeque::new(),
            arrived: 0,
            c2b_eof: false,
            reset: false,
            write_failed: false,
            b2c: VecDeque::new(),
            b2c_eof: false,
            client_gone: false,
            broker_gone: false,
            broker_gone_ms: 0,
            tap: BytesMut::new(),
            tap_failed: false,
            pubs: Default::default(),
            ack_order: VecDeque::new(),
            subs: Default::default(),
            unsubs: Default::default(),
            sub_read: Default::default(),
            written: 0,
            read: 0,
            disconnect_end: None,
            connect_end: u64::MAX,
            connect_seen: None,
            connect_seen_ms: 0,
            resume_request: false,
            offline_since_ms: None,
            wild: false,
            will: None,
            close_ev: None,
            stale_history: !self.clients[client].stale.is_empty(),
            stale: self.clients[client].stale.clone(),
            stale_msgs: self.clients[client].stale_msgs.clone(),
            ambiguous_subacks: Default::default(),
        });
        self.live.push(c);
        // Accepted by a shard of the kernel's choosing (SO_REUSEPORT).
        let k = self.rng.index(self.p.nshards);
        let key = self.call(k, |st| st.add_conn(SocketId(c as i32), 0));
        self.conns[c].owner = Some((k, key));
        self.stats.connections += 1;
        c
    }
}

/// A fresh directory for one run's journals: on tmpfs when there is one (syncs are then
/// cheap; durability is the simulator's own bookkeeping anyway).
/// A shard of the real core on its journal in `cfg.data_dir`, recovered but not yet restored.
pub(crate) fn open_shard(
    cfg: &Rc<Config>,
    clock: &Rc<ManualClock>,
    k: usize,
    entropy: u64,
) -> (
    ShardState,
    ringmq_journal::RecoveryReport,
    durable::Recovered,
) {
    let mut st = ShardState::new(
        k,
        cfg.shards,
        cfg.clone(),
        Box::new(clock.clone()),
        Box::new(SplitMix64(entropy)),
    );
    let segment = cfg.journal_segment_bytes;
    let (journal, report, recovered) = durable::open(&cfg.data_dir, k, segment, false)
        .unwrap_or_else(|e| panic!("the journal does not open: {e}"));
    let max = cfg.journal_max_bytes;
    st.durable = Some(Durable::new(journal, cfg.fsync, segment, max));
    if cfg.acl_file.is_some() {
        // Every client may do everything: the checks run on every path without changing
        // what the model expects.
        let acl = ringmq_core::acl::Acl::parse("pattern readwrite #\n").expect("valid");
        st.set_acl(Some(std::sync::Arc::new(acl)));
    }
    (st, report, recovered)
}

pub(crate) fn data_dir(seed: u64) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "ringmq-sim-{}-{seed}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run's data directory");
    dir
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shards.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
