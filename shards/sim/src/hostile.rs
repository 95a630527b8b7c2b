//! Arbitrary bytes from a few connections, fed to the real core of one or two shards with a
//! real journal: the fuzz target `core_bytes` (fuzz/fuzz_targets/core_bytes.rs) and its
//! corpus replay run this.
//!
//! The clients of the main simulator speak correct MQTT; here the input decides everything:
//! bytes, how they are cut into reads, end of stream, time passing, journal syncs and crashes
//! followed by recovery. The checks are the ones that hold whatever a client sends: nothing
//! panics; the core asks to write to or close only connections it has; the journal it wrote
//! always opens again and restores; once every connection is finished, no connection is left
//! and no session that ends with its connection survives.

use crate::world::{data_dir, open_shard};
use bytes::Bytes;
use ringmq_core::config::{Config, Fsync};
use ringmq_core::env::ManualClock;
use ringmq_core::mesh::ShardMsg;
use ringmq_core::state::{ShardState, SocketId};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

const SEGMENT: u64 = 8192;
const CONNS: usize = 3;

/// What a run did, summed over shards and restarts: for tests to see that an input reached
/// the parts it was written for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub connects: u64,
    pub packets_in: u64,
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub protocol_errors: u64,
    pub restarts: u64,
}

/// Runs one input. Panics (the fuzzer's finding) when a check fails.
pub fn run(data: &[u8]) -> Summary {
    let Some((&first, mut rest)) = data.split_first() else {
        return Summary::default();
    };
    let mut h = Hostile::new(usize::from(first & 1) + 1, first & 2 != 0);
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        let conn = usize::from(op >> 3) % CONNS;
        match op & 7 {
            0..=2 => h.send(conn, bytes),
            3 => h.eof(conn),
            4 => h.advance(Duration::from_millis(u64::from(*len) * 250)),
            5 => h.sync_all(),
            6 => h.crash(),
            _ => h.settle(),
        }
    }
    h.finish()
}

struct Shard {
    st: ShardState,
    /// Connections the core decided to close, to finish once their output is written.
    closing: Vec<usize>,
}

pub(crate) struct Hostile {
    dir: PathBuf,
    cfg: Rc<Config>,
    clock: Rc<ManualClock>,
    shards: Vec<Shard>,
    mesh: VecDeque<(usize, Vec<ShardMsg>)>,
    /// Per input connection: (shard, key) while open.
    conns: [Option<(usize, usize)>; CONNS],
    /// Per input connection: the socket id of its latest connection.
    sockets: [i32; CONNS],
    /// Connections opened so far: socket ids are never reused.
    opened: i32,
    summary: Summary,
    /// Per socket id: what the broker wrote, and whether it closed the socket (kept only for
    /// scripted scenarios: the fuzzer does not look).
    pub(crate) written: Vec<(bytes::BytesMut, bool)>,
    pub(crate) keep_output: bool,
}

impl Hostile {
    pub(crate) fn new(nshards: usize, always: bool) -> Hostile {
        Hostile::with(nshards, always, |_| {})
    }

    /// As [`Hostile::new`], with settings changed by `tweak` (scripted scenarios).
    pub(crate) fn with(nshards: usize, always: bool, tweak: impl FnOnce(&mut Config)) -> Hostile {
        let dir = data_dir(0);
        let mut cfg = Config {
            shards: nshards,
            data_dir: dir.clone(),
            fsync: if always {
                Fsync::Always
            } else {
                Fsync::Every(Duration::from_millis(2))
            },
            journal_segment_bytes: SEGMENT,
            max_inflight: 4,
            ..Config::default()
        };
        tweak(&mut cfg);
        let clock = Rc::new(ManualClock::new(Instant::now(), 1_800_000_000_000));
        let mut h = Hostile {
            dir,
            cfg: Rc::new(cfg),
            clock,
            shards: Vec::new(),
            mesh: VecDeque::new(),
            conns: [None; CONNS],
            sockets: [-1; CONNS],
            opened: 0,
            summary: Summary::default(),
            written: Vec::new(),
            keep_output: false,
        };
        h.boot();
        h
    }

    /// Opens every shard's journal and restores it, as the broker does at start.
    fn boot(&mut self) {
        let n = self.cfg.shards;
        for k in 0..n {
            let (mut st, _, recovered) = open_shard(&self.cfg, &self.clock, k, k as u64 + 1);
            st.restore(recovered);
            self.shards.push(Shard {
                st,
                closing: Vec::new(),
            });
            self.apply(k);
        }
        self.settle();
        assert!(
            self.shards.iter().all(|s| s.st.restore_pending == 0),
            "restore never settles"
        );
    }

    pub(crate) fn send(&mut self, c: usize, bytes: &[u8]) {
        let (k, key) = match self.conns[c] {
            Some(open) => open,
            None => {
                // A new connection lands on a shard the input picks, like the kernel would.
                let k = bytes.first().map_or(0, |b| usize::from(*b)) % self.shards.len();
                self.opened += 1;
                let key = self.shards[k].st.add_conn(SocketId(self.opened), 0);
                self.conns[c] = Some((k, key));
                self.sockets[c] = self.opened;
                (k, key)
            }
        };
        let mut left = bytes;
        while !left.is_empty() && self.is_open(k, key) {
            let mut buf = self.shards[k].st.read_buffer(key);
            let room = buf.capacity() - buf.len();
            let got = left.len().min(room.max(1));
            buf.extend_from_slice(&left[..got]);
            left = &left[got..];
            self.shards[k].st.on_read(key, buf, got, room, false);
            self.apply(k);
        }
        self.settle();
    }

    fn is_open(&self, k: usize, key: usize) -> bool {
        self.shards[k]
            .st
            .conns
            .get(key)
            .is_some_and(|c| c.close.is_none())
    }

    fn output(&mut self, socket: usize) -> &mut (bytes::BytesMut, bool) {
        if self.written.len() <= socket {
            self.written.resize_with(socket + 1, Default::default);
        }
        &mut self.written[socket]
    }

    /// The socket id of slot `c`'s latest connection (-1: none yet).
    pub(crate) fn socket_of_slot(&self, c: usize) -> i32 {
        self.sockets[c]
    }

    pub(crate) fn eof(&mut self, c: usize) {
        if let Some((k, key)) = self.conns[c] {
            if self.is_open(k, key) {
                let buf = self.shards[k].st.read_buffer(key);
                let room = buf.capacity() - buf.len();
                self.shards[k].st.on_read(key, buf, 0, room, true);
                self.apply(k);
            }
        }
        self.settle();
    }

    /// What shard `k`'s driver reports of its backlog towards `peer`.
    /// Every shard takes `acl` (as after a reload).
    pub(crate) fn set_acl(&mut self, acl: std::sync::Arc<ringmq_core::acl::Acl>) {
        for sh in &mut self.shards {
            sh.st.set_acl(Some(acl.clone()));
        }
    }

    pub(crate) fn set_peer_backlog(&mut self, k: usize, peer: usize, n: usize) {
        self.shards[k].st.set_peer_backlog(peer, n);
        self.apply(k);
        self.settle();
    }

    pub(crate) fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        for k in 0..self.shards.len() {
            self.shards[k].st.tick();
            self.apply(k);
        }
        self.settle();
    }

    /// Applies a shard's effects as the driver does; output is written in full at once.
    fn apply(&mut self, k: usize) {
        while self.shards[k].st.has_effects() {
            let fx = self.shards[k].st.take_effects();
            for d in fx.drains {
                self.shards[k].st.resume_connect(d.new);
            }
            // As the driver does: a connection read again first handles what it held.
            for (key, on) in fx.reads {
                if on {
                    self.shards[k].st.resume_reading(key);
                }
            }
            for key in fx.writes {
                let st = &mut self.shards[k].st;
                let conn = st
                    .conns
                    .get_mut(key)
                    .expect("a write for a connection the core has");
                // All of it goes at once; the driver removes what it wrote.
                let out = conn.out.take();
                let socket = conn.socket.0 as usize;
                let n: usize = out.iter().map(Bytes::len).sum();
                if n > 0 {
                    st.wrote(key, n);
                }
                if self.keep_output {
                    for b in &out {
                        self.output(socket).0.extend_from_slice(b);
                    }
                }
            }
            for key in fx.closes {
                assert!(
                    self.shards[k].st.conns.contains(key),
                    "a close for a connection the core does not have"
                );
                if !self.shards[k].closing.contains(&key) {
                    self.shards[k].closing.push(key);
                }
            }
            for a in fx.adopted {
                if let Some(c) = self.sockets.iter().position(|&s| s == a.socket.0) {
                    self.conns[c] = Some((k, a.key));
                }
            }
            for (peer, batch) in fx.batches.into_iter().enumerate() {
                // glommio's channel mesh has no channel from a shard to itself.
                assert!(
                    batch.is_empty() || peer != k,
                    "shard {k} sent a mesh batch to itself: {batch:?}"
                );
                if !batch.is_empty() {
                    self.mesh.push_back((peer, batch));
                }
            }
        }
    }

    /// Delivers the mesh and finishes closed connections until nothing is left to do.
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000 {
            if let Some((to, batch)) = self.mesh.pop_front() {
                self.shards[to].st.on_batch(batch);
                self.apply(to);
                continue;
            }
            let Some(k) = self.shards.iter().position(|s| !s.closing.is_empty()) else {
                return;
            };
            let key = self.shards[k].closing.remove(0);
            if let Some(conn) = self.shards[k].st.conns.get(key) {
                let socket = conn.socket.0 as usize;
                let handoff = conn.close == Some(ringmq_core::state::Close::Handoff);
                if self.keep_output && !handoff {
                    self.output(socket).1 = true;
                }
            }
            self.shards[k].st.finish_conn(key);
            self.apply(k);
            for c in self.conns.iter_mut() {
                if *c == Some((k, key)) {
                    *c = None;
                }
            }
        }
        panic!("the shards never settle");
    }

    pub(crate) fn sync_all(&mut self) {
        for k in 0..self.shards.len() {
            self.shards[k].st.compact_step();
            self.apply(k);
            let job = self.shards[k]
                .st
                .durable
                .as_mut()
                .and_then(|d| d.journal.sync_job());
            if let Some(job) = job {
                let r = job.run();
                self.shards[k].st.on_synced(r, Duration::from_micros(100));
                self.apply(k);
            }
        }
        self.settle();
    }

    /// The process dies (its page cache survives) and starts again from the journals.
    pub(crate) fn crash(&mut self) {
        self.count();
        self.summary.restarts += 1;
        self.shards.clear();
        self.mesh.clear();
        self.conns = [None; CONNS];
        self.boot();
    }

    fn count(&mut self) {
        for s in &self.shards {
            let c = &s.st.counters;
            self.summary.connects += c.connects;
            self.summary.packets_in += c.packets_in;
            self.summary.msgs_in += c.msgs_in.iter().sum::<u64>();
            self.summary.msgs_out += c.msgs_out.iter().sum::<u64>();
            self.summary.protocol_errors += c.protocol_errors;
        }
    }

    /// Every connection ends; the checks that hold once nothing is connected.
    fn finish(mut self) -> Summary {
        for c in 0..CONNS {
            self.eof(c);
        }
        self.sync_all();
        for s in &self.shards {
            assert!(s.st.conns.is_empty(), "connections left after all finished");
            for sess in s.st.sessions.values() {
                assert!(
                    sess.connection().is_none(),
                    "a session still attached after all connections finished"
                );
                assert!(
                    sess.expiry_interval > 0,
                    "a session that ends with its connection outlived it"
                );
            }
        }
        // And what they wrote opens again.
        self.crash();
        self.count();
        self.summary.restarts -= 1;
        self.summary
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
