//! Time and crashes: the virtual clock with the broker's tick, and the process (or machine)
//! dying and every shard restarting on its journal.

use super::*;

impl Sim {
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
}
