//! Unit tests of `tls.rs` and `records.rs`: a rustls client and a [`TlsConn`] over byte
//! buffers, and the heap an idle session holds.

use super::*;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use rustls::RootCertStore;
use std::io::{Read, Write};
use std::sync::Arc;

/// A server context for `localhost` and the roots a client trusts it with, from a
/// self-signed certificate made now.
fn pair() -> (TlsContext, RootCertStore) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("ringmq-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let cfg = ringmq_core::Config {
        listeners: vec![ringmq_core::config::Listener::parse("mqtts://127.0.0.1:0").unwrap()],
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..ringmq_core::Config::default()
    };
    let ctx = crate::certs::contexts(&cfg).unwrap().0[0].clone().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    (ctx, roots)
}

/// Carries bytes between a rustls client and a [`TlsConn`], cutting every flight from
/// the client into pieces of `cut` bytes, as a socket may deliver them.
struct Link {
    client: ClientConnection,
    server: Box<TlsConn>,
    work: Vec<u8>,
    /// Plaintext the server received.
    plain: BytesMut,
    cut: usize,
}

impl Link {
    fn new(version: &'static rustls::SupportedProtocolVersion, cut: usize) -> Link {
        let (ctx, roots) = pair();
        let provider = Arc::new(provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        client.set_buffer_limit(None);
        Link {
            client,
            server: TlsConn::new(&ctx).unwrap(),
            work: Vec::new(),
            plain: BytesMut::new(),
            cut,
        }
    }

    /// Moves everything either side has to send until both are quiet.
    fn pump(&mut self) -> Received {
        let mut total = Received::default();
        for _ in 0..100 {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).unwrap();
            }
            let mut back = Vec::new();
            for piece in wire.chunks(self.cut) {
                self.work.clear();
                self.work.extend_from_slice(piece);
                let got = self
                    .server
                    .receive(&mut self.work, &mut self.plain, &mut back);
                assert!(got.error.is_none(), "{:?}", got.error);
                total.plain += got.plain;
                total.established |= got.established;
                total.peer_closed |= got.peer_closed;
            }
            if wire.is_empty() && back.is_empty() {
                return total;
            }
            feed(&mut self.client, &back);
        }
        panic!("no quiet after 100 flights");
    }

    fn send_to_client(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(self.server.encrypt(data, &mut out));
        let mut got = Vec::new();
        for piece in out.chunks(self.cut) {
            got.extend(feed(&mut self.client, piece));
        }
        got
    }
}

/// Gives the client all of `bytes` (its `read_tls` takes at most what its buffer has
/// room for); returns the plaintext they carried.
fn feed(client: &mut ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !bytes.is_empty() {
        client.read_tls(&mut bytes).unwrap();
        client.process_new_packets().unwrap();
        let _ = client.reader().read_to_end(&mut got);
    }
    got
}

#[test]
fn data_survives_records_cut_anywhere_in_both_versions() {
    let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for cut in [1, 7, 300, 4096, 1 << 20] {
            let mut link = Link::new(version, cut);
            assert!(link.pump().established, "{version:?} cut {cut}");
            assert!(link.server.is_established());
            link.client.writer().write_all(&message).unwrap();
            let got = link.pump();
            assert_eq!(got.plain, message.len());
            assert_eq!(&link.plain[..], &message[..]);
            // Between records nothing is held.
            assert!(link.server.partial.0.is_none());
            assert_eq!(link.send_to_client(&message), message);
            assert!(link.server.unsent.is_empty());
        }
    }
}

#[test]
fn a_partial_record_is_kept_until_its_rest_arrives() {
    let mut link = Link::new(&rustls::version::TLS13, 1 << 20);
    link.pump();
    link.client.writer().write_all(b"hello").unwrap();
    let mut wire = Vec::new();
    link.client.write_tls(&mut wire).unwrap();
    let (a, b) = wire.split_at(wire.len() - 3);
    let mut out = Vec::new();
    link.work = a.to_vec();
    let got = link
        .server
        .receive(&mut link.work, &mut link.plain, &mut out);
    assert_eq!(got.plain, 0);
    assert_eq!(link.server.partial.len(), a.len());
    link.work = b.to_vec();
    let got = link
        .server
        .receive(&mut link.work, &mut link.plain, &mut out);
    assert_eq!(got.plain, 5);
    assert_eq!(&link.plain[..], b"hello");
    assert!(link.server.partial.0.is_none());
}

#[test]
fn garbage_gets_an_alert_and_an_error() {
    let (ctx, _) = pair();
    let mut server = TlsConn::new(&ctx).unwrap();
    let mut work = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let mut out = Vec::new();
    let got = server.receive(&mut work, &mut BytesMut::new(), &mut out);
    assert!(got.error.is_some());
    assert_eq!(out.first(), Some(&0x15), "a TLS alert record: {out:?}");
    assert!(!server.encrypt(b"x", &mut Vec::new()));
}

/// Bytes that are not TLS, or a handshake message split over records and then broken:
/// an error and an alert, never a panic, also when the session is used afterwards.
#[test]
fn hostile_bytes_get_an_error_never_a_panic() {
    let (ctx, _) = pair();
    let hello = b"\x16\x03\x01\x00\x40".iter().chain([1u8; 64].iter());
    let inputs: Vec<Vec<u8>> = vec![
        hello.copied().collect(),
        b"\x16\x03\x01\x00\x04\x01\x00\x10\x00\x16\x03\x01\x00\x02\x03\x03\x17".to_vec(),
        vec![0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5],
        vec![0x15, 3, 3, 0, 2, 2, 40],
    ];
    for input in inputs {
        let mut server = TlsConn::new(&ctx).unwrap();
        for cut in [1, 3, input.len()] {
            for piece in input.chunks(cut) {
                let mut work = piece.to_vec();
                let _ = server.receive(&mut work, &mut BytesMut::new(), &mut Vec::new());
            }
        }
        let _ = server.encrypt(b"x", &mut Vec::new());
        server.close_notify(&mut Vec::new());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn random_bytes_never_panic(
        pieces in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..6),
        header in proptest::prelude::any::<bool>(),
    ) {
        let (ctx, _) = pair();
        let mut server = TlsConn::new(&ctx).unwrap();
        for (i, p) in pieces.iter().enumerate() {
            let mut work = p.clone();
            // Often a plausible record header first, so the fuzzing reaches the parsers.
            if header && i == 0 {
                work.splice(0..0, [0x16, 3, 1, 0, (p.len() as u8).wrapping_sub(5)]);
            }
            let _ = server.receive(&mut work, &mut BytesMut::new(), &mut Vec::new());
        }
        let _ = server.encrypt(b"x", &mut Vec::new());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Random bytes, often behind a plausible record header, on a TLS 1.3 session that
    /// left rustls: an error or nothing, never a panic.
    #[test]
    fn random_records_on_the_record_layer_never_panic(
        pieces in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..6),
        typ in proptest::prelude::any::<u8>(),
    ) {
        let mut link = Link::new(&rustls::version::TLS13, 1 << 20);
        link.pump();
        proptest::prop_assert_eq!(link.send_to_client(b"x"), b"x".to_vec());
        for (i, p) in pieces.iter().enumerate() {
            let mut work = p.clone();
            if i == 0 {
                let len = (p.len() as u16).to_be_bytes();
                work.splice(0..0, [typ % 4 + 0x14, 3, 3, len[0], len[1]]);
            }
            let _ = link.server.receive(&mut work, &mut BytesMut::new(), &mut Vec::new());
        }
        let _ = link.server.encrypt(b"y", &mut Vec::new());
        link.server.close_notify(&mut Vec::new());
    }
}

/// A client that keeps changing its traffic keys (TLS 1.3 KeyUpdate): each costs the
/// server one key derivation and no answer, and traffic goes on; rustls itself refuses a
/// peer that keeps *requesting* updates of the server's keys (its own bound).
#[test]
fn a_key_update_flood_is_absorbed_without_answers() {
    let mut link = Link::new(&rustls::version::TLS13, 1 << 20);
    link.pump();
    for _ in 0..1000 {
        link.client.refresh_traffic_keys().unwrap();
        link.client.writer().write_all(b"x").unwrap();
        let mut wire = Vec::new();
        while link.client.wants_write() {
            link.client.write_tls(&mut wire).unwrap();
        }
        let mut out = Vec::new();
        let got = link.server.receive(&mut wire, &mut link.plain, &mut out);
        assert!(got.error.is_none(), "{:?}", got.error);
        assert!(out.is_empty(), "the server answered a KeyUpdate");
    }
    assert_eq!(link.plain.len(), 1000);
    assert_eq!(link.send_to_client(b"still here"), b"still here");
}

/// A client certificate chain larger than rustls' 64 KiB limit for handshake messages is
/// refused with an error, without the server buffering more than the limit.
#[test]
fn an_oversized_handshake_message_is_refused() {
    let (ctx, _) = pair();
    let mut server = TlsConn::new(&ctx).unwrap();
    // A ClientHello claiming 16 MiB, sent in full records.
    let mut hello = vec![0x01, 0xff, 0xff, 0xff];
    hello.resize(80_000, 0);
    let mut failed = false;
    for chunk in hello.chunks(16_384) {
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        rec.extend_from_slice(chunk);
        let got = server.receive(&mut rec, &mut BytesMut::new(), &mut Vec::new());
        if got.error.is_some() {
            failed = true;
            break;
        }
        assert!(server.partial.len() <= 80 * 1024);
    }
    assert!(failed);
    assert!(server.partial.is_empty());
}

#[test]
fn close_notify_is_seen_and_sent_after_either_version() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for talk in [false, true] {
            let mut link = Link::new(version, 100);
            link.pump();
            if talk {
                // TLS 1.3: the session is on the record layer from here.
                assert_eq!(link.send_to_client(b"hello"), b"hello");
            }
            link.client.send_close_notify();
            assert!(link.pump().peer_closed, "{version:?} {talk}");
            let mut out = Vec::new();
            link.server.close_notify(&mut out);
            feed(&mut link.client, &out);
            assert!(link.client.process_new_packets().unwrap().peer_has_closed());
        }
    }
}

/// After a TLS 1.3 handshake the session leaves rustls for the record layer
/// (`records.rs`); TLS 1.2 stays with rustls. Records of every size go both ways, a
/// KeyUpdate the client asks for is answered before the server's next record, and the
/// keys change again on both sides without a byte lost.
#[test]
fn a_tls13_session_continues_on_its_own_record_layer() {
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut link = Link::new(version, 1000);
        link.pump();
        assert_eq!(link.send_to_client(b"first"), b"first");
        let own = matches!(link.server.session, Session::Tls13(_));
        assert_eq!(own, version.version == rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(link.server.protocol_version(), Some(version.version));
        assert!(link.server.cipher_suite().is_some());
        link.client.writer().write_all(&big).unwrap();
        assert_eq!(link.pump().plain, big.len());
        assert_eq!(&link.plain[..], &big[..]);
        assert_eq!(link.send_to_client(&big), big);
        if own {
            for round in 0..3 {
                link.client.refresh_traffic_keys().unwrap();
                link.client.writer().write_all(b"k").unwrap();
                link.pump();
                let mut out = Vec::new();
                assert!(link.server.encrypt(b"after", &mut out));
                // The answer: a KeyUpdate record, then the data under the new key.
                assert!(out.len() > 2 * 5 + 5, "round {round}");
                assert_eq!(feed(&mut link.client, &out), b"after");
            }
            assert_eq!(link.plain.len(), big.len() + 3);
        }
    }
}

/// At the suite's confidentiality limit the record layer changes its sending key (a
/// KeyUpdate of its own) and the client reads on without a gap.
#[test]
fn the_sending_key_changes_before_the_confidentiality_limit() {
    let mut link = Link::new(&rustls::version::TLS13, 1 << 20);
    link.pump();
    assert_eq!(link.send_to_client(b"x"), b"x");
    let Session::Tls13(t) = &mut link.server.session else {
        panic!("not on the record layer");
    };
    t.set_limit(4);
    for i in 0..20u8 {
        let chunk = vec![i; 100 + usize::from(i)];
        assert_eq!(link.send_to_client(&chunk), chunk);
    }
    link.client.writer().write_all(b"still").unwrap();
    link.pump();
    assert!(link.plain.ends_with(b"still"));
}

/// On the record layer a record that does not decrypt, an unencrypted handshake record and
/// one longer than TLS allows are fatal: an error, an alert the client understands, and
/// nothing sent afterwards.
#[test]
fn a_bad_record_after_a_tls13_handshake_is_fatal_with_an_alert() {
    for case in 0..3 {
        let mut link = Link::new(&rustls::version::TLS13, 1 << 20);
        link.pump();
        assert_eq!(link.send_to_client(b"x"), b"x");
        let mut wire = match case {
            0 => {
                link.client.writer().write_all(b"abc").unwrap();
                let mut w = Vec::new();
                while link.client.wants_write() {
                    link.client.write_tls(&mut w).unwrap();
                }
                *w.last_mut().unwrap() ^= 1;
                w
            }
            1 => vec![0x16, 3, 3, 0, 4, 1, 0, 0, 0],
            _ => vec![0x17, 3, 3, 0x48, 0x01, 0],
        };
        let mut out = Vec::new();
        let got = link
            .server
            .receive(&mut wire, &mut BytesMut::new(), &mut out);
        assert!(got.error.is_some(), "case {case}");
        assert!(!out.is_empty(), "case {case}: no alert");
        let mut rd = &out[..];
        link.client.read_tls(&mut rd).unwrap();
        assert!(matches!(
            link.client.process_new_packets(),
            Err(rustls::Error::AlertReceived(_))
        ));
        assert!(!link.server.encrypt(b"y", &mut Vec::new()), "case {case}");
    }
}

/// Heap bytes allocated and not freed by the current thread (tests run on their own
/// threads, so others' allocations do not count).
struct Counting;

std::thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn live() -> isize {
    LIVE.with(|l| l.get())
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        count(l.size() as isize);
        std::alloc::System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        count(-(l.size() as isize));

        std::alloc::System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        std::alloc::System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What an idle TLS connection costs the broker: the session after a handshake and
/// traffic both ways, with nothing in flight. TLS 1.3, on the record layer: 2,008 bytes
/// (`TlsConn`, the record layer with rustls' `KernelConnection` inline, its key schedule
/// state, the two AEAD keys of 560 bytes each). While rustls kept the session it was 3,297
/// bytes in 8 blocks (its state inline, 1,112; two empty queues keeping their capacity; the
/// client's server name), as TLS 1.2 still is (3,209). The budget is a quarter of
/// Mosquitto's 15,821 bytes per idle TLS connection, the plain connection's 478 included:
/// these bounds keep each version from growing past what was measured.
#[test]
fn an_idle_tls_session_fits_its_budget() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut link = Link::new(version, 1 << 20);
        link.pump();
        link.client.writer().write_all(&[7u8; 3000]).unwrap();
        link.pump();
        assert_eq!(link.send_to_client(&[9u8; 3000]).len(), 3000);
        let Link { client, server, .. } = link;
        drop(client);
        let before = live();
        drop(server);
        let held = before - live();
        eprintln!(
            "{version:?}: an idle TLS session holds {held} heap bytes (TlsConn {} inline)",
            std::mem::size_of::<TlsConn>()
        );
        let bound = if version.version == rustls::ProtocolVersion::TLSv1_3 {
            2100
        } else {
            3300
        };
        assert!(held <= bound, "{version:?}: {held} bytes");
    }
}

#[test]
fn identity_is_the_common_name_else_a_dns_name() {
    let mut p = rcgen::CertificateParams::new(vec!["sensor-7.example".into()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "device-1");
    let key = rcgen::KeyPair::generate().unwrap();
    let with_cn = p.self_signed(&key).unwrap();
    assert_eq!(identity(with_cn.der()).as_deref(), Some("device-1"));
    let mut p = rcgen::CertificateParams::new(vec!["sensor-7.example".into()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let san_only = p.self_signed(&key).unwrap();
    assert_eq!(
        identity(san_only.der()).as_deref(),
        Some("sensor-7.example")
    );
}
