//! The connections of a shard as its network ring sees them: a slot per connection (a
//! generation and what is armed), the listeners, and the sockets lingering after a close.
//!
//! A connection is one entry in the core's table, one [`Slot`] here and its descriptor: no
//! task, no future, no buffer while idle. While a connection may still be handed to its home
//! shard (before its CONNECT is handled here) it reads with one-shot receives, so that no byte
//! past the CONNECT is taken by this shard after the hand-off is decided; from then on one
//! multishot receive stays armed until the connection ends.

use crate::io;
use crate::ring::{tag, Cqe, NetRing, Op};
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// What a connection has armed in the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Armed {
    #[default]
    Nothing,
    Once,
    Multi,
}

/// The driver's part of one connection (the core holds the rest, under the same key).
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// Bumped when the connection in the slot ends, so that completions of its requests that
    /// arrive later are recognised and ignored.
    pub gen: u32,
    pub recv: Armed,
    pub writable: bool,
    /// Handed over by another shard: its CONNECT was handled there, so it may read with a
    /// multishot receive at once.
    pub adopted: bool,
    /// The core stopped reading it (`Effects::reads`): no receive is armed again until it
    /// says otherwise.
    pub paused: bool,
}

/// How long, and how many bytes, a closing connection is read and discarded for.
pub const LINGER: Duration = Duration::from_millis(100);
const LINGER_BYTES: usize = 64 * 1024;
/// Lingering sockets closed in one turn: the sockets of a mass close (a keep-alive sweep,
/// a takeover storm) all come due together, and closing them at once would hold up the
/// turn's messages for 10-20 µs each.
const LINGER_CLOSES: usize = 16;

/// The network side of a shard.
pub struct Net {
    pub ring: NetRing,
    pub slots: Vec<Slot>,
    /// Completions reaped and not yet handled, in the order the kernel posted them.
    pub cqes: VecDeque<Cqe>,
    pub listeners: Vec<RawFd>,
    /// Whether each listener's multishot accept is armed (or its cancellation not yet done).
    accept_armed: Vec<bool>,
    /// Listeners whose accept ended on an error (out of descriptors): re-armed at the tick.
    pub accept_paused: Vec<usize>,
    /// Sockets whose write side is shut after the last packet, closed at their deadline
    /// (all deadlines are [`LINGER`] after the close, so the queue is in deadline order).
    lingering: VecDeque<(Instant, RawFd)>,
}

impl Net {
    pub fn new(ring: NetRing) -> Net {
        Net {
            ring,
            slots: Vec::new(),
            cqes: VecDeque::new(),
            listeners: Vec::new(),
            accept_armed: Vec::new(),
            accept_paused: Vec::new(),
            lingering: VecDeque::new(),
        }
    }

    /// The slot of connection `key`, created empty if the table is shorter.
    pub fn slot(&mut self, key: usize) -> &mut Slot {
        if self.slots.len() <= key {
            self.slots.resize(key + 1, Slot::default());
        }
        &mut self.slots[key]
    }

    /// Whether a completion tagged with `gen` belongs to the connection now in slot `key`.
    pub fn is_current(&self, key: usize, gen: u32) -> bool {
        self.slots
            .get(key)
            .is_some_and(|s| s.gen & 0xFF_FFFF == gen)
    }

    /// Arms the connection's receive: multishot once it can no longer be handed over.
    pub fn arm_recv(&mut self, key: usize, fd: RawFd, multi: bool) {
        let bgid = self.ring.buf_group();
        let slot = self.slot(key);
        if slot.recv != Armed::Nothing {
            return;
        }
        let multi = multi || slot.adopted;
        let ud = tag(Op::Recv, slot.gen, key);
        slot.recv = if multi { Armed::Multi } else { Armed::Once };
        let e = if multi {
            opcode::RecvMulti::new(types::Fd(fd), bgid).build()
        } else {
            opcode::Recv::new(
                types::Fd(fd),
                std::ptr::null_mut(),
                crate::ring::BUF_LEN as u32,
            )
            .buf_group(bgid)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
        };
        self.ring.push(e.user_data(ud));
    }

    /// Stops reading connection `key`: its multishot receive is cancelled (what completes
    /// before the cancellation is still handled) and not armed again while paused, so unread
    /// bytes stay in the socket buffer and TCP holds the client back.
    pub fn pause_recv(&mut self, key: usize) {
        let slot = self.slot(key);
        slot.paused = true;
        if slot.recv == Armed::Multi {
            let gen = slot.gen;
            self.cancel(tag(Op::Recv, gen, key));
        }
    }

    /// Reads connection `key` again; if its cancelled receive has not completed yet, the
    /// completion arms it (see the driver's `on_recv`).
    pub fn resume_recv(&mut self, key: usize, fd: RawFd) {
        let slot = self.slot(key);
        slot.paused = false;
        if slot.recv == Armed::Nothing {
            self.arm_recv(key, fd, true);
        }
    }

    /// Waits for room in the socket buffer of a connection whose output is blocked.
    pub fn arm_writable(&mut self, key: usize, fd: RawFd) {
        let slot = self.slot(key);
        if slot.writable {
            return;
        }
        slot.writable = true;
        let ud = tag(Op::Writable, slot.gen, key);
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32).build();
        self.ring.push(e.user_data(ud));
    }

    /// The connection in slot `key` has ended: its requests are cancelled and later
    /// completions of them ignored. The slot is ready for the next connection.
    pub fn release(&mut self, key: usize) {
        let slot = self.slot(key);
        let (gen, recv, writable) = (slot.gen, slot.recv, slot.writable);
        *slot = Slot {
            gen: gen.wrapping_add(1),
            ..Slot::default()
        };
        if recv != Armed::Nothing {
            self.cancel(tag(Op::Recv, gen, key));
        }
        if writable {
            self.cancel(tag(Op::Writable, gen, key));
        }
    }

    fn cancel(&mut self, user_data: u64) {
        let e = opcode::AsyncCancel::new(user_data).build();
        self.ring.push(e.user_data(tag(Op::Cancel, 0, 0)));
    }

    /// Adds a listening socket; its index is the listener's.
    pub fn add_listener(&mut self, fd: RawFd) -> usize {
        self.listeners.push(fd);
        self.accept_armed.push(false);
        self.listeners.len() - 1
    }

    /// Arms the multishot accept of listener `index`, unless it is armed.
    pub fn arm_accept(&mut self, index: usize) {
        if std::mem::replace(&mut self.accept_armed[index], true) {
            return;
        }
        let e = opcode::AcceptMulti::new(types::Fd(self.listeners[index]))
            .flags(libc::SOCK_CLOEXEC)
            .build();
        self.ring.push(e.user_data(tag(Op::Accept, 0, index)));
    }

    /// Stops accepting on listener `index`: its multishot accept is cancelled (connections
    /// it completes meanwhile are still handled).
    pub fn cancel_accept(&mut self, index: usize) {
        if self.accept_armed[index] {
            self.cancel(tag(Op::Accept, 0, index));
        }
    }

    /// Listener `index`'s multishot accept ended (the kernel posted its last completion).
    pub fn accept_ended(&mut self, index: usize) {
        self.accept_armed[index] = false;
    }

    /// A graceful close: the write side is shut down after the last packet and the socket
    /// closed a moment later, after reading what the client still sent. Closing with unread
    /// bytes would make the kernel answer with a reset, which can destroy the DISCONNECT or
    /// CONNACK before the client reads why it was disconnected.
    pub fn linger(&mut self, fd: RawFd, now: Instant) {
        io::shutdown_write(fd);
        self.lingering.push_back((now + LINGER, fd));
    }

    /// Closes the lingering sockets whose moment has passed (all of them with `all`), at most
    /// [`LINGER_CLOSES`] at a time unless `all`; whether more are due now.
    pub fn close_lingering(&mut self, now: Instant, all: bool) -> bool {
        let mut n = 0;
        while let Some(&(due, fd)) = self.lingering.front() {
            if !all && due > now {
                return false;
            }
            if !all && n == LINGER_CLOSES {
                return true;
            }
            self.lingering.pop_front();
            discard_input(fd);
            io::close_fd(fd);
            n += 1;
        }
        false
    }

    /// Sockets lingering now.
    pub fn lingering(&self) -> usize {
        self.lingering.len()
    }
}

/// Reads and drops what a closing socket holds, up to [`LINGER_BYTES`].
fn discard_input(fd: RawFd) {
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        // SAFETY: recv writes at most `sink.len()` bytes into `sink`.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver's whole per-connection state: the budget of issue 11 is 512 bytes per idle
    /// connection for everything.
    #[test]
    fn a_slot_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 8);
    }
}
