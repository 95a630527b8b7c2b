//! The driver's side of TLS connections: the shard's table of TLS sessions and its scratch
//! buffers, and the read, write, close and hand-over paths of a connection accepted on an
//! `mqtts://` listener. The session itself is [`crate::tls::TlsConn`].

use crate::certs::Contexts;
use crate::driver::Shard;
use crate::io;
use crate::tls::{TlsConn, MAX_RECORD};
use bytes::Buf;
use ringmq_core::state::{Adopted, Read, Transport};
use ringmq_core::{Close, ShardState};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Plaintext encrypted at a time: four full records.
const ENCRYPT_BATCH: usize = 4 * MAX_RECORD;

/// The TLS side of a shard.
#[derive(Default)]
pub struct Tls {
    /// Each listener's settings (by index, as the network ring numbers them); `None` for
    /// plain listeners.
    pub ctx: Contexts,
    /// The generation of `Reload` that `ctx` comes from.
    generation: u64,
    /// The TLS connections, indexed by socket descriptor (small, dense integers): a pointer
    /// per descriptor, 8 bytes against a hash map's 20 to 40 per TLS connection; empty while
    /// no TLS connection was accepted.
    conns: Vec<Option<Box<TlsConn>>>,
    /// Ciphertext as received, before decryption.
    pub work: Vec<u8>,
    /// Ciphertext to send.
    out: Vec<u8>,
    /// Plaintext gathered for encryption.
    plain: Vec<u8>,
    /// Connections whose handshake bytes wait for the handshake budget, in arrival order
    /// (key and descriptor).
    backlog: VecDeque<(usize, RawFd)>,
}

/// Time a shard spends on handshakes in one turn once the connections with traffic had
/// theirs: a storm of ClientHellos then delays a PUBLISH by about this much rather than by
/// every handshake that arrived before it (1,000 of them at 0.1 ms each).
const HANDSHAKE_BUDGET: Duration = Duration::from_micros(500);

/// Handshake bytes a connection may have waiting in the backlog: rustls refuses handshake
/// messages over 64 KiB, and this is that plus a record header's worth of room.
const MAX_DEFERRED: usize = 64 * 1024 + 1024;

impl Tls {
    pub fn new(ctx: Contexts) -> Tls {
        Tls {
            ctx,
            ..Tls::default()
        }
    }

    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    pub fn is_tls(&self, fd: RawFd) -> bool {
        self.get(fd).is_some()
    }

    fn get(&self, fd: RawFd) -> Option<&TlsConn> {
        self.conns.get(fd as usize)?.as_deref()
    }

    fn insert(&mut self, fd: RawFd, tc: Box<TlsConn>) {
        let i = fd as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        self.conns[i] = Some(tc);
    }

    fn remove(&mut self, fd: RawFd) -> Option<Box<TlsConn>> {
        self.conns.get_mut(fd as usize)?.take()
    }
}

/// The TLS session of descriptor `fd` (a function of the field, so that the shard's scratch
/// buffers beside it can be borrowed at once).
fn slot(conns: &mut [Option<Box<TlsConn>>], fd: RawFd) -> Option<&mut TlsConn> {
    conns.get_mut(fd as usize)?.as_deref_mut()
}

/// What to do with a connection's output after trying to send ciphertext.
enum Sent {
    All,
    Blocked,
    Failed,
}

/// Sends `bytes` after whatever `tc` still holds; what the socket does not take stays in
/// `tc.unsent`.
fn send(fd: RawFd, tc: &mut TlsConn, bytes: &[u8]) -> Sent {
    if !tc.unsent.is_empty() {
        tc.unsent.vec().extend_from_slice(bytes);
        return Sent::Blocked;
    }
    if bytes.is_empty() {
        return Sent::All;
    }
    match io::send_bytes(fd, bytes) {
        Ok(n) if n == bytes.len() => Sent::All,
        Ok(n) => {
            tc.unsent.vec().extend_from_slice(&bytes[n..]);
            Sent::Blocked
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tc.unsent.vec().extend_from_slice(bytes);
            Sent::Blocked
        }
        Err(_) => Sent::Failed,
    }
}

/// Sends what the socket did not take before.
fn flush(fd: RawFd, tc: &mut TlsConn) -> Sent {
    if tc.unsent.is_empty() {
        return Sent::All;
    }
    match io::send_bytes(fd, tc.unsent.as_slice()) {
        Ok(n) if n == tc.unsent.len() => {
            tc.unsent.consume(n);
            Sent::All
        }
        Ok(n) => {
            tc.unsent.consume(n);
            Sent::Blocked
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::Blocked,
        Err(_) => Sent::Failed,
    }
}

impl Shard {
    /// Bytes for a TLS connection still in its handshake go to the backlog, handled within the
    /// handshake budget after the connections with traffic; true if they were kept there.
    pub(crate) fn tls_defer(&self, fd: RawFd, key: usize) -> bool {
        let mut guard = self.tls.borrow_mut();
        let tls = &mut *guard;
        let Some(tc) = slot(&mut tls.conns, fd) else {
            return false;
        };
        // Past rustls' largest handshake message the bytes go to it now, to be refused:
        // a client cannot park more than that here.
        if tc.is_established() || tc.pending() + tls.work.len() > MAX_DEFERRED {
            return false;
        }
        tc.defer(&tls.work);
        if !tc.queued {
            tc.queued = true;
            tls.backlog.push_back((key, fd));
        }
        true
    }

    /// Handshakes from the backlog, oldest first, for at most [`HANDSHAKE_BUDGET`] (at least
    /// one). Returns how many, and whether some still wait.
    pub(crate) fn tls_handshakes(&self, st: &mut ShardState) -> (usize, bool) {
        let start = Instant::now();
        let mut n = 0;
        loop {
            let next = {
                let mut tls = self.tls.borrow_mut();
                if n > 0 && start.elapsed() >= HANDSHAKE_BUDGET {
                    return (n, !tls.backlog.is_empty());
                }
                let Some((key, fd)) = tls.backlog.pop_front() else {
                    return (n, false);
                };
                let current = st
                    .conns
                    .get(key)
                    .is_some_and(|c| c.socket.0 == fd && c.close.is_none());
                match slot(&mut tls.conns, fd).filter(|_| current) {
                    Some(tc) => {
                        tc.queued = false;
                        tls.work.clear();
                        Some((key, fd))
                    }
                    None => None,
                }
            };
            if let Some((key, fd)) = next {
                self.tls_read(st, key, fd, false);
                n += 1;
            }
        }
    }

    /// Takes TLS settings reloaded since the last look (at the tick: a lock taken only when
    /// a reload happened).
    pub fn take_reload(&self, reload: &crate::certs::Reload) {
        let generation = reload.generation();
        let mut tls = self.tls.borrow_mut();
        if tls.generation != generation {
            tls.ctx = reload.current();
            tls.generation = generation;
        }
    }

    /// A connection accepted on a TLS listener starts its handshake; false if it cannot
    /// (then it is closed).
    pub(crate) fn tls_accept(&self, listener: usize, fd: RawFd) -> bool {
        let mut tls = self.tls.borrow_mut();
        if !self.listener_is_tls(listener) {
            return true;
        }
        let Some(ctx) = tls.ctx.get(listener) else {
            return false;
        };
        match TlsConn::new(ctx) {
            Ok(tc) => {
                tls.insert(fd, tc);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session");
                false
            }
        }
    }

    /// Hands the bytes a TLS connection's socket delivered (in `tls.work`) to its session,
    /// and what they decrypt to to the core; `eof` when the socket ended after them.
    pub(crate) fn tls_read(&self, st: &mut ShardState, key: usize, fd: RawFd, eof: bool) -> Read {
        let mut guard = self.tls.borrow_mut();
        let tls = &mut *guard;
        let Some(tc) = slot(&mut tls.conns, fd) else {
            return Read::Closed;
        };
        let mut plain = st.read_buffer(key);
        let room = plain.capacity() - plain.len();
        tls.out.clear();
        let got = tc.receive(&mut tls.work, &mut plain, &mut tls.out);
        let sent = send(fd, tc, &tls.out);
        if got.established {
            st.counters.tls_handshakes += 1;
            st.counters.tls_resumed += u64::from(tc.resumed());
            tracing::debug!(
                shard = st.id,
                conn = key,
                version = ?tc.protocol_version(),
                suite = ?tc.cipher_suite(),
                group = ?tc.key_exchange_group(),
                resumed = tc.resumed(),
                "TLS handshake done"
            );
            let listener = st.conns.get(key).map_or(0, |c| usize::from(c.listener));
            self.handshake_done(listener);
            let use_identity = tls
                .ctx
                .get(listener)
                .is_some_and(|c| c.use_identity_as_username);
            if use_identity {
                let id = tc
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(crate::tls::identity);
                st.set_identity(key, id);
            }
        }
        drop(guard);
        let eof = eof || got.peer_closed;
        let read = st.on_read(key, plain, got.plain, room, eof);
        if let Some(e) = got.error {
            tracing::debug!(shard = st.id, conn = key, error = %e, "TLS connection failed");
            st.close_conn(key, Close::Transport);
            return Read::Closed;
        }
        match sent {
            Sent::All => {}
            Sent::Blocked => self.tls_blocked(st, key, fd),
            Sent::Failed => st.write_failed(key),
        }
        read
    }

    fn tls_blocked(&self, st: &mut ShardState, key: usize, fd: RawFd) {
        if let Some(conn) = st.conns.get_mut(key) {
            conn.set_write_blocked(true);
        }
        self.net.borrow_mut().arm_writable(key, fd);
    }

    /// Writes a TLS connection's output: first what the socket did not take before, then the
    /// core's queued output, encrypted a batch at a time.
    pub(crate) fn tls_write(&self, st: &mut ShardState, key: usize, fd: RawFd) {
        let mut guard = self.tls.borrow_mut();
        let tls = &mut *guard;
        let Some(tc) = slot(&mut tls.conns, fd) else {
            return;
        };
        let mut sent = flush(fd, tc);
        while matches!(sent, Sent::All) && tc.is_established() {
            let Some(chunks) = st.conns.get_mut(key).and_then(|c| c.out.chunks_mut()) else {
                break;
            };
            tls.plain.clear();
            while let Some(front) = chunks.front_mut() {
                let take = front.len().min(ENCRYPT_BATCH - tls.plain.len());
                tls.plain.extend_from_slice(&front[..take]);
                if take == front.len() {
                    chunks.pop_front();
                } else {
                    front.advance(take);
                }
                if tls.plain.len() >= ENCRYPT_BATCH {
                    break;
                }
            }
            if tls.plain.is_empty() {
                break;
            }
            tls.out.clear();
            if !tc.encrypt(&tls.plain, &mut tls.out) {
                sent = Sent::Failed;
                break;
            }
            st.wrote(key, tls.plain.len());
            sent = send(fd, tc, &tls.out);
        }
        drop(guard);
        match sent {
            Sent::All => {}
            Sent::Blocked => self.tls_blocked(st, key, fd),
            Sent::Failed => st.write_failed(key),
        }
    }

    /// The end of a TLS connection: a last try at sending its output and close_notify, then
    /// its session is dropped. Returns whether the descriptor was a TLS connection.
    pub(crate) fn tls_finish(&self, st: &mut ShardState, key: usize, fd: RawFd) -> bool {
        let mut guard = self.tls.borrow_mut();
        let tls = &mut *guard;
        let Some(mut tc) = tls.remove(fd) else {
            return false;
        };
        if !tc.is_established() {
            st.counters.tls_handshake_failures += 1;
            if let Some(c) = st.conns.get(key) {
                self.handshake_done(c.listener.into());
            }
        }
        let conn = st.conns.get_mut(key);
        tls.out.clear();
        if let Some(conn) = conn.filter(|c| !c.write_blocked() && tc.unsent.is_empty()) {
            let queued = conn.out.take();
            tls.plain.clear();
            for c in &queued {
                tls.plain.extend_from_slice(c);
            }
            if !tls.plain.is_empty() {
                tc.encrypt(&tls.plain, &mut tls.out);
            }
            tc.close_notify(&mut tls.out);
            let _ = io::send_bytes(fd, &tls.out);
        }
        true
    }

    /// Reads what a TLS connection's socket holds with plain `recv`s (a takeover's drain).
    pub(crate) fn tls_read_socket(&self, st: &mut ShardState, key: usize, fd: RawFd) -> Read {
        let mut eof = false;
        {
            let mut tls = self.tls.borrow_mut();
            tls.work.clear();
            let mut buf = bytes::BytesMut::new();
            match io::recv_into(fd, &mut buf, ringmq_core::state::READ_CHUNK) {
                Ok(0) => eof = true,
                Ok(_) => tls.work.extend_from_slice(&buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Nothing,
                Err(_) => eof = true,
            }
        }
        match self.tls_read(st, key, fd, eof) {
            Read::Closed => Read::Closed,
            _ if eof => Read::Closed,
            // More may wait in the socket.
            _ => Read::Full,
        }
    }

    /// A connection handed to its home shard takes its TLS session along.
    pub(crate) fn tls_detach(&self, fd: RawFd) -> Option<Transport> {
        let mut tls = self.tls.borrow_mut();
        tls.remove(fd).map(|tc| tc as Transport)
    }

    /// A connection adopted from another shard: its TLS session, if it came with one.
    pub(crate) fn tls_adopt(&self, a: &mut Adopted) {
        let Some(t) = a.transport.take() else { return };
        match t.downcast::<TlsConn>() {
            Ok(tc) => {
                self.tls.borrow_mut().insert(a.socket.0, tc);
            }
            Err(_) => tracing::error!("a handed-over connection brought an unknown transport"),
        }
    }
}
