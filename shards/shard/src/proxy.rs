//! PROXY protocol v1 and v2 (HAProxy's) on listeners configured for it (`proxy_protocol` in a
//! `[[listener]]` table): behind a load balancer, the header it sends first names the device's
//! real address, which the broker logs with the connection. The header is parsed by the `ppp`
//! crate, before anything else the connection speaks (TLS, WebSocket, MQTT); a connection on
//! such a listener that does not start with a valid header is closed.
//!
//! On a listener not configured for it a header is refused by the next layer: it is neither a
//! TLS ClientHello, nor an HTTP request, nor an MQTT CONNECT.

use crate::driver::Shard;
use crate::fdtable::FdTable;
use ppp::{HeaderResult, PartialResult};
use ringmq_core::{Close, ShardState};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The largest header: v1's 107 bytes, v2's 16 plus IPv6 addresses and a little room for TLVs.
const MAX_HEADER: usize = 536;

/// The PROXY protocol side of a shard.
#[derive(Default)]
pub struct Proxy {
    /// Whether each listener (by index) expects a header.
    pub listeners: Vec<bool>,
    /// Connections whose header has not arrived whole yet, with what did.
    waiting: FdTable<Vec<u8>>,
}

/// What a header said.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// The header's length, and the client's address (`None`: a health check of the load
    /// balancer itself, v2 LOCAL or v1 UNKNOWN).
    Header(usize, Option<SocketAddr>),
    Invalid(String),
}

/// Parses the start of a connection's bytes as a PROXY header.
pub fn parse(bytes: &[u8]) -> Parsed {
    let result = HeaderResult::parse(bytes);
    // A v1 line that ended is whole: ppp calls a line missing its addresses incomplete.
    let v1_ended = bytes.starts_with(b"PROXY") && bytes.windows(2).any(|w| w == b"\r\n");
    if result.is_incomplete() && v1_ended {
        return Parsed::Invalid("malformed v1 header".into());
    }
    if result.is_incomplete() {
        return if bytes.len() > MAX_HEADER {
            Parsed::Invalid("header too long".into())
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header(h.header.len(), addr)
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            };
            Parsed::Header(h.len(), addr)
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

impl Shard {
    /// A connection accepted on a listener that expects a PROXY header waits for it.
    pub(crate) fn proxy_accept(&self, listener: usize, fd: RawFd) {
        let mut p = self.proxy.borrow_mut();
        if p.listeners.get(listener).copied().unwrap_or(false) {
            p.waiting.insert(fd, Box::default());
        }
    }

    pub(crate) fn proxy_waiting(&self, fd: RawFd) -> bool {
        self.proxy.borrow().waiting.get(fd).is_some()
    }

    /// Bytes for a connection still waiting for its header. Returns what follows the header
    /// once it is whole (for the next layer), or `None` while it is not (or when the
    /// connection was closed for a bad one).
    pub(crate) fn proxy_read(
        &self,
        st: &mut ShardState,
        key: usize,
        fd: RawFd,
        input: &[u8],
    ) -> Option<Vec<u8>> {
        let mut guard = self.proxy.borrow_mut();
        let p = &mut *guard;
        let buf = p.waiting.get_mut(fd)?;
        buf.extend_from_slice(input);
        match parse(buf) {
            Parsed::Incomplete => None,
            Parsed::Header(len, addr) => {
                let rest = buf.split_off(len);
                p.waiting.remove(fd);
                match addr {
                    Some(addr) => {
                        tracing::info!(shard = st.id, conn = key, client = %addr, "PROXY protocol: connection from")
                    }
                    None => {
                        tracing::debug!(
                            shard = st.id,
                            conn = key,
                            "PROXY protocol: no address (LOCAL or UNKNOWN)"
                        )
                    }
                }
                Some(rest)
            }
            Parsed::Invalid(why) => {
                p.waiting.remove(fd);
                drop(guard);
                tracing::debug!(shard = st.id, conn = key, %why, "PROXY protocol: bad header, closed");
                st.close_conn(key, Close::Transport);
                None
            }
        }
    }

    /// The end of a connection: what it sent of a header is dropped.
    pub(crate) fn proxy_finish(&self, fd: RawFd) {
        self.proxy.borrow_mut().waiting.remove(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(addr: [u8; 4], port: u16, tail: &[u8]) -> Vec<u8> {
        let mut v = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v.extend_from_slice(&addr);
        v.extend_from_slice(&[127, 0, 0, 1]);
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&1883u16.to_be_bytes());
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn both_versions_give_the_client_address_and_the_header_length() {
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1883\r\n\x10\x00";
        assert_eq!(
            parse(v1),
            Parsed::Header(v1.len() - 2, Some("203.0.113.7:40000".parse().unwrap()))
        );
        let b = v2([198, 51, 100, 9], 5555, b"\x10");
        assert_eq!(
            parse(&b),
            Parsed::Header(b.len() - 1, Some("198.51.100.9:5555".parse().unwrap()))
        );
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 4000 1883\r\n";
        assert!(matches!(parse(v6), Parsed::Header(n, Some(a)) if n == v6.len() && a.is_ipv6()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Header(15, None));
    }

    #[test]
    fn a_split_header_waits_and_garbage_is_refused() {
        let b = v2([198, 51, 100, 9], 5555, b"");
        for cut in 1..b.len() {
            assert_eq!(parse(&b[..cut]), Parsed::Incomplete, "cut {cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 1.2.3"), Parsed::Incomplete);
        for bad in [
            &b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c"[..],
            b"GET /mqtt HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 999.1.1.1 1.1.1.1 1 1\r\n",
            b"PROXY TCP4 nonsense\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        assert!(matches!(parse(&[b'P'; 600]), Parsed::Invalid(_)));
    }
}
