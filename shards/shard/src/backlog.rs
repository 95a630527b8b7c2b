//! Work that waits behind the traffic: TLS handshakes (`secure.rs`) and the sockets of
//! finished connections, each done within a budget per turn once the turn's completions were
//! handled.
//!
//! Closing a connection costs 10-30 µs, nearly all of it in two system calls: the send of
//! its last bytes (a TLS close_notify, a DISCONNECT, a WebSocket close frame) and the `close`
//! of a TCP socket, each running the loopback's or the NIC's transmit path. When thousands of
//! clients leave at once (a fleet's loadgen exiting, a NAT dropping its table), their
//! DISCONNECTs and ends of stream sit in the ring among the PUBLISHes of clients that stay,
//! and closing each in arrival order made every one of those PUBLISHes wait for the closes
//! ahead of it: 10,000 clients leaving at once delayed the traffic of established devices by
//! up to 240 ms. So a close is decided and its bookkeeping done at once (the session, the
//! will, the slot), and its last bytes and `close` wait in a backlog of their own.
//!
//! While the ring still holds more completions than a batch takes, the backlogs wait: a
//! completion that only queues a ClientHello or decides a close costs a few microseconds at
//! most, so the ring is emptied first and the PUBLISHes behind a flood of them are reached
//! soon.
//! The backlogs still get their budget at least every [`MAX_WAIT`], so that a shard under
//! sustained traffic keeps accepting and closing connections.

use crate::driver::Shard;
use crate::io;
use crate::ws::WsConn;
use ringmq_core::ShardState;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Time a shard spends on closes in one turn once the connections with traffic had theirs:
/// about 15 closes.
const CLOSE_BUDGET: Duration = Duration::from_micros(250);

/// Longest a non-empty backlog waits for its turn while the ring keeps handing out full
/// batches.
const MAX_WAIT: Duration = Duration::from_millis(2);

/// A connection the core has finished with: its descriptor, the bytes it still gets (empty
/// for most), and whether to shut it and linger (the client was told why) or close it.
struct LastWords {
    fd: RawFd,
    bytes: Vec<u8>,
    linger: bool,
}

/// Sockets waiting for their last bytes and their close, in the order they were finished.
#[derive(Default)]
pub struct Closing(VecDeque<LastWords>);

impl Closing {
    /// Queues a finished connection's socket; true if the backlog was empty (nothing may be
    /// coming to take it: the caller wakes the network task).
    pub fn push(&mut self, fd: RawFd, bytes: Vec<u8>, linger: bool) -> bool {
        self.0.push_back(LastWords { fd, bytes, linger });
        self.0.len() == 1
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Shard {
    /// The backlogs' sizes, for the metrics.
    pub(crate) fn backlog_sizes(&self) -> ringmq_core::metrics::Backlogs {
        ringmq_core::metrics::Backlogs {
            logins: self.logins.borrow().as_ref().map_or(0, |l| l.waiting()) as u64,
            handshakes: self.tls.borrow().backlog_len() as u64,
            closes: self.closing.borrow().0.len() as u64,
        }
    }

    /// What a finishing connection still gets, through its layers in order: the output the
    /// core queued (unless the socket was blocked or a layer still holds bytes it did not
    /// take, and, for WebSocket, only once upgraded), then framed and followed by a close
    /// frame (WebSocket), then encrypted and followed by close_notify (TLS). The layers'
    /// sessions leave their tables.
    pub(crate) fn last_words(&self, st: &mut ShardState, key: usize, fd: RawFd) -> Vec<u8> {
        let tls = self.tls_end(st, key, fd);
        let ws = self.ws_take(fd);
        let mut last = Vec::new();
        let Some(conn) = st.conns.get_mut(key) else {
            return last;
        };
        let held = tls.as_ref().is_some_and(|t| !t.unsent.is_empty())
            || ws.as_ref().is_some_and(|w| !w.unsent.is_empty());
        if conn.write_blocked() || held {
            return last;
        }
        if ws.as_ref().is_none_or(|w| w.is_open()) {
            if let Some(chunks) = conn.out.chunks_mut() {
                for c in chunks.iter() {
                    last.extend_from_slice(c);
                }
            }
        }
        if let Some(mut w) = ws {
            let mut framed = Vec::new();
            if !last.is_empty() {
                WsConn::frame(&last, &mut framed);
            }
            w.close(crate::ws::close_code(conn.close), &mut framed);
            last = framed;
        }
        if let Some(mut t) = tls {
            let mut sealed = Vec::new();
            if !last.is_empty() {
                t.encrypt(&last, &mut sealed);
            }
            t.close_notify(&mut sealed);
            last = sealed;
        }
        last
    }

    /// The backlogs' turn after a batch of completions; `ring_more`: the ring has more
    /// ready. Returns how many handshakes and closes were done, and whether some still wait.
    pub(crate) fn backlogs(&self, ring_more: bool) -> (usize, bool) {
        let handshakes = self.tls.borrow().has_backlog();
        let closes = !self.closing.borrow().is_empty();
        if !handshakes && !closes {
            return (0, false);
        }
        let now = Instant::now();
        if ring_more && now.duration_since(self.backlog_turn.get()) < MAX_WAIT {
            return (0, true);
        }
        self.backlog_turn.set(now);
        let (shakes, waiting) = if handshakes {
            self.with_state(|st| self.tls_handshakes(st))
        } else {
            (0, false)
        };
        let (closed, closing) = if closes {
            self.close_waiting(CLOSE_BUDGET)
        } else {
            (0, false)
        };
        (shakes + closed, waiting || closing)
    }

    /// Sends the last bytes of the sockets in the backlog and closes them (or shuts them, to
    /// linger), oldest first, for at most `budget` (at least one). Returns how many, and
    /// whether some still wait.
    pub(crate) fn close_waiting(&self, budget: Duration) -> (usize, bool) {
        let start = Instant::now();
        let mut n = 0;
        loop {
            if n > 0 && start.elapsed() >= budget {
                return (n, !self.closing.borrow().is_empty());
            }
            let Some(w) = self.closing.borrow_mut().0.pop_front() else {
                return (n, false);
            };
            if !w.bytes.is_empty() {
                let _ = io::send_bytes(w.fd, &w.bytes);
            }
            let mut net = self.net.borrow_mut();
            if w.linger {
                net.linger(w.fd, Instant::now());
            } else {
                io::close_fd(w.fd);
            }
            n += 1;
        }
    }
}
