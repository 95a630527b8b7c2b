//! netprobe: measures how a shard could wait for bytes on many mostly idle connections with its
//! own io_uring, before the connection driver is rebuilt (issue 11,
//! docs/decisions/2026-12-03-connection-readiness.md).
//!
//! `server` is one thread with one ring that accepts connections and counts the bytes they
//! send, waiting for them in one of four ways (`--mode`):
//! - `recv-multi`: one multishot RECV per connection, buffers taken from a provided-buffer ring
//!   shared by all connections (a connection holds no buffer while idle);
//! - `poll-multi`: one multishot POLL_ADD per connection, then `recv` into one scratch buffer;
//! - `poll-oneshot`: one POLL_ADD per connection, re-armed after each wake-up (glommio's model);
//! - `epoll`: every connection in one epoll set; the ring polls only the epoll descriptor.
//!
//! `--cancel-per-loop` submits one ASYNC_CANCEL of a request that does not exist per loop
//! iteration, as glommio 0.9 does when it re-arms its preemption timer: the kernel looks the
//! request up among the armed polls first. It prints one JSON line per second (CPU ticks, RSS,
//! kernel slab, connections, bytes) so a script can take the steady part of a run.
//!
//! `client` opens `--idle` connections that never send and `--active` connections that send
//! 64-byte messages, one per write like real devices, `--rate` per second in total.

use clap::{Parser, Subcommand, ValueEnum};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io::Write;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const MSG: usize = 64;
const BUF_LEN: usize = 4096;
const BUF_COUNT: u16 = 1024;
const BGID: u16 = 0;
const TAG_ACCEPT: u64 = u64::MAX;
const TAG_EPOLL: u64 = u64::MAX - 1;
const TAG_IGNORE: u64 = u64::MAX - 2;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Server {
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long, default_value_t = 19883)]
        port: u16,
        #[arg(long)]
        cpu: Option<usize>,
        /// Seconds to run (bounded, like every load loop here).
        #[arg(long, default_value_t = 30)]
        secs: u64,
        #[arg(long)]
        cancel_per_loop: bool,
    },
    Client {
        #[arg(long, default_value_t = 19883)]
        port: u16,
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long, default_value_t = 1000)]
        idle: usize,
        #[arg(long, default_value_t = 1000)]
        active: usize,
        /// Messages per second over all active connections.
        #[arg(long, default_value_t = 20000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    RecvMulti,
    PollMulti,
    PollOneshot,
    Epoll,
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Server {
            mode,
            port,
            cpu,
            secs,
            cancel_per_loop,
        } => {
            pin(cpu);
            Server::new(mode, port, cancel_per_loop).run(Duration::from_secs(secs));
        }
        Cmd::Client {
            port,
            cpu,
            idle,
            active,
            rate,
            secs,
        } => {
            pin(cpu);
            client(port, idle, active, rate, Duration::from_secs(secs));
        }
    }
}

fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// A provided-buffer ring: `BUF_COUNT` buffers of `BUF_LEN` bytes the kernel picks from when
/// bytes arrive on any connection, handed back after each completion.
struct BufRing {
    ring: *mut io_uring::types::BufRingEntry,
    bufs: Vec<u8>,
    mask: u16,
}

impl BufRing {
    fn register(uring: &IoUring) -> BufRing {
        let size = BUF_COUNT as usize * std::mem::size_of::<io_uring::types::BufRingEntry>();
        // SAFETY: an anonymous private mapping, page aligned as the kernel requires.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ring, libc::MAP_FAILED, "mmap buffer ring");
        // SAFETY: the mapping is `size` bytes and lives as long as the ring (never unmapped).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, BUF_COUNT, BGID, 0)
                .expect("register_buf_ring");
        }
        let mut r = BufRing {
            ring: ring.cast(),
            // Touched now, so the pool is in the baseline RSS, not in "per connection".
            bufs: vec![1; BUF_LEN * BUF_COUNT as usize],
            mask: BUF_COUNT - 1,
        };
        for bid in 0..BUF_COUNT {
            r.push(bid, bid);
        }
        r.publish(BUF_COUNT);
        r
    }

    fn tail(&self) -> &AtomicU16 {
        // SAFETY: the tail is the `resv` field of entry 0 (offset 14), 2-byte aligned.
        unsafe { &*(self.ring.cast::<u8>().add(14).cast::<AtomicU16>()) }
    }

    /// Writes buffer `bid` into slot `tail + k` (not visible until `publish`).
    fn push(&mut self, bid: u16, k: u16) {
        let slot = self.tail().load(Ordering::Relaxed).wrapping_add(k) & self.mask;
        let addr = self.bufs[bid as usize * BUF_LEN..].as_mut_ptr();
        // SAFETY: slot < BUF_COUNT entries of the mapping; addr/len/bid only (not the tail).
        let e = unsafe { &mut *self.ring.add(slot as usize) };
        e.set_addr(addr as u64);
        e.set_len(BUF_LEN as u32);
        e.set_bid(bid);
    }

    fn publish(&self, n: u16) {
        let t = self.tail().load(Ordering::Relaxed);
        self.tail().store(t.wrapping_add(n), Ordering::Release);
    }
}

struct Server {
    uring: IoUring,
    mode: Mode,
    listener: TcpListener,
    bufs: Option<BufRing>,
    epfd: i32,
    scratch: Vec<u8>,
    conns: usize,
    bytes: u64,
    cancel_per_loop: bool,
    loops: u64,
    /// Buffers written back into the ring in this batch, not yet published.
    returned: u16,
}

impl Server {
    fn new(mode: Mode, port: u16, cancel_per_loop: bool) -> Server {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(32768)
            .build(4096)
            .expect("io_uring");
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        // std listens with a backlog of 128: a connect burst overflows it while the loop waits
        // for a CPU, and each overflow costs the client a 1 s SYN retransmission.
        // SAFETY: our listening socket; listen again only changes the backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        let bufs = (mode == Mode::RecvMulti).then(|| BufRing::register(&uring));
        // SAFETY: no preconditions.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        Server {
            uring,
            mode,
            listener,
            bufs,
            epfd,
            scratch: vec![0; 64 * 1024],
            conns: 0,
            bytes: 0,
            cancel_per_loop,
            loops: 0,
            returned: 0,
        }
    }

    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry points only at memory owned by `self` for the ring's lifetime.
        while unsafe { self.uring.submission().push(&e) }.is_err() {
            self.uring.submit().expect("submit");
        }
    }

    fn arm(&mut self, fd: i32) {
        let e = match self.mode {
            Mode::RecvMulti => opcode::RecvMulti::new(types::Fd(fd), BGID).build(),
            Mode::PollMulti => opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build(),
            Mode::PollOneshot => opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build(),
            Mode::Epoll => {
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                    u64: fd as u64,
                };
                // SAFETY: valid descriptors and event.
                unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                return;
            }
        };
        self.push(e.user_data(fd as u64));
    }

    fn run(mut self, secs: Duration) {
        let lfd = self.listener.as_raw_fd();
        self.push(
            opcode::AcceptMulti::new(types::Fd(lfd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(TAG_ACCEPT),
        );
        if self.mode == Mode::Epoll {
            self.push(
                opcode::PollAdd::new(types::Fd(self.epfd), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(TAG_EPOLL),
            );
        }
        let start = Instant::now();
        let mut next_report = start;
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
        let mut busy = false;
        while start.elapsed() < secs {
            // Only after an iteration that did work, as glommio re-arms its timer: a cancel
            // completes at once and would otherwise keep the loop spinning.
            if self.cancel_per_loop && busy {
                self.push(
                    opcode::AsyncCancel::new(TAG_IGNORE - 1)
                        .build()
                        .user_data(TAG_IGNORE),
                );
            }
            let ts = types::Timespec::new().nsec(100_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.uring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("submit: {e}"),
            }
            self.loops += 1;
            cqes.clear();
            cqes.extend(
                self.uring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            busy = cqes.iter().any(|c| c.0 != TAG_IGNORE);
            for &(tag, res, flags) in &cqes {
                self.on_cqe(tag, res, flags);
            }
            if self.returned > 0 {
                self.bufs
                    .as_ref()
                    .expect("recv-multi")
                    .publish(self.returned);
                self.returned = 0;
            }
            if Instant::now() >= next_report {
                self.report(start);
                next_report += Duration::from_secs(1);
            }
        }
        self.report(start);
    }

    fn on_cqe(&mut self, tag: u64, res: i32, flags: u32) {
        match tag {
            TAG_IGNORE => {}
            TAG_ACCEPT => {
                if res >= 0 {
                    self.conns += 1;
                    self.arm(res);
                }
                if !cqueue::more(flags) {
                    panic!("multishot accept ended: {res}");
                }
            }
            TAG_EPOLL => {
                self.on_epoll();
                if !cqueue::more(flags) {
                    self.push(
                        opcode::PollAdd::new(types::Fd(self.epfd), libc::POLLIN as u32)
                            .multi(true)
                            .build()
                            .user_data(TAG_EPOLL),
                    );
                }
            }
            fd => self.on_conn(fd as i32, res, flags),
        }
    }

    /// Buffers it consumed go back into the ring, published after the batch.
    fn on_conn(&mut self, fd: i32, res: i32, flags: u32) {
        match self.mode {
            Mode::RecvMulti => {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    let b = self.bufs.as_mut().expect("recv-multi");
                    b.push(bid, self.returned);
                    self.returned += 1;
                }
                if res > 0 {
                    self.bytes += res as u64;
                    if !cqueue::more(flags) {
                        self.arm(fd);
                    }
                } else if res == -libc::ENOBUFS {
                    self.arm(fd);
                } else {
                    self.close(fd);
                }
            }
            Mode::PollMulti | Mode::PollOneshot => {
                if !self.drain(fd) {
                    self.close(fd);
                } else if self.mode == Mode::PollOneshot || !cqueue::more(flags) {
                    self.arm(fd);
                }
            }
            Mode::Epoll => {}
        }
    }

    fn on_epoll(&mut self) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: valid buffer.
            let n = unsafe { libc::epoll_wait(self.epfd, evs.as_mut_ptr(), 256, 0) };
            if n <= 0 {
                return;
            }
            for ev in &evs[..n as usize] {
                let fd = ev.u64 as i32;
                if !self.drain(fd) {
                    self.close(fd);
                }
            }
        }
    }

    /// Reads what `fd` has into the scratch buffer; false once the peer has closed.
    fn drain(&mut self, fd: i32) -> bool {
        loop {
            // SAFETY: the scratch buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.scratch.as_mut_ptr().cast(),
                    self.scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                self.bytes += n as u64;
                if (n as usize) < self.scratch.len() {
                    return true;
                }
            } else if n == 0 {
                return false;
            } else {
                let e = std::io::Error::last_os_error().raw_os_error();
                return e != Some(libc::ECONNRESET);
            }
        }
    }

    fn close(&mut self, fd: i32) {
        // SAFETY: our descriptor; closing drops its epoll entry and armed requests.
        unsafe { libc::close(fd) };
        self.conns -= 1;
    }

    fn report(&self, start: Instant) {
        let (ticks, rss_kb) = self_stat();
        println!(
            "{{\"t\":{:.3},\"conns\":{},\"bytes\":{},\"msgs\":{},\"loops\":{},\"cpu_ticks\":{},\"rss_kb\":{},\"slab_kb\":{},\"kiocb_b\":{},\"epi_b\":{}}}",
            start.elapsed().as_secs_f64(),
            self.conns,
            self.bytes,
            self.bytes / MSG as u64,
            self.loops,
            ticks,
            rss_kb,
            meminfo_kb("Slab:"),
            slab_bytes("io_kiocb"),
            slab_bytes("eventpoll_epi") + slab_bytes("eventpoll_pwq"),
        );
        let _ = std::io::stdout().flush();
    }
}

/// utime + stime (clock ticks) and RSS (KiB) of this process.
fn self_stat() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

/// Bytes in use in one kernel slab cache (active objects x object size), from /proc/slabinfo.
fn slab_bytes(cache: &str) -> u64 {
    std::fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cache))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            f.first().copied().unwrap_or(0) * f.get(2).copied().unwrap_or(0)
        })
        .unwrap_or(0)
}

fn meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

fn client(port: u16, idle: usize, active: usize, rate: u64, secs: Duration) {
    let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
    let mut idle_fds = Vec::with_capacity(idle);
    for _ in 0..idle {
        idle_fds.push(TcpStream::connect(addr).expect("connect").into_raw_fd());
    }
    let mut act: Vec<TcpStream> = (0..active)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    eprintln!("client: {idle} idle + {active} active connected");
    let msg = [b'm'; MSG];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut k = 0usize;
    while start.elapsed() < secs {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due && !act.is_empty() {
            let _ = act[k].write_all(&msg);
            k = (k + 1) % act.len();
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    eprintln!("client: sent {sent}");
    drop(act);
    for fd in idle_fds {
        // SAFETY: our descriptors.
        unsafe { libc::close(fd) };
    }
}
