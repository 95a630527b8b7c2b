//! Per-shard metrics. Each shard owns its own `Counters` and updates them without atomics or
//! locks; an exporter merges the shards' copies when it is asked, never on the message path.

use hdrhistogram::Histogram;

/// Plain counters, one set per shard. Names carry units last where they have one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Refused because their listener held its own `max_connections`.
    pub connections_refused_listener: u64,
    /// Times a shard stopped accepting on a listener for its accept rate, or for its
    /// handshakes in progress.
    pub accept_pauses_rate: u64,
    pub accept_pauses_handshakes: u64,
    /// Receives the kernel ended because every receive buffer of the shard was in use (armed
    /// again at once, after the batch gave its buffers back).
    pub receive_buffers_exhausted: u64,
    /// TLS handshakes completed, and those that failed (an alert sent, or the peer gone).
    pub tls_handshakes: u64,
    pub tls_handshake_failures: u64,
    /// Of `tls_handshakes`, those that resumed an earlier session (a ticket).
    pub tls_resumed: u64,
    /// Usernames and passwords checked against the password file, and those refused.
    pub password_checks: u64,
    pub password_failures: u64,
    /// Refused by the ACL: PUBLISHes (and wills), SUBSCRIBE filters, and deliveries to
    /// subscribers who may not read the topic.
    pub acl_denied_publish: u64,
    pub acl_denied_subscribe: u64,
    pub acl_denied_delivery: u64,
    pub connections_closed: u64,
    pub connections_rejected: u64,
    pub connects: u64,
    pub handoffs: u64,
    pub takeovers: u64,
    pub wills: u64,
    pub protocol_errors: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// PUBLISH received, by QoS.
    pub msgs_in: [u64; 3],
    /// PUBLISH sent to subscribers, by QoS.
    pub msgs_out: [u64; 3],
    pub cross_shard_out: u64,
    pub cross_shard_in: u64,
    pub queued: u64,
    pub dropped_no_subscriber: u64,
    pub dropped_queue_full: u64,
    /// QoS 1/2 deliveries queued beyond a full session queue whose publisher's acknowledgement
    /// waits until the queue is under its limits again (`--queue-full backpressure`).
    pub acks_deferred: u64,
    /// MQTT 5 QoS 1/2 PUBLISHes answered 0x97 because an offline session they would reach has
    /// a full queue (nothing delivered anywhere).
    pub refused_queue_full: u64,
    /// Times a connection stopped being read because its session owed many answers.
    pub reads_paused: u64,
    pub dropped_too_large: u64,
    pub dropped_slow_consumer: u64,
    pub dropped_offline_qos0: u64,
    pub dropped_expired: u64,
    /// QoS 0 publishes not sent to a peer shard that is too far behind.
    pub dropped_mesh_backlog: u64,
    pub mesh_backpressure: u64,
    pub mesh_send_failed: u64,
    /// Deliveries and retained messages not stored: the journal reached --journal-max-bytes.
    pub dropped_journal_full: u64,
    /// PUBACK/PUBREC answered 0x97 (or the connection closed) because of that.
    pub journal_refused_acks: u64,
    /// Queued messages whose only copy, a journal record, could not be read back (logged).
    pub journal_read_failures: u64,
    pub journal_appends: u64,
    pub journal_bytes_appended: u64,
    pub journal_syncs: u64,
    pub journal_segments_created: u64,
    pub journal_segments_removed: u64,
    /// Segments created on the reactor because no prepared one was ready.
    pub journal_sync_segment_creates: u64,
    pub journal_write_errors: u64,
    /// Connections closed, by why (indexes of [`CLOSE_REASONS`]).
    pub closed_by: [u64; CLOSE_REASONS.len()],
    /// CONNECTs refused, by CONNACK reason code (3.1.x return codes as their MQTT 5 equivalent).
    pub rejected_by: ByReason,
    /// Connections closed for a protocol error, by reason code.
    pub protocol_errors_by: ByReason,
}

/// Why connections close, as the `reason` label of `ringmq_connections_closed_by_reason_total`.
pub const CLOSE_REASONS: [&str; 11] = [
    "normal",
    "normal_with_will",
    "eof",
    "protocol_error",
    "keep_alive_timeout",
    "connect_timeout",
    "taken_over",
    "rejected",
    "handoff",
    "shutdown",
    "transport",
];

/// A counter per MQTT reason code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByReason(pub [u64; 256]);

impl Default for ByReason {
    fn default() -> Self {
        ByReason([0; 256])
    }
}

impl ByReason {
    pub fn add(&mut self, code: u8) {
        self.0[code as usize] += 1;
    }

    fn merge(&mut self, o: &ByReason) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }
}

impl Counters {
    /// Adds another shard's counters into these.
    pub fn merge(&mut self, o: &Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            connections_accepted,
            connections_refused,
            connections_refused_listener,
            accept_pauses_rate,
            accept_pauses_handshakes,
            receive_buffers_exhausted,
            tls_handshakes,
            tls_handshake_failures,
            tls_resumed,
            password_checks,
            password_failures,
            acl_denied_publish,
            acl_denied_subscribe,
            acl_denied_delivery,
            connections_closed,
            connections_rejected,
            connects,
            handoffs,
            takeovers,
            wills,
            protocol_errors,
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            cross_shard_out,
            cross_shard_in,
            queued,
            dropped_no_subscriber,
            dropped_queue_full,
            acks_deferred,
            refused_queue_full,
            reads_paused,
            dropped_too_large,
            dropped_slow_consumer,
            dropped_offline_qos0,
            dropped_expired,
            dropped_mesh_backlog,
            mesh_backpressure,
            mesh_send_failed,
            dropped_journal_full,
            journal_refused_acks,
            journal_read_failures,
            journal_appends,
            journal_bytes_appended,
            journal_syncs,
            journal_segments_created,
            journal_segments_removed,
            journal_sync_segment_creates,
            journal_write_errors
        );
        for i in 0..3 {
            self.msgs_in[i] += o.msgs_in[i];
            self.msgs_out[i] += o.msgs_out[i];
        }
        for (a, b) in self.closed_by.iter_mut().zip(o.closed_by.iter()) {
            *a += b;
        }
        self.rejected_by.merge(&o.rejected_by);
        self.protocol_errors_by.merge(&o.protocol_errors_by);
    }
}

/// Latency histograms of one shard, in microseconds (1 µs to 60 s, 3 significant digits). All
/// are allocated up front, so recording never allocates.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// PUBLISH received to queued for the subscriber's socket, by QoS delivered: publisher on
    /// this shard.
    pub publish_to_write_local_us: [Histogram<u64>; 3],
    /// The same for messages that came from another shard (recorded at the delivering shard).
    pub publish_to_write_cross_us: [Histogram<u64>; 3],
    /// Connection accepted (or adopted from another shard) to CONNACK queued.
    pub connect_to_connack_us: Histogram<u64>,
    /// Cross-shard `Publish` sent by a shard to taken by the receiving one.
    pub cross_shard_hop_us: Histogram<u64>,
    /// Journal sync started to finished (one group commit).
    pub journal_commit_us: Histogram<u64>,
}

/// Largest value recorded, in microseconds; larger ones are clamped to it.
pub const HIST_MAX_US: u64 = 60_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            publish_to_write_local_us: [new_hist(), new_hist(), new_hist()],
            publish_to_write_cross_us: [new_hist(), new_hist(), new_hist()],
            connect_to_connack_us: new_hist(),
            cross_shard_hop_us: new_hist(),
            journal_commit_us: new_hist(),
        }
    }
}

/// Records `us` into `h`, clamped into its range: never fails, never allocates.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, HIST_MAX_US));
}

impl Histograms {
    pub fn merge(&mut self, o: &Histograms) {
        // Same bounds everywhere, so adding cannot fail.
        for q in 0..3 {
            let _ = self.publish_to_write_local_us[q].add(&o.publish_to_write_local_us[q]);
            let _ = self.publish_to_write_cross_us[q].add(&o.publish_to_write_cross_us[q]);
        }
        let _ = self.connect_to_connack_us.add(&o.connect_to_connack_us);
        let _ = self.cross_shard_hop_us.add(&o.cross_shard_hop_us);
        let _ = self.journal_commit_us.add(&o.journal_commit_us);
    }
}

/// Point-in-time sizes of one shard, computed when scraped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub connections: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained_messages: u64,
    pub queued_messages: u64,
    /// Of `queued_messages`, those whose only copy is their journal record.
    pub queued_in_journal: u64,
    /// Offline sessions whose full queue makes MQTT 5 publishes to them refused.
    pub queues_full: u64,
    pub inflight_messages: u64,
    pub journal_bytes: u64,
    pub journal_pending_acks: u64,
    /// The driver's backlogs, as of its last tick ([`Backlogs`]).
    pub backlogs: Backlogs,
}

/// Work a shard's driver holds back behind the traffic, counted at its tick: CONNECTs whose
/// password check waits for a place at the verifier threads, TLS handshakes waiting for the
/// handshake budget, and finished connections' sockets waiting for their close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlogs {
    pub logins: u64,
    pub handshakes: u64,
    pub closes: u64,
}

impl Gauges {
    pub fn merge(&mut self, o: &Gauges) {
        self.connections += o.connections;
        self.sessions += o.sessions;
        self.subscriptions += o.subscriptions;
        self.retained_messages += o.retained_messages;
        self.queued_messages += o.queued_messages;
        self.queued_in_journal += o.queued_in_journal;
        self.queues_full += o.queues_full;
        self.inflight_messages += o.inflight_messages;
        self.journal_bytes += o.journal_bytes;
        self.journal_pending_acks += o.journal_pending_acks;
        self.backlogs.logins += o.backlogs.logins;
        self.backlogs.handshakes += o.backlogs.handshakes;
        self.backlogs.closes += o.backlogs.closes;
    }
}

/// One shard's metrics as the exporter collects them.
#[derive(Clone, Debug, Default)]
pub struct ShardMetrics {
    pub shard: usize,
    pub counters: Counters,
    pub histograms: Histograms,
    pub gauges: Gauges,
}

mod render;
pub use render::{render, resident_bytes, Process, BUCKETS_S};

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(shard: usize, us: &[u64]) -> ShardMetrics {
        let mut m = ShardMetrics {
            shard,
            ..Default::default()
        };
        m.counters.msgs_in = [1, 2, 0];
        m.gauges.connections = 2;
        for v in us {
            record_us(&mut m.histograms.publish_to_write_local_us[1], *v);
        }
        m
    }

    /// Every sample line: `name{labels} value`.
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("name and value");
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                assert!(labels.ends_with('}'), "{l}");
                let v = if value == "+Inf" {
                    f64::INFINITY
                } else {
                    value.parse().expect("numeric value")
                };
                (name.to_owned(), labels.to_owned(), v)
            })
            .collect()
    }

    fn get(s: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
        s.iter()
            .find(|x| x.0 == name && x.1 == labels)
            .unwrap_or_else(|| panic!("{name}{{{labels}"))
            .2
    }

    #[test]
    fn render_is_well_formed_and_merges() {
        let mut s0 = sample(0, &[10, 200, 3000]);
        s0.counters.protocol_errors_by.add(0x95);
        let text = render(
            &[s0, sample(1, &[40, 2_000_000])],
            Process {
                resident_bytes: 4000,
                ..Default::default()
            },
        );
        // Each metric family declared once, before its samples.
        let mut typed = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(typed.insert(name.to_owned()), "{name} declared twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{name} before its TYPE");
            }
        }
        let s = samples(&text);
        assert_eq!(
            get(&s, "ringmq_messages_in_total", "shard=\"1\",qos=\"1\"}"),
            2.0
        );
        assert_eq!(
            get(&s, "ringmq_messages_in_total", "shard=\"all\",qos=\"1\"}"),
            4.0
        );
        assert_eq!(get(&s, "ringmq_connections", "shard=\"all\"}"), 4.0);
        assert_eq!(get(&s, "ringmq_memory_per_connection_bytes", "}"), 1000.0);
        assert_eq!(
            get(
                &s,
                "ringmq_protocol_errors_by_reason_total",
                "shard=\"all\",reason_code=\"0x95\"}"
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "ringmq_protocol_errors_by_reason_total",
                "shard=\"1\",reason_code=\"0x95\"}"
            ),
            0.0
        );
        let h = "ringmq_publish_to_write_seconds";
        let c = |l: &str, le: &str| {
            get(
                &s,
                &format!("{h}_bucket"),
                &format!("shard=\"{l}\",path=\"local\",qos=\"1\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(c("0", "0.00005"), 1.0);
        assert_eq!(c("0", "0.00025"), 2.0);
        assert_eq!(c("0", "0.005"), 3.0);
        assert_eq!(c("all", "0.00005"), 2.0);
        assert_eq!(c("all", "1"), 4.0);
        assert_eq!(c("all", "2.5"), 5.0);
        assert_eq!(c("all", "+Inf"), 5.0);
        assert_eq!(
            get(
                &s,
                &format!("{h}_count"),
                "shard=\"all\",path=\"local\",qos=\"1\"}"
            ),
            5.0
        );
        let sum = get(
            &s,
            &format!("{h}_sum"),
            "shard=\"all\",path=\"local\",qos=\"1\"}",
        );
        assert!((sum - 2.00325).abs() < 0.01, "{sum}");
        // Buckets are cumulative.
        let mut last = 0.0;
        for b in BUCKETS_S {
            let v = c("all", &format!("{b}"));
            assert!(v >= last);
            last = v;
        }
    }

    #[test]
    fn recording_clamps_out_of_range() {
        let mut h = Histograms::default();
        record_us(&mut h.cross_shard_hop_us, 0);
        record_us(&mut h.cross_shard_hop_us, u64::MAX);
        assert_eq!(h.cross_shard_hop_us.len(), 2);
    }

    #[test]
    fn merge_adds_every_field() {
        let mut a = Counters {
            bytes_in: 3,
            msgs_in: [1, 2, 3],
            ..Default::default()
        };
        let b = Counters {
            bytes_in: 4,
            msgs_in: [1, 1, 1],
            wills: 2,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(a.bytes_in, 7);
        assert_eq!(a.msgs_in, [2, 3, 4]);
        assert_eq!(a.wills, 2);
    }
}
