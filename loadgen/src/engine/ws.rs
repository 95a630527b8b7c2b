//! MQTT over WebSocket for the devices (`--ws`): the upgrade request, MQTT bytes out in masked
//! binary frames, the broker's frames unframed in. Frame headers are parsed and written by
//! `tungstenite`, as in the broker.

use bytes::BytesMut;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// One device's WebSocket state.
pub(crate) struct WsClient {
    open: bool,
    /// The upgrade response so far.
    resp: Vec<u8>,
    /// MQTT bytes written before the upgrade completed, framed once it has.
    pending: Vec<u8>,
    /// A frame header split over reads.
    hdr: Vec<u8>,
    /// Payload bytes of the current frame still to come, and whether they are MQTT bytes.
    left: u64,
    data: bool,
    /// Mask keys (a client masks every frame).
    rng: u32,
}

/// The upgrade request every device sends.
pub(crate) fn request(path: &str, seed: u64) -> Vec<u8> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(seed.to_le_bytes().repeat(2));
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .into_bytes()
}

impl WsClient {
    pub(crate) fn new(seed: u64) -> Box<WsClient> {
        Box::new(WsClient {
            open: false,
            resp: Vec::new(),
            pending: Vec::new(),
            hdr: Vec::new(),
            left: 0,
            data: true,
            rng: (seed as u32) | 1,
        })
    }

    /// MQTT bytes to send: one masked binary frame into `out`, or kept until the upgrade.
    pub(crate) fn wrap(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if !self.open {
            self.pending.extend_from_slice(data);
            return;
        }
        // xorshift32: masks need not be secret here, only present.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let mask = self.rng.to_be_bytes();
        let h = FrameHeader {
            is_final: true,
            opcode: OpCode::Data(Data::Binary),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        h.format(data.len() as u64, out)
            .expect("formatting into a Vec cannot fail");
        let start = out.len();
        out.extend_from_slice(data);
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }

    /// Bytes from the broker: MQTT bytes are appended to `mqtt`; what must be sent (the MQTT
    /// bytes kept during the upgrade) goes to `out`. An error ends the device.
    pub(crate) fn unwrap(
        &mut self,
        mut input: &[u8],
        mqtt: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if !self.open {
            self.resp.extend_from_slice(input);
            let Some(end) = self.resp.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if self.resp.len() > 8192 {
                    Err("WebSocket: no upgrade response".into())
                } else {
                    Ok(())
                };
            };
            if !self.resp.starts_with(b"HTTP/1.1 101") {
                let line = self.resp.split(|&b| b == b'\r').next().unwrap_or_default();
                return Err(format!(
                    "WebSocket upgrade refused: {}",
                    String::from_utf8_lossy(line)
                ));
            }
            let resp = std::mem::take(&mut self.resp);
            self.open = true;
            let pending = std::mem::take(&mut self.pending);
            self.wrap(&pending, out);
            return self.unwrap(&resp[end + 4..], mqtt, out);
        }
        while !input.is_empty() {
            if self.left > 0 {
                let n = (input.len() as u64).min(self.left) as usize;
                if self.data {
                    mqtt.extend_from_slice(&input[..n]);
                }
                input = &input[n..];
                self.left -= n as u64;
                continue;
            }
            self.hdr.extend_from_slice(&input[..input.len().min(14)]);
            let had = self.hdr.len() - input.len().min(14);
            let mut c = Cursor::new(&self.hdr[..]);
            match FrameHeader::parse(&mut c) {
                Ok(Some((h, len))) => {
                    let used = c.position() as usize - had;
                    self.hdr.clear();
                    input = &input[used..];
                    match h.opcode {
                        OpCode::Data(Data::Binary | Data::Continue) => self.data = true,
                        OpCode::Control(Control::Close) => {
                            return Err("connection closed by the broker (WebSocket close)".into())
                        }
                        OpCode::Control(_) => self.data = false,
                        OpCode::Data(_) => return Err("WebSocket: not a binary frame".into()),
                    }
                    self.left = len;
                }
                Ok(None) => {
                    // All of `input` is in `hdr` now (fewer than 14 bytes were left).
                    input = &[];
                }
                Err(e) => return Err(format!("WebSocket: bad frame header: {e}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_unframe_to_the_same_bytes() {
        let mut wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let mut expected = Vec::new();
        for (n, op) in [(3usize, 2u8), (300, 2), (70_000, 2), (5, 9), (0, 2)] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let h = FrameHeader {
                is_final: true,
                opcode: OpCode::from(op),
                ..FrameHeader::default()
            };
            h.format(n as u64, &mut wire).unwrap();
            wire.extend_from_slice(&payload);
            if op == 2 {
                expected.extend_from_slice(&payload);
            }
        }
        for cut in [1, 2, 9, 13, 14, 100, usize::MAX] {
            let mut ws = WsClient::new(7);
            let (mut mqtt, mut out) = (BytesMut::new(), Vec::new());
            ws.wrap(b"\x10\x00", &mut out);
            assert!(out.is_empty(), "kept until the upgrade");
            for piece in wire.chunks(cut.min(wire.len())) {
                ws.unwrap(piece, &mut mqtt, &mut out).unwrap();
            }
            assert_eq!(&mqtt[..], &expected[..], "cut {cut}");
            assert_eq!(out[0], 0x82, "the kept CONNECT goes as a binary frame");
            assert_eq!(out[1], 0x80 | 2, "masked");
        }
    }

    #[test]
    fn a_refused_upgrade_is_an_error() {
        let mut ws = WsClient::new(1);
        let e = ws
            .unwrap(
                b"HTTP/1.1 404 Not Found\r\n\r\n",
                &mut BytesMut::new(),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(e.contains("404"), "{e}");
    }
}
