//! The driver's side of WebSocket connections (`ws://` listeners): the shard's table of
//! WebSocket sessions and its scratch buffers, and the read, write, close and hand-over paths.
//! The protocol itself is [`crate::ws::WsConn`].

use crate::driver::Shard;
use crate::fdtable::FdTable;
use crate::io::{self, flush, send, Sent};
use crate::ws::{Why, WsConn, WsSettings};
use ringmq_core::state::Read;
use ringmq_core::{Close, ShardState};
use std::os::fd::RawFd;

/// Core output framed at a time.
const FRAME_BATCH: usize = 64 * 1024;

/// The WebSocket side of a shard.
#[derive(Default)]
pub struct Ws {
    /// Each listener's settings (by index, as the network ring numbers them); `None` for the
    /// listeners that are not WebSocket ones.
    pub settings: Vec<Option<WsSettings>>,
    /// The WebSocket connections by socket descriptor.
    conns: FdTable<WsConn>,
    /// Bytes to send.
    out: Vec<u8>,
    /// Core output gathered for framing.
    plain: Vec<u8>,
}

impl Ws {
    pub fn is_ws(&self, fd: RawFd) -> bool {
        self.conns.get(fd).is_some()
    }
}

impl Shard {
    /// A connection accepted on a WebSocket listener starts waiting for its upgrade request.
    pub(crate) fn ws_accept(&self, listener: usize, fd: RawFd) {
        let mut ws = self.ws.borrow_mut();
        if ws.settings.get(listener).is_some_and(Option::is_some) {
            ws.conns.insert(fd, Box::default());
        }
    }

    pub(crate) fn is_ws(&self, fd: RawFd) -> bool {
        self.ws.borrow().is_ws(fd)
    }

    /// Hands the bytes a WebSocket connection's socket delivered to its session, and the MQTT
    /// bytes they carry to the core; `eof` when the socket ended after them.
    pub(crate) fn ws_read(
        &self,
        st: &mut ShardState,
        key: usize,
        fd: RawFd,
        input: &[u8],
        eof: bool,
    ) -> Read {
        let mut guard = self.ws.borrow_mut();
        let ws = &mut *guard;
        let listener = st.conns.get(key).map_or(0, |c| usize::from(c.listener));
        let (Some(wc), Some(Some(settings))) = (ws.conns.get_mut(fd), ws.settings.get(listener))
        else {
            return Read::Closed;
        };
        let mut plain = st.read_buffer(key);
        let room = plain.capacity() - plain.len();
        ws.out.clear();
        let got = wc.receive(input, settings, &mut plain, &mut ws.out);
        let sent = send(fd, &mut wc.unsent, &ws.out);
        let protocol = wc.protocol;
        drop(guard);
        if got.upgraded {
            tracing::debug!(
                shard = st.id,
                conn = key,
                ?protocol,
                "WebSocket upgrade done"
            );
        }
        let read = st.on_read(key, plain, got.plain, room, eof);
        if let Some(why) = got.closed {
            self.ws_ended(st, key, why);
            return Read::Closed;
        }
        self.after_send(st, key, fd, sent);
        read
    }

    /// The WebSocket layer ends the connection. The peer's close frame without DISCONNECT
    /// ends it like a network close (the will goes); a refused upgrade or a broken frame is a
    /// transport failure.
    pub(crate) fn ws_ended(&self, st: &mut ShardState, key: usize, why: Why) {
        tracing::debug!(shard = st.id, conn = key, ?why, "WebSocket connection ends");
        let close = match why {
            Why::PeerClosed => Close::Eof,
            Why::Refused(_) | Why::Protocol(..) => Close::Transport,
        };
        if st.conns.get(key).is_some_and(|c| c.close.is_none()) {
            st.close_conn(key, close);
        }
    }

    fn after_send(&self, st: &mut ShardState, key: usize, fd: RawFd, sent: Sent) {
        match sent {
            Sent::All => {}
            Sent::Blocked => {
                if let Some(conn) = st.conns.get_mut(key) {
                    conn.set_write_blocked(true);
                }
                self.net.borrow_mut().arm_writable(key, fd);
            }
            Sent::Failed => st.write_failed(key),
        }
    }

    /// Reads what a WebSocket connection's socket holds with a plain `recv` (a takeover's
    /// drain).
    pub(crate) fn ws_read_socket(&self, st: &mut ShardState, key: usize, fd: RawFd) -> Read {
        let mut buf = bytes::BytesMut::new();
        let eof = match io::recv_into(fd, &mut buf, ringmq_core::state::READ_CHUNK) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Nothing,
            Err(_) => true,
        };
        match self.ws_read(st, key, fd, &buf, eof) {
            // More may wait: a drain reads until the socket is dry.
            Read::Nothing if !eof => Read::Full,
            r => r,
        }
    }

    /// Writes a WebSocket connection's output: first what the socket did not take before,
    /// then the core's queued output, as binary frames of up to [`FRAME_BATCH`] bytes.
    pub(crate) fn ws_write(&self, st: &mut ShardState, key: usize, fd: RawFd) {
        let mut guard = self.ws.borrow_mut();
        let ws = &mut *guard;
        let Some(wc) = ws.conns.get_mut(fd) else {
            return;
        };
        let mut sent = flush(fd, &mut wc.unsent);
        while matches!(sent, Sent::All) && wc.is_open() {
            let Some(chunks) = st.conns.get_mut(key).and_then(|c| c.out.chunks_mut()) else {
                break;
            };
            io::gather(chunks, &mut ws.plain, FRAME_BATCH);
            if ws.plain.is_empty() {
                break;
            }
            ws.out.clear();
            WsConn::frame(&ws.plain, &mut ws.out);
            st.wrote(key, ws.plain.len());
            sent = send(fd, &mut wc.unsent, &ws.out);
        }
        drop(guard);
        self.after_send(st, key, fd, sent);
    }

    /// Takes a connection's WebSocket state out of the table (its end, or its hand-over).
    pub(crate) fn ws_take(&self, fd: RawFd) -> Option<Box<WsConn>> {
        self.ws.borrow_mut().conns.remove(fd)
    }

    /// A handed-over connection's WebSocket state.
    pub(crate) fn ws_put(&self, fd: RawFd, wc: Box<WsConn>) {
        self.ws.borrow_mut().conns.insert(fd, wc);
    }

    /// Whether a WebSocket connection has upgraded; `None` if `fd` is not one.
    pub(crate) fn ws_open(&self, fd: RawFd) -> Option<bool> {
        self.ws.borrow().conns.get(fd).map(WsConn::is_open)
    }

    /// `wss://`: decrypted bytes to unframe; MQTT bytes go to `plain`, the WebSocket's own
    /// output (to encrypt) to `out`. `None` if `fd` is not a WebSocket connection.
    pub(crate) fn ws_unframe(
        &self,
        st: &ShardState,
        key: usize,
        fd: RawFd,
        input: &[u8],
        plain: &mut bytes::BytesMut,
        out: &mut Vec<u8>,
    ) -> Option<crate::ws::Received> {
        let mut guard = self.ws.borrow_mut();
        let ws = &mut *guard;
        let listener = st.conns.get(key).map_or(0, |c| usize::from(c.listener));
        let settings = ws.settings.get(listener)?.as_ref()?;
        let wc = ws.conns.get_mut(fd)?;
        let got = wc.receive(input, settings, plain, out);
        if got.upgraded {
            tracing::debug!(shard = st.id, conn = key, protocol = ?wc.protocol, "WebSocket upgrade done");
        }
        Some(got)
    }
}
