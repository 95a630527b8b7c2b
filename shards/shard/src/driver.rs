//! The driver: carries out what the sans-I/O core decided, and feeds it what the sockets, the
//! mesh and the timers bring. Every call into [`ShardState`] goes through [`Shard::with_state`],
//! which applies the [`Effects`] before the borrow ends: output written in a few vectored
//! `sendmsg` calls, batches handed to the mesh, closing connections woken, taken-over sockets
//! read dry, adopted sockets given a task.
//!
//! A connection is a glommio task that waits for its socket (readable, or writable while output
//! is blocked) and otherwise holds nothing: bytes are read with `recv` into the shard's scratch
//! buffer, which the core lends ([`ShardState::read_buffer`]).

use crate::io;
use crate::mesh::Mesh;
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpStream;
use ringmq_core::env::{Clock, Entropy};
use ringmq_core::mesh::{ScrapeToken, ShardMsg};
use ringmq_core::metrics::ShardMetrics;
use ringmq_core::state::{Adopted, Read, READ_CHUNK};
use ringmq_core::{Close, Effects, ShardState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The operating system's random source (authentication nonces, assigned client ids).
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // getrandom fails only without any entropy source (very early boot, seccomp); a
        // predictable nonce would then be worse than refusing, so this is a bug to surface.
        getrandom::getrandom(buf).expect("the OS random source is available");
    }
}

/// One shard as its executor thread holds it.
pub struct Shard {
    pub state: RefCell<ShardState>,
    /// Per connection key: the waker of its task, to end it or to wait for writability.
    wakers: RefCell<Vec<Option<Waker>>>,
    pub mesh: Mesh,
    /// Scrapes waiting for other shards' metrics, by token.
    pub metrics_pending: RefCell<HashMap<ScrapeToken, LocalSender<Box<ShardMetrics>>>>,
    /// Rings the journal task when records wait for a sync.
    pub bell: RefCell<Option<LocalSender<()>>>,
    /// Connections held by the whole process, for `--max-connections`.
    pub conn_count: Arc<AtomicUsize>,
    /// The effects of the previous event, emptied: swapped with the core's at each event so
    /// that carrying them out allocates nothing.
    spare: RefCell<Effects>,
}

impl Shard {
    pub fn new(state: ShardState, mesh: Mesh, conn_count: Arc<AtomicUsize>) -> Shard {
        let spare = RefCell::new(Effects::new(state.nshards));
        Shard {
            spare,
            state: RefCell::new(state),
            wakers: RefCell::new(Vec::new()),
            mesh,
            metrics_pending: RefCell::new(HashMap::new()),
            bell: RefCell::new(None),
            conn_count,
        }
    }

    /// Calls into the core and carries out what it caused. Never called with the state
    /// borrowed; tasks for adopted connections start after the borrow ends (glommio may run
    /// a spawned task at once).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut ShardState) -> R) -> R {
        let mut st = self.state.borrow_mut();
        let r = f(&mut st);
        let adopted = self.apply(&mut st);
        drop(st);
        start_adopted(adopted);
        r
    }

    /// Applies effects until the core has none left (writing may close a connection, a drain
    /// reads bytes that cause more); returns the adopted connections to start.
    fn apply(&self, st: &mut ShardState) -> Vec<Adopted> {
        let mut adopted = Vec::new();
        let mut fx = self.spare.borrow_mut();
        while st.has_effects() {
            st.swap_effects(&mut fx);
            for i in 0..fx.drains.len() {
                let d = fx.drains[i];
                drain(st, d.old);
                st.resume_connect(d.new);
            }
            for &key in &fx.writes {
                self.write(st, key);
            }
            for &key in &fx.closes {
                self.wake(key);
            }
            adopted.append(&mut fx.adopted);
            self.deliver_metrics(&mut fx);
            if fx.sync {
                if let Some(bell) = self.bell.borrow().as_ref() {
                    let _ = bell.try_send(());
                }
            }
            if fx.handoffs {
                pass_sockets(&mut fx);
            }
            self.mesh.send(st, &mut fx.batches);
            fx.clear();
        }
        adopted
    }

    fn deliver_metrics(&self, fx: &mut Effects) {
        let pending = self.metrics_pending.borrow();
        for (token, m) in fx.metrics_replies.drain(..) {
            // The scrape may have timed out and gone: then nobody listens.
            if let Some(tx) = pending.get(&token) {
                let _ = tx.try_send(m);
            }
        }
    }

    /// Writes what a connection has queued, without waiting; a full socket leaves the rest for
    /// its task, which waits for writability.
    fn write(&self, st: &mut ShardState, key: usize) {
        let Some(conn) = st.conns.get_mut(key) else {
            return;
        };
        if conn.write_blocked || conn.out.is_empty() {
            return;
        }
        match io::send_chunks(conn.socket.0, &mut conn.out) {
            Ok(n) => {
                let blocked = !conn.out.is_empty();
                conn.write_blocked = blocked;
                st.wrote(key, n);
                if blocked {
                    self.wake(key);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                conn.write_blocked = true;
                self.wake(key);
            }
            Err(_) => st.write_failed(key),
        }
    }

    fn wake(&self, key: usize) {
        if let Some(Some(w)) = self.wakers.borrow().get(key) {
            w.wake_by_ref();
        }
    }

    fn set_waker(&self, key: usize, cx: &Context<'_>) {
        let mut wakers = self.wakers.borrow_mut();
        if wakers.len() <= key {
            wakers.resize(key + 1, None);
        }
        let slot = &mut wakers[key];
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
    }

    /// One turn of a connection's task: write what is blocked, read and handle what arrived.
    /// Returns Ready when the connection must end.
    fn poll_conn(&self, key: usize, cx: &mut Context<'_>, stream: &mut TcpStream) -> Poll<()> {
        use futures_lite::AsyncRead;
        use std::pin::Pin;
        self.set_waker(key, cx);
        let mut budget = 16;
        loop {
            match self.with_state(|st| poll_write(st, key, cx, stream)) {
                Poll::Ready(()) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            if budget == 0 {
                // Let other connections run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            // Read what is there first: after a wake-up the socket is usually readable, and
            // asking glommio first would cost a one-byte recv on top of the real one.
            match self.with_state(|st| read(st, key, None)) {
                Read::Full | Read::Closed => continue,
                Read::Partial | Read::Nothing => {}
            }
            // Drained: wait for readiness. glommio tries a non-blocking one-byte recv and
            // otherwise arms an io_uring poll; no buffer is lent to the kernel meanwhile.
            let mut one = [0u8; 1];
            match Pin::new(&mut *stream).poll_read(cx, &mut one) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.with_state(|st| st.close_conn(key, Close::Eof));
                }
                Poll::Ready(Ok(_)) => {
                    self.with_state(|st| read(st, key, Some(one[0])));
                }
            }
        }
    }

    /// The end of a connection: a last try at writing what is queued (a final DISCONNECT or
    /// CONNACK), then the core's bookkeeping (will, session) and the process-wide count.
    /// Returns why it ended.
    fn finish(&self, key: usize) -> Option<Close> {
        let close = self.with_state(|st| {
            let conn = st.conns.get_mut(key)?;
            if !conn.out.is_empty() && !conn.write_blocked {
                let _ = io::send_chunks(conn.socket.0, &mut conn.out);
            }
            let close = conn.close;
            st.finish_conn(key);
            close
        });
        if close != Some(Close::Handoff) {
            self.conn_count.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(slot) = self.wakers.borrow_mut().get_mut(key) {
            *slot = None;
        }
        close
    }
}

/// Writes the front of a blocked output queue through glommio, which waits for writability.
/// Ready when the connection is over.
fn poll_write(
    st: &mut ShardState,
    key: usize,
    cx: &mut Context<'_>,
    stream: &mut TcpStream,
) -> Poll<()> {
    use futures_lite::AsyncWrite;
    use std::pin::Pin;
    let conn = &mut st.conns[key];
    if conn.close.is_some() {
        return Poll::Ready(());
    }
    if !conn.write_blocked {
        return Poll::Pending;
    }
    let Some(chunk) = conn.out.front().cloned() else {
        conn.write_blocked = false;
        return Poll::Pending;
    };
    match Pin::new(&mut *stream).poll_write(cx, &chunk) {
        Poll::Ready(Ok(n)) => {
            io::consume(&mut conn.out, n);
            conn.write_blocked = false;
            st.wrote(key, n);
            // The rest goes out with the effects of this call.
            st.want_write(key);
        }
        Poll::Ready(Err(_)) => st.write_failed(key),
        Poll::Pending => {}
    }
    Poll::Pending
}

/// Reads what the socket has into the buffer the core lends and hands it over. `first` is a
/// byte glommio's readiness probe already consumed.
fn read(st: &mut ShardState, key: usize, first: Option<u8>) -> Read {
    let Some(conn) = st.conns.get(key) else {
        return Read::Closed;
    };
    let fd = conn.socket.0;
    let mut buf = st.read_buffer(key);
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    if let Some(b) = first {
        buf.extend_from_slice(&[b]);
        got = 1;
    }
    let mut eof = false;
    match io::recv_into(fd, &mut buf, READ_CHUNK - got) {
        Ok(0) => eof = true,
        Ok(n) => got += n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => eof = true,
    }
    st.on_read(key, buf, got, room, eof)
}

/// Reads a connection until its socket has nothing more (the old connection of a takeover).
fn drain(st: &mut ShardState, key: usize) {
    while st.conns.get(key).is_some_and(|c| c.close.is_none()) {
        if read(st, key, None) != Read::Full {
            break;
        }
    }
}

/// A handed-over connection travels as a duplicate descriptor: this shard's task closes its
/// own when it ends, and the home shard owns the duplicate.
fn pass_sockets(fx: &mut Effects) {
    for batch in &mut fx.batches {
        batch.retain_mut(|m| {
            let ShardMsg::Handoff(h) = m else {
                return true;
            };
            match io::dup_fd(h.socket.0) {
                Ok(dup) => {
                    h.socket.0 = dup;
                    true
                }
                Err(e) => {
                    // Out of descriptors: the connection closes without CONNACK.
                    tracing::warn!(error = %e, "cannot pass a connection to its home shard");
                    false
                }
            }
        });
    }
}

/// Starts a task for each connection another shard handed over.
fn start_adopted(adopted: Vec<Adopted>) {
    for a in adopted {
        // SAFETY: the descriptor was duplicated for us by the sending shard and nothing else
        // owns it.
        let stream = unsafe { TcpStream::from_raw_fd(a.socket.0) };
        glommio::spawn_local(conn_task(a.key, stream)).detach();
    }
}

/// The task of one connection: it lives while the connection does.
pub async fn conn_task(key: usize, mut stream: TcpStream) {
    let shard = crate::runtime::current();
    futures_lite::future::poll_fn(|cx| shard.poll_conn(key, cx, &mut stream)).await;
    let close = shard.finish(key);
    drop(shard);
    if close.is_some_and(told_why) {
        // Boxed: its read buffer and timer would otherwise be part of every connection's
        // future, idle or not.
        Box::pin(linger(&mut stream)).await;
    }
    drop(stream);
}

/// Closes the broker decided on, after which it may have told the client why (DISCONNECT with
/// a reason code, or a failure CONNACK).
fn told_why(close: Close) -> bool {
    !matches!(
        close,
        Close::Handoff | Close::Eof | Close::Normal | Close::NormalWithWill
    )
}

/// How long, and how many bytes, a closing connection is read and discarded for.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);
const LINGER_BYTES: usize = 64 * 1024;

/// A graceful close: the write side is shut down after the last packet, and what the client
/// is still sending is read and discarded for a moment. Closing with unread bytes would make
/// the kernel answer with a reset, which can destroy the DISCONNECT or CONNACK before the
/// client reads why it was disconnected.
async fn linger(stream: &mut TcpStream) {
    use futures_lite::AsyncReadExt;
    use std::os::fd::AsRawFd;
    io::shutdown_write(stream.as_raw_fd());
    let _ = glommio::timer::timeout(LINGER, async {
        let mut sink = [0u8; 512];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        Ok(())
    })
    .await;
}
