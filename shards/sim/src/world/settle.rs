//! The end of a run: everything in flight carried to completion without faults, then
//! quiescence, and what is still busy if it does not come.

use super::*;

impl Sim {
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
                        .find(|(_, c)| c.write_blocked() && c.close.is_none())
                        .map(|(key, _)| key);
                    let Some(key) = blocked else { break };
                    self.writable(k, key);
                    progress = true;
                }
                while !self.shards[k].finishing.is_empty() {
                    self.finish(k, 0);
                    progress = true;
                }
                while !self.shards[k].logins.is_empty() {
                    self.answer_login(k, 0);
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
    pub(super) fn quiesce(&mut self) {
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
    pub(super) fn busy(&self) -> Option<String> {
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
