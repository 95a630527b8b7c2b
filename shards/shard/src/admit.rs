//! What a listener lets in: its own connection limit (process-wide), its accept rate (each
//! shard enforces its share) and its TLS handshakes in progress (process-wide).
//!
//! A connection over the listener's connection limit is refused at accept, like one over
//! `--max-connections`. The rate and the handshake limit do not refuse anything: the shard
//! stops accepting on the listener (its multishot accept is cancelled) and new connections
//! wait in the kernel's backlog, where TCP holds the clients back, until the rate allows one
//! more or a handshake ends.

use crate::driver::Shard;
use crate::io;
use ringmq_core::state::SocketId;
use ringmq_core::ShardState;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A listener's process-wide counts, shared by every shard.
#[derive(Default, Debug)]
pub struct Counts {
    pub connections: AtomicUsize,
    pub handshakes: AtomicUsize,
}

/// Why a shard stopped accepting on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The rate: until the bucket holds a token again.
    Rate,
    /// The handshake limit: until a handshake ends.
    Handshakes,
}

/// One listener's admission on one shard.
#[derive(Debug)]
pub struct Gate {
    counts: Arc<Counts>,
    max_connections: usize,
    max_handshakes: usize,
    /// This shard's share of the listener's rate, per second (0: no limit); the bucket holds
    /// at most one second of it, so the tick that resumes accepting (every 250 ms) lets the
    /// rate through on average.
    rate: f64,
    tokens: f64,
    refilled: Instant,
    pub paused: Option<Pause>,
    /// Connections the kernel had accepted when accepting paused (the cancellation of a
    /// multishot accept comes after what it already posted): unread until the gate opens.
    held: VecDeque<RawFd>,
}

impl Gate {
    /// `rate` is the listener's, split evenly over `shards` (SO_REUSEPORT spreads the
    /// connections over the shards' sockets).
    pub fn new(
        counts: Arc<Counts>,
        max_connections: usize,
        rate: u32,
        max_handshakes: usize,
        shards: usize,
    ) -> Gate {
        let rate = f64::from(rate) / shards.max(1) as f64;
        Gate {
            counts,
            max_connections,
            max_handshakes,
            rate,
            tokens: rate.max(1.0),
            refilled: Instant::now(),
            paused: None,
            held: VecDeque::new(),
        }
    }

    /// Counts one more connection; false (not counted) if the listener holds its limit.
    pub fn admit(&self) -> bool {
        let n = self.counts.connections.fetch_add(1, Ordering::Relaxed);
        if self.max_connections != 0 && n >= self.max_connections {
            self.counts.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A connection of this listener ended (on whichever shard holds it).
    pub fn left(counts: &Counts) {
        counts.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> &Arc<Counts> {
        &self.counts
    }

    /// An admitted connection was accepted (`tls`: its handshake starts); `Some` if the shard
    /// must stop accepting on the listener now.
    pub fn accepted(&mut self, tls: bool, now: Instant) -> Option<Pause> {
        if tls {
            let n = self.counts.handshakes.fetch_add(1, Ordering::Relaxed) + 1;
            if self.max_handshakes != 0 && n >= self.max_handshakes {
                return self.pause(Pause::Handshakes);
            }
        }
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= 1.0;
            if self.tokens < 1.0 {
                return self.pause(Pause::Rate);
            }
        }
        None
    }

    fn pause(&mut self, why: Pause) -> Option<Pause> {
        let first = self.paused.is_none();
        self.paused = Some(why);
        first.then_some(why)
    }

    /// A handshake of this listener ended, established or not.
    pub fn handshake_done(counts: &Counts) {
        counts.handshakes.fetch_sub(1, Ordering::Relaxed);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
    }

    /// Whether the listener may let a connection in: it is not paused, or it was and now a
    /// token is there and handshakes are under the limit (then it is no longer paused).
    pub fn open(&mut self, now: Instant) -> bool {
        if self.paused.is_none() {
            return true;
        }
        if self.rate > 0.0 {
            self.refill(now);
            if self.tokens < 1.0 {
                self.paused = Some(Pause::Rate);
                return false;
            }
        }
        let handshakes = self.counts.handshakes.load(Ordering::Relaxed);
        if self.max_handshakes != 0 && handshakes >= self.max_handshakes {
            self.paused = Some(Pause::Handshakes);
            return false;
        }
        self.paused = None;
        true
    }
}

/// The admission side of a shard: a gate per listener, by the index the network ring uses.
#[derive(Default)]
pub struct Gates {
    list: Vec<Gate>,
    /// Whether each listener speaks TLS.
    tls: Vec<bool>,
    /// Listeners paused for handshakes where one ended since: looked at in the next turn.
    resume: Vec<usize>,
}

impl Shard {
    /// Adds listener `index`'s gate (in the order of `Config::all_listeners`).
    pub(crate) fn add_gate(&self, gate: Gate, tls: bool) {
        let mut g = self.gates.borrow_mut();
        g.list.push(gate);
        g.tls.push(tls);
    }

    pub(crate) fn listener_is_tls(&self, index: usize) -> bool {
        self.gates.borrow().tls.get(index).copied().unwrap_or(false)
    }

    /// Counts a connection accepted on listener `index`; false if the listener holds its own
    /// connection limit (the caller closes it).
    pub(crate) fn admit(&self, st: &mut ShardState, index: usize) -> bool {
        let ok = self.gates.borrow().list.get(index).is_none_or(Gate::admit);
        if !ok {
            st.counters.connections_refused_listener += 1;
            tracing::debug!(
                listener = index,
                "connection refused: the listener's max_connections reached"
            );
        }
        ok
    }

    /// A connection of listener `index` was added: the shard stops accepting on the
    /// listener if its rate or handshake limit says so.
    pub(crate) fn accepted(&self, st: &mut ShardState, index: usize, tls: bool) {
        let why = match self.gates.borrow_mut().list.get_mut(index) {
            Some(g) => g.accepted(tls, Instant::now()),
            None => None,
        };
        if let Some(why) = why {
            match why {
                Pause::Rate => st.counters.accept_pauses_rate += 1,
                Pause::Handshakes => st.counters.accept_pauses_handshakes += 1,
            }
            self.net.borrow_mut().cancel_accept(index);
        }
    }

    /// Whether accepting on listener `index` is paused by its gate.
    pub(crate) fn accept_gated(&self, index: usize) -> bool {
        self.gates
            .borrow()
            .list
            .get(index)
            .is_some_and(|g| g.paused.is_some())
    }

    /// A connection of listener `listener` ended for good (not handed over).
    pub(crate) fn left(&self, listener: usize) {
        if let Some(g) = self.gates.borrow().list.get(listener) {
            Gate::left(g.counts());
        }
    }

    /// A TLS handshake of listener `listener` ended, established or not.
    pub(crate) fn handshake_done(&self, listener: usize) {
        let mut g = self.gates.borrow_mut();
        let g = &mut *g;
        if let Some(gate) = g.list.get(listener) {
            Gate::handshake_done(gate.counts());
            if gate.paused == Some(Pause::Handshakes) {
                g.resume.push(listener);
            }
        }
    }

    /// A connection accepted by the kernel while listener `index`'s gate is closed.
    pub(crate) fn hold(&self, index: usize, fd: RawFd) {
        self.gates.borrow_mut().list[index].held.push_back(fd);
    }

    /// A connection of listener `index`, past the gate: counted (or refused at a connection
    /// limit), its TLS session started, added to the core and read.
    pub(crate) fn take_conn(&self, st: &mut ShardState, index: usize, fd: RawFd) {
        let max = st.cfg.max_connections;
        if self.conn_count.fetch_add(1, Ordering::Relaxed) >= max {
            self.conn_count.fetch_sub(1, Ordering::Relaxed);
            st.counters.connections_refused += 1;
            tracing::debug!("connection refused: --max-connections reached");
            io::close_fd(fd);
            return;
        }
        if !self.admit(st, index) {
            self.conn_count.fetch_sub(1, Ordering::Relaxed);
            io::close_fd(fd);
            return;
        }
        if !self.tls_accept(index, fd) {
            self.conn_count.fetch_sub(1, Ordering::Relaxed);
            self.left(index);
            io::close_fd(fd);
            return;
        }
        self.ws_accept(index, fd);
        self.proxy_accept(index, fd);
        // TCP_NODELAY is inherited from the listening socket; at most 255 listeners (checked
        // by the configuration).
        let key = st.add_conn(SocketId(fd), index as u8);
        {
            let mut net = self.net.borrow_mut();
            net.slot(key).adopted = false;
            net.arm_recv(key, fd, false);
        }
        self.accepted(st, index, self.listener_is_tls(index));
    }

    /// Whether a handshake ended on this shard where a listener waits for one.
    pub(crate) fn accepts_to_resume(&self) -> bool {
        !self.gates.borrow().resume.is_empty()
    }

    /// Lets connections in again on the listeners whose gate allows it: those where a
    /// handshake ended on this shard, or every paused one (`all`, at the tick: the rate
    /// refilled, or handshakes ended on other shards). The connections held at the gate go
    /// first, one at a time while it stays open; then the listener's accept is armed again.
    pub(crate) fn resume_accepts(&self, st: &mut ShardState, all: bool) {
        let candidates: Vec<usize> = {
            let mut g = self.gates.borrow_mut();
            let resume = std::mem::take(&mut g.resume);
            if all {
                (0..g.list.len()).collect()
            } else {
                resume
            }
        };
        let now = Instant::now();
        for i in candidates {
            loop {
                let next = {
                    let mut g = self.gates.borrow_mut();
                    let gate = &mut g.list[i];
                    if !gate.open(now) || crate::runtime::shutting_down() {
                        break;
                    }
                    gate.held.pop_front()
                };
                match next {
                    Some(fd) => self.take_conn(st, i, fd),
                    None => {
                        self.net.borrow_mut().arm_accept(i);
                        break;
                    }
                }
            }
        }
    }

    /// At shutdown: the connections held at the gates are closed.
    pub(crate) fn close_held(&self) {
        for g in &mut self.gates.borrow_mut().list {
            for fd in g.held.drain(..) {
                io::close_fd(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_connection_limit_refuses_and_counts_nothing() {
        let g = Gate::new(Arc::default(), 2, 0, 0, 1);
        assert!(g.admit() && g.admit());
        assert!(!g.admit());
        assert_eq!(g.counts().connections.load(Ordering::Relaxed), 2);
        Gate::left(g.counts());
        assert!(g.admit());
    }

    #[test]
    fn the_rate_pauses_until_a_token_is_back() {
        // 20 per second over 2 shards: 10 per second here, a bucket of 10.
        let mut g = Gate::new(Arc::default(), 0, 20, 0, 2);
        let t0 = Instant::now();
        let mut accepted = 0;
        while g.accepted(false, t0).is_none() {
            accepted += 1;
        }
        assert_eq!(accepted, 9, "the tenth token empties the bucket and pauses");
        assert_eq!(g.paused, Some(Pause::Rate));
        assert!(!g.open(t0 + Duration::from_millis(50)));
        assert!(g.open(t0 + Duration::from_millis(250)));
        assert_eq!(g.paused, None);
        // A second's worth at most, however long it was idle.
        let later = t0 + Duration::from_secs(60);
        let n = (0..100)
            .take_while(|_| g.accepted(false, later).is_none())
            .count();
        assert_eq!(n, 9);
    }

    #[test]
    fn handshakes_pause_until_one_ends() {
        let mut g = Gate::new(Arc::default(), 0, 0, 2, 1);
        let now = Instant::now();
        assert_eq!(g.accepted(true, now), None);
        assert_eq!(g.accepted(true, now), Some(Pause::Handshakes));
        assert!(!g.open(now));
        Gate::handshake_done(g.counts());
        assert!(g.open(now));
        // Plain connections of a TLS-less listener never count as handshakes.
        let mut plain = Gate::new(Arc::default(), 0, 0, 1, 1);
        assert_eq!(plain.accepted(false, now), None);
    }
}
