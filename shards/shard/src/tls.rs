//! TLS for `mqtts://` listeners: rustls' unbuffered connection, driven over the shard's
//! scratch buffers, so that an idle TLS connection holds its session state and no buffer.
//! Once a TLS 1.3 handshake is done, the session continues on its own record layer
//! (`records.rs`) and rustls' connection is dropped.
//!
//! Bytes the ring delivers are decrypted into the buffer the core lends for reading; only an
//! incomplete record is kept with the connection (until the rest arrives). Output the core
//! queued is gathered, encrypted into a shard buffer and sent at once; only what the socket
//! does not take is kept (until it is writable). Handshake messages go the same way.

pub use crate::certs::{provider, TlsContext};
use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};

/// What one delivery of bytes did.
#[derive(Debug, Default)]
pub struct Received {
    /// Application bytes appended to the plaintext buffer.
    pub plain: usize,
    /// The handshake finished with these bytes.
    pub established: bool,
    /// The peer sent close_notify: no more application data comes.
    pub peer_closed: bool,
    /// The connection failed (the bytes before the failure were still taken): the output
    /// holds the alert to send, then the connection closes.
    pub error: Option<rustls::Error>,
}

/// One TLS connection: its session, and bytes only while they wait.
pub struct TlsConn {
    session: Session,
    /// The start of a record whose rest has not arrived; empty (unallocated) between records.
    partial: Held,
    /// Encrypted bytes the socket has not taken yet; empty (unallocated) while it takes all.
    pub unsent: Held,
    established: bool,
    /// A fatal error was met: rustls has nothing more to give but its alert.
    failed: bool,
    /// Waiting in the shard's handshake backlog (`secure.rs`).
    pub queued: bool,
    /// The handshake resumed an earlier session.
    resumed: bool,
}

/// rustls' connection through the handshake (and for a TLS 1.2 session's lifetime), then a
/// TLS 1.3 session's own record layer.
enum Session {
    Rustls(Box<UnbufferedServerConnection>),
    Tls13(Box<crate::records::Traffic>),
    /// rustls' connection could not be taken over (the connection has failed).
    Gone,
}

/// Bytes a connection keeps only while they wait: one pointer, null while empty (a `Vec`
/// would be 24 bytes in every idle connection).
// The box is the point: 8 bytes in an idle connection, the Vec's 24 only while bytes wait.
#[allow(clippy::box_collection)]
#[derive(Default)]
pub struct Held(Option<Box<Vec<u8>>>);

impl Held {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|v| v.is_empty())
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    /// The bytes, allocated if there were none.
    pub fn vec(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Box::default)
    }

    /// Drops the first `n` bytes; frees everything when none are left.
    pub fn consume(&mut self, n: usize) {
        if let Some(v) = self.0.as_mut() {
            if n >= v.len() {
                self.0 = None;
            } else {
                v.drain(..n);
            }
        }
    }

    pub fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Keeps `v` if it holds bytes, frees it otherwise.
    pub fn put(&mut self, v: Vec<u8>) {
        self.0 = (!v.is_empty()).then(|| Box::new(v));
    }

    pub fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// The input to process: the bytes kept from before followed by `work`, or `work`
    /// itself when none were kept.
    fn join<'a>(&'a mut self, work: &'a mut Vec<u8>) -> &'a mut Vec<u8> {
        if self.is_empty() {
            return work;
        }
        let p = self.vec();
        p.extend_from_slice(work);
        p
    }

    /// After [`Held::join`] and the first `taken` bytes processed: keeps only the rest, in a
    /// buffer of its own size.
    fn keep(&mut self, work: &[u8], taken: usize) {
        if !self.is_empty() {
            self.consume(taken);
        } else if taken < work.len() {
            self.vec().extend_from_slice(&work[taken..]);
        }
    }
}

/// Largest plaintext record (TLS 1.2 and 1.3).
pub const MAX_RECORD: usize = 16 * 1024;

/// Ciphertext bytes of one record beyond its plaintext, at most (header, tag, padding).
const RECORD_OVERHEAD: usize = 5 + 256;

impl TlsConn {
    pub fn new(ctx: &TlsContext) -> Result<Box<TlsConn>, rustls::Error> {
        Ok(Box::new(TlsConn {
            session: Session::Rustls(Box::new(UnbufferedServerConnection::new(
                ctx.config.clone(),
            )?)),
            partial: Held::default(),
            unsent: Held::default(),
            established: false,
            failed: false,
            queued: false,
            resumed: false,
        }))
    }

    /// rustls' connection, while it has one.
    fn rustls(&self) -> Option<&UnbufferedServerConnection> {
        match &self.session {
            Session::Rustls(c) => Some(c),
            _ => None,
        }
    }

    /// At the end of a TLS 1.3 handshake: rustls' connection, brought to where it has nothing
    /// left to send (its tickets encoded into `out`), hands its secrets and key schedule to
    /// the record layer and is dropped. Nothing happens before the handshake is done, for
    /// TLS 1.2, or while rustls still has records to give; false if the connection failed.
    fn settle(&mut self, out: &mut Vec<u8>) -> bool {
        let Session::Rustls(c) = &self.session else {
            return !matches!(self.session, Session::Gone);
        };
        if !self.established
            || c.is_handshaking()
            || c.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
            || !self.with_writer(out, |_, _| true)
        {
            return true;
        }
        let Session::Rustls(c) = std::mem::replace(&mut self.session, Session::Gone) else {
            return false;
        };
        match c
            .dangerous_into_kernel_connection()
            .and_then(|(secrets, kernel)| crate::records::Traffic::new(secrets, kernel))
        {
            Ok(t) => {
                self.session = Session::Tls13(Box::new(t));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "a TLS 1.3 session could not leave rustls: closed");
                self.failed = true;
                false
            }
        }
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.session {
            Session::Rustls(c) => c.protocol_version(),
            Session::Tls13(t) => Some(t.protocol_version()),
            Session::Gone => None,
        }
    }

    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        match &self.session {
            Session::Rustls(c) => c.negotiated_cipher_suite().map(|s| s.suite()),
            Session::Tls13(t) => Some(t.cipher_suite()),
            Session::Gone => None,
        }
    }

    /// While rustls has the session (the handshake and just after it).
    pub fn key_exchange_group(&self) -> Option<rustls::NamedGroup> {
        self.rustls()?
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    }

    /// The handshake resumed an earlier session (a ticket) rather than a full one.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Keeps bytes that arrived during the handshake for later, when the shard's handshake
    /// budget allows ([`TlsConn::receive`] with nothing new then takes them).
    pub fn defer(&mut self, bytes: &[u8]) {
        self.partial.vec().extend_from_slice(bytes);
    }

    /// Bytes kept and not yet discarded by rustls.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The client's certificate chain, leaf first, once the handshake verified it: read it
    /// when [`Received::established`] says so, before the next call takes the session from
    /// rustls.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.rustls()?.peer_certificates()
    }

    /// Takes the bytes the socket delivered, in `work` (the shard's scratch buffer, left
    /// unspecified): application bytes are appended to `plain`, and what the handshake or an
    /// alert has to send to `out`.
    pub fn receive(
        &mut self,
        work: &mut Vec<u8>,
        plain: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Received {
        let mut got = Received::default();
        if self.failed || !self.settle(out) {
            got.error = Some(rustls::Error::HandshakeNotComplete);
            return got;
        }
        if let Session::Tls13(t) = &mut self.session {
            let got = Self::receive_tls13(t, &mut self.partial, work, plain, out);
            self.failed = got.error.is_some();
            return got;
        }
        let Session::Rustls(conn) = &mut self.session else {
            got.error = Some(rustls::Error::HandshakeNotComplete);
            return got;
        };
        let buf = self.partial.join(work);
        let mut start = 0;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[start..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    start += discard;
                    got.error = Some(e);
                    break;
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(Ok(rec)) = r.next_record() {
                        plain.extend_from_slice(rec.payload);
                        got.plain += rec.payload.len();
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, out),
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => got.peer_closed = true,
                // Early data is never accepted (max_early_data_size is 0).
                ConnectionState::ReadEarlyData(mut r) => while r.next_record().is_some() {},
                _ => stop = true,
            }
            start += discard;
            if stop {
                break;
            }
        }
        if !self.established && !conn.is_handshaking() && got.error.is_none() {
            self.established = true;
            self.resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            got.established = true;
        }
        // Keep only an unfinished record.
        self.partial.keep(work, start);
        if got.error.is_some() {
            self.fail(out);
        }
        got
    }

    /// [`TlsConn::receive`] on the record layer: whole records are opened, an unfinished
    /// one is kept in `partial`.
    fn receive_tls13(
        t: &mut crate::records::Traffic,
        partial: &mut Held,
        work: &mut Vec<u8>,
        plain: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Received {
        let opened = t.open(partial.join(work), plain, out);
        partial.keep(work, opened.consumed);
        if opened.error.is_some() {
            *partial = Held::default();
        }
        Received {
            plain: opened.plain,
            established: false,
            peer_closed: opened.peer_closed,
            error: opened.error,
        }
    }

    /// After a fatal error rustls still holds its alert: encode it into `out`.
    fn fail(&mut self, out: &mut Vec<u8>) {
        if self.failed {
            return;
        }
        self.with_writer(out, |_, _| false);
        self.failed = true;
        self.partial = Held::default();
    }

    /// Brings the session to where application data may be written, encoding into `out`
    /// whatever it has to send first, and calls `f` there; false if it never gets there
    /// (handshake unfinished, closed or failed) or `f` says so.
    ///
    /// rustls remembers positions in the bytes it was given and not told to discard (the
    /// start of a handshake message spanning records): every call gets them, never an
    /// empty buffer in their place.
    fn with_writer(
        &mut self,
        out: &mut Vec<u8>,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> bool,
    ) -> bool {
        let Session::Rustls(conn) = &mut self.session else {
            return false;
        };
        let mut pending = self.partial.take();
        let mut f = Some(f);
        let mut result = false;
        for _ in 0..8 {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut pending);
            let done = match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, out);
                    false
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    false
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if let Some(f) = f.take() {
                        result = f(&mut w, out);
                    }
                    true
                }
                _ => true,
            };
            pending.drain(..discard);
            if done {
                break;
            }
        }
        self.partial.put(pending);
        result
    }

    /// Encrypts application bytes into `out`; false if the connection cannot send them
    /// (handshake unfinished, or closed).
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> bool {
        if self.failed || !self.settle(out) {
            return false;
        }
        if let Session::Tls13(t) = &mut self.session {
            return t.seal(plain, out);
        }
        self.with_writer(out, |w, out| {
            let records = plain.len().div_ceil(MAX_RECORD).max(1);
            let len = out.len();
            out.resize(len + plain.len() + records * RECORD_OVERHEAD, 0);
            loop {
                match w.encrypt(plain, &mut out[len..]) {
                    Ok(n) => {
                        out.truncate(len + n);
                        return true;
                    }
                    Err(EncryptError::InsufficientSize(s)) => out.resize(len + s.required_size, 0),
                    Err(_) => {
                        out.truncate(len);
                        return false;
                    }
                }
            }
        })
    }

    /// Appends a close_notify alert to `out`, if the connection can still send one.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.failed || !self.established {
            return;
        }
        if let Session::Tls13(t) = &mut self.session {
            t.close_notify(out);
            return;
        }
        self.with_writer(out, |w, out| {
            let len = out.len();
            out.resize(len + RECORD_OVERHEAD, 0);
            match w.queue_close_notify(&mut out[len..]) {
                Ok(n) => out.truncate(len + n),
                Err(_) => out.truncate(len),
            }
            true
        });
    }
}

/// Appends a handshake record rustls has ready to `out`.
fn encode<D>(e: &mut rustls::unbuffered::EncodeTlsData<'_, D>, out: &mut Vec<u8>) {
    let len = out.len();
    out.resize(len + MAX_RECORD + RECORD_OVERHEAD, 0);
    loop {
        match e.encode(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return;
            }
            Err(EncodeError::InsufficientSize(s)) => out.resize(len + s.required_size, 0),
            Err(_) => {
                out.truncate(len);
                return;
            }
        }
    }
}

/// The identity of a client certificate, for `use_identity_as_username`: its subject CN,
/// else its first DNS name or email address among the subject alternative names.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = x.subject().iter_common_name().next() {
        if let Ok(s) = cn.as_str() {
            return Some(s.to_owned());
        }
    }
    let san = x.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(s)
        | x509_parser::extensions::GeneralName::RFC822Name(s) => Some((*s).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
