//! The `retained` scenario: a setup connection publishes T retained messages
//! `bench/retained/<i>` (QoS 1, acknowledged, bounded by --ramp-up); then S subscribers, one
//! after another, subscribe `bench/retained/#` and each is timed from SUBSCRIBE to the last of
//! the T retained messages (bounded by --duration per subscriber, and by --drain without any
//! delivery); finally the retained
//! messages are cleared with empty retained publishes. Sequential by nature, so it runs on
//! blocking sockets in the calling thread (--threads / --processes do not apply).

use crate::payload::{write_header, Header, HEADER_LEN};
use crate::stats::{new_hist, Counters};
use crate::sys::now_ns;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use ringmq_codec::{
    decode_packet, encode, ByteStr, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::num::NonZeroU16;
use std::time::Duration;

const TOPIC_PREFIX: &str = "bench/retained/";
/// Unacknowledged retained publishes in flight during setup and cleanup.
const WINDOW: usize = 1000;

pub struct Cfg {
    pub addr: SocketAddrV4,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub payload: usize,
    pub keep_alive: u16,
    pub topics: u32,
    pub subscribers: u32,
    pub setup_limit_ns: u64,
    pub per_sub_limit_ns: u64,
    /// A subscriber gives up after this long without a delivery.
    pub idle_limit_ns: u64,
    pub client_prefix: String,
    pub quiet: bool,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct RetainedJson {
    pub topics: u32,
    pub subscribers: u32,
    /// Subscribers that received all `topics` retained messages in time.
    pub complete_subscribers: u64,
    pub setup_s: f64,
    pub setup_acked: u64,
    /// Retained messages delivered to all subscribers, per second of subscription time.
    pub retained_per_s: f64,
    /// Deliveries without the retain flag (errors).
    pub not_retained: u64,
    /// Subscribers whose count of retained messages was not `topics` (errors).
    pub count_mismatches: u64,
    pub cleared: u64,
}

pub struct Out {
    pub counters: Counters,
    /// Per subscriber: µs from SUBSCRIBE to the last retained message.
    pub latency: Histogram<u64>,
    pub connack: Histogram<u64>,
    pub json: RetainedJson,
    pub first_error: Option<String>,
    /// Sum of the subscription phases, seconds.
    pub measured_s: f64,
}

/// One blocking MQTT connection (also used by the `backlog` scenario).
pub(crate) struct Conn {
    pub(crate) s: TcpStream,
    rbuf: BytesMut,
    pub(crate) v: ProtocolVersion,
    pub(crate) recv_max: usize,
    /// CONNACK's Session Present.
    pub(crate) session_present: bool,
}

/// How a blocking connection connects.
pub(crate) struct Dial<'a> {
    pub(crate) addr: SocketAddrV4,
    pub(crate) version: ProtocolVersion,
    pub(crate) keep_alive: u16,
    pub(crate) id: &'a str,
    pub(crate) clean_start: bool,
    /// MQTT 5 Session Expiry Interval (seconds); 3.1.1 sessions persist by Clean Session 0.
    pub(crate) session_expiry: Option<u32>,
}

impl Conn {
    fn open(cfg: &Cfg, id: &str, connack: &mut Histogram<u64>) -> Result<Conn, String> {
        let dial = Dial {
            addr: cfg.addr,
            version: cfg.version,
            keep_alive: cfg.keep_alive,
            id,
            clean_start: true,
            session_expiry: None,
        };
        Conn::dial(&dial, connack)
    }

    pub(crate) fn dial(cfg: &Dial<'_>, connack: &mut Histogram<u64>) -> Result<Conn, String> {
        let id = cfg.id;
        let t = now_ns();
        let s = TcpStream::connect_timeout(&cfg.addr.into(), Duration::from_secs(5))
            .map_err(|e| format!("connect to {}: {e}", cfg.addr))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let mut c = Conn {
            s,
            rbuf: BytesMut::with_capacity(256 * 1024),
            v: cfg.version,
            recv_max: WINDOW,
            session_present: false,
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: cfg.version,
            clean_start: cfg.clean_start,
            keep_alive: cfg.keep_alive,
            client_id: ByteStr::from(id),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                receive_maximum: if cfg.version.is_v5() {
                    Some(65535)
                } else {
                    None
                },
                session_expiry_interval: cfg.session_expiry.filter(|_| cfg.version.is_v5()),
                ..Default::default()
            },
        })))?;
        let deadline = now_ns() + 5_000_000_000;
        match c.next(deadline)? {
            Some(Packet::ConnAck(a)) => {
                if a.reason.is_error() {
                    return Err(format!("CONNACK refused: {:?}", a.reason));
                }
                if let Some(m) = a.properties.receive_maximum {
                    c.recv_max = (m as usize).min(WINDOW);
                }
                c.session_present = a.session_present;
                connack.saturating_record(((now_ns() - t) / 1000).max(1));
                Ok(c)
            }
            Some(_) => Err("expected CONNACK".into()),
            None => Err("no CONNACK within 5 s".into()),
        }
    }

    pub(crate) fn send(&mut self, p: &Packet) -> Result<(), String> {
        let mut b = BytesMut::new();
        encode(p, self.v, &mut b).map_err(|e| e.to_string())?;
        self.s.write_all(&b).map_err(|e| format!("send: {e}"))
    }

    /// The next packet, or None at `deadline`.
    pub(crate) fn next(&mut self, deadline: u64) -> Result<Option<Packet>, String> {
        loop {
            if let Some(p) = decode_packet(&mut self.rbuf, self.v, 1 << 28)
                .map_err(|e| format!("decode: {e}"))?
            {
                return Ok(Some(p));
            }
            if now_ns() >= deadline {
                return Ok(None);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("connection closed by the broker".into()),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
    }

    pub(crate) fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Box::default()));
        let _ = self.s.shutdown(std::net::Shutdown::Write);
        let deadline = now_ns() + 1_000_000_000;
        let mut buf = [0u8; 4096];
        while now_ns() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    }
}

/// Publishes `bench/retained/0..topics` retained at QoS 1 with up to the window
/// unacknowledged; the payload of topic i is `payload(i)`. Returns how many were acknowledged
/// by `deadline`.
fn publish_all(
    c: &mut Conn,
    topics: u32,
    deadline: u64,
    payload: &mut dyn FnMut(u32) -> Bytes,
) -> Result<u64, String> {
    let window = c.recv_max;
    publish_windowed(c, topics, window, deadline, &mut |i| Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: ByteStr::from(format!("{TOPIC_PREFIX}{i}")),
        packet_id: None,
        payload: payload(i),
        properties: None,
    })
}

/// Publishes `count` QoS 1 messages, message i built by `make(i)` (its packet id is set here),
/// with at most `window` unacknowledged. Returns how many were acknowledged by `deadline`; a
/// refusal (PUBACK with an error reason) is an error.
pub(crate) fn publish_windowed(
    c: &mut Conn,
    count: u32,
    window: usize,
    deadline: u64,
    make: &mut dyn FnMut(u32) -> Publish,
) -> Result<u64, String> {
    let window = window.min(c.recv_max).max(1);
    let (mut next, mut acked, mut inflight) = (0u32, 0u64, 0usize);
    let mut out = BytesMut::new();
    while acked < u64::from(count) {
        out.clear();
        while next < count && inflight < window {
            let mut p = make(next);
            p.packet_id = NonZeroU16::new((next % 65535) as u16 + 1);
            encode(&Packet::Publish(p), c.v, &mut out).map_err(|e| e.to_string())?;
            next += 1;
            inflight += 1;
        }
        if !out.is_empty() {
            c.s.write_all(&out).map_err(|e| format!("send: {e}"))?;
        }
        match c.next(deadline)? {
            Some(Packet::PubAck(a)) if !a.reason.is_error() => {
                acked += 1;
                inflight -= 1;
            }
            Some(Packet::PubAck(a)) => return Err(format!("PUBACK refused: {:?}", a.reason)),
            Some(Packet::PingResp) => {}
            Some(other) => {
                return Err(format!(
                    "unexpected packet type {} while publishing",
                    other.packet_type()
                ))
            }
            None => break,
        }
    }
    Ok(acked)
}

/// What one subscriber saw of the retained set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    seen: Vec<bool>,
    pub unique: u64,
    pub received: u64,
    pub duplicates: u64,
    pub not_retained: u64,
    /// Topics outside 0..topics under the prefix (an earlier run's leftovers) or elsewhere.
    pub foreign: u64,
}

impl Tally {
    pub fn new(topics: u32) -> Tally {
        Tally {
            seen: vec![false; topics as usize],
            ..Default::default()
        }
    }

    pub fn record(&mut self, topic: &str, retain: bool) {
        self.received += 1;
        if !retain {
            self.not_retained += 1;
            return;
        }
        let idx = topic
            .strip_prefix(TOPIC_PREFIX)
            .and_then(|s| s.parse::<usize>().ok());
        match idx.and_then(|i| self.seen.get_mut(i)) {
            Some(s) if !*s => {
                *s = true;
                self.unique += 1;
            }
            Some(_) => self.duplicates += 1,
            None => self.foreign += 1,
        }
    }

    pub fn complete(&self) -> bool {
        self.unique == self.seen.len() as u64
    }
}

fn progress(cfg: &Cfg, msg: &str) {
    if !cfg.quiet {
        eprintln!("[retained] {msg}");
    }
}

pub fn run(cfg: &Cfg, on_go: &mut dyn FnMut(), on_end: &mut dyn FnMut()) -> Result<Out, String> {
    let mut connack = new_hist();
    let mut lat = new_hist();
    let mut c = Counters {
        devices: cfg.subscribers as u64 + 1,
        ..Default::default()
    };
    let mut j = RetainedJson {
        topics: cfg.topics,
        subscribers: cfg.subscribers,
        ..Default::default()
    };
    let mut first_error: Option<String> = None;
    let mut err = |c: &mut Counters, msg: String| {
        c.errors += 1;
        if first_error.is_none() {
            first_error = Some(msg);
        }
    };
    // Setup.
    let t_setup = now_ns();
    c.first_attempt_ns = t_setup;
    let mut publ = Conn::open(cfg, &format!("{}setup", cfg.client_prefix), &mut connack)?;
    c.connected += 1;
    c.pubs_connected += 1;
    let mut tpl = vec![0u8; cfg.payload.max(HEADER_LEN)];
    for (i, b) in tpl[HEADER_LEN..].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let acked = publish_all(
        &mut publ,
        cfg.topics,
        t_setup + cfg.setup_limit_ns,
        &mut |i| {
            write_header(
                &mut tpl[..HEADER_LEN],
                Header {
                    ts_ns: now_ns(),
                    pub_id: 0,
                    seq: i,
                },
            );
            Bytes::copy_from_slice(&tpl)
        },
    )?;
    c.sent = cfg.topics as u64;
    j.setup_acked = acked;
    j.setup_s = (now_ns() - t_setup) as f64 / 1e9;
    c.last_ready_ns = now_ns();
    progress(
        cfg,
        &format!(
            "setup: {acked} of {} retained messages acknowledged in {:.3} s",
            cfg.topics, j.setup_s
        ),
    );
    if acked < cfg.topics as u64 {
        err(
            &mut c,
            format!(
                "setup: only {acked} of {} retained publishes acknowledged within --ramp-up",
                cfg.topics
            ),
        );
    }
    // Subscribers, one after another.
    on_go();
    let mut measured_ns = 0u64;
    for s in 0..cfg.subscribers {
        let mut sub = match Conn::open(cfg, &format!("{}sub{s}", cfg.client_prefix), &mut connack) {
            Ok(x) => x,
            Err(e) => {
                err(&mut c, format!("subscriber {s}: {e}"));
                continue;
            }
        };
        c.connected += 1;
        c.subs_connected += 1;
        let t0 = now_ns();
        sub.send(&Packet::Subscribe(Box::new(Subscribe {
            packet_id: NonZeroU16::new(1).unwrap(),
            filters: vec![SubscribeFilter {
                filter: ByteStr::from(format!("{TOPIC_PREFIX}#")),
                options: SubscriptionOptions {
                    qos: cfg.qos,
                    ..Default::default()
                },
            }],
            properties: Properties::default(),
        })))?;
        let limit = t0 + cfg.per_sub_limit_ns;
        let mut t_progress = t0;
        let mut tally = Tally::new(cfg.topics);
        let mut t_last = 0;
        let mut failed = None;
        while !tally.complete() {
            let deadline = limit.min(t_progress + cfg.idle_limit_ns);
            match sub.next(deadline) {
                Ok(Some(Packet::Publish(p))) => {
                    tally.record(p.topic.as_str(), p.retain);
                    t_last = now_ns();
                    t_progress = t_last;
                    if let Some(id) = p.packet_id {
                        let ack = if p.qos == QoS::ExactlyOnce {
                            Packet::PubRec(PubResp::new(id))
                        } else {
                            Packet::PubAck(PubResp::new(id))
                        };
                        if let Err(e) = sub.send(&ack) {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                Ok(Some(Packet::PubRel(r))) => {
                    if let Err(e) = sub.send(&Packet::PubComp(PubResp::new(r.packet_id))) {
                        failed = Some(e);
                        break;
                    }
                }
                Ok(Some(Packet::SubAck(a))) => {
                    if let Some(rc) = a.reason_codes.iter().find(|r| r.is_error()) {
                        failed = Some(format!("SUBSCRIBE refused: {rc:?}"));
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let t_done = if tally.complete() { t_last } else { now_ns() };
        measured_ns += t_done - t0;
        c.received += tally.received;
        c.received_in_window += tally.unique;
        c.unique += tally.unique;
        c.duplicates += tally.duplicates;
        j.not_retained += tally.not_retained;
        if tally.not_retained > 0 {
            err(
                &mut c,
                format!(
                    "subscriber {s}: {} deliveries without the retain flag",
                    tally.not_retained
                ),
            );
        }
        if tally.complete() && tally.foreign == 0 {
            j.complete_subscribers += 1;
            lat.saturating_record(((t_done - t0) / 1000).max(1));
        } else {
            j.count_mismatches += 1;
            err(
                &mut c,
                format!(
                    "subscriber {s}: {} of {} retained messages ({} foreign) within --duration",
                    tally.unique, cfg.topics, tally.foreign
                ),
            );
        }
        if let Some(e) = failed {
            err(&mut c, format!("subscriber {s}: {e}"));
        }
        progress(
            cfg,
            &format!(
                "subscriber {}/{}: {} retained in {:.3} s",
                s + 1,
                cfg.subscribers,
                tally.unique,
                (t_done - t0) as f64 / 1e9
            ),
        );
        sub.disconnect();
    }
    on_end();
    let measured_s = measured_ns as f64 / 1e9;
    j.retained_per_s = if measured_s > 0.0 {
        (c.unique as f64 / measured_s * 100.0).round() / 100.0
    } else {
        0.0
    };
    // Cleanup: empty retained payloads delete the retained messages.
    let cleared = publish_all(
        &mut publ,
        cfg.topics,
        now_ns() + cfg.setup_limit_ns,
        &mut |_| Bytes::new(),
    );
    match cleared {
        Ok(n) => {
            j.cleared = n;
            if n < cfg.topics as u64 {
                err(
                    &mut c,
                    format!(
                        "cleanup: only {n} of {} retained messages cleared",
                        cfg.topics
                    ),
                );
            }
        }
        Err(e) => err(&mut c, format!("cleanup: {e}")),
    }
    publ.disconnect();
    progress(cfg, &format!("cleared {} retained messages", j.cleared));
    Ok(Out {
        counters: c,
        latency: lat,
        connack,
        json: j,
        first_error,
        measured_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts() {
        let mut t = Tally::new(3);
        t.record("bench/retained/0", true);
        t.record("bench/retained/0", true);
        t.record("bench/retained/2", false);
        t.record("bench/retained/7", true);
        t.record("other/1", true);
        assert!(!t.complete());
        t.record("bench/retained/1", true);
        t.record("bench/retained/2", true);
        assert!(t.complete());
        assert_eq!(t.unique, 3);
        assert_eq!(t.received, 7);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.not_retained, 1);
        assert_eq!(t.foreign, 2);
    }
}
