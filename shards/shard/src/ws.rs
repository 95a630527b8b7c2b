//! MQTT over WebSocket (RFC 6455) for `ws://` listeners, sans I/O: the HTTP/1.1 Upgrade, then
//! binary frames in both directions. The driver's side (the table of connections, reads and
//! writes) is `wsdrive.rs`.
//!
//! A connection holds no buffer while idle: frames are unmasked straight into the buffer the
//! core lends for reading, so only a frame header split over two reads (at most 14 bytes), a
//! control frame's payload (at most 125) or, before the upgrade, the request so far is kept.
//! MQTT packets may span frames and frames may carry several packets: the core sees one byte
//! stream, and its packet size limit applies across frames. Frame headers are parsed and
//! written by `tungstenite`, the request by `httparse`.

use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Largest upgrade request accepted (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;

/// Largest control frame payload [RFC 6455 5.5].
const MAX_CONTROL: u64 = 125;

/// Close codes [RFC 6455 7.4.1].
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// The close code that tells a WebSocket client why the broker ended its connection.
pub fn close_code(close: Option<ringmq_core::Close>) -> u16 {
    use ringmq_core::Close;
    match close {
        Some(Close::Error(r)) if r == ringmq_codec::ReasonCode::PACKET_TOO_LARGE => CLOSE_TOO_BIG,
        Some(Close::Error(_)) => CLOSE_PROTOCOL,
        Some(Close::Shutdown) => CLOSE_GOING_AWAY,
        _ => CLOSE_NORMAL,
    }
}

/// What a `ws://` listener accepts in the upgrade request.
#[derive(Clone, Debug)]
pub struct WsSettings {
    /// The only request path upgraded; others get 404.
    pub path: String,
    /// The `Origin` values accepted (compared without case); empty: any. A request without
    /// `Origin` (not from a browser) is accepted.
    pub origins: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the HTTP request.
    Upgrade,
    /// Exchanging frames.
    Open,
    /// A close frame was sent or received, or the upgrade was refused: nothing more is read.
    Closed,
}

/// Where the payload of the current frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// MQTT bytes, for the core.
    Data,
    /// A control frame, collected whole in `held`.
    Control(Control),
}

/// One WebSocket connection.
pub struct WsConn {
    phase: Phase,
    /// The request so far (upgrade), a frame header split over reads, or a control frame's
    /// payload: empty (unallocated) otherwise.
    held: Vec<u8>,
    /// Payload bytes of the current frame still to come (0: at a frame boundary).
    left: u64,
    mask: [u8; 4],
    /// Offset into `mask` of the next payload byte.
    mask_at: u8,
    target: Target,
    /// Inside a fragmented binary message: the next data frame must be a continuation.
    fragmented: bool,
    /// The subprotocol echoed in the upgrade response.
    pub protocol: Option<&'static str>,
    /// Bytes the socket has not taken yet; empty (unallocated) while it takes all.
    pub unsent: crate::tls::Held,
}

/// What one delivery of bytes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// MQTT bytes appended to the core's buffer.
    pub plain: usize,
    /// The upgrade completed with these bytes.
    pub upgraded: bool,
    /// The connection must close after the output is sent: a refused upgrade, a protocol
    /// error (the close frame is in the output), or the peer's close frame (answered).
    pub closed: Option<Why>,
}

/// Why the WebSocket layer ends a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The upgrade request was refused with this HTTP status.
    Refused(u16),
    /// The client broke the protocol; a close frame with this code was sent.
    Protocol(u16, &'static str),
    /// The client sent a close frame (answered).
    PeerClosed,
}

impl Default for WsConn {
    fn default() -> WsConn {
        WsConn {
            phase: Phase::Upgrade,
            held: Vec::new(),
            left: 0,
            mask: [0; 4],
            mask_at: 0,
            target: Target::Data,
            fragmented: false,
            protocol: None,
            unsent: crate::tls::Held::default(),
        }
    }
}

impl WsConn {
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Takes bytes from the socket: MQTT bytes are appended to `plain`, what must be sent
    /// (the upgrade response, pongs, close frames) to `out`.
    pub fn receive(
        &mut self,
        mut input: &[u8],
        settings: &WsSettings,
        plain: &mut bytes::BytesMut,
        out: &mut Vec<u8>,
    ) -> Received {
        let mut r = Received::default();
        let start = plain.len();
        if self.phase == Phase::Upgrade {
            match self.upgrade(input, settings, out) {
                Ok(Some(rest)) => {
                    r.upgraded = true;
                    input = &input[input.len() - rest..];
                }
                Ok(None) => return r,
                Err(status) => {
                    self.phase = Phase::Closed;
                    r.closed = Some(Why::Refused(status));
                    return r;
                }
            }
        }
        while !input.is_empty() && self.phase == Phase::Open {
            let step = if self.left > 0 {
                Ok(self.payload(&mut input, plain, out))
            } else {
                self.header(&mut input, out)
            };
            match step {
                Ok(None) => {}
                Ok(Some(why)) => {
                    r.closed = Some(why);
                    break;
                }
                Err((code, what)) => {
                    close_frame(code, out);
                    self.phase = Phase::Closed;
                    r.closed = Some(Why::Protocol(code, what));
                    break;
                }
            }
        }
        r.plain = plain.len() - start;
        r
    }

    /// Reads the request; `Ok(Some(n))` once upgraded, `n` bytes of `input` being frames
    /// after it; `Ok(None)` while incomplete; `Err(status)` when refused (the response is in
    /// `out`).
    fn upgrade(
        &mut self,
        input: &[u8],
        settings: &WsSettings,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, u16> {
        self.held.extend_from_slice(input);
        let Some(end) = find(&self.held, b"\r\n\r\n").map(|i| i + 4) else {
            if self.held.len() > MAX_REQUEST {
                return Err(refuse(431, "request too large", out));
            }
            return Ok(None);
        };
        if end > MAX_REQUEST {
            return Err(refuse(431, "request too large", out));
        }
        let request = std::mem::take(&mut self.held);
        let accepted = answer(&request[..end], settings, out)?;
        self.protocol = accepted;
        self.phase = Phase::Open;
        // What came after the request (all of it in this delivery: an earlier one would
        // have completed the request).
        Ok(Some(request.len() - end))
    }

    /// At a frame boundary: reads a header (keeping a split one) and checks it.
    fn header(
        &mut self,
        input: &mut &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Why>, (u16, &'static str)> {
        let bad_header = (CLOSE_PROTOCOL, "malformed frame header");
        let (header, len, used) = if self.held.is_empty() {
            let mut c = Cursor::new(*input);
            match FrameHeader::parse(&mut c) {
                Ok(Some((h, len))) => (h, len, c.position() as usize),
                Ok(None) => {
                    self.held.extend_from_slice(input);
                    *input = &[];
                    return Ok(None);
                }
                Err(_) => return Err(bad_header),
            }
        } else {
            // A header split over reads: at most 14 bytes are ever kept.
            let had = self.held.len();
            let more = input.len().min(14usize.saturating_sub(had));
            self.held.extend_from_slice(&input[..more]);
            let mut c = Cursor::new(&self.held[..]);
            match FrameHeader::parse(&mut c) {
                Ok(Some((h, len))) => {
                    let used = c.position() as usize - had;
                    self.held = Vec::new();
                    (h, len, used)
                }
                Ok(None) => {
                    *input = &input[more..];
                    return Ok(None);
                }
                Err(_) => return Err(bad_header),
            }
        };
        *input = &input[used..];
        let Some(mask) = header.mask else {
            // [RFC 6455 5.1] a client MUST mask every frame.
            return Err((CLOSE_PROTOCOL, "unmasked frame"));
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err((CLOSE_PROTOCOL, "reserved bits set"));
        }
        self.mask = mask;
        self.mask_at = 0;
        self.left = len;
        match header.opcode {
            OpCode::Data(Data::Binary) if self.fragmented => {
                Err((CLOSE_PROTOCOL, "new message inside a fragmented one"))
            }
            OpCode::Data(Data::Continue) if !self.fragmented => {
                Err((CLOSE_PROTOCOL, "continuation without a message"))
            }
            OpCode::Data(Data::Binary | Data::Continue) => {
                self.fragmented = !header.is_final;
                self.target = Target::Data;
                Ok(None)
            }
            // [MQTT-6.0.0-1] MQTT is sent in binary frames; any other data frame closes.
            OpCode::Data(Data::Text) => Err((CLOSE_UNSUPPORTED, "text frame")),
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err((CLOSE_PROTOCOL, "reserved opcode"))
            }
            OpCode::Control(c) => {
                if !header.is_final || len > MAX_CONTROL {
                    return Err((CLOSE_PROTOCOL, "fragmented or oversized control frame"));
                }
                self.target = Target::Control(c);
                if len == 0 {
                    return Ok(self.control(c, out));
                }
                Ok(None)
            }
        }
    }

    /// Payload bytes of the current frame: unmasked into `plain` (data) or `held` (control).
    fn payload(
        &mut self,
        input: &mut &[u8],
        plain: &mut bytes::BytesMut,
        out: &mut Vec<u8>,
    ) -> Option<Why> {
        let n = (input.len() as u64).min(self.left) as usize;
        let (bytes, rest) = input.split_at(n);
        *input = rest;
        let (mask, at) = (self.mask, self.mask_at as usize);
        match self.target {
            Target::Data => {
                plain.extend_from_slice(bytes);
                let len = plain.len();
                unmask(&mut plain[len - n..], mask, at);
            }
            Target::Control(_) => {
                self.held.extend_from_slice(bytes);
                let len = self.held.len();
                unmask(&mut self.held[len - n..], mask, at);
            }
        }
        self.mask_at = ((at + n) & 3) as u8;
        self.left -= n as u64;
        match self.target {
            Target::Control(c) if self.left == 0 => self.control(c, out),
            _ => None,
        }
    }

    /// A whole control frame (its payload in `held`).
    fn control(&mut self, c: Control, out: &mut Vec<u8>) -> Option<Why> {
        let payload = std::mem::take(&mut self.held);
        self.target = Target::Data;
        match c {
            Control::Ping => {
                frame_header(OpCode::Control(Control::Pong), payload.len(), out);
                out.extend_from_slice(&payload);
                None
            }
            Control::Pong | Control::Reserved(_) => None,
            Control::Close => {
                // [RFC 6455 5.5.1] answered with a close frame, the code echoed.
                let code = match payload.len() {
                    0 => CLOSE_NORMAL,
                    1 => CLOSE_PROTOCOL,
                    _ => u16::from_be_bytes([payload[0], payload[1]]),
                };
                let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
                    && std::str::from_utf8(payload.get(2..).unwrap_or(&[])).is_ok();
                close_frame(if valid { code } else { CLOSE_PROTOCOL }, out);
                self.phase = Phase::Closed;
                Some(Why::PeerClosed)
            }
        }
    }

    /// MQTT bytes from the core, as one binary frame.
    pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
        frame_header(OpCode::Data(Data::Binary), payload.len(), out);
        out.extend_from_slice(payload);
    }

    /// The server ends the connection: a close frame (once).
    pub fn close(&mut self, code: u16, out: &mut Vec<u8>) {
        if self.phase == Phase::Open {
            close_frame(code, out);
        }
        self.phase = Phase::Closed;
    }
}

/// Unmasks payload bytes in place, the first with `mask[at % 4]`.
fn unmask(bytes: &mut [u8], mask: [u8; 4], at: usize) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b ^= mask[(at + i) & 3];
    }
}

fn frame_header(opcode: OpCode, len: usize, out: &mut Vec<u8>) {
    let h = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    h.format(len as u64, out)
        .expect("formatting into a Vec cannot fail");
}

fn close_frame(code: u16, out: &mut Vec<u8>) {
    frame_header(OpCode::Control(Control::Close), 2, out);
    out.extend_from_slice(&code.to_be_bytes());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP error response; returns its status.
fn refuse(status: u16, why: &str, out: &mut Vec<u8>) -> u16 {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    let body = format!("{why}\n");
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: \
             {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    status
}

/// Checks an upgrade request and writes the answer: `Ok` with the subprotocol echoed (101
/// Switching Protocols), or `Err` with the status of the refusal.
fn answer(
    request: &[u8],
    settings: &WsSettings,
    out: &mut Vec<u8>,
) -> Result<Option<&'static str>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(refuse(400, "malformed HTTP request", out)),
    }
    if req.method != Some("GET") {
        return Err(refuse(405, "only GET upgrades to WebSocket", out));
    }
    if req.version != Some(1) {
        return Err(refuse(400, "HTTP/1.1 required", out));
    }
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    if path != settings.path {
        return Err(refuse(404, "no MQTT WebSocket endpoint here", out));
    }
    let hs: &[httparse::Header<'_>] = req.headers;
    let header = |name: &'static str| values(hs, name);
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(refuse(400, "not a WebSocket upgrade request", out));
    }
    if let Some(origin) = header("origin").next().map(str::trim) {
        let allowed = settings.origins.is_empty()
            || settings
                .origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin));
        if !allowed {
            return Err(refuse(403, "origin not allowed", out));
        }
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(refuse(426, "WebSocket version 13 required", out));
    }
    let Some(key) = header("sec-websocket-key").next().map(str::trim) else {
        return Err(refuse(400, "Sec-WebSocket-Key missing", out));
    };
    if key.len() != 24 {
        return Err(refuse(400, "bad Sec-WebSocket-Key", out));
    }
    // [MQTT-6.0.0-3/4] the client offers "mqtt" and the server selects it; "mqttv3.1" for
    // old clients. A client that offers none is accepted without one; one that offers only
    // others is refused.
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let protocol = ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)));
    if protocol.is_none() && !offered.is_empty() {
        return Err(refuse(
            400,
            "no supported WebSocket subprotocol: offer mqtt",
            out,
        ));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n"
        )
        .as_bytes(),
    );
    if let Some(p) = protocol {
        out.extend_from_slice(format!("Sec-WebSocket-Protocol: {p}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(protocol)
}

/// The values of the request's headers called `name`.
fn values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn settings() -> WsSettings {
        WsSettings {
            path: "/mqtt".into(),
            origins: Vec::new(),
        }
    }

    const REQUEST: &str = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    /// A masked client frame.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn open() -> WsConn {
        let mut ws = WsConn::default();
        let (mut plain, mut out) = (BytesMut::new(), Vec::new());
        let r = ws.receive(REQUEST.as_bytes(), &settings(), &mut plain, &mut out);
        assert!(r.upgraded && r.closed.is_none());
        let text = String::from_utf8(out).unwrap();
        // The accept key of RFC 6455's own example.
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{text}");
        ws
    }

    /// Feeds `bytes` cut into pieces of `cut`: what the core got and what was sent.
    fn feed(ws: &mut WsConn, bytes: &[u8], cut: usize) -> (Vec<u8>, Vec<u8>, Option<Why>) {
        let (mut plain, mut out) = (BytesMut::new(), Vec::new());
        let mut closed = None;
        for piece in bytes.chunks(cut) {
            let r = ws.receive(piece, &settings(), &mut plain, &mut out);
            if r.closed.is_some() {
                closed = r.closed;
                break;
            }
        }
        (plain.to_vec(), out, closed)
    }

    #[test]
    fn frames_split_anywhere_and_coalesced_give_the_same_bytes() {
        let mut stream = Vec::new();
        stream.extend(frame(2, false, b"\x10\x0c\x00\x04MQ"));
        stream.extend(frame(9, true, b"hi"));
        stream.extend(frame(0, true, b"TT\x04\x02\x00\x3c\x00\x00"));
        stream.extend(frame(2, true, &[7u8; 300]));
        stream.extend(frame(2, true, &[9u8; 70_000]));
        let mut expected = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00".to_vec();
        expected.extend([7u8; 300]);
        expected.extend([9u8; 70_000]);
        for cut in [1, 2, 3, 7, 13, 14, 100, 4096, usize::MAX] {
            let mut ws = open();
            let (plain, out, closed) = feed(&mut ws, &stream, cut);
            assert_eq!(closed, None, "cut {cut}");
            assert_eq!(plain, expected, "cut {cut}");
            // The ping inside the fragmented message is answered with a pong.
            assert_eq!(out, [0x8a, 2, b'h', b'i'], "cut {cut}");
        }
    }

    #[test]
    fn protocol_errors_close_with_their_code() {
        let unmasked = {
            let mut f = frame(2, true, b"x");
            f[1] &= 0x7f;
            f.drain(2..6);
            f[2] = b'x';
            f
        };
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (frame(1, true, b"text"), CLOSE_UNSUPPORTED),
            (unmasked, CLOSE_PROTOCOL),
            (frame(0, true, b"x"), CLOSE_PROTOCOL),
            (
                [frame(2, false, b"a"), frame(2, true, b"b")].concat(),
                CLOSE_PROTOCOL,
            ),
            (frame(9, true, &[0u8; 126]), CLOSE_PROTOCOL),
            (frame(9, false, b"x"), CLOSE_PROTOCOL),
            (frame(3, true, b"x"), CLOSE_PROTOCOL),
            (frame(0x42, true, b"x"), CLOSE_PROTOCOL),
        ];
        for (bytes, code) in cases {
            let mut ws = open();
            let (_, out, closed) = feed(&mut ws, &bytes, usize::MAX);
            assert!(
                matches!(closed, Some(Why::Protocol(c, _)) if c == code),
                "{closed:?}"
            );
            assert_eq!(out[..2], [0x88, 2]);
            assert_eq!(u16::from_be_bytes([out[2], out[3]]), code);
        }
    }

    #[test]
    fn a_close_frame_is_answered_with_its_code() {
        let mut ws = open();
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let (_, out, closed) = feed(&mut ws, &frame(8, true, &payload), 3);
        assert_eq!(closed, Some(Why::PeerClosed));
        assert_eq!(out, [0x88, 2, 0x03, 0xe9]);
        let mut ws = open();
        let (_, out, _) = feed(&mut ws, &frame(8, true, &[]), 1);
        assert_eq!(out, [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn bad_upgrade_requests_get_an_http_status() {
        let cases = [
            (REQUEST.replace("GET /mqtt", "GET /other"), 404),
            (REQUEST.replace("GET", "POST"), 405),
            (REQUEST.replace("Version: 13", "Version: 8"), 426),
            (REQUEST.replace("Upgrade: websocket\r\n", ""), 400),
            (
                REQUEST.replace("Protocol: mqtt", "Protocol: chat, superchat"),
                400,
            ),
            (REQUEST.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
            (
                format!("GET /mqtt HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(9000)),
                431,
            ),
            ("\x16\x03\x01\x02\x00\r\n\r\n".to_owned(), 400),
        ];
        for (request, status) in cases {
            let mut ws = WsConn::default();
            let (mut plain, mut out) = (BytesMut::new(), Vec::new());
            let r = ws.receive(request.as_bytes(), &settings(), &mut plain, &mut out);
            assert_eq!(r.closed, Some(Why::Refused(status)), "{request:?}");
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        }
        // Old clients offer mqttv3.1; a client offering nothing is accepted without one.
        for (offer, echoed) in [("mqttv3.1", Some("mqttv3.1")), ("", None)] {
            let request = REQUEST.replace(
                "Sec-WebSocket-Protocol: mqtt\r\n",
                &if offer.is_empty() {
                    String::new()
                } else {
                    format!("Sec-WebSocket-Protocol: {offer}\r\n")
                },
            );
            let mut ws = WsConn::default();
            let (mut plain, mut out) = (BytesMut::new(), Vec::new());
            let r = ws.receive(request.as_bytes(), &settings(), &mut plain, &mut out);
            assert!(r.upgraded, "{offer}");
            assert_eq!(ws.protocol, echoed);
        }
    }

    #[test]
    fn an_origin_allow_list_refuses_other_origins_with_403() {
        let s = WsSettings {
            path: "/mqtt".into(),
            origins: vec!["https://app.example".into()],
        };
        for (origin, upgraded) in [
            (Some("https://App.Example"), true),
            (Some("https://evil.example"), false),
            (None, true),
        ] {
            let request = match origin {
                Some(o) => REQUEST.replace("Host: x\r\n", &format!("Host: x\r\nOrigin: {o}\r\n")),
                None => REQUEST.to_owned(),
            };
            let mut ws = WsConn::default();
            let (mut plain, mut out) = (BytesMut::new(), Vec::new());
            let r = ws.receive(request.as_bytes(), &s, &mut plain, &mut out);
            assert_eq!(r.upgraded, upgraded, "{origin:?}");
            if !upgraded {
                assert_eq!(r.closed, Some(Why::Refused(403)));
            }
        }
    }

    #[test]
    fn bytes_after_the_request_are_frames() {
        let mut ws = WsConn::default();
        let mut bytes = REQUEST.as_bytes().to_vec();
        bytes.extend(frame(2, true, b"\xc0\x00"));
        for cut in [1, 5, usize::MAX] {
            let mut ws2 = WsConn::default();
            let (plain, out, closed) = feed(&mut ws2, &bytes, cut);
            assert_eq!(closed, None);
            assert_eq!(plain, b"\xc0\x00", "cut {cut}");
            assert!(out.starts_with(b"HTTP/1.1 101"));
        }
        let _ = &mut ws;
    }

    /// What an open, idle WebSocket connection holds beside the plain connection's entry:
    /// this box and a pointer in the shard's table (the upgrade request is freed).
    #[test]
    fn an_idle_websocket_connection_is_small() {
        assert!(
            std::mem::size_of::<WsConn>() <= 72,
            "{}",
            std::mem::size_of::<WsConn>()
        );
        let ws = open();
        assert_eq!(ws.held.capacity(), 0);
        assert!(ws.unsent.is_empty());
    }

    #[test]
    fn server_frames_are_binary_and_unmasked() {
        let mut out = Vec::new();
        WsConn::frame(&[1u8; 200], &mut out);
        assert_eq!(out[..4], [0x82, 126, 0, 200]);
        assert_eq!(out.len(), 204);
    }
}
