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
}

pub struct Shard {
    pub st: ShardState,
    /// Connections whose end the core decided; their task has not finished them yet.
    pub finishing: Vec<usize>,
    /// Records were appended: the journal task should sync.
    pub bell: bool,
    /// Highest seq a sync job really made durable (what a power loss keeps).
    pub real_durable: u64,
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
        };
        let dir = data_dir(seed);
        let cfg = Config {
            shards: nshards,
            data_dir: dir.clone(),
            fsync,
            journal_segment_bytes: segment_bytes,
            max_inflight,
            // Queues are never full in these runs: a drop would be a lost acknowledged
            // message, and the check would have to tell it from a bug.
            max_queued_messages: 1_000_000,
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
             churn {}, crash {} ppm ({}), bug {:?}",
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

    // ------------------------------------------------------------------ shards and journals

    /// Starts every shard on its journal (recovering it) and waits, as the runtime does, until
    /// every shard's restored subscriptions are acknowledged by all the others.
    fn boot(&mut self) {
        let n = self.p.nshards;
        for k in 0..n {
            let entropy = self.rng.next_u64();
            let (st, report, recovered) = open_shard(&self.cfg, &self.clock, k, entropy);
            let last = report.last_seq;
            let sessions = recovered.sessions.len();
            let retained = recovered.retained.len();
            self.shards.push(Shard {
                st,
                finishing: Vec::new(),
                bell: false,
                real_durable: last,
            });
            self.jlogs[k].reopened(last);
            self.log(format!(
                "shard {k}: journal opened at seq {last} ({} records, torn tail {}), \
                 {sessions} sessions, {retained} retained",
                report.records, report.torn_tail
            ));
            self.call(k, |st| st.restore(recovered));
            let restored = self.describe_sessions(k);
            if !restored.is_empty() {
                self.log(format!("shard {k}: restored {restored}"));
            }
        }
        let mut rounds = 0;
        while self.shards.iter().any(|s| s.st.restore_pending > 0) {
            rounds += 1;
            assert!(rounds < 100_000, "restore never settles");
            if !self.deliver_any_batch() {
                self.fail(
                    "liveness",
                    "restore: route acknowledgements never arrive".into(),
                );
                return;
            }
        }
    }

    /// A shard's sessions, for the trace: client id, subscriptions, deliveries held.
    fn describe_sessions(&self, k: usize) -> String {
        let mut all: Vec<String> = self.shards[k]
            .st
            .sessions
            .values()
            .map(|s| {
                let mut subs: Vec<&str> = s.subscriptions.keys().map(|f| f.as_str()).collect();
                subs.sort_unstable();
                format!(
                    "{} (subs {subs:?}, {} inflight, {} queued)",
                    s.client_id,
                    s.outbound.inflight_len(),
                    s.outbound.queued_len()
                )
            })
            .collect();
        all.sort();
        all.join(", ")
    }

    /// Calls into a shard's core and carries out what it caused (`Shard::with_state`).
    pub fn call<R>(&mut self, k: usize, f: impl FnOnce(&mut ShardState) -> R) -> R {
        let r = f(&mut self.shards[k].st);
        self.apply(k);
        r
    }

    /// Applies effects until the core has none left (`Shard::apply` in the glommio driver).
    fn apply(&mut self, k: usize) {
        let n = self.p.nshards;
        while self.shards[k].st.has_effects() {
            let mut fx = self.shards[k].st.take_effects();
            for d in std::mem::take(&mut fx.drains) {
                self.log(format!(
                    "shard {k}: takeover drains key {} for key {}",
                    d.old, d.new
                ));
                self.drain(k, d.old);
                self.shards[k].st.resume_connect(d.new);
            }
            // Adopted connections: the socket number is the simulator's connection.
            for a in std::mem::take(&mut fx.adopted) {
                let c = a.socket.0 as usize;
                self.conns[c].owner = Some((k, a.key));
                if self.conns[c].connect_seen.is_none() {
                    self.ev += 1;
                    self.conns[c].connect_seen = Some(self.ev);
                    self.conns[c].connect_seen_ms = self.now_ms();
                }
                self.log(format!("shard {k}: adopts conn {c} as key {}", a.key));
            }
            for &key in &fx.writes {
                self.write(k, key);
            }
            for &key in &fx.closes {
                if !self.shards[k].finishing.contains(&key) {
                    self.shards[k].finishing.push(key);
                }
                if let Some(conn) = self.shards[k].st.conns.get(key) {
                    let c = conn.socket.0 as usize;
                    if conn.close != Some(Close::Handoff) && self.conns[c].close_ev.is_none() {
                        self.ev += 1;
                        self.conns[c].close_ev = Some(self.ev);
                    }
                }
            }
            // Metrics replies: nobody scrapes in the simulator.
            fx.metrics_replies.clear();
            if fx.sync {
                self.shards[k].bell = true;
            }
            // Handoffs: sockets are just numbers here, nothing to duplicate.
            for (peer, batch) in fx.batches.into_iter().enumerate() {
                if !batch.is_empty() {
                    for m in &batch {
                        if let ShardMsg::RouteAdd { filter, .. } = m {
                            self.ev += 1;
                            self.route_adds.push(RouteFlight {
                                from: k,
                                to: peer,
                                filter: filter.to_string(),
                                sent: self.ev,
                                delivered: None,
                            });
                        }
                    }
                    self.mesh[k * n + peer].push_back(batch);
                }
            }
        }
        for (c, id) in std::mem::take(&mut self.sub_reads) {
            if let Some(at) = self.conns[c].sub_read.get_mut(&id) {
                *at = self.ev;
            }
        }
    }

    /// Reads what arrived on a connection (up to `READ_CHUNK`, and at most `max`) into the
    /// buffer the core lends, or the end of the stream.
    fn read(&mut self, k: usize, key: usize, max: usize) -> Read {
        let Some(conn) = self.shards[k].st.conns.get(key) else {
            return Read::Closed;
        };
        let c = conn.socket.0 as usize;
        let sc = &mut self.conns[c];
        let got = sc.arrived.min(READ_CHUNK).min(max);
        let eof = got == 0 && sc.c2b_eof && sc.arrived == sc.c2b.len();
        let mut buf = self.shards[k].st.read_buffer(key);
        let room = buf.capacity() - buf.len();
        buf.extend(sc.c2b.drain(..got));
        sc.arrived -= got;
        sc.read += got as u64;
        for (&id, (_, end)) in &sc.subs {
            if *end <= sc.read && !sc.sub_read.contains_key(&id) {
                // Stamped once the effects of this read are applied (`apply`).
                sc.sub_read.insert(id, u64::MAX);
                self.sub_reads.push((c, id));
            }
        }
        if sc.connect_seen.is_none() && sc.read >= sc.connect_end {
            let home = ringmq_core::config::home_shard(
                self.clients[sc.client].id.as_bytes(),
                self.p.nshards,
            );
            if home == k {
                self.ev += 1;
                sc.connect_seen = Some(self.ev);
                sc.connect_seen_ms = self.clock.elapsed.get().as_millis() as u64;
            }
        }
        self.shards[k].st.on_read(key, buf, got, room, eof)
    }

    /// Reads a connection until nothing more is there (the old connection of a takeover).
    fn drain(&mut self, k: usize, key: usize) {
        while self.shards[k]
            .st
            .conns
            .get(key)
            .is_some_and(|c| c.close.is_none())
        {
            if self.read(k, key, usize::MAX) != Read::Full {
                break;
            }
        }
    }

    /// Writes what a connection has queued, as much as the socket takes; a full socket leaves
    /// the rest for a later `writable` event (`Shard::write`).
    fn write(&mut self, k: usize, key: usize) {
        let Some(conn) = self.shards[k].st.conns.get_mut(key) else {
            return;
        };
        if conn.write_blocked || conn.out.is_empty() {
            return;
        }
        let c = conn.socket.0 as usize;
        // A reset socket fails writes sooner or later, and for good once it has.
        if self.conns[c].reset && (self.conns[c].write_failed || self.rng.chance(500)) {
            self.conns[c].write_failed = true;
            self.shards[k].st.write_failed(key);
            self.log(format!("shard {k}: write to conn {c} fails (reset)"));
            return;
        }
        let total: usize = conn.out.iter().map(|b| b.len()).sum();
        let n = if self.phase != RunPhase::Chaos || self.rng.chance(850) {
            total
        } else {
            self.rng.range(0, total as u64) as usize
        };
        if n == 0 {
            conn.write_blocked = true;
            return;
        }
        let bytes = take_front(&mut conn.out, n);
        let blocked = !conn.out.is_empty();
        conn.write_blocked = blocked;
        self.shards[k].st.wrote(key, n);
        self.emit(c, k, &bytes);
    }

    /// A blocked connection became writable: the front of its queue goes out
    /// (`poll_write`), the rest with the effects.
    fn writable(&mut self, k: usize, key: usize) {
        let Some(conn) = self.shards[k].st.conns.get_mut(key) else {
            return;
        };
        if !conn.write_blocked || conn.close.is_some() {
            return;
        }
        let Some(front) = conn.out.front() else {
            conn.write_blocked = false;
            return;
        };
        let len = front.len() as u64;
        let n = self.rng.range(1, len) as usize;
        let c = conn.socket.0 as usize;
        let bytes = take_front(&mut conn.out, n);
        conn.write_blocked = false;
        self.shards[k].st.wrote(key, n);
        self.shards[k].st.want_write(key);
        self.emit(c, k, &bytes);
        self.apply(k);
    }

    /// The connection's task ends: a last write of what is queued, the core's bookkeeping,
    /// then the socket closes (or, handed over, lives on with the home shard).
    fn finish(&mut self, k: usize, i: usize) {
        let key = self.shards[k].finishing.swap_remove(i);
        let Some(conn) = self.shards[k].st.conns.get_mut(key) else {
            return;
        };
        let c = conn.socket.0 as usize;
        let close = conn.close;
        // A CONNECT waiting for its CONNACK to be released by a sync was accepted: the
        // session holds its will.
        use ringmq_core::state::Phase as P;
        let accepted = matches!(conn.phase, P::Active | P::AwaitSync);
        let Some(conn) = self.shards[k].st.conns.get_mut(key) else {
            return;
        };
        if close != Some(Close::Handoff) && !accepted {
            if let Some(w) = self.conns[c].will {
                let ev = self.ev;
                let will = &mut self.model.wills[w];
                if !matches!(will.end, Some((_, WillEnd::Crash))) {
                    will.end = Some((ev, WillEnd::NotAccepted));
                }
            }
        }
        if !conn.out.is_empty() && !conn.write_blocked && !self.conns[c].reset {
            let total: usize = conn.out.iter().map(|b| b.len()).sum();
            let bytes = take_front(&mut conn.out, total);
            self.emit(c, k, &bytes);
        }
        self.call(k, |st| st.finish_conn(key));
        let sc = &mut self.conns[c];
        if sc.owner == Some((k, key)) {
            sc.owner = None;
        }
        if close != Some(Close::Handoff) {
            sc.broker_gone = true;
            sc.broker_gone_ms = self.clock.elapsed.get().as_millis() as u64;
            sc.b2c_eof = true;
        }
        self.log(format!(
            "shard {k}: finished key {key} (conn {c}, {close:?})"
        ));
    }

    /// Bytes leave the broker: to the client's side of the connection, and through the tap
    /// that checks acknowledgements at the moment they are sent.
    fn emit(&mut self, c: usize, k: usize, bytes: &[u8]) {
        self.stats.bytes_out += bytes.len() as u64;
        let sc = &mut self.conns[c];
        if !sc.client_gone {
            sc.b2c.extend(bytes.iter().copied());
        }
        sc.tap.extend_from_slice(bytes);
        self.check_tap(c, k);
    }

    /// Delivers the front batch of one ordered pair of shards, chosen at random among those
    /// with batches in flight. False if none is.
    pub fn deliver_any_batch(&mut self) -> bool {
        let pairs: Vec<usize> = (0..self.mesh.len())
            .filter(|&i| !self.mesh[i].is_empty())
            .collect();
        if pairs.is_empty() {
            return false;
        }
        let i = *self.rng.pick(&pairs);
        self.deliver_batch(i);
        true
    }

    fn deliver_batch(&mut self, pair: usize) {
        let n = self.p.nshards;
        let (from, to) = (pair / n, pair % n);
        let batch = self.mesh[pair].pop_front().expect("non-empty");
        for m in &batch {
            if let ShardMsg::RouteAdd { filter, .. } = m {
                self.ev += 1;
                let ev = self.ev;
                if let Some(r) = self.route_adds.iter_mut().find(|r| {
                    r.from == from && r.to == to && r.delivered.is_none() && r.filter == **filter
                }) {
                    r.delivered = Some(ev);
                }
            }
        }
        let what = describe_batch(&batch);
        self.log(format!("mesh {from}->{to}: {what}"));
        self.call(to, |st| st.on_batch(batch));
    }

    /// One turn of the journal task (`journal_loop`): a compaction step, a sync under the
    /// policy, and the next segment prepared once the active one is half full.
    fn journal_turn(&mut self, k: usize) {
        self.scan(k);
        // Whether compaction needs a sync to go on: the policy syncs anyway.
        self.call(k, |st| st.compact_step());
        self.scan(k);
        self.shards[k].bell = false;
        let job = self.shards[k]
            .st
            .durable
            .as_mut()
            .and_then(|d| d.journal.sync_job());
        if let Some(job) = job {
            let seq = job.seq();
            let took = Duration::from_micros(self.rng.range(20, 3000));
            let lie = self.bug == Some(Bug::LyingFsync);
            let r = if lie {
                // The canary's bug: the sync is reported done without being done.
                drop(job);
                Ok(seq)
            } else {
                let r = job.run();
                if let Ok(s) = r {
                    let sh = &mut self.shards[k];
                    sh.real_durable = sh.real_durable.max(s);
                }
                r
            };
            self.stats.syncs += 1;
            self.log(format!(
                "shard {k}: journal synced to {seq}{}",
                if lie { " (LIE: not really)" } else { "" }
            ));
            self.call(k, |st| st.on_synced(r, took));
        }
        let seg = self.p.segment_bytes;
        let prep = self.shards[k]
            .st
            .durable
            .as_mut()
            .filter(|d| d.journal.active_used() * 2 >= seg)
            .and_then(|d| d.journal.prepare_job());
        if let Some(job) = prep {
            let r = job.run();
            if let Some(d) = self.shards[k].st.durable.as_mut() {
                match r {
                    Ok(s) => d.journal.install_prepared(s),
                    Err(_) => d.journal.prepare_failed(),
                }
            }
        }
    }

    fn unsynced(&self, k: usize) -> bool {
        self.shards[k].st.durable.as_ref().is_some_and(|d| {
            d.journal.last_seq() > d.journal.synced_seq() || d.checkpoint.is_some()
        })
    }

    /// Reads the records shard `k` appended since the last scan into its log.
    pub fn scan(&mut self, k: usize) {
        let clients = &self.clients;
        let resolve = |id: &str| clients.iter().position(|c| c.id == id);
        let Some(d) = self.shards[k].st.durable.as_ref() else {
            return;
        };
        if let Err(e) = self.jlogs[k].scan(&d.journal, &resolve, &model::msg_id) {
            self.fail("journal", format!("shard {k}: {e}"));
        }
    }

    /// Adds the journals' segment counters to the run's (before they are dropped).
    pub fn count_journal_stats(&mut self) {
        for sh in &self.shards {
            if let Some(d) = sh.st.durable.as_ref() {
                let st = d.journal.stats();
                self.stats.segments_removed += st.segments_removed;
                self.stats.segments_created += st.segments_created;
            }
        }
    }

    pub fn synced(&self, k: usize) -> u64 {
        self.shards[k]
            .st
            .durable
            .as_ref()
            .map_or(u64::MAX, |d| d.journal.synced_seq())
    }

    // ------------------------------------------------------------------------ time

    pub fn advance(&mut self, ms: u64) {
        if ms == 0 {
            return;
        }
        self.clock.advance(Duration::from_millis(ms));
        if ms >= 1000 {
            self.log(format!("clock +{ms} ms"));
        }
        if self.now_ms() >= self.next_tick_ms {
            self.next_tick_ms = self.now_ms() + TICK_MS;
            for k in 0..self.shards.len() {
                self.call(k, |st| st.tick());
            }
            self.stats.ticks += 1;
        }
        self.client_timers();
    }

    // ------------------------------------------------------------------------ crashes

    /// The broker process dies. With `power`, so does the machine: each journal keeps only
    /// what was really synced, plus a random part of the rest. Then every shard restarts on
    /// its journal, and clients find their connections closed.
    pub fn crash(&mut self, power: bool) {
        for k in 0..self.shards.len() {
            self.scan(k);
            let held = self.describe_sessions(k);
            if !held.is_empty() {
                self.log(format!("shard {k}: before the crash holds {held}"));
            }
        }
        self.stats.crashes += 1;
        let ev = self.next_ev();
        self.model.crashes.push(ev);
        if power {
            self.stats.power_losses += 1;
            self.model.last_power_loss = self.next_ev();
        }
        self.log(format!(
            "CRASH ({})",
            if power { "power loss" } else { "process kill" }
        ));
        // Sockets: the kernel closes them; what was already written may still reach the
        // client, the rest is lost.
        for &c in &self.live {
            // Connections whose end the core had decided: their will may be out already.
            let decided = self.conns[c]
                .owner
                .and_then(|(k, key)| self.shards[k].st.conns.get(key))
                .is_none_or(|x| x.close.is_some());
            let sc = &mut self.conns[c];
            if sc.broker_gone {
                continue;
            }
            sc.broker_gone = true;
            sc.broker_gone_ms = self.clock.elapsed.get().as_millis() as u64;
            sc.owner = None;
            let keep = self.rng.range(0, sc.b2c.len() as u64) as usize;
            sc.b2c.truncate(keep);
            sc.b2c_eof = true;
            if let Some(w) = sc.will {
                let will = &mut self.model.wills[w];
                if will.end.is_none() {
                    let end = if decided {
                        WillEnd::Unknown
                    } else {
                        WillEnd::Crash
                    };
                    will.end = Some((self.ev, end));
                }
            }
        }
        for w in &mut self.model.wills {
            if w.end.is_some_and(|(_, e)| e != WillEnd::Crash) {
                w.crash_after = true;
            }
        }
        for m in &mut self.model.msgs {
            if m.first_sent.is_some() && m.acked.is_none() {
                m.crash_before_ack = true;
            }
        }
        for q in &mut self.mesh {
            q.clear();
        }
        let ev = self.next_ev();
        for r in self.route_adds.iter_mut().filter(|r| r.delivered.is_none()) {
            r.delivered = Some(ev);
        }
        self.count_journal_stats();
        let last: Vec<(u64, u64)> = self
            .shards
            .iter()
            .map(|s| {
                let d = s.st.durable.as_ref().expect("durable");
                (s.real_durable, d.journal.last_seq())
            })
            .collect();
        self.shards.clear();
        if power {
            for (k, (durable, last)) in last.into_iter().enumerate() {
                let keep = self.rng.range(durable, last);
                let dir = self.dir.join(format!("shard-{k}"));
                let cut = jlog::lose_tail(&dir, self.p.segment_bytes, keep)
                    .unwrap_or_else(|e| panic!("power loss on {}: {e}", dir.display()));
                self.log(format!(
                    "shard {k}: power loss keeps seq {keep} of {last} (synced {durable}), \
                     {cut} bytes lost"
                ));
                self.jlogs[k].truncate(keep);
            }
        }
        self.epoch += 1;
        let down = self.rng.range(100, 3000);
        self.clock.advance(Duration::from_millis(down));
        self.boot();
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
                    .filter(|(_, c)| c.write_blocked && c.close.is_none())
                    .map(move |(key, _)| (k, key))
            })
            .collect();
        let finishing: Vec<usize> = (0..self.shards.len())
            .filter(|&k| !self.shards[k].finishing.is_empty())
            .collect();
        let journal: Vec<usize> = (0..self.shards.len())
            .filter(|&k| self.unsynced(k) || self.shards[k].bell)
            .collect();
        let weights = [
            if arrive.is_empty() { 0 } else { 20 },
            if read.is_empty() { 0 } else { 25 },
            if recv.is_empty() { 0 } else { 25 },
            if mesh { 20 } else { 0 },
            if writable.is_empty() { 0 } else { 5 },
            if finishing.is_empty() { 0 } else { 6 },
            if journal.is_empty() { 0 } else { 10 },
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
        let key = self.call(k, |st| st.add_conn(SocketId(c as i32)));
        self.conns[c].owner = Some((k, key));
        self.stats.connections += 1;
        c
    }

    // ------------------------------------------------------------------------ settling

    /// Runs everything in flight to completion without faults: bytes arrive and are read,
    /// batches delivered, journals synced, connections finished, clients read. Returns
    /// whether anything happened.
    pub fn settle(&mut self) -> bool {
        let mut any = false;
        for _round in 0..10_000 {
            let mut progress = false;
            for i in 0..self.live.len() {
                let c = self.live[i];
                let sc = &mut self.conns[c];
                if sc.arrived < sc.c2b.len() {
                    sc.arrived = sc.c2b.len();
                    progress = true;
                }
            }
            let live = self.live.clone();
            for &c in &live {
                while self.readable(c) {
                    let (k, key) = self.conns[c].owner.expect("readable");
                    self.read(k, key, usize::MAX);
                    self.apply(k);
                    progress = true;
                }
            }
            while self.deliver_any_batch() {
                progress = true;
            }
            for k in 0..self.shards.len() {
                loop {
                    let blocked = self.shards[k]
                        .st
                        .conns
                        .iter()
                        .find(|(_, c)| c.write_blocked && c.close.is_none())
                        .map(|(key, _)| key);
                    let Some(key) = blocked else { break };
                    self.writable(k, key);
                    progress = true;
                }
                while !self.shards[k].finishing.is_empty() {
                    self.finish(k, 0);
                    progress = true;
                }
                if self.unsynced(k) || self.shards[k].bell {
                    self.journal_turn(k);
                    progress = true;
                }
            }
            let live = self.live.clone();
            for &c in &live {
                while self.client_can_receive(c) {
                    self.client_receive(c, true);
                    progress = true;
                }
            }
            self.prune();
            if self.failed {
                return any;
            }
            if !progress {
                return any;
            }
            any = true;
        }
        self.fail("liveness", "settle: the system never becomes idle".into());
        any
    }

    /// Quiesce: no faults, no new work. Clients reconnect and finish what they started;
    /// time passes so that keep-alives, delayed wills and takeovers play out.
    fn quiesce(&mut self) {
        self.phase = RunPhase::Quiesce;
        self.log("--- quiesce ---".into());
        let mut quiet_rounds = 0;
        for _second in 0..900 {
            self.step += 1;
            self.settle();
            if self.failed {
                return;
            }
            for c in 0..self.p.nclients {
                self.client_quiesce(c);
            }
            self.settle();
            if self.failed {
                return;
            }
            let busy = self.busy();
            if busy.is_none() {
                quiet_rounds += 1;
                // Long enough for keep-alive (1.5 x 60 s at most) and will delays to run out.
                if quiet_rounds > 120 {
                    return;
                }
            } else {
                quiet_rounds = 0;
            }
            self.advance(1000);
        }
        let why = self.busy().unwrap_or_default();
        self.fail(
            "liveness",
            format!("liveness: still busy after 900 s of quiet: {why}"),
        );
    }

    /// What is still under way, if anything.
    fn busy(&self) -> Option<String> {
        for (i, c) in self.clients.iter().enumerate().take(self.p.nclients) {
            if c.phase != Phase::Active {
                return Some(format!("client {i} is {:?}", c.phase));
            }
            if !c.out.is_empty() {
                let o = &c.out[0];
                return Some(format!(
                    "client {i} waits for the acknowledgement of message {} (packet id {}, {})",
                    o.msg,
                    o.pid,
                    if o.released {
                        "PUBCOMP"
                    } else {
                        "PUBACK/PUBREC"
                    }
                ));
            }
            if let Some(op) = &c.op {
                return Some(format!("client {i} waits for {op:?}"));
            }
        }
        if self.mesh.iter().any(|q| !q.is_empty()) {
            return Some("mesh batches in flight".into());
        }
        for k in 0..self.shards.len() {
            if self.unsynced(k) {
                return Some(format!("shard {k} journal not synced"));
            }
            let waiting = self.shards[k]
                .st
                .durable
                .as_ref()
                .map_or(0, |d| d.waiting.len());
            if waiting > 0 {
                return Some(format!(
                    "shard {k} holds {waiting} acknowledgements for sync"
                ));
            }
        }
        None
    }
}

/// Removes the first `n` bytes of a queue of chunks.
fn take_front(out: &mut VecDeque<bytes::Bytes>, mut n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    while n > 0 {
        let front = out.front_mut().expect("n within queued bytes");
        if front.len() <= n {
            n -= front.len();
            v.extend_from_slice(front);
            out.pop_front();
        } else {
            v.extend_from_slice(&front[..n]);
            front.advance(n);
            n = 0;
        }
    }
    v
}

fn describe_batch(b: &Batch) -> String {
    let mut parts: Vec<String> = Vec::new();
    for m in b {
        parts.push(match m {
            ShardMsg::Handoff(h) => {
                format!("Handoff(conn {}, {})", h.socket.0, h.connect.client_id)
            }
            ShardMsg::Publish { msg, ack, .. } => format!(
                "Publish({} {}{})",
                msg.topic,
                String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(8)]),
                if ack.is_some() { " ack" } else { "" }
            ),
            ShardMsg::PublishAck { token, .. } => format!("PublishAck({token})"),
            ShardMsg::RouteAdd { filter, .. } => format!("RouteAdd({filter})"),
            ShardMsg::RouteAck { token } => format!("RouteAck({token})"),
            ShardMsg::RouteRemove { filter, .. } => format!("RouteRemove({filter})"),
            ShardMsg::RetainSet { msg, .. } => format!("RetainSet({})", msg.topic),
            ShardMsg::RetainQuery(q) => format!("RetainQuery({})", q.filter),
            ShardMsg::RetainReply(r) => format!("RetainReply({} msgs)", r.messages.len()),
            other => format!("{:?}", std::mem::discriminant(other)),
        });
    }
    parts.join(", ")
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
