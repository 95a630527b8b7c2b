//! The shard's deadlines: connect timeouts, keep-alives, refused logins, session expiry and
//! will delays, all in one binary heap, so that a tick costs what is due, not what exists.
//!
//! Deadlines are checked lazily. A connection has one entry; a packet received does not touch
//! the heap, the entry fires at the deadline it was given, and if the connection was heard
//! from since, it goes back with the new deadline. An idle connection with keep-alive therefore
//! costs one heap operation per keep-alive period, and one without none at all. The entry that
//! counts for a connection is the one whose deadline it remembers (`Conn::timer_due`); others
//! (from an earlier phase, or an earlier connection under the same key) are dropped when they
//! fire. A session's entry is the one of its latest disconnection; a will's, the one it was
//! delayed with.

use super::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How long a connection waiting for a takeover or a sync goes between checks; both phases
/// last milliseconds.
const RECHECK_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Conn = 0,
    Session = 1,
    Will = 2,
    /// A refused login's CONNACK (`connect.rs`), by connection key.
    Login = 3,
}

/// One deadline: 16 bytes. `at` is the due time in ms shifted left by 2, with the kind below,
/// so entries order by time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: u64,
    /// A connection key, or a session id.
    what: u64,
}

impl Entry {
    fn new(due_ms: u64, kind: Kind, what: u64) -> Entry {
        Entry {
            at: (due_ms << 2) | kind as u64,
            what,
        }
    }

    fn due_ms(self) -> u64 {
        self.at >> 2
    }

    fn kind(self) -> Kind {
        match self.at & 3 {
            0 => Kind::Conn,
            1 => Kind::Session,
            2 => Kind::Will,
            _ => Kind::Login,
        }
    }
}

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Timers {
    fn push(&mut self, due_ms: u64, kind: Kind, what: u64) {
        self.heap.push(Reverse(Entry::new(due_ms, kind, what)));
    }

    /// Every entry due at `now_ms`, sorted and without duplicates.
    fn pop_due(&mut self, now_ms: u64) -> Vec<Entry> {
        let mut due = Vec::new();
        while let Some(Reverse(e)) = self.heap.peek() {
            if e.due_ms() > now_ms {
                break;
            }
            due.push(*e);
            self.heap.pop();
        }
        due.sort_unstable();
        due.dedup();
        due
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

impl ShardState {
    /// Gives connection `key` the entry for its next deadline in its current phase (none for
    /// an active connection without keep-alive).
    pub(super) fn watch_conn(&mut self, key: usize) {
        let now = self.now_ms();
        let connect_timeout = self.cfg.connect_timeout.as_millis() as u64;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let due = match c.phase {
            // The tick's test is `(now_us - opened_us) / 1000 >= timeout`.
            Phase::AwaitConnect => (c.opened_us / 1000 + connect_timeout).max(now + 1),
            Phase::Active if c.keep_alive_s > 0 => {
                (c.last_rx_ms + u64::from(c.keep_alive_s) * 1500 + 1).max(now + 1)
            }
            Phase::Active => {
                c.timer_due = 0;
                return;
            }
            Phase::AwaitTakeover | Phase::AwaitSync => now + RECHECK_MS,
        };
        c.timer_due = due as u32;
        self.timers.push(due, Kind::Conn, key as u64);
    }

    /// A session went offline (or was restored offline): it ends at its expiry.
    pub(super) fn watch_session(&mut self, sid: u64) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let (Some(t), false) = (s.disconnected_at(), s.expiry_interval == u32::MAX) else {
            return;
        };
        let due_s = t.saturating_add(u64::from(s.expiry_interval));
        self.timers
            .push(due_s.saturating_mul(1000), Kind::Session, sid);
    }

    /// A will was delayed until `due_ms`.
    pub(super) fn watch_will(&mut self, sid: u64, due_ms: u64) {
        self.timers.push(due_ms, Kind::Will, sid);
    }

    /// A refused login is answered at `due_ms`.
    pub(super) fn watch_login(&mut self, key: usize, due_ms: u64) {
        self.timers.push(due_ms, Kind::Login, key as u64);
    }

    /// Deadlines in the heap (metrics, tests).
    pub fn timers_pending(&self) -> usize {
        self.timers.len()
    }

    /// Handles what is due: connections that missed their CONNECT or keep-alive, sessions
    /// that expired, wills whose delay is over, in that order.
    pub(super) fn fire_timers(&mut self) {
        let now = self.now_ms();
        let now_us = self.now_us();
        let now_s = self.now_s();
        let connect_timeout = self.cfg.connect_timeout.as_millis() as u64;
        let due = self.timers.pop_due(now);
        let mut expired = Vec::new();
        for e in due.iter().filter(|e| e.kind() == Kind::Conn) {
            let key = e.what as usize;
            let Some(c) = self.conns.get(key) else {
                continue;
            };
            if c.close.is_some() || c.timer_due != e.due_ms() as u32 {
                continue;
            }
            let why = match c.phase {
                Phase::AwaitConnect
                    if now_us.saturating_sub(c.opened_us) / 1000 >= connect_timeout =>
                {
                    Some(Close::ConnectTimeout)
                }
                // A connection the broker stopped reading is not silent (backpressure.rs).
                Phase::Active
                    if c.keep_alive_s > 0
                        && !c.reads_paused()
                        && now.saturating_sub(c.last_rx_ms) > u64::from(c.keep_alive_s) * 1500 =>
                {
                    Some(Close::KeepAlive)
                }
                _ => None,
            };
            match why {
                Some(why) => expired.push((key, why)),
                None => self.watch_conn(key),
            }
        }
        for (key, why) in expired {
            self.close_conn(key, why);
        }
        for e in due.iter().filter(|e| e.kind() == Kind::Login) {
            self.refuse_login(e.what as usize);
        }
        for e in due.iter().filter(|e| e.kind() == Kind::Session) {
            // Gone, back online, or offline again since (a later entry counts): nothing.
            if self.sessions.get(&e.what).is_some_and(|s| s.expired(now_s)) {
                self.remove_session(e.what);
            }
        }
        for e in due.iter().filter(|e| e.kind() == Kind::Will) {
            let sid = e.what;
            while let Some(i) = self
                .delayed_wills
                .iter()
                .position(|w| w.session == sid && w.due_ms <= now)
            {
                let w = self.delayed_wills.swap_remove(i);
                self.publish_will(*w.will, w.origin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_order_by_time_and_pop_due_takes_only_what_is_due_once() {
        let mut t = Timers::default();
        t.push(500, Kind::Will, 7);
        t.push(100, Kind::Session, 9);
        t.push(100, Kind::Conn, 3);
        t.push(100, Kind::Conn, 3);
        t.push(2_000, Kind::Conn, 4);
        assert!(t.pop_due(99).is_empty());
        let due = t.pop_due(500);
        let got: Vec<_> = due.iter().map(|e| (e.due_ms(), e.kind(), e.what)).collect();
        assert_eq!(
            got,
            vec![
                (100, Kind::Conn, 3),
                (100, Kind::Session, 9),
                (500, Kind::Will, 7)
            ]
        );
        assert_eq!(t.len(), 1, "the entry due at 2,000 stays");
    }
}
