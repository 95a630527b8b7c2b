//! Carrying out the core's effects as the glommio driver does: reads, writes, finished
//! connections, mesh batches, and the journal task (syncs and what they make durable).

use super::*;

impl Sim {
    /// Starts every shard on its journal (recovering it) and waits, as the runtime does, until
    /// every shard's restored subscriptions are acknowledged by all the others.
    pub(super) fn boot(&mut self) {
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
                logins: Vec::new(),
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
    pub(super) fn describe_sessions(&self, k: usize) -> String {
        let mut all: Vec<String> = self.shards[k]
            .st
            .sessions
            .values()
            .map(|s| {
                let mut subs: Vec<&str> = s.subscriptions.keys().collect();
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
    pub(super) fn apply(&mut self, k: usize) {
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
            // Paused connections are skipped by `readable`; one read again first handles what
            // it read before the pause.
            for &(key, on) in &fx.reads {
                if on {
                    self.shards[k].st.resume_reading(key);
                }
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
            // Password checks go to the "verifier threads": answered by a later step.
            for c in std::mem::take(&mut fx.credential_checks) {
                self.log(format!("shard {k}: checks the password of key {}", c.key));
                self.shards[k].logins.push((c.key, c.token));
            }
            // Metrics replies: nobody scrapes in the simulator.
            fx.metrics_replies.clear();
            if fx.sync {
                self.shards[k].bell = true;
            }
            // Handoffs: sockets are just numbers here, nothing to duplicate.
            for (peer, batch) in fx.batches.into_iter().enumerate() {
                // glommio's channel mesh has no channel from a shard to itself: what a shard
                // sends itself is lost in the real broker.
                assert!(
                    batch.is_empty() || peer != k,
                    "shard {k} sent a mesh batch to itself: {batch:?}"
                );
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
    pub(super) fn read(&mut self, k: usize, key: usize, max: usize) -> Read {
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
    pub(super) fn drain(&mut self, k: usize, key: usize) {
        self.shards[k].st.resume_reading(key);
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
    pub(super) fn write(&mut self, k: usize, key: usize) {
        let Some(conn) = self.shards[k].st.conns.get_mut(key) else {
            return;
        };
        if conn.write_blocked() || conn.out.is_empty() {
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
        let total = conn.out.bytes();
        let n = if self.phase != RunPhase::Chaos || self.rng.chance(850) {
            total
        } else {
            self.rng.range(0, total as u64) as usize
        };
        if n == 0 {
            conn.set_write_blocked(true);
            return;
        }
        let bytes = take_front(conn.out.chunks_mut().expect("output queued"), n);
        let blocked = !conn.out.is_empty();
        conn.set_write_blocked(blocked);
        self.shards[k].st.wrote(key, n);
        self.emit(c, k, &bytes);
    }

    /// A blocked connection became writable: the front of its queue goes out
    /// (`poll_write`), the rest with the effects.
    pub(super) fn writable(&mut self, k: usize, key: usize) {
        let Some(conn) = self.shards[k].st.conns.get_mut(key) else {
            return;
        };
        if !conn.write_blocked() || conn.close.is_some() {
            return;
        }
        let Some(front) = conn.out.chunks_mut().and_then(|q| q.front()) else {
            conn.set_write_blocked(false);
            return;
        };
        let len = front.len() as u64;
        let n = self.rng.range(1, len) as usize;
        let c = conn.socket.0 as usize;
        let bytes = take_front(conn.out.chunks_mut().expect("output queued"), n);
        conn.set_write_blocked(false);
        self.shards[k].st.wrote(key, n);
        self.shards[k].st.want_write(key);
        self.emit(c, k, &bytes);
        self.apply(k);
    }

    /// The connection's task ends: a last write of what is queued, the core's bookkeeping,
    /// then the socket closes (or, handed over, lives on with the home shard).
    pub(super) fn finish(&mut self, k: usize, i: usize) {
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
        if !conn.out.is_empty() && !conn.write_blocked() && !self.conns[c].reset {
            let total = conn.out.bytes();
            let bytes = take_front(conn.out.chunks_mut().expect("output queued"), total);
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
    pub(super) fn emit(&mut self, c: usize, k: usize, bytes: &[u8]) {
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

    pub(super) fn deliver_batch(&mut self, pair: usize) {
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
    pub(super) fn journal_turn(&mut self, k: usize) {
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

    pub(super) fn unsynced(&self, k: usize) -> bool {
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
}

/// Removes the first `n` bytes of a queue of chunks.
pub(super) fn take_front(out: &mut VecDeque<bytes::Bytes>, mut n: usize) -> Vec<u8> {
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

pub(super) fn describe_batch(b: &Batch) -> String {
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

impl Sim {
    /// The verifier threads answer the `i`th pending check of shard `k`: the password is right
    /// (the simulated clients know theirs).
    pub(crate) fn answer_login(&mut self, k: usize, i: usize) {
        let (key, token) = self.shards[k].logins.swap_remove(i);
        self.log(format!("shard {k}: password of key {key} verified"));
        self.call(k, |st| st.credentials_checked(key, token, true));
    }
}
