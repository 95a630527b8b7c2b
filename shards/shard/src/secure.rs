//! The driver's side of TLS connections: the shard's table of TLS sessions and its scratch
//! buffers, and the read, write, close and hand-over paths of a connection accepted on an
//! `mqtts://` listener. The session itself is [`crate::tls::TlsConn`].

use crate::certs::Contexts;
use crate::driver::Shard;
use crate::fdtable::FdTable;
use crate::io;
use crate::io::{flush, send, Sent};
use crate::tls::{TlsConn, MAX_RECORD};
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
    /// The TLS connections by socket descriptor.
    conns: FdTable<TlsConn>,
    /// Ciphertext as received, before decryption.
    pub work: Vec<u8>,
    /// Ciphertext to send.
    out: Vec<u8>,
    /// Plaintext gathered for encryption.
    plain: Vec<u8>,
    /// `wss://`: decrypted bytes before unframing, and frames before encryption.
    clear: bytes::BytesMut,
    framed: Vec<u8>,
    /// Connections whose handshake bytes wait for the handshake budget, in arrival order
    /// (key and descriptor).
    backlog: VecDeque<(usize, RawFd)>,
}

/// What travels with a handed-over connection: its TLS session and its WebSocket state.
struct Layers {
    tls: Option<Box<TlsConn>>,
    ws: Option<Box<crate::ws::WsConn>>,
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

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    pub fn is_tls(&self, fd: RawFd) -> bool {
        self.conns.get(fd).is_some()
    }
}

impl Shard {
    /// Bytes for a TLS connection still in its handshake go to the backlog, handled within the
    /// handshake budget after the connections with traffic; true if they were kept there.
    pub(crate) fn tls_defer(&self, fd: RawFd, key: usize) -> bool {
        let mut guard = self.tls.borrow_mut();
        let tls = &mut *guard;
        let Some(tc) = tls.conns.get_mut(fd) else {
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
                match tls.conns.get_mut(fd).filter(|_| current) {
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
                tls.conns.insert(fd, tc);
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
        let Some(tc) = tls.conns.get_mut(fd) else {
            return Read::Closed;
        };
        let mut plain = st.read_buffer(key);
        let room = plain.capacity() - plain.len();
        tls.out.clear();
        // wss://: what TLS decrypts is WebSocket frames, unframed for the core; the
        // WebSocket's own output (upgrade response, pongs, close frames) is encrypted.
        let wss = self.is_ws(fd);
        let got = if wss {
            tls.clear.clear();
            tc.receive(&mut tls.work, &mut tls.clear, &mut tls.out)
        } else {
            tc.receive(&mut tls.work, &mut plain, &mut tls.out)
        };
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
        let mut unframed = None;
        if wss && !tls.clear.is_empty() {
            tls.framed.clear();
            unframed = self.ws_unframe(st, key, fd, &tls.clear, &mut plain, &mut tls.framed);
            if !tls.framed.is_empty() {
                tc.encrypt(&tls.framed, &mut tls.out);
            }
        }
        let plain_len = unframed.as_ref().map_or(got.plain, |r| r.plain);
        let sent = send(fd, &mut tc.unsent, &tls.out);
        drop(guard);
        let eof = eof || got.peer_closed;
        let read = st.on_read(key, plain, plain_len, room, eof);
        if let Some(e) = got.error {
            tracing::debug!(shard = st.id, conn = key, error = %e, "TLS connection failed");
            st.close_conn(key, Close::Transport);
            return Read::Closed;
        }
        if let Some(why) = unframed.and_then(|r| r.closed) {
            self.ws_ended(st, key, why);
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
        let Some(tc) = tls.conns.get_mut(fd) else {
            return;
        };
        let mut sent = flush(fd, &mut tc.unsent);
        // wss://: core output waits for the WebSocket upgrade, then goes in frames.
        let ws = self.ws_open(fd);
        while matches!(sent, Sent::All) && tc.is_established() && ws != Some(false) {
            let Some(chunks) = st.conns.get_mut(key).and_then(|c| c.out.chunks_mut()) else {
                break;
            };
            io::gather(chunks, &mut tls.plain, ENCRYPT_BATCH);
            if tls.plain.is_empty() {
                break;
            }
            tls.out.clear();
            let clear = if ws.is_some() {
                tls.framed.clear();
                crate::ws::WsConn::frame(&tls.plain, &mut tls.framed);
                &tls.framed
            } else {
                &tls.plain
            };
            if !tc.encrypt(clear, &mut tls.out) {
                sent = Sent::Failed;
                break;
            }
            st.wrote(key, tls.plain.len());
            sent = send(fd, &mut tc.unsent, &tls.out);
        }
        drop(guard);
        match sent {
            Sent::All => {}
            Sent::Blocked => self.tls_blocked(st, key, fd),
            Sent::Failed => st.write_failed(key),
        }
    }

    /// A TLS connection ends: its session leaves the table; one that never finished its
    /// handshake counts as a failed handshake and gives its listener's place back.
    pub(crate) fn tls_end(
        &self,
        st: &mut ShardState,
        key: usize,
        fd: RawFd,
    ) -> Option<Box<TlsConn>> {
        let tc = self.tls.borrow_mut().conns.remove(fd)?;
        if !tc.is_established() {
            st.counters.tls_handshake_failures += 1;
            if let Some(c) = st.conns.get(key) {
                self.handshake_done(c.listener.into());
            }
        }
        Some(tc)
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
    /// A connection handed to its home shard takes its transport along: its TLS session,
    /// its WebSocket state, or both (`wss://`).
    pub(crate) fn transport_detach(&self, fd: RawFd) -> Option<Transport> {
        let tls = self.tls.borrow_mut().conns.remove(fd);
        let ws = self.ws_take(fd);
        (tls.is_some() || ws.is_some()).then(|| Box::new(Layers { tls, ws }) as Transport)
    }

    /// A connection adopted from another shard: its transport, if it came with one.
    pub(crate) fn transport_adopt(&self, a: &mut Adopted) {
        let Some(t) = a.transport.take() else { return };
        match t.downcast::<Layers>() {
            Ok(layers) => {
                let Layers { tls, ws } = *layers;
                if let Some(tc) = tls {
                    self.tls.borrow_mut().conns.insert(a.socket.0, tc);
                }
                if let Some(wc) = ws {
                    self.ws_put(a.socket.0, wc);
                }
            }
            Err(_) => tracing::error!("a handed-over connection brought an unknown transport"),
        }
    }
}
