//! TLS 1.3 after the handshake, without rustls' connection: the record layer of an
//! established session, kept per connection in a few hundred bytes instead of rustls' whole
//! state machine.
//!
//! rustls' `UnbufferedServerConnection` stays with a connection for its lifetime: its state,
//! its deframer and its queues (about 1,100 bytes inline, two queues that keep their capacity,
//! the client's server name) are there while the device idles for hours. Once the handshake is
//! done rustls hands over its secrets and a [`KernelConnection`] (the key schedule, to derive
//! the keys of a KeyUpdate), and the session continues here: records are sealed and opened
//! with rustls' own AEAD implementations for the negotiated suite (`Tls13AeadAlgorithm`), so
//! the framing (inner content type, padding, nonces) is rustls' code, not ours. What this
//! module does itself is the little that is left of TLS 1.3 after the handshake
//! (RFC 8446 §4.6.3, §5, §6):
//! - application data goes to the core;
//! - an alert ends the session: close_notify as the peer's end of data, anything else as an
//!   error;
//! - KeyUpdate changes the receiving key, and when the peer asks, ours too before our next
//!   record (one answer however many requests arrive before it);
//! - our sending key is updated before the suite's confidentiality limit;
//! - anything else (a change_cipher_spec record, another handshake message, a KeyUpdate not
//!   at the end of its record, a record over 2^14 + 256 bytes, one that does not decrypt) is a
//!   fatal error with the matching alert.
//!
//! TLS 1.2 sessions stay with rustls.

use bytes::BytesMut;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage, Tls13AeadAlgorithm,
};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets,
    ProtocolVersion, SupportedCipherSuite,
};

/// Largest plaintext of a record, and the most a TLS 1.3 record's ciphertext may exceed it.
const MAX_PLAIN: usize = 16 * 1024;
const MAX_EXPANSION: usize = 256;
const HEADER: usize = 5;

/// Handshake message type of KeyUpdate, and its one-byte body's two values.
const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// An established TLS 1.3 session.
pub struct Traffic {
    kernel: KernelConnection<ServerConnectionData>,
    rx: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    tx: Box<dyn MessageEncrypter>,
    tx_seq: u64,
    /// Records after which the sending key is changed (the suite's confidentiality limit).
    limit: u64,
    /// The peer asked for a KeyUpdate: ours goes before our next record.
    answer_key_update: bool,
    /// The peer sent close_notify: what follows is ignored.
    peer_closed: bool,
}

/// What one delivery of bytes did (see `tls::Received`).
#[derive(Debug, Default)]
pub struct Opened {
    /// Bytes of the input taken: every whole record.
    pub consumed: usize,
    pub plain: usize,
    pub peer_closed: bool,
    pub error: Option<Error>,
}

impl Traffic {
    /// Takes over from rustls at the end of a TLS 1.3 handshake.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Traffic, Error> {
        let suite = kernel.negotiated_cipher_suite();
        let limit = match suite {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            _ => return Err(Error::General("not a TLS 1.3 session".into())),
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Traffic {
            tx: encrypter(suite, tx)?,
            rx: decrypter(suite, rx)?,
            kernel,
            rx_seq,
            tx_seq,
            limit,
            answer_key_update: false,
            peer_closed: false,
        })
    }

    /// Lowers the confidentiality limit, so that tests reach it.
    #[cfg(test)]
    pub fn set_limit(&mut self, records: u64) {
        self.limit = records;
    }

    pub fn protocol_version(&self) -> ProtocolVersion {
        self.kernel.protocol_version()
    }

    pub fn cipher_suite(&self) -> rustls::CipherSuite {
        self.kernel.negotiated_cipher_suite().suite()
    }

    /// Opens the whole records at the start of `buf` (decrypting in place): application
    /// bytes are appended to `plain`, what has to be sent (a fatal alert) to `out`.
    pub fn open(&mut self, buf: &mut [u8], plain: &mut BytesMut, out: &mut Vec<u8>) -> Opened {
        let mut got = Opened::default();
        while buf.len() - got.consumed >= HEADER {
            let at = got.consumed;
            let h = &buf[at..at + HEADER];
            let (typ, len) = (h[0], usize::from(u16::from_be_bytes([h[3], h[4]])));
            if len > MAX_PLAIN + MAX_EXPANSION {
                return self.fail(
                    got,
                    AlertDescription::RecordOverflow,
                    out,
                    "record too long",
                );
            }
            if buf.len() - at - HEADER < len {
                break;
            }
            got.consumed += HEADER + len;
            if self.peer_closed {
                continue;
            }
            if typ != u8::from(ContentType::ApplicationData) {
                return self.fail(got, AlertDescription::UnexpectedMessage, out, "record type");
            }
            let body = &mut buf[at + HEADER..at + HEADER + len];
            let msg = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                body,
            );
            let opened = match self.rx.decrypt(msg, self.rx_seq) {
                Ok(m) => m,
                Err(e) => {
                    let alert = match e {
                        Error::DecryptError => AlertDescription::BadRecordMac,
                        _ => AlertDescription::DecodeError,
                    };
                    got.error = Some(e);
                    self.alert(alert, out);
                    return got;
                }
            };
            self.rx_seq += 1;
            match opened.typ {
                ContentType::ApplicationData => {
                    plain.extend_from_slice(opened.payload);
                    got.plain += opened.payload.len();
                }
                ContentType::Alert => match opened.payload {
                    [_, d] if *d == u8::from(AlertDescription::CloseNotify) => {
                        self.peer_closed = true;
                        got.peer_closed = true;
                    }
                    [_, d] => {
                        got.error = Some(Error::AlertReceived(AlertDescription::from(*d)));
                        return got;
                    }
                    _ => return self.fail(got, AlertDescription::DecodeError, out, "alert"),
                },
                ContentType::Handshake => {
                    let requested = match opened.payload {
                        [KEY_UPDATE, 0, 0, 1, r] => *r,
                        _ => {
                            return self.fail(
                                got,
                                AlertDescription::UnexpectedMessage,
                                out,
                                "a handshake message other than one KeyUpdate",
                            )
                        }
                    };
                    if requested != UPDATE_NOT_REQUESTED && requested != UPDATE_REQUESTED {
                        return self.fail(
                            got,
                            AlertDescription::IllegalParameter,
                            out,
                            "KeyUpdate",
                        );
                    }
                    let suite = self.kernel.negotiated_cipher_suite();
                    let next = self
                        .kernel
                        .update_rx_secret()
                        .and_then(|(seq, s)| Ok((seq, decrypter(suite, s)?)));
                    match next {
                        Ok((seq, d)) => {
                            self.rx = d;
                            self.rx_seq = seq;
                        }
                        Err(e) => {
                            got.error = Some(e);
                            self.alert(AlertDescription::InternalError, out);
                            return got;
                        }
                    }
                    self.answer_key_update |= requested == UPDATE_REQUESTED;
                }
                _ => return self.fail(got, AlertDescription::UnexpectedMessage, out, "content"),
            }
        }
        got
    }

    fn fail(
        &mut self,
        mut got: Opened,
        alert: AlertDescription,
        out: &mut Vec<u8>,
        what: &str,
    ) -> Opened {
        got.error = Some(Error::General(format!("TLS 1.3 record: {what}")));
        self.alert(alert, out);
        got
    }

    /// Seals `plain` into application data records appended to `out`; false if it cannot
    /// (the sending key could not be updated).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> bool {
        for chunk in plain.chunks(MAX_PLAIN) {
            if !self.record(ContentType::ApplicationData, chunk, out) {
                return false;
            }
        }
        true
    }

    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        self.record(
            ContentType::Alert,
            &[1, u8::from(AlertDescription::CloseNotify)],
            out,
        );
    }

    fn alert(&mut self, d: AlertDescription, out: &mut Vec<u8>) {
        self.record(ContentType::Alert, &[2, u8::from(d)], out);
    }

    /// One record, after our KeyUpdate if one is due (asked for, or at the limit).
    fn record(&mut self, typ: ContentType, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let due = self.answer_key_update || self.tx_seq.saturating_add(1) >= self.limit;
        if due && !self.update_tx(out) {
            return false;
        }
        self.seal_one(typ, payload, out)
    }

    fn update_tx(&mut self, out: &mut Vec<u8>) -> bool {
        // Sent under the old key; everything after under the new one.
        if !self.seal_one(
            ContentType::Handshake,
            &[KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED],
            out,
        ) {
            return false;
        }
        self.answer_key_update = false;
        let Ok((seq, s)) = self.kernel.update_tx_secret() else {
            return false;
        };
        match encrypter(self.kernel.negotiated_cipher_suite(), s) {
            Ok(e) => {
                self.tx = e;
                self.tx_seq = seq;
                true
            }
            Err(_) => false,
        }
    }

    fn seal_one(&mut self, typ: ContentType, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        match self.tx.encrypt(msg, self.tx_seq) {
            Ok(sealed) => {
                self.tx_seq += 1;
                out.extend_from_slice(&sealed.encode());
                true
            }
            Err(_) => false,
        }
    }
}

/// The suite's AEAD and the key and IV of one direction's traffic secret.
fn aead(
    suite: SupportedCipherSuite,
    s: ConnectionTrafficSecrets,
) -> Result<(&'static dyn Tls13AeadAlgorithm, AeadKey, Iv), Error> {
    let SupportedCipherSuite::Tls13(suite) = suite else {
        return Err(Error::General("not a TLS 1.3 suite".into()));
    };
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((suite.aead_alg, key, iv)),
        _ => Err(Error::General("unsupported AEAD".into())),
    }
}

fn encrypter(
    suite: SupportedCipherSuite,
    s: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageEncrypter>, Error> {
    aead(suite, s).map(|(alg, key, iv)| alg.encrypter(key, iv))
}

fn decrypter(
    suite: SupportedCipherSuite,
    s: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, Error> {
    aead(suite, s).map(|(alg, key, iv)| alg.decrypter(key, iv))
}
