//! `$SYS/broker/...` statistics, as Mosquitto names them, so that existing dashboards and
//! `mosquitto_sub -t '$SYS/#'` work unchanged. Computed by shard 0 from a merged metrics scrape
//! and published as retained QoS 0 messages.

use crate::metrics::ShardMetrics;
use std::time::Instant;

/// Moving-average windows of the `load/...` topics, in minutes.
const WINDOWS: [(f64, &str); 3] = [(1.0, "1min"), (5.0, "5min"), (15.0, "15min")];

/// Totals whose rates are published under `load/`.
const LOADS: [&str; 7] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "connections",
];

/// What shard 0 remembers between publications: the previous totals and the moving averages.
#[derive(Default)]
pub struct SysStats {
    last: Option<(Instant, [u64; LOADS.len()])>,
    /// Per total, per window: messages (bytes, connections) per minute.
    loads: [[f64; WINDOWS.len()]; LOADS.len()],
    max_connections: u64,
}

impl SysStats {
    /// The topics and payloads to publish now, given every shard's metrics.
    pub fn topics(
        &mut self,
        shards: &[ShardMetrics],
        uptime_s: u64,
        now: Instant,
    ) -> Vec<(String, String)> {
        let mut all = ShardMetrics::default();
        for s in shards {
            all.counters.merge(&s.counters);
            all.gauges.merge(&s.gauges);
        }
        let c = &all.counters;
        let g = &all.gauges;
        let publish_in: u64 = c.msgs_in.iter().sum();
        let publish_out: u64 = c.msgs_out.iter().sum();
        let dropped = c.dropped_queue_full
            + c.dropped_too_large
            + c.dropped_slow_consumer
            + c.dropped_offline_qos0
            + c.dropped_expired
            + c.dropped_mesh_backlog
            + c.dropped_journal_full;
        // packets_out counts control packets only; PUBLISHes to subscribers are messages too.
        let totals = [
            c.packets_in,
            c.packets_out + publish_out,
            publish_in,
            publish_out,
            c.bytes_in,
            c.bytes_out,
            c.connects,
        ];
        if let Some((then, prev)) = self.last {
            let dt_min = now.duration_since(then).as_secs_f64() / 60.0;
            if dt_min > 0.0 {
                for (i, (t, p)) in totals.iter().zip(prev.iter()).enumerate() {
                    let rate = t.saturating_sub(*p) as f64 / dt_min;
                    for (w, (window, _)) in WINDOWS.iter().enumerate() {
                        // Exponentially weighted, as Unix load averages.
                        let k = (-dt_min / window).exp();
                        self.loads[i][w] = self.loads[i][w] * k + rate * (1.0 - k);
                    }
                }
            }
        }
        self.last = Some((now, totals));
        self.max_connections = self.max_connections.max(g.connections);

        let b = "$SYS/broker";
        let mut v = vec![
            (
                format!("{b}/version"),
                format!("ringmq {}", env!("CARGO_PKG_VERSION")),
            ),
            (format!("{b}/uptime"), format!("{uptime_s} seconds")),
            (format!("{b}/clients/connected"), g.connections.to_string()),
            (format!("{b}/clients/active"), g.connections.to_string()),
            (
                format!("{b}/clients/disconnected"),
                g.sessions.saturating_sub(g.connections).to_string(),
            ),
            (
                format!("{b}/clients/inactive"),
                g.sessions.saturating_sub(g.connections).to_string(),
            ),
            (format!("{b}/clients/total"), g.sessions.to_string()),
            (
                format!("{b}/clients/maximum"),
                self.max_connections.to_string(),
            ),
            (format!("{b}/messages/received"), totals[0].to_string()),
            (format!("{b}/messages/sent"), totals[1].to_string()),
            (
                format!("{b}/publish/messages/received"),
                publish_in.to_string(),
            ),
            (
                format!("{b}/publish/messages/sent"),
                publish_out.to_string(),
            ),
            (format!("{b}/publish/messages/dropped"), dropped.to_string()),
            (format!("{b}/bytes/received"), c.bytes_in.to_string()),
            (format!("{b}/bytes/sent"), c.bytes_out.to_string()),
            (
                format!("{b}/subscriptions/count"),
                g.subscriptions.to_string(),
            ),
            (
                format!("{b}/retained messages/count"),
                g.retained_messages.to_string(),
            ),
            (
                format!("{b}/store/messages/count"),
                (g.queued_messages + g.inflight_messages).to_string(),
            ),
            (
                format!("{b}/messages/inflight"),
                g.inflight_messages.to_string(),
            ),
        ];
        for (i, name) in LOADS.iter().enumerate() {
            for (w, (_, label)) in WINDOWS.iter().enumerate() {
                v.push((
                    format!("{b}/load/{name}/{label}"),
                    format!("{:.2}", self.loads[i][w]),
                ));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn metrics(packets_in: u64, connections: u64) -> ShardMetrics {
        let mut m = ShardMetrics::default();
        m.counters.packets_in = packets_in;
        m.counters.msgs_in = [packets_in, 0, 0];
        m.gauges.connections = connections;
        m.gauges.sessions = connections + 1;
        m
    }

    fn get<'a>(v: &'a [(String, String)], t: &str) -> &'a str {
        &v.iter()
            .find(|(k, _)| k == t)
            .unwrap_or_else(|| panic!("{t}"))
            .1
    }

    #[test]
    fn totals_merge_and_loads_move_toward_the_rate() {
        let mut s = SysStats::default();
        let t0 = Instant::now(); // lint: test-only clock
        let v = s.topics(&[metrics(10, 2), metrics(5, 1)], 7, t0);
        assert_eq!(get(&v, "$SYS/broker/uptime"), "7 seconds");
        assert_eq!(get(&v, "$SYS/broker/messages/received"), "15");
        assert_eq!(get(&v, "$SYS/broker/clients/connected"), "3");
        assert_eq!(get(&v, "$SYS/broker/clients/disconnected"), "2");
        assert_eq!(get(&v, "$SYS/broker/load/messages/received/1min"), "0.00");
        // 600 more in 60 s: 600 per minute; the 1-minute average moves most of the way.
        let v = s.topics(&[metrics(615, 2)], 67, t0 + Duration::from_secs(60));
        let one: f64 = get(&v, "$SYS/broker/load/messages/received/1min")
            .parse()
            .unwrap();
        let fifteen: f64 = get(&v, "$SYS/broker/load/messages/received/15min")
            .parse()
            .unwrap();
        assert!((one - 600.0 * (1.0 - (-1f64).exp())).abs() < 0.01, "{one}");
        assert!(fifteen > 0.0 && fifteen < one);
        assert_eq!(get(&v, "$SYS/broker/clients/maximum"), "3");
    }
}
