//! Counters, loss/duplicate accounting and histograms; everything here merges across executors
//! and processes.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency histogram: microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialize histogram");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn hist_from_b64(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("{e:?}"))?;
    let mut out = new_hist();
    out.add(&h).map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

pub fn merge_into(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    // Same bounds everywhere, so this cannot fail.
    dst.add(src).expect("histogram merge");
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub count: u64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: (h.mean() * 10.0).round() / 10.0,
        count: h.len(),
    }
}

/// Plain counters of one executor / process / run. All fields add up under `merge`, except the
/// time stamps (min of first, max of last).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub devices: u64,
    /// Devices that completed CONNECT/CONNACK (and SUBSCRIBE/SUBACK where they subscribe).
    pub connected: u64,
    pub subs_connected: u64,
    pub pubs_connected: u64,
    pub sent: u64,
    pub received: u64,
    pub received_in_window: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub errors: u64,
    /// Deliveries stamped before this run started (an earlier run's backlog), not counted.
    pub stale: u64,
    /// session-churn: reconnects in the measurement window that got a CONNACK.
    pub reconnects: u64,
    /// session-churn: reconnects whose CONNACK had session present 0 (also errors).
    pub session_lost: u64,
    /// session-churn: deliveries published while the device was offline.
    pub queued: u64,
    /// QoS 1/2 publishes acknowledged (PUBACK / PUBREC) with a known send time.
    #[serde(default)]
    pub acked: u64,
    /// ... of which acknowledged in the measurement window.
    #[serde(default)]
    pub acked_in_window: u64,
    /// QoS 1/2 publishes the broker refused (PUBACK / PUBREC with a reason code of 0x80 or
    /// more, e.g. 0x97 Quota exceeded): not in `acked`, and their latency not recorded.
    #[serde(default)]
    pub refused: u64,
    /// Connections whose TLS handshake resumed an earlier session (a ticket).
    #[serde(default)]
    pub tls_resumed: u64,
    /// CLOCK_MONOTONIC ns of the first connection attempt, 0 = none.
    pub first_attempt_ns: u64,
    /// CLOCK_MONOTONIC ns of the last device becoming ready, 0 = none.
    pub last_ready_ns: u64,
}

impl Counters {
    pub fn merge(&mut self, o: &Counters) {
        self.devices += o.devices;
        self.connected += o.connected;
        self.subs_connected += o.subs_connected;
        self.pubs_connected += o.pubs_connected;
        self.sent += o.sent;
        self.received += o.received;
        self.received_in_window += o.received_in_window;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.errors += o.errors;
        self.stale += o.stale;
        self.reconnects += o.reconnects;
        self.session_lost += o.session_lost;
        self.queued += o.queued;
        self.acked += o.acked;
        self.acked_in_window += o.acked_in_window;
        self.refused += o.refused;
        self.tls_resumed += o.tls_resumed;
        if o.first_attempt_ns != 0
            && (self.first_attempt_ns == 0 || o.first_attempt_ns < self.first_attempt_ns)
        {
            self.first_attempt_ns = o.first_attempt_ns;
        }
        self.last_ready_ns = self.last_ready_ns.max(o.last_ready_ns);
    }
}

/// Per-subscriber sequence tracking over the publishers it should hear from
/// (`base .. base + count`). MQTT keeps per-topic order, so a sequence number below the next
/// expected one is a duplicate; a jump ahead leaves a gap that ends up as loss
/// (`expected - unique`).
#[derive(Debug, Default)]
pub struct SeqTracker {
    base: u32,
    next: Vec<u32>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Seen {
    New,
    Duplicate,
    /// From a publisher this subscriber does not track.
    Foreign,
}

impl SeqTracker {
    pub fn new(base: u32, count: u32) -> SeqTracker {
        SeqTracker {
            base,
            next: vec![0; count as usize],
        }
    }

    #[inline]
    pub fn record(&mut self, pub_id: u32, seq: u32) -> Seen {
        match self.next.get_mut(pub_id.wrapping_sub(self.base) as usize) {
            None => Seen::Foreign,
            Some(n) => {
                if seq >= *n {
                    *n = seq + 1;
                    Seen::New
                } else {
                    Seen::Duplicate
                }
            }
        }
    }
}

/// Loss given what was sent and how many subscribers each message should reach.
pub fn lost(expected: u64, unique: u64) -> u64 {
    expected.saturating_sub(unique)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_loss_and_dups() {
        let mut t = SeqTracker::new(10, 2);
        let mut unique = 0;
        let mut dups = 0;
        // Publisher 10 sends 0..5, seq 2 is lost and seq 3 delivered twice.
        for (p, s) in [
            (10, 0),
            (10, 1),
            (10, 3),
            (10, 3),
            (10, 4),
            (11, 0),
            (11, 1),
        ] {
            match t.record(p, s) {
                Seen::New => unique += 1,
                Seen::Duplicate => dups += 1,
                Seen::Foreign => panic!(),
            }
        }
        assert_eq!(unique, 6);
        assert_eq!(dups, 1);
        assert_eq!(t.record(12, 0), Seen::Foreign);
        assert_eq!(t.record(9, 0), Seen::Foreign);
        // 5 from publisher 10 + 2 from publisher 11 expected.
        assert_eq!(lost(7, unique), 1);
        assert_eq!(lost(5, 6), 0);
    }

    #[test]
    fn histogram_merge_and_b64() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000u64 {
            a.record(v).unwrap();
            b.record(v * 1000).unwrap();
        }
        let b2 = hist_from_b64(&hist_to_b64(&b)).unwrap();
        assert_eq!(b2.len(), 1000);
        assert_eq!(b2.max(), b.max());
        merge_into(&mut a, &b2);
        assert_eq!(a.len(), 2000);
        let s = summarize(&a);
        assert_eq!(s.count, 2000);
        assert!(s.p50 >= 999 && s.p50 <= 1001, "{s:?}");
        assert!(s.max >= 999_000 && s.max <= 1_001_000, "{s:?}");
        assert_eq!(summarize(&new_hist()), Summary::default());
    }

    #[test]
    fn counters_merge() {
        let mut a = Counters {
            sent: 5,
            first_attempt_ns: 100,
            last_ready_ns: 200,
            ..Default::default()
        };
        let b = Counters {
            sent: 7,
            duplicates: 1,
            reconnects: 3,
            session_lost: 1,
            queued: 4,
            first_attempt_ns: 50,
            last_ready_ns: 150,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(a.sent, 12);
        assert_eq!(a.duplicates, 1);
        assert_eq!((a.reconnects, a.session_lost, a.queued), (3, 1, 4));
        assert_eq!(a.first_attempt_ns, 50);
        assert_eq!(a.last_ready_ns, 200);
        let mut z = Counters::default();
        z.merge(&a);
        assert_eq!(z.first_attempt_ns, 50);
    }
}
