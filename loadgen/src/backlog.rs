//! The `backlog` scenario: what a long offline queue costs the broker. A persistent subscriber
//! subscribes `bench/backlog/<tag>` at QoS 1 and goes offline; a publisher sends M QoS 1
//! messages to it (a window of unacknowledged ones, bounded by --ramp-up); the broker's
//! anonymous memory (RssAnon: heap, not the page cache a memory-mapped journal uses) is read
//! before and after; then the subscriber comes back and drains the queue, acknowledging each
//! message, and every sequence number is checked to arrive once and in order (bounded by
//! --duration, and by --drain without any delivery). Sequential, on blocking sockets in the
//! calling thread.

use crate::payload::{read_header, write_header, Header, HEADER_LEN};
use crate::retained::{publish_windowed, Conn, Dial};
use crate::stats::new_hist;
use crate::sys::{now_ns, proc_status_kb};
use bytes::Bytes;
use ringmq_codec::{
    ByteStr, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use serde::Serialize;
use std::net::SocketAddrV4;
use std::num::NonZeroU16;

pub struct Cfg {
    pub addr: SocketAddrV4,
    pub version: ProtocolVersion,
    pub payload: usize,
    pub keep_alive: u16,
    pub messages: u32,
    /// Unacknowledged publishes in flight.
    pub window: usize,
    pub publish_limit_ns: u64,
    pub drain_limit_ns: u64,
    pub idle_limit_ns: u64,
    pub client_prefix: String,
    pub broker_pid: Option<u32>,
    /// Between filling and draining, wait until this file exists (a script restarts the broker
    /// meanwhile); a pid in it replaces `broker_pid`.
    pub pause_until: Option<String>,
    pub quiet: bool,
}

#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct BacklogJson {
    pub messages: u32,
    pub payload_bytes: usize,
    /// Publishes the broker acknowledged.
    pub acknowledged: u64,
    pub publish_s: f64,
    pub publish_per_s: f64,
    /// Broker RssAnon (kB) with the subscriber offline and nothing queued, then with the
    /// backlog queued, then after the drain; 0 without --broker-pid.
    pub rss_anon_kb_before: u64,
    pub rss_anon_kb_queued: u64,
    pub rss_anon_kb_drained: u64,
    /// Broker RssFile (kB) with the backlog queued: mapped journal pages, the page cache.
    pub rss_file_kb_queued: u64,
    /// (queued - before) RssAnon per acknowledged message, bytes.
    pub anon_bytes_per_message: f64,
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    pub duplicates: u64,
    /// Deliveries whose sequence number was below the highest seen so far (new ones only).
    pub out_of_order: u64,
    /// Acknowledged messages never received.
    pub missing: u64,
    pub drain_s: f64,
    pub drain_per_s: f64,
}

fn progress(cfg: &Cfg, msg: &str) {
    if !cfg.quiet {
        eprintln!("[backlog] {msg}");
    }
}

fn anon_kb(cfg: &Cfg) -> u64 {
    cfg.broker_pid
        .and_then(|p| proc_status_kb(p, "RssAnon"))
        .unwrap_or(0)
}

impl Cfg {
    fn dial<'a>(&self, id: &'a str, clean_start: bool) -> Dial<'a> {
        Dial {
            addr: self.addr,
            version: self.version,
            keep_alive: self.keep_alive,
            id,
            clean_start,
            session_expiry: Some(86_400),
        }
    }
}

/// Publishes `messages` QoS 1 messages to `topic`, sequence numbers 0.., with at most the
/// window unacknowledged; returns how many were acknowledged by `deadline`.
fn publish(cfg: &Cfg, c: &mut Conn, topic: &str, deadline: u64) -> Result<u64, String> {
    let mut tpl = vec![0u8; cfg.payload.max(HEADER_LEN)];
    for (i, b) in tpl[HEADER_LEN..].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let topic = ByteStr::from(topic);
    publish_windowed(c, cfg.messages, cfg.window, deadline, &mut |seq| {
        let h = Header {
            ts_ns: now_ns(),
            pub_id: 0,
            seq,
        };
        write_header(&mut tpl[..HEADER_LEN], h);
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.clone(),
            packet_id: None,
            payload: Bytes::copy_from_slice(&tpl),
            properties: None,
        }
    })
}

/// What the returning subscriber saw.
#[derive(Debug, Default)]
struct Order {
    seen: Vec<bool>,
    highest: Option<u32>,
    received: u64,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Order {
    fn record(&mut self, seq: u32) {
        self.received += 1;
        match self.seen.get_mut(seq as usize) {
            Some(s) if *s => self.duplicates += 1,
            Some(s) => {
                *s = true;
                self.unique += 1;
                if self.highest.is_some_and(|h| seq < h) {
                    self.out_of_order += 1;
                }
                self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
            }
            None => self.duplicates += 1,
        }
    }
}

fn drain(cfg: &Cfg, c: &mut Conn, acked: u64) -> Result<(Order, u64), String> {
    let mut o = Order {
        seen: vec![false; cfg.messages as usize],
        ..Default::default()
    };
    let t0 = now_ns();
    let (limit, mut t_last) = (t0 + cfg.drain_limit_ns, t0);
    while o.unique < acked {
        match c.next(limit.min(t_last + cfg.idle_limit_ns))? {
            Some(Packet::Publish(p)) => {
                t_last = now_ns();
                match read_header(&p.payload) {
                    Some(h) => o.record(h.seq),
                    None => o.duplicates += 1,
                }
                if let Some(id) = p.packet_id {
                    c.send(&Packet::PubAck(PubResp::new(id)))?;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok((o, t_last - t0))
}

pub fn run(cfg: &Cfg) -> Result<BacklogJson, String> {
    let mut connack = new_hist();
    let sub_id = format!("{}backlog-sub", cfg.client_prefix);
    let topic = format!("bench/backlog/{}", cfg.client_prefix);
    let mut j = BacklogJson {
        messages: cfg.messages,
        payload_bytes: cfg.payload.max(HEADER_LEN),
        ..Default::default()
    };
    // A fresh persistent session with one QoS 1 subscription, then offline.
    Conn::dial(&cfg.dial(&sub_id, true), &mut connack)?.disconnect();
    let mut sub = Conn::dial(&cfg.dial(&sub_id, false), &mut connack)?;
    sub.send(&Packet::Subscribe(Box::new(Subscribe {
        packet_id: NonZeroU16::new(1).expect("1 is not 0"),
        filters: vec![SubscribeFilter {
            filter: ByteStr::from(topic.as_str()),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Properties::default(),
    })))?;
    match sub.next(now_ns() + 5_000_000_000)? {
        Some(Packet::SubAck(a)) if a.reason_codes.iter().all(|r| !r.is_error()) => {}
        other => return Err(format!("no SUBACK granting QoS 1: {other:?}")),
    }
    sub.disconnect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    j.rss_anon_kb_before = anon_kb(cfg);

    let mut publ = Conn::dial(
        &cfg.dial(&format!("{}backlog-pub", cfg.client_prefix), true),
        &mut connack,
    )?;
    let t0 = now_ns();
    j.acknowledged = publish(cfg, &mut publ, &topic, t0 + cfg.publish_limit_ns)?;
    j.publish_s = (now_ns() - t0) as f64 / 1e9;
    j.publish_per_s = (j.acknowledged as f64 / j.publish_s.max(1e-9)).round();
    publ.disconnect();
    progress(
        cfg,
        &format!(
            "{} of {} acknowledged in {:.2} s",
            j.acknowledged, cfg.messages, j.publish_s
        ),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    j.rss_anon_kb_queued = anon_kb(cfg);
    j.rss_file_kb_queued = cfg
        .broker_pid
        .and_then(|p| proc_status_kb(p, "RssFile"))
        .unwrap_or(0);
    if j.acknowledged > 0 {
        let grown = j.rss_anon_kb_queued.saturating_sub(j.rss_anon_kb_before) * 1024;
        j.anon_bytes_per_message = (grown as f64 / j.acknowledged as f64 * 10.0).round() / 10.0;
    }

    let mut pid = cfg.broker_pid;
    if let Some(path) = &cfg.pause_until {
        progress(cfg, &format!("queued; waiting for {path}"));
        let deadline = now_ns() + cfg.drain_limit_ns;
        while !std::path::Path::new(path).exists() {
            if now_ns() > deadline {
                return Err(format!("{path} did not appear within --duration"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pid = text.trim().parse().ok().or(pid);
    }
    let cfg = &Cfg {
        broker_pid: pid,
        pause_until: None,
        client_prefix: cfg.client_prefix.clone(),
        ..*cfg
    };
    let mut sub = Conn::dial(&cfg.dial(&sub_id, false), &mut connack)?;
    if !sub.session_present {
        return Err("the subscriber's session was not kept while it was offline".into());
    }
    let (o, took_ns) = drain(cfg, &mut sub, j.acknowledged)?;
    j.drain_s = took_ns as f64 / 1e9;
    j.drain_per_s = (o.unique as f64 / j.drain_s.max(1e-9)).round();
    j.received = o.received;
    j.unique = o.unique;
    j.duplicates = o.duplicates;
    j.out_of_order = o.out_of_order;
    j.missing = j.acknowledged.saturating_sub(o.unique);
    sub.disconnect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    j.rss_anon_kb_drained = anon_kb(cfg);
    progress(
        cfg,
        &format!(
            "drained {} in {:.2} s ({} missing, {} out of order)",
            o.unique, j.drain_s, j.missing, j.out_of_order
        ),
    );
    // Leave nothing behind: a clean session replaces the persistent one.
    Conn::dial(&cfg.dial(&sub_id, true), &mut connack)?.disconnect();
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_counts_duplicates_and_reordering() {
        let mut o = Order {
            seen: vec![false; 4],
            ..Default::default()
        };
        for s in [0, 2, 1, 2, 3, 9] {
            o.record(s);
        }
        assert_eq!(
            (o.received, o.unique, o.duplicates, o.out_of_order),
            (6, 4, 2, 1)
        );
    }
}
