//! The Prometheus text exposition of the shards' metrics: one series per shard and the
//! merged one, counters, gauges and histograms as buckets and quantiles.

use super::*;
use hdrhistogram::Histogram;
use std::fmt::Write;

/// Bucket upper bounds of the exported histograms, in seconds (`+Inf` is added).
pub const BUCKETS_S: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// `(name, help, label, value)`; rows of one name are adjacent.
type CounterRow = (
    &'static str,
    &'static str,
    Option<(&'static str, String)>,
    u64,
);

fn counter_rows(c: &Counters, codes: &[u8]) -> Vec<CounterRow> {
    let mut v = vec![
        (
            "connections_accepted",
            "Connections accepted.",
            None,
            c.connections_accepted,
        ),
        (
            "connections_refused",
            "Connections refused at accept, by reason.",
            Some(("reason", "max_connections".to_owned())),
            c.connections_refused,
        ),
        (
            "connections_refused",
            "Connections refused at accept, by reason.",
            Some(("reason", "listener_max_connections".to_owned())),
            c.connections_refused_listener,
        ),
        (
            "accept_pauses",
            "Times a shard stopped accepting on a listener, by reason (its max_accept_rate, \
             its max_handshakes).",
            Some(("reason", "rate".to_owned())),
            c.accept_pauses_rate,
        ),
        (
            "accept_pauses",
            "Times a shard stopped accepting on a listener, by reason (its max_accept_rate, \
             its max_handshakes).",
            Some(("reason", "handshakes".to_owned())),
            c.accept_pauses_handshakes,
        ),
        (
            "receive_buffers_exhausted",
            "Receives ended because all of the shard's receive buffers were in use; re-armed.",
            None,
            c.receive_buffers_exhausted,
        ),
        (
            "tls_handshakes",
            "TLS handshakes completed.",
            None,
            c.tls_handshakes,
        ),
        (
            "tls_handshake_failures",
            "TLS handshakes that failed: refused (an alert was sent) or abandoned by the peer.",
            None,
            c.tls_handshake_failures,
        ),
        (
            "tls_resumed_handshakes",
            "TLS handshakes that resumed an earlier session (a ticket) instead of a full one.",
            None,
            c.tls_resumed,
        ),
        (
            "password_checks",
            "Usernames and passwords checked against the password file (off the shard threads).",
            None,
            c.password_checks,
        ),
        (
            "password_failures",
            "Password checks that failed: unknown user or wrong password (CONNACK 0x86 / 4).",
            None,
            c.password_failures,
        ),
        (
            "acl_denied",
            "Refused by the ACL, by what: a PUBLISH or will, a SUBSCRIBE filter, a delivery.",
            Some(("what", "publish".to_owned())),
            c.acl_denied_publish,
        ),
        (
            "acl_denied",
            "Refused by the ACL, by what: a PUBLISH or will, a SUBSCRIBE filter, a delivery.",
            Some(("what", "subscribe".to_owned())),
            c.acl_denied_subscribe,
        ),
        (
            "acl_denied",
            "Refused by the ACL, by what: a PUBLISH or will, a SUBSCRIBE filter, a delivery.",
            Some(("what", "delivery".to_owned())),
            c.acl_denied_delivery,
        ),
        (
            "connections_closed",
            "Connections closed.",
            None,
            c.connections_closed,
        ),
        (
            "connections_rejected",
            "CONNECTs refused with a CONNACK failure code.",
            None,
            c.connections_rejected,
        ),
        ("connects", "CONNECTs accepted.", None, c.connects),
        (
            "handoffs",
            "Connections handed to the client's home shard.",
            None,
            c.handoffs,
        ),
        (
            "takeovers",
            "Sessions taken over by a new connection.",
            None,
            c.takeovers,
        ),
        ("wills", "Will messages published.", None, c.wills),
        (
            "protocol_errors",
            "Connections closed for a protocol error.",
            None,
            c.protocol_errors,
        ),
        ("packets_in", "MQTT packets received.", None, c.packets_in),
        (
            "packets_out",
            "MQTT control packets sent.",
            None,
            c.packets_out,
        ),
        ("bytes_in", "Bytes received from clients.", None, c.bytes_in),
        ("bytes_out", "Bytes written to clients.", None, c.bytes_out),
    ];
    for (q, l) in ["0", "1", "2"].iter().enumerate() {
        v.push((
            "messages_in",
            "PUBLISH packets received from clients, by QoS.",
            Some(("qos", (*l).to_owned())),
            c.msgs_in[q],
        ));
    }
    for (q, l) in ["0", "1", "2"].iter().enumerate() {
        v.push((
            "messages_out",
            "PUBLISH packets queued for subscribers, by QoS.",
            Some(("qos", (*l).to_owned())),
            c.msgs_out[q],
        ));
    }
    v.extend([
        (
            "cross_shard_out",
            "Messages sent to other shards for delivery.",
            None,
            c.cross_shard_out,
        ),
        (
            "cross_shard_in",
            "Messages from other shards for delivery here.",
            None,
            c.cross_shard_in,
        ),
        (
            "queued",
            "Messages queued behind a full inflight window or for an offline session.",
            None,
            c.queued,
        ),
        (
            "dropped_no_subscriber",
            "Messages that matched no subscription.",
            None,
            c.dropped_no_subscriber,
        ),
        (
            "dropped_queue_full",
            "Messages dropped: session queue full (--queue-full drop-new or drop-oldest).",
            None,
            c.dropped_queue_full,
        ),
        (
            "acks_deferred",
            "QoS 1/2 deliveries queued beyond a full session queue; the publisher's \
             acknowledgement waited for room.",
            None,
            c.acks_deferred,
        ),
        (
            "refused_queue_full",
            "MQTT 5 QoS 1/2 PUBLISHes answered 0x97 (Quota exceeded) because an offline \
             session they would reach has a full queue; delivered nowhere.",
            None,
            c.refused_queue_full,
        ),
        (
            "reads_paused",
            "Times a connection stopped being read because its session owed 1,024 \
             PUBACK/PUBREC answers (TCP backpressure on a publisher).",
            None,
            c.reads_paused,
        ),
        (
            "dropped_too_large",
            "Messages dropped: above the client's Maximum Packet Size.",
            None,
            c.dropped_too_large,
        ),
        (
            "dropped_slow_consumer",
            "QoS 0 messages dropped: too much unwritten output.",
            None,
            c.dropped_slow_consumer,
        ),
        (
            "dropped_offline_qos0",
            "QoS 0 messages dropped: session offline.",
            None,
            c.dropped_offline_qos0,
        ),
        (
            "dropped_expired",
            "Messages dropped: Message Expiry Interval passed.",
            None,
            c.dropped_expired,
        ),
        (
            "dropped_mesh_backlog",
            "QoS 0 messages not sent to a peer shard too far behind.",
            None,
            c.dropped_mesh_backlog,
        ),
        (
            "mesh_backpressure",
            "Batches a peer shard's channel could not take at once.",
            None,
            c.mesh_backpressure,
        ),
        (
            "mesh_send_failed",
            "Batches that could not be sent to a peer shard.",
            None,
            c.mesh_send_failed,
        ),
        (
            "dropped_journal_full",
            "Deliveries and retained messages not stored: journal at --journal-max-bytes.",
            None,
            c.dropped_journal_full,
        ),
        (
            "journal_refused_acks",
            "PUBACK/PUBREC refused (0x97, or connection closed for 3.1.x): journal full.",
            None,
            c.journal_refused_acks,
        ),
        (
            "journal_read_failures",
            "Queued messages lost because their journal record could not be read back.",
            None,
            c.journal_read_failures,
        ),
        (
            "journal_appends",
            "Journal records appended.",
            None,
            c.journal_appends,
        ),
        (
            "journal_appended_bytes",
            "Bytes appended to the journal, framing included.",
            None,
            c.journal_bytes_appended,
        ),
        (
            "journal_syncs",
            "Journal syncs completed.",
            None,
            c.journal_syncs,
        ),
        (
            "journal_segments_created",
            "Journal segment files created.",
            None,
            c.journal_segments_created,
        ),
        (
            "journal_segments_removed",
            "Journal segment files removed by compaction.",
            None,
            c.journal_segments_removed,
        ),
        (
            "journal_inline_segment_creates",
            "Segments created on the shard's thread because no prepared one was ready.",
            None,
            c.journal_sync_segment_creates,
        ),
        (
            "journal_write_errors",
            "Journal appends that failed.",
            None,
            c.journal_write_errors,
        ),
    ]);
    for (i, r) in CLOSE_REASONS.iter().enumerate() {
        v.push((
            "connections_closed_by_reason",
            "Connections closed, by why.",
            Some(("reason", (*r).to_owned())),
            c.closed_by[i],
        ));
    }
    // Reason codes: only those seen on some shard, the same set for every shard.
    for &code in codes {
        v.push((
            "connack_refusals",
            "CONNECTs refused, by CONNACK reason code.",
            Some(("reason_code", format!("0x{code:02X}"))),
            c.rejected_by.0[code as usize],
        ));
    }
    for &code in codes {
        v.push((
            "protocol_errors_by_reason",
            "Connections closed for a protocol error, by reason code.",
            Some(("reason_code", format!("0x{code:02X}"))),
            c.protocol_errors_by.0[code as usize],
        ));
    }
    // A family with no sample yet is still declared, so dashboards find it.
    v
}

fn gauge_rows(g: &Gauges) -> [(&'static str, &'static str, u64); 13] {
    [
        ("connections", "Open client connections.", g.connections),
        ("sessions", "Sessions, connected or not.", g.sessions),
        (
            "subscriptions",
            "Subscriptions held by sessions.",
            g.subscriptions,
        ),
        (
            "retained_messages",
            "Retained messages stored.",
            g.retained_messages,
        ),
        (
            "queued_messages",
            "Messages queued in sessions behind the inflight window.",
            g.queued_messages,
        ),
        (
            "queued_in_journal",
            "Queued messages of persistent sessions held only in the journal (8 bytes of \
             memory each).",
            g.queued_in_journal,
        ),
        (
            "queues_full",
            "Offline sessions whose queue reached --max-queued-messages or --max-queued-bytes \
             and is not yet down to three quarters of it: MQTT 5 publishes to them are refused \
             (0x97).",
            g.queues_full,
        ),
        (
            "inflight_messages",
            "QoS 1/2 messages sent and not yet acknowledged.",
            g.inflight_messages,
        ),
        (
            "journal_bytes",
            "Bytes of journal segment files on disk.",
            g.journal_bytes,
        ),
        (
            "journal_pending_acks",
            "Acknowledgements waiting for a journal sync.",
            g.journal_pending_acks,
        ),
        (
            "logins_waiting",
            "CONNECTs whose password check waits for a place at the verifier threads (as of \
             the shard's last tick).",
            g.backlogs.logins,
        ),
        (
            "handshakes_waiting",
            "TLS handshakes waiting for the shard's handshake budget (as of its last tick).",
            g.backlogs.handshakes,
        ),
        (
            "closes_waiting",
            "Finished connections whose last bytes and socket close wait for the shard's close \
             budget (as of its last tick).",
            g.backlogs.closes,
        ),
    ]
}

/// `(name, help, labels, histogram)`; rows of one name are adjacent.
type HistRow<'a> = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'a Histogram<u64>,
);

fn hist_rows(h: &Histograms) -> Vec<HistRow<'_>> {
    const QOS: [&str; 3] = ["0", "1", "2"];
    let mut v = Vec::with_capacity(9);
    for (path, hs) in [
        ("local", &h.publish_to_write_local_us),
        ("cross_shard", &h.publish_to_write_cross_us),
    ] {
        for q in 0..3 {
            v.push((
                "publish_to_write_seconds",
                "PUBLISH received to queued for a subscriber's socket, by path and QoS delivered.",
                vec![("path", path), ("qos", QOS[q])],
                &hs[q],
            ));
        }
    }
    v.push((
        "connect_to_connack_seconds",
        "Connection accepted to CONNACK queued.",
        vec![],
        &h.connect_to_connack_us,
    ));
    v.push((
        "cross_shard_hop_seconds",
        "Message sent by one shard to taken by another.",
        vec![],
        &h.cross_shard_hop_us,
    ));
    v.push((
        "journal_commit_seconds",
        "Journal group commit: sync started to durable.",
        vec![],
        &h.journal_commit_us,
    ));
    v
}

fn fmt_f64(x: f64) -> String {
    // Rust's shortest round-trip form; Prometheus parses it. An empty sum is 0, not -0.
    format!("{}", x + 0.0)
}

fn labels(shard: &str, extra: &[(&str, &str)], le: Option<&str>) -> String {
    let mut s = format!("{{shard=\"{shard}\"");
    for (k, v) in extra {
        let _ = write!(s, ",{k}=\"{v}\"");
    }
    if let Some(le) = le {
        let _ = write!(s, ",le=\"{le}\"");
    }
    s.push('}');
    s
}

fn write_hist(out: &mut String, name: &str, l: &str, extra: &[(&str, &str)], h: &Histogram<u64>) {
    for b in BUCKETS_S {
        // Bounds are whole microseconds; the count of values at or below them, to the
        // histogram's precision.
        let us = (b * 1e6).round() as u64;
        let n = h.count_between(0, us);
        let _ = writeln!(
            out,
            "ringmq_{name}_bucket{} {n}",
            labels(l, extra, Some(&fmt_f64(*b)))
        );
    }
    let count = h.len();
    let _ = writeln!(
        out,
        "ringmq_{name}_bucket{} {count}",
        labels(l, extra, Some("+Inf"))
    );
    let sum_s = h
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum::<f64>()
        / 1e6;
    let _ = writeln!(
        out,
        "ringmq_{name}_sum{} {}",
        labels(l, extra, None),
        fmt_f64(sum_s)
    );
    let _ = writeln!(out, "ringmq_{name}_count{} {count}", labels(l, extra, None));
}

/// Process-wide figures, read when scraped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Process {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub uptime_s: u64,
}

/// Resident memory of this process, from /proc/self/statm.
pub fn resident_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Prometheus text format (version 0.0.4): every series once per shard (`shard="N"`) and once
/// merged over all shards (`shard="all"`), then the process-wide gauges.
pub fn render(shards: &[ShardMetrics], process: Process) -> String {
    let mut all = ShardMetrics::default();
    for s in shards {
        all.counters.merge(&s.counters);
        all.histograms.merge(&s.histograms);
        all.gauges.merge(&s.gauges);
    }
    let codes: Vec<u8> = (0..=255u8)
        .filter(|&c| {
            all.counters.rejected_by.0[c as usize] + all.counters.protocol_errors_by.0[c as usize]
                > 0
        })
        .collect();
    let mut sets: Vec<(String, &ShardMetrics)> =
        shards.iter().map(|s| (s.shard.to_string(), s)).collect();
    sets.push(("all".to_owned(), &all));
    let mut out = String::with_capacity(32 * 1024);

    let rows: Vec<_> = sets
        .iter()
        .map(|(l, s)| (l, counter_rows(&s.counters, &codes)))
        .collect();
    let n = rows.first().map_or(0, |r| r.1.len());
    let mut i = 0;
    while i < n {
        let (name, help, _, _) = rows[0].1[i];
        let _ = writeln!(out, "# HELP ringmq_{name}_total {help}");
        let _ = writeln!(out, "# TYPE ringmq_{name}_total counter");
        let start = i;
        while i < n && rows[0].1[i].0 == name {
            i += 1;
        }
        for (l, r) in &rows {
            for (_, _, label, v) in &r[start..i] {
                let extra: Vec<(&str, &str)> =
                    label.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let _ = writeln!(out, "ringmq_{name}_total{} {v}", labels(l, &extra, None));
            }
        }
    }
    for family in ["connack_refusals", "protocol_errors_by_reason"] {
        if codes.is_empty() {
            let _ = writeln!(out, "# TYPE ringmq_{family}_total counter");
        }
    }

    let ngauges = gauge_rows(&sets[0].1.gauges).len();
    for k in 0..ngauges {
        let (name, help, _) = gauge_rows(&sets[0].1.gauges)[k];
        let _ = writeln!(out, "# HELP ringmq_{name} {help}");
        let _ = writeln!(out, "# TYPE ringmq_{name} gauge");
        for (l, s) in &sets {
            let _ = writeln!(
                out,
                "ringmq_{name}{} {}",
                labels(l, &[], None),
                gauge_rows(&s.gauges)[k].2
            );
        }
    }

    let hrows: Vec<_> = sets
        .iter()
        .map(|(l, s)| (l, hist_rows(&s.histograms)))
        .collect();
    let n = hrows[0].1.len();
    let mut k = 0;
    while k < n {
        let (name, help, _, _) = &hrows[0].1[k];
        let name = *name;
        let _ = writeln!(out, "# HELP ringmq_{name} {help}");
        let _ = writeln!(out, "# TYPE ringmq_{name} histogram");
        let start = k;
        while k < n && hrows[0].1[k].0 == name {
            k += 1;
        }
        for (l, hs) in &hrows {
            for (_, _, extra, h) in &hs[start..k] {
                write_hist(&mut out, name, l, extra, h);
            }
        }
    }

    let conns = all.gauges.connections;
    let per_conn = process.resident_bytes.checked_div(conns).unwrap_or(0);
    for (name, help, v) in [
        (
            "process_resident_memory_bytes",
            "Resident memory of the broker process.",
            process.resident_bytes,
        ),
        (
            "memory_per_connection_bytes",
            "Resident memory divided by open connections (0 without connections).",
            per_conn,
        ),
        (
            "process_open_fds",
            "Open file descriptors of the broker process.",
            process.open_fds,
        ),
        (
            "uptime_seconds",
            "Seconds since the broker started.",
            process.uptime_s,
        ),
    ] {
        let _ = writeln!(out, "# HELP ringmq_{name} {help}");
        let _ = writeln!(out, "# TYPE ringmq_{name} gauge");
        let _ = writeln!(out, "ringmq_{name} {v}");
    }
    out
}
