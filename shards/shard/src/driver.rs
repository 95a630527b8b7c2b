//! The driver: carries out what the sans-I/O core decided, and feeds it what the network
//! ring, the mesh and the timers bring. Every call into [`ShardState`] goes through
//! [`Shard::with_state`], which applies the [`Effects`] before the borrow ends: output written
//! in a few vectored `sendmsg` calls per connection, batches handed to the mesh, closing
//! connections closed, taken-over sockets read dry, adopted sockets armed.
//!
//! Connections have no task: the shard's network task ([`net_loop`]) waits for the ring's
//! eventfd, then hands every completion posted meanwhile to the core in one call, so the
//! writes they cause are gathered per connection for the whole batch.

use crate::certs::Contexts;
use crate::io;
use crate::mesh::Mesh;
use crate::net::{Armed, Net};
use crate::ring::{Cqe, Op};
use crate::secure::Tls;
use glommio::channels::local_channel::LocalSender;
use ringmq_core::env::{Clock, Entropy};
use ringmq_core::mesh::{ScrapeToken, ShardMsg};
use ringmq_core::metrics::ShardMetrics;
use ringmq_core::state::{Adopted, Phase, Read, READ_CHUNK};
use ringmq_core::{Close, Effects, ShardState};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    /// Never borrowed across a call into the core that could apply effects.
    pub(crate) net: RefCell<Net>,
    /// The TLS sessions of the shard's `mqtts://` connections; borrowed like `net`.
    pub(crate) tls: RefCell<Tls>,
    /// The WebSocket sessions of the shard's `ws://` connections; borrowed like `net`.
    pub(crate) ws: RefCell<crate::wsdrive::Ws>,
    /// Connections waiting for their PROXY protocol header; borrowed like `net`.
    pub(crate) proxy: RefCell<crate::proxy::Proxy>,
    /// Bytes a layered connection received (`Shard::deliver`), reused between reads.
    received: RefCell<Vec<u8>>,
    /// Sockets of finished connections, waiting for their last bytes and close (`backlog.rs`).
    pub(crate) closing: RefCell<crate::backlog::Closing>,
    /// When the backlogs last had their turn (`backlog.rs`).
    pub(crate) backlog_turn: std::cell::Cell<Instant>,
    pub mesh: Mesh,
    /// Scrapes waiting for other shards' metrics, by token.
    pub metrics_pending: RefCell<HashMap<ScrapeToken, LocalSender<Box<ShardMetrics>>>>,
    /// Rings the journal task when records wait for a sync.
    pub bell: RefCell<Option<LocalSender<()>>>,
    /// Connections held by the whole process, for `--max-connections`.
    pub conn_count: Arc<AtomicUsize>,
    /// What each listener lets in (`admit.rs`).
    pub(crate) gates: RefCell<crate::admit::Gates>,
    /// Password checks waiting for, or at, the verifier threads (`--password-file`).
    pub logins: RefCell<Option<crate::logins::Logins>>,
    /// The effects of the previous event, emptied: swapped with the core's at each event so
    /// that carrying them out allocates nothing.
    spare: RefCell<Effects>,
}

impl Shard {
    pub fn new(
        state: ShardState,
        net: Net,
        tls: Contexts,
        mesh: Mesh,
        conn_count: Arc<AtomicUsize>,
    ) -> Shard {
        let spare = RefCell::new(Effects::new(state.nshards));
        Shard {
            spare,
            tls: RefCell::new(Tls::new(tls)),
            ws: RefCell::default(),
            proxy: RefCell::default(),
            received: RefCell::default(),
            closing: RefCell::default(),
            backlog_turn: std::cell::Cell::new(Instant::now()),
            state: RefCell::new(state),
            net: RefCell::new(net),
            mesh,
            metrics_pending: RefCell::new(HashMap::new()),
            bell: RefCell::new(None),
            conn_count,
            gates: RefCell::default(),
            logins: RefCell::new(None),
        }
    }

    /// Calls into the core and carries out what it caused; requests the effects queued in
    /// the network ring are submitted before returning.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut ShardState) -> R) -> R {
        let mut st = self.state.borrow_mut();
        let r = f(&mut st);
        self.apply(&mut st);
        drop(st);
        self.net.borrow_mut().ring.submit();
        r
    }

    /// Applies effects until the core has none left (writing may close a connection, a drain
    /// reads bytes that cause more).
    fn apply(&self, st: &mut ShardState) {
        let mut fx = self.spare.borrow_mut();
        while st.has_effects() {
            st.swap_effects(&mut fx);
            // Before the closes below close this shard's descriptor of a handed-over socket.
            if fx.handoffs {
                self.pass_sockets(&mut fx);
            }
            for mut a in fx.adopted.drain(..) {
                self.transport_adopt(&mut a);
                self.adopt(st, a);
            }
            for i in 0..fx.drains.len() {
                let d = fx.drains[i];
                self.drain(st, d.old);
                st.resume_connect(d.new);
            }
            for &key in &fx.writes {
                self.write(st, key);
            }
            for &(key, on) in &fx.reads {
                if on {
                    st.resume_reading(key);
                }
                let Some(conn) = st.conns.get(key).filter(|c| c.close.is_none()) else {
                    continue;
                };
                let mut net = self.net.borrow_mut();
                if !conn.reads_paused() {
                    net.resume_recv(key, conn.socket.0);
                } else {
                    net.pause_recv(key);
                }
            }
            for &key in &fx.closes {
                self.finish(st, key);
            }
            self.ask_logins(st, &mut fx);
            self.deliver_metrics(&mut fx);
            if fx.sync {
                if let Some(bell) = self.bell.borrow().as_ref() {
                    let _ = bell.try_send(());
                }
            }
            self.mesh.send(st, &mut fx.batches);
            fx.clear();
        }
    }

    /// Passes the core's password checks to the verifier threads. Without a password file the
    /// core asks for none; if it did, the answer is no.
    fn ask_logins(&self, st: &mut ShardState, fx: &mut Effects) {
        if fx.credential_checks.is_empty() {
            return;
        }
        let mut logins = self.logins.borrow_mut();
        for c in fx.credential_checks.drain(..) {
            match logins.as_mut() {
                Some(l) => l.ask(c),
                None => st.credentials_checked(c.key, c.token, false),
            }
        }
    }

    /// Answers from the verifier threads arrived: each CONNECT goes on or is refused, and
    /// the checks waiting take the places they leave.
    pub fn logins_answered(&self) {
        let answers = match self.logins.borrow().as_ref() {
            Some(l) => l.mailbox().take(),
            None => return,
        };
        if answers.is_empty() {
            return;
        }
        if let Some(l) = self.logins.borrow_mut().as_mut() {
            l.answered(answers.len());
        }
        self.with_state(|st| {
            for (key, token, ok) in answers {
                st.credentials_checked(key, token, ok);
            }
        });
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

    /// Writes what a connection has queued, without waiting; a full socket leaves the rest
    /// until the ring says there is room.
    fn write(&self, st: &mut ShardState, key: usize) {
        let Some(conn) = st.conns.get_mut(key) else {
            return;
        };
        let fd = conn.socket.0;
        if self.tls.borrow().is_tls(fd) {
            if !conn.write_blocked() {
                self.tls_write(st, key, fd);
            }
            return;
        }
        if self.is_ws(fd) {
            if !conn.write_blocked() {
                self.ws_write(st, key, fd);
            }
            return;
        }
        if conn.write_blocked() || conn.out.is_empty() {
            return;
        }
        let Some(chunks) = conn.out.chunks_mut() else {
            return;
        };
        match io::send_chunks(fd, chunks) {
            Ok(n) => {
                let blocked = !chunks.is_empty();
                conn.set_write_blocked(blocked);
                st.wrote(key, n);
                if blocked {
                    self.net.borrow_mut().arm_writable(key, fd);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                conn.set_write_blocked(true);
                self.net.borrow_mut().arm_writable(key, fd);
            }
            Err(_) => st.write_failed(key),
        }
    }

    /// The end of a connection: the core's bookkeeping (will, session), the process-wide
    /// count and the slot at once; its last bytes (a final DISCONNECT or CONNACK, a TLS
    /// close_notify, a WebSocket close frame) and the socket's close, or shutdown and close a
    /// moment later if the client was told why, in the closing backlog (`backlog.rs`).
    fn finish(&self, st: &mut ShardState, key: usize) {
        let Some(fd) = st.conns.get(key).map(|c| c.socket.0) else {
            return;
        };
        self.proxy_finish(fd);
        let last = self.last_words(st, key, fd);
        let (close, listener) = (st.conns[key].close, st.conns[key].listener);
        st.finish_conn(key);
        if close != Some(Close::Handoff) {
            self.conn_count.fetch_sub(1, Ordering::Relaxed);
            self.left(listener.into());
        }
        let mut net = self.net.borrow_mut();
        net.release(key);
        if self
            .closing
            .borrow_mut()
            .push(fd, last, close.is_some_and(told_why))
        {
            net.ring.wake();
        }
    }

    /// A connection another shard handed over: its CONNECT is handled, so it reads with a
    /// multishot receive from the start.
    fn adopt(&self, st: &mut ShardState, a: Adopted) {
        let mut net = self.net.borrow_mut();
        net.slot(a.key).adopted = true;
        // One refused at once is closed by `finish`: nothing to watch.
        if st.conns.get(a.key).is_some_and(|c| c.close.is_none()) {
            net.arm_recv(a.key, a.socket.0, true);
        }
    }

    /// Reads the old connection of a takeover dry before the new one goes on: first what the
    /// ring already delivered for it, then what its socket still holds.
    fn drain(&self, st: &mut ShardState, key: usize) {
        let mine = {
            let mut net = self.net.borrow_mut();
            let net = &mut *net;
            net.ring.reap(&mut net.cqes, usize::MAX);
            let gen = net.slots.get(key).map_or(0, |s| s.gen);
            let recv = crate::ring::tag(Op::Recv, gen, key);
            let (mine, rest): (VecDeque<Cqe>, VecDeque<Cqe>) =
                net.cqes.drain(..).partition(|c| c.user_data == recv);
            net.cqes = rest;
            mine
        };
        for c in mine {
            self.on_cqe(st, c);
        }
        // What it read but left unhandled while paused comes first.
        st.resume_reading(key);
        while st.conns.get(key).is_some_and(|c| c.close.is_none()) {
            let fd = st.conns[key].socket.0;
            let read = if self.tls.borrow().is_tls(fd) {
                self.tls_read_socket(st, key, fd)
            } else if self.is_ws(fd) {
                self.ws_read_socket(st, key, fd)
            } else {
                read_socket(st, key)
            };
            if read != Read::Full {
                break;
            }
        }
    }

    /// Handles a batch of the completions the network ring has posted (at most about
    /// [`BATCH_CQES`]), in one call into the core (or more, if carrying out its effects reaped
    /// more: a takeover's drain), then the backlogs of TLS handshakes and closes within their
    /// budgets (`backlog.rs`). Returns how many there were, and whether more may wait (in the
    /// kernel with no eventfd signal to come, or in a backlog).
    pub fn turn(&self) -> (usize, bool) {
        let (n, more) = self.turn_ring();
        let (m, waiting) = self.backlogs(more);
        (n + m, more || waiting)
    }

    /// [`Shard::turn`] without the backlogs.
    fn turn_ring(&self) -> (usize, bool) {
        let more = {
            let mut net = self.net.borrow_mut();
            let net = &mut *net;
            let more = net.ring.reap(&mut net.cqes, BATCH_CQES);
            net.close_lingering(Instant::now(), false) || more
        };
        if self.accepts_to_resume() {
            self.with_state(|st| self.resume_accepts(st, false));
        }
        let mut n = 0;
        while !self.net.borrow().cqes.is_empty() {
            n += self.with_state(|st| {
                let mut n = 0;
                loop {
                    let next = self.net.borrow_mut().cqes.pop_front();
                    let Some(c) = next else { break };
                    self.on_cqe(st, c);
                    n += 1;
                }
                n
            });
        }
        if n == 0 {
            self.net.borrow_mut().ring.submit();
        }
        (n, more)
    }

    /// Handles batches while bytes keep arriving, with the eventfd quiet meanwhile: what
    /// arrives during a batch is taken by the next one here rather than by another pass of
    /// glommio's loop, whose submissions cost more than one more look at the ring.
    /// Returns how many completions it handled, and whether work may be left that no eventfd
    /// signal announces: the caller lets glommio's loop run once and comes back without
    /// waiting.
    fn run_batches(&self) -> (usize, bool) {
        self.net.borrow_mut().ring.signal_eventfd(false);
        let mut handled = 0;
        for _ in 0..BATCHES_IN_A_ROW {
            let n = self.turn().0;
            handled += n;
            if n == 0 {
                break;
            }
        }
        self.net.borrow_mut().ring.signal_eventfd(true);
        // What was posted between the last look and the eventfd coming back on signalled
        // nothing: take it now.
        let (n, more) = self.turn();
        (handled + n, more)
    }

    /// QoS 1/2 PUBLISHes sent to subscribers so far: each waits for an acknowledgement.
    fn acknowledged_sent(&self) -> u64 {
        let st = self.state.borrow();
        st.counters.msgs_out[1] + st.counters.msgs_out[2]
    }

    /// Handles batches until none is left, letting glommio's loop run between runs of
    /// [`BATCHES_IN_A_ROW`]; how many completions there were.
    async fn handle_ready(&self) -> usize {
        let (mut handled, mut more) = self.run_batches();
        while more {
            futures_lite::future::yield_now().await;
            let (n, m) = self.run_batches();
            handled += n;
            more = m;
        }
        handled
    }

    fn on_cqe(&self, st: &mut ShardState, c: Cqe) {
        let (op, gen, index) = crate::ring::untag(c.user_data);
        match op {
            Some(Op::Recv) => self.on_recv(st, index, gen, c),
            Some(Op::Writable) => {
                let mut net = self.net.borrow_mut();
                if !net.is_current(index, gen) {
                    return;
                }
                net.slots[index].writable = false;
                drop(net);
                if let Some(conn) = st.conns.get_mut(index) {
                    conn.set_write_blocked(false);
                    let fd = conn.socket.0;
                    st.want_write(index);
                    // A handshake's output (TLS) or an upgrade response, pong or close frame
                    // (WebSocket) is the session's, not the core's.
                    if self.tls.borrow().is_tls(fd) {
                        self.tls_write(st, index, fd);
                    } else if self.is_ws(fd) {
                        self.ws_write(st, index, fd);
                    }
                }
            }
            Some(Op::Accept) => self.on_accept(st, index, c),
            Some(Op::Cancel) | None => {}
        }
    }

    /// Bytes (or the end) of a connection's receive.
    fn on_recv(&self, st: &mut ShardState, key: usize, gen: u32, c: Cqe) {
        let mut net = self.net.borrow_mut();
        let current = net.is_current(key, gen);
        if current && !c.more() {
            net.slots[key].recv = Armed::Nothing;
        }
        if let (true, Some(bid)) = (c.res > 0, c.buffer()) {
            let fd = st.conns.get(key).map_or(-1, |c| c.socket.0);
            if current && self.layered(fd) {
                let mut bytes = self.received.take();
                bytes.clear();
                bytes.extend_from_slice(net.ring.buffer(bid, c.res as usize));
                net.ring.give_back(bid);
                drop(net);
                self.deliver(st, key, fd, &mut bytes);
                *self.received.borrow_mut() = bytes;
                net = self.net.borrow_mut();
            } else if current {
                let n = c.res as usize;
                let mut buf = st.read_buffer(key);
                let room = buf.capacity() - buf.len();
                buf.extend_from_slice(net.ring.buffer(bid, n));
                net.ring.give_back(bid);
                drop(net);
                st.on_read(key, buf, n, room, false);
                net = self.net.borrow_mut();
            } else {
                net.ring.give_back(bid);
            }
        } else if let Some(bid) = c.buffer() {
            net.ring.give_back(bid);
        }
        if !current {
            return;
        }
        match c.res {
            // Out of provided buffers: the receive ended and is armed again below, now that
            // this batch is handing its buffers back.
            r if r > 0 && c.buffer().is_some() => {}
            r if r == -libc::ENOBUFS => st.counters.receive_buffers_exhausted += 1,
            // Cancelled by `pause_recv`: armed again below only if reading resumed meanwhile.
            r if r == -libc::ECANCELED => {}
            // The peer closed, reset, or the socket failed.
            _ => {
                drop(net);
                st.close_conn(key, Close::Eof);
                return;
            }
        }
        if net.slots[key].recv == Armed::Nothing && !net.slots[key].paused {
            if let Some(conn) = st.conns.get(key).filter(|c| c.close.is_none()) {
                net.arm_recv(key, conn.socket.0, conn.phase != Phase::AwaitConnect);
            }
        }
    }

    /// Whether a connection's bytes go through transport layers (a PROXY header still to
    /// come, TLS, WebSocket) before the core: the ring's bytes are then copied once, into
    /// `received`, rather than into the core's read buffer.
    fn layered(&self, fd: std::os::fd::RawFd) -> bool {
        self.proxy_waiting(fd) || self.tls.borrow().is_tls(fd) || self.is_ws(fd)
    }

    /// Bytes a layered connection received, through its layers in order: the PROXY header,
    /// then TLS (which takes the buffer itself, swapped in) or WebSocket, then the core.
    fn deliver(
        &self,
        st: &mut ShardState,
        key: usize,
        fd: std::os::fd::RawFd,
        bytes: &mut Vec<u8>,
    ) {
        if self.proxy_waiting(fd) {
            // What follows the header goes on as if it had just arrived.
            match self.proxy_read(st, key, fd, bytes) {
                Some(rest) if !rest.is_empty() => *bytes = rest,
                _ => return,
            }
        }
        if self.tls.borrow().is_tls(fd) {
            std::mem::swap(&mut self.tls.borrow_mut().work, bytes);
            if !self.tls_defer(fd, key) {
                self.tls_read(st, key, fd, false);
            }
        } else if self.is_ws(fd) {
            self.ws_read(st, key, fd, bytes, false);
        } else if st.conns.get(key).is_some_and(|c| c.close.is_none()) {
            let mut buf = st.read_buffer(key);
            let room = buf.capacity() - buf.len();
            buf.extend_from_slice(bytes);
            st.on_read(key, buf, bytes.len(), room, false);
        }
    }

    /// A connection from listener `index`, or why its accept ended. One accepted while the
    /// listener's gate holds accepting back (its accept rate, its handshakes) waits with the
    /// gate, unread, until the gate lets it in (`admit.rs`).
    fn on_accept(&self, st: &mut ShardState, index: usize, c: Cqe) {
        if c.res >= 0 {
            if self.accept_gated(index) {
                self.hold(index, c.res);
            } else {
                self.take_conn(st, index, c.res);
            }
        }
        self.rearm_accept(index, c);
    }

    /// Arms a listener's accept again if the kernel ended it.
    fn rearm_accept(&self, index: usize, c: Cqe) {
        if c.more() {
            return;
        }
        let mut net = self.net.borrow_mut();
        net.accept_ended(index);
        if crate::runtime::shutting_down() {
            return;
        }
        if c.res == -libc::ECANCELED {
            // Cancelled by the listener's gate (`admit.rs`): armed again when it allows.
            if !self.accept_gated(index) {
                net.arm_accept(index);
            }
        } else if c.res < 0 {
            // Out of descriptors or memory: retried at the next tick rather than spinning.
            let e = std::io::Error::from_raw_os_error(-c.res);
            tracing::warn!(error = %e, "accept failed");
            net.accept_paused.push(index);
        } else if !self.accept_gated(index) {
            net.arm_accept(index);
        }
    }

    /// Periodic driver work: paused accepts armed again, and a look at the ring (which also
    /// closes lingering sockets that came due) for completion work pending without a signal
    /// (`NetRing::reap`). One batch only: what is left goes to the network task, which yields
    /// between runs of batches. A tick that drained the ring itself once took 140 ms over the
    /// 10,000 disconnects ending a connect storm, and every message of established clients
    /// waited for it.
    pub fn tick(&self) {
        {
            let mut net = self.net.borrow_mut();
            for index in std::mem::take(&mut net.accept_paused) {
                if !self.accept_gated(index) {
                    net.arm_accept(index);
                }
            }
        }
        let backlogs = self.backlog_sizes();
        self.with_state(|st| {
            st.backlogs = backlogs;
            self.resume_accepts(st, true)
        });
        if self.turn_ring().1 {
            self.net.borrow().ring.wake();
        }
    }

    /// Starts accepting on a listening socket; `tls`: its connections speak TLS.
    pub(crate) fn listen(
        &self,
        fd: std::os::fd::RawFd,
        tls: bool,
        ws: Option<crate::ws::WsSettings>,
        proxy: bool,
        gate: crate::admit::Gate,
    ) {
        self.add_gate(gate, tls);
        self.ws.borrow_mut().settings.push(ws);
        self.proxy.borrow_mut().listeners.push(proxy);
        let mut net = self.net.borrow_mut();
        let index = net.add_listener(fd);
        net.arm_accept(index);
        net.ring.submit();
    }

    /// At shutdown: sockets still lingering, and connections waiting at a listener's gate,
    /// are closed now.
    pub fn close_all_lingering(&self) {
        self.close_held();
        self.close_waiting(std::time::Duration::MAX);
        self.net.borrow_mut().close_lingering(Instant::now(), true);
    }

    /// Sockets lingering after a close (metrics, tests).
    pub fn lingering(&self) -> usize {
        self.net.borrow().lingering()
    }

    /// The eventfd the network ring signals.
    pub fn net_eventfd(&self) -> std::os::fd::RawFd {
        self.net.borrow().ring.eventfd()
    }
}

/// Reads what a socket has into the buffer the core lends, with a plain `recv` (the drain of
/// a takeover, which must not wait for the ring).
fn read_socket(st: &mut ShardState, key: usize) -> Read {
    let Some(conn) = st.conns.get(key) else {
        return Read::Closed;
    };
    let fd = conn.socket.0;
    let mut buf = st.read_buffer(key);
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    let mut eof = false;
    match io::recv_into(fd, &mut buf, READ_CHUNK) {
        Ok(0) => eof = true,
        Ok(n) => got = n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => eof = true,
    }
    st.on_read(key, buf, got, room, eof)
}

impl Shard {
    /// A handed-over connection travels as a duplicate descriptor (with its TLS session):
    /// this shard closes its own when the connection ends here, and the home shard owns the
    /// duplicate.
    fn pass_sockets(&self, fx: &mut Effects) {
        for batch in &mut fx.batches {
            batch.retain_mut(|m| {
                let ShardMsg::Handoff(h) = m else {
                    return true;
                };
                h.transport = self.transport_detach(h.socket.0);
                match io::dup_fd(h.socket.0) {
                    Ok(dup) => {
                        h.socket.0 = dup;
                        true
                    }
                    Err(e) => {
                        // Out of descriptors: the connection closes without CONNACK, and
                        // no shard counts it any more.
                        tracing::warn!(error = %e, "cannot pass a connection to its home shard");
                        self.conn_count.fetch_sub(1, Ordering::Relaxed);
                        self.left(h.listener.into());
                        false
                    }
                }
            });
        }
    }
}

/// Closes the broker decided on, after which it may have told the client why (DISCONNECT with
/// a reason code, or a failure CONNACK).
fn told_why(close: Close) -> bool {
    !matches!(
        close,
        Close::Handoff | Close::Eof | Close::Normal | Close::NormalWithWill
    )
}

/// The shard's network task: waits until the ring posts completions, then handles them all.
/// The eventfd is read through glommio, so the wait is one armed read in glommio's ring
/// whatever the number of connections.
///
/// Under traffic (a wake-up within two `window`s of the last batch's end) the task then lets
/// arrivals gather for `window` before it looks again, for as long as each look finds some:
/// one wake-up, one pass through glommio's loop and one `sendmsg` per subscriber carry several
/// messages instead of one each. A message after a quiet moment is handled at once; one that
/// arrives under traffic waits at most `window`.
pub async fn net_loop(eventfd: glommio::io::BufferedFile, window: std::time::Duration) {
    let shard = crate::runtime::current();
    let mut last_end: Option<Instant> = None;
    loop {
        if let Err(e) = eventfd.read_at(0, 8).await {
            tracing::error!(error = %e, "cannot wait for the network ring");
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let busy = !window.is_zero() && last_end.is_some_and(|t| t.elapsed() < window * 2);
        let mut sent = shard.acknowledged_sent();
        let mut handled = shard.handle_ready().await;
        // Not after QoS 1/2 PUBLISHes went out: their acknowledgements free the subscriber's
        // window, and a loop bound by that round trip would wait a window per turn.
        while busy && handled > 0 && shard.acknowledged_sent() == sent {
            // Arrivals during the window are posted without a signal and taken after it.
            shard.net.borrow_mut().ring.signal_eventfd(false);
            glommio::timer::sleep(window).await;
            sent = shard.acknowledged_sent();
            handled = shard.handle_ready().await;
        }
        last_end = Some(Instant::now());
    }
}

/// The shard's login task: waits for the verifier threads' answers (`logins.rs`).
pub async fn logins_loop(eventfd: glommio::io::BufferedFile) {
    let shard = crate::runtime::current();
    loop {
        if let Err(e) = eventfd.read_at(0, 8).await {
            tracing::error!(error = %e, "cannot wait for password checks");
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        shard.logins_answered();
    }
}

/// Batches a shard handles in a row before it lets glommio's loop run again.
const BATCHES_IN_A_ROW: usize = 8;

/// Completions a batch takes from the ring: few enough that a batch's deliveries stay in cache
/// (64 gave fan-out 1.7M msgs/s, 20 gave 2.2M).
const BATCH_CQES: usize = 20;
