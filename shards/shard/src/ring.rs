//! The shard's network ring: an io_uring of its own beside glommio's, holding one multishot
//! receive per connection, the listeners' multishot accepts and the occasional wait for
//! writability (docs/decisions/2026-12-03-connection-readiness.md).
//!
//! Bytes arrive in buffers the kernel takes from a per-shard provided-buffer ring only when
//! there is something to read, so an idle connection holds no buffer; each buffer goes back to
//! the ring as soon as its completion is handled. The ring signals an eventfd when it posts
//! completions (on the shard's own thread: `COOP_TASKRUN`); the shard's network task waits on
//! that eventfd through glommio, so one glommio wake-up covers every completion posted
//! meanwhile.

use io_uring::{cqueue, squeue, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

/// The provided-buffer group every receive takes from.
const BGID: u16 = 0;
/// Bytes per provided buffer: a few small packets, or a slice of a large one.
pub const BUF_LEN: usize = 4096;
/// Submission queue entries; the queue is flushed whenever it fills.
const SQ_ENTRIES: u32 = 1024;
/// `io_uring_enter` flag: wait for (here: run the pending work of) completions.
const IORING_ENTER_GETEVENTS: u32 = 1;
/// Completions the ring holds before the kernel keeps the rest on its overflow list.
const CQ_ENTRIES: u32 = 16384;

/// What a completion belongs to, in the top byte of its user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A connection's receive (one-shot or multishot).
    Recv = 1,
    /// A connection's wait for room in its socket buffer.
    Writable = 2,
    /// A listener's multishot accept; the index is the listener's.
    Accept = 3,
    /// Cancellations: nothing to do when they complete.
    Cancel = 4,
}

/// User data of a request: what it is for, the generation of the connection slot it belongs
/// to (24 bits, so that a late completion of an earlier connection in the slot is ignored)
/// and the slot.
pub fn tag(op: Op, gen: u32, index: usize) -> u64 {
    ((op as u64) << 56) | (u64::from(gen & 0xFF_FFFF) << 32) | (index as u64 & 0xFFFF_FFFF)
}

/// The parts of a user data written by [`tag`].
pub fn untag(user_data: u64) -> (Option<Op>, u32, usize) {
    let op = match user_data >> 56 {
        1 => Some(Op::Recv),
        2 => Some(Op::Writable),
        3 => Some(Op::Accept),
        4 => Some(Op::Cancel),
        _ => None,
    };
    let gen = ((user_data >> 32) & 0xFF_FFFF) as u32;
    (op, gen, (user_data & 0xFFFF_FFFF) as usize)
}

/// A completion, copied out of the ring so that handling it can submit more.
#[derive(Clone, Copy, Debug)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

impl Cqe {
    /// The request stays armed and will complete again.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// The network ring of one shard. Created on the shard's thread, which alone submits to it.
pub struct NetRing {
    uring: IoUring,
    bufs: BufRing,
    eventfd: RawFd,
    /// Entries pushed since the last submit.
    queued: usize,
}

impl NetRing {
    /// A ring with `buffers` provided buffers (a power of two) of [`BUF_LEN`] bytes.
    pub fn new(buffers: u16) -> io::Result<NetRing> {
        // COOP_TASKRUN: bytes arriving do not interrupt a running thread to complete receives;
        // the work runs at its next entry into the kernel, or wakes it if it sleeps (in
        // glommio's ring), and the completions are posted then, signalling the eventfd from the
        // shard's own thread. DEFER_TASKRUN (work held until the shard asks for events) was
        // used first, but on Linux 6.18.44 the eventfd signal it sends from the sender's
        // softirq went through an RCU callback, 10-16 ms late: every message waited for it
        // (docs/decisions/2026-12-03-connection-readiness.md).
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let bufs = BufRing::register(&uring, buffers)?;
        // Blocking, so that glommio's read of it waits in the kernel rather than failing with
        // EAGAIN.
        // SAFETY: no preconditions.
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if eventfd < 0 {
            return Err(io::Error::last_os_error());
        }
        uring.submitter().register_eventfd(eventfd)?;
        Ok(NetRing {
            uring,
            bufs,
            eventfd,
            queued: 0,
        })
    }

    /// Whether the kernel signals the eventfd: off while the shard is handling batches anyway.
    pub fn signal_eventfd(&mut self, on: bool) {
        if on {
            self.uring.completion().enable_eventfd();
        } else {
            self.uring.completion().disable_eventfd();
        }
    }

    /// Signals the eventfd as the kernel would: completions are waiting that nobody else
    /// will announce, and the network task should take them in its own batches.
    pub fn wake(&self) {
        crate::io::signal_eventfd(self.eventfd);
    }

    /// The eventfd signalled whenever completions are posted.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd
    }

    /// Queues a request; a full submission queue is flushed first.
    pub fn push(&mut self, e: squeue::Entry) {
        // SAFETY: requests point at no memory of ours except the provided buffers, which live
        // as long as the ring.
        while unsafe { self.uring.submission().push(&e) }.is_err() {
            self.flush();
        }
        self.queued += 1;
    }

    /// Submits what was queued, without waiting.
    pub fn submit(&mut self) {
        if self.queued > 0 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        loop {
            match self.uring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the completion queue overflowed; the caller reaps, then submits again.
                Err(e) => {
                    tracing::debug!(error = %e, "network ring submit deferred");
                    return;
                }
            }
        }
        self.queued = 0;
    }

    /// Submits what was queued, runs the completion work the kernel holds for this thread, and
    /// moves completions to the end of `out`: all of them, or at most `max`. Returns whether
    /// some may be left (the caller comes back without waiting for the eventfd).
    ///
    /// `max` keeps a batch small enough that its deliveries stay in cache: a publisher that
    /// keeps its socket full would otherwise be read up to the whole buffer ring
    /// (`--receive-buffers`) before any of it is handled. The ring is entered only when there
    /// is something to submit, completion work pending (`IORING_SQ_TASKRUN`) or an overflow
    /// to flush: completions posted meanwhile (the thread runs that work on any system call,
    /// a `sendmsg` included) are taken without one.
    pub fn reap(&mut self, out: &mut VecDeque<Cqe>, max: usize) -> bool {
        let mut taken = 0;
        loop {
            let (to_submit, work) = {
                let mut sq = self.uring.submission();
                sq.sync();
                (sq.len() as u32, sq.taskrun() || sq.cq_overflow())
            };
            if to_submit > 0 || work {
                // SAFETY: no argument is passed; the flags ask only to run pending work.
                let r = unsafe {
                    self.uring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        0,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                };
                match r {
                    Ok(_) => self.queued = 0,
                    Err(e) => tracing::debug!(error = %e, "network ring enter deferred"),
                }
            }
            let mut cq = self.uring.completion();
            for c in cq.by_ref().take(max - taken) {
                out.push_back(Cqe {
                    user_data: c.user_data(),
                    res: c.result(),
                    flags: c.flags(),
                });
                taken += 1;
            }
            let left = !cq.is_empty();
            drop(cq);
            let work = {
                let sq = self.uring.submission();
                sq.taskrun() || sq.cq_overflow()
            };
            if taken >= max {
                return left || work;
            }
            if !work {
                return false;
            }
        }
    }

    /// The first `len` bytes of provided buffer `bid`.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.bufs.get(bid, len)
    }

    /// Returns buffer `bid` to the kernel.
    pub fn give_back(&mut self, bid: u16) {
        self.bufs.give_back(bid);
    }

    pub fn buf_group(&self) -> u16 {
        BGID
    }
}

/// A provided-buffer ring: the kernel picks a buffer from it when bytes arrive on any
/// connection; the shard hands each back once the bytes are copied into the core.
struct BufRing {
    entries: *mut io_uring::types::BufRingEntry,
    bufs: Vec<u8>,
    mask: u16,
}

impl BufRing {
    fn register(uring: &IoUring, count: u16) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "the buffer count is a power of two"
        );
        let size = usize::from(count) * std::mem::size_of::<io_uring::types::BufRingEntry>();
        // SAFETY: an anonymous private mapping, page aligned as the kernel requires.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is `size` bytes and is never unmapped while the ring lives (the
        // shard's ring lives as long as its thread).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(map as u64, count, BGID, 0)?;
        }
        let mut r = BufRing {
            entries: map.cast(),
            // A fixed cost of the shard, whatever its connections: written now so that it is
            // resident from the start rather than appearing as the first connections read.
            bufs: vec![0; BUF_LEN * usize::from(count)],
            mask: count - 1,
        };
        r.bufs.iter_mut().step_by(4096).for_each(|b| *b = 1);
        for bid in 0..count {
            r.give_back(bid);
        }
        Ok(r)
    }

    fn tail(&self) -> &AtomicU16 {
        // SAFETY: the kernel's ring tail is the `resv` field of entry 0 (offset 14), 2-byte
        // aligned; only this thread writes it.
        unsafe { &*(self.entries.cast::<u8>().add(14).cast::<AtomicU16>()) }
    }

    fn give_back(&mut self, bid: u16) {
        let tail = self.tail().load(Ordering::Relaxed);
        let slot = tail & self.mask;
        let addr = self.bufs[usize::from(bid) * BUF_LEN..].as_mut_ptr();
        // SAFETY: slot < count entries of the mapping; only addr, len and bid are written,
        // not the tail that shares entry 0.
        let e = unsafe { &mut *self.entries.add(usize::from(slot)) };
        e.set_addr(addr as u64);
        e.set_len(BUF_LEN as u32);
        e.set_bid(bid);
        self.tail().store(tail.wrapping_add(1), Ordering::Release);
    }

    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * BUF_LEN;
        &self.bufs[start..start + len.min(BUF_LEN)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaps_take_every_receive_that_became_ready() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut ring = NetRing::new(256).expect("io_uring with provided buffers");
        let pairs: Vec<_> = (0..100)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        for (i, (_, b)) in pairs.iter().enumerate() {
            let e = io_uring::opcode::RecvMulti::new(io_uring::types::Fd(b.as_raw_fd()), BGID)
                .build()
                .user_data(tag(Op::Recv, 0, i));
            ring.push(e);
        }
        ring.submit();
        for (a, _) in &pairs {
            (&*a).write_all(b"x").unwrap();
        }
        let mut cqes = VecDeque::new();
        assert!(ring.reap(&mut cqes, 30), "a capped reap says work is left");
        assert_eq!(cqes.len(), 30, "a reap takes no more than its cap");
        let mut reaps = 1;
        while ring.reap(&mut cqes, 30) {
            reaps += 1;
            assert!(reaps < 10, "the reaps end");
        }
        assert_eq!(cqes.len(), 100, "capped reaps do not leave the rest behind");
        let mut keys: Vec<usize> = cqes.iter().map(|c| untag(c.user_data).2).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 100, "every receive completed once");
    }

    #[test]
    fn tags_round_trip_and_generations_wrap_to_24_bits() {
        let t = tag(Op::Writable, 0x0123_4567, 19_999);
        assert_eq!(untag(t), (Some(Op::Writable), 0x23_4567, 19_999));
        assert_eq!(untag(tag(Op::Accept, 0, 3)), (Some(Op::Accept), 0, 3));
        assert_eq!(untag(0).0, None);
    }

    /// Waits up to `ms` for the eventfd to be signalled; whether it was.
    fn eventfd_signalled_within(ring: &NetRing, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: ring.eventfd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    #[test]
    fn the_first_bytes_on_a_new_receive_signal_the_eventfd_at_once() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        // A late signal is a wake-up missed by milliseconds: with DEFER_TASKRUN on Linux
        // 6.18.44 the first one after arming came 10-16 ms late (an RCU callback), and in the
        // broker every one did. A fresh ring per attempt; any attempt within 2 ms passes, so a
        // loaded machine does not fail it while the late signal fails every attempt.
        let prompt = (0..5).any(|_| {
            let mut ring = NetRing::new(4).expect("io_uring with provided buffers");
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            let e = io_uring::opcode::RecvMulti::new(io_uring::types::Fd(b.as_raw_fd()), BGID)
                .build()
                .user_data(tag(Op::Recv, 1, 1));
            ring.push(e);
            ring.submit();
            (&a).write_all(b"x").unwrap();
            eventfd_signalled_within(&ring, 2)
        });
        assert!(prompt, "the eventfd was signalled late in every attempt");
    }

    #[test]
    fn a_multishot_receive_reads_into_provided_buffers_and_ends_at_eof() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut ring = NetRing::new(4).expect("io_uring with provided buffers");
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = io_uring::opcode::RecvMulti::new(io_uring::types::Fd(b.as_raw_fd()), BGID)
            .build()
            .user_data(tag(Op::Recv, 7, 1));
        ring.push(e);
        ring.submit();
        let mut got = Vec::new();
        let mut cqes = VecDeque::new();
        // Ten writes through four buffers: each goes back after use.
        for i in 0..10u8 {
            (&a).write_all(&[i; 100]).unwrap();
            // The receive is announced on the eventfd before anyone asks for events.
            assert!(eventfd_signalled_within(&ring, 2_000), "eventfd signalled");
            let mut count = [0u8; 8];
            // SAFETY: an 8-byte read of the eventfd into an 8-byte buffer.
            unsafe { libc::read(ring.eventfd(), count.as_mut_ptr().cast(), 8) };
            while cqes.is_empty() {
                ring.uring.submit_and_wait(1).unwrap();
                ring.reap(&mut cqes, usize::MAX);
            }
            let c = cqes.pop_front().unwrap();
            assert_eq!(untag(c.user_data), (Some(Op::Recv), 7, 1));
            assert!(c.more());
            let bid = c.buffer().expect("a buffer");
            got.extend_from_slice(ring.buffer(bid, c.res as usize));
            ring.give_back(bid);
        }
        assert_eq!(got.len(), 1000);
        assert!(got
            .chunks(100)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&x| x == i as u8)));
        drop(a);
        while cqes.is_empty() {
            ring.uring.submit_and_wait(1).unwrap();
            ring.reap(&mut cqes, usize::MAX);
        }
        let c = cqes.pop_front().unwrap();
        assert_eq!(c.res, 0, "end of stream");
        assert!(!c.more());
    }
}
