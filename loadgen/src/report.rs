//! The result: merged counters and histograms as JSON, and the human summary.

use crate::*;

#[derive(Serialize)]
pub(crate) struct LoadgenJson {
    pub(crate) cpu_pct: f64,
    pub(crate) rss_kb: u64,
    pub(crate) rss_bytes_per_device: f64,
    pub(crate) processes: usize,
}

#[derive(Serialize)]
pub(crate) struct BrokerJson {
    pub(crate) pid: u32,
    pub(crate) cpu_pct: f64,
    pub(crate) rss_kb_before_connect: u64,
    pub(crate) rss_kb_start: u64,
    pub(crate) rss_kb_end: u64,
    pub(crate) rss_bytes_per_connection: f64,
}

#[derive(Serialize)]
pub(crate) struct ChurnJson {
    pub(crate) reconnects: u64,
    pub(crate) reconnects_per_s: f64,
    /// Reconnects whose CONNACK had session present 0 (also counted in errors).
    pub(crate) session_present_failures: u64,
    pub(crate) reconnect_connack_us: Summary,
    /// Deliveries published while their device was offline (latency includes the queueing).
    pub(crate) queued_deliveries: u64,
    pub(crate) queued_latency_us: Summary,
    pub(crate) queued_histogram_b64: String,
}

#[derive(Serialize)]
pub(crate) struct ResultJson {
    pub(crate) scenario: String,
    pub(crate) args: serde_json::Value,
    pub(crate) connections: u64,
    pub(crate) devices: u64,
    pub(crate) duration_s: f64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) received_in_window: u64,
    pub(crate) sent_per_s: f64,
    pub(crate) received_per_s: f64,
    pub(crate) expected: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) errors: u64,
    /// Deliveries stamped before this run started (an earlier run's backlog), ignored.
    pub(crate) stale: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) latency_us: Summary,
    /// QoS 1/2 publishes acknowledged (PUBACK / PUBREC), all and in the measurement window.
    pub(crate) acked: u64,
    pub(crate) acked_per_s: f64,
    /// QoS 1/2 publishes refused by the broker (reason code 0x80 or more).
    pub(crate) refused: u64,
    /// Publisher side: PUBLISH (stamped time; intended time in open loop) to PUBACK (QoS 1) /
    /// PUBREC (QoS 2).
    puback_us: Summary,
    puback_histogram_b64: String,
    pub(crate) connack_us: Summary,
    pub(crate) connect_per_s: f64,
    pub(crate) ramp_up_s: f64,
    /// Seconds from the start of the run to the first connect measured (after a warm-up
    /// round, the second round's).
    pub(crate) connect_start_s: f64,
    /// Connections whose TLS handshake resumed an earlier session.
    pub(crate) tls_resumed: u64,
    pub(crate) loadgen: LoadgenJson,
    pub(crate) broker: Option<BrokerJson>,
    pub(crate) histogram_b64: String,
    pub(crate) connack_histogram_b64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) churn: Option<ChurnJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retained: Option<retained::RetainedJson>,
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn build_result(
    cli: &Cli,
    o: &Outcome,
) -> Result<(ResultJson, hdrhistogram::Histogram<u64>), String> {
    let mut c = Counters::default();
    let mut lat = new_hist();
    let mut pa = new_hist();
    let mut ca = new_hist();
    let mut q = new_hist();
    let mut rca = new_hist();
    let tck = sys::clk_tck() as f64;
    let mut cpu_pct = 0.0;
    let mut rss_kb = 0;
    let mut rss_dev_kb = 0u64;
    let mut first_error = None;
    for p in &o.procs {
        c.merge(&p.counters);
        merge_into(&mut lat, &hist_from_b64(&p.latency_b64)?);
        if !p.puback_b64.is_empty() {
            merge_into(&mut pa, &hist_from_b64(&p.puback_b64)?);
        }
        merge_into(&mut ca, &hist_from_b64(&p.connack_b64)?);
        merge_into(&mut q, &hist_from_b64(&p.queued_b64)?);
        merge_into(&mut rca, &hist_from_b64(&p.reconnack_b64)?);
        // CPU over the measurement window; connect-storm has none, so over the connect phase.
        let (ticks, ns) = if p.t_end > p.t_go + 100_000_000 {
            (
                p.cpu_ticks_end.saturating_sub(p.cpu_ticks_go),
                p.t_end - p.t_go,
            )
        } else {
            (
                p.cpu_ticks_go.saturating_sub(p.cpu_ticks_base),
                p.t_go.saturating_sub(p.t_base).max(1),
            )
        };
        cpu_pct += ticks as f64 / tck / (ns as f64 / 1e9) * 100.0;
        rss_kb += p.rss_kb_end.max(p.rss_kb_go);
        rss_dev_kb += p.rss_kb_go.saturating_sub(p.rss_kb_base);
        if first_error.is_none() {
            first_error = p.first_error.clone();
        }
    }
    let dur = o.duration_s;
    // A publish the broker refused (0x97 and the like) was not taken: nobody should get it.
    let expected = cli
        .scenario
        .expected(c.sent.saturating_sub(c.refused), c.subs_connected);
    let ramp_s = if c.last_ready_ns > c.first_attempt_ns && c.first_attempt_ns > 0 {
        (c.last_ready_ns - c.first_attempt_ns) as f64 / 1e9
    } else {
        0.0
    };
    let per_s = |n: u64| {
        if dur > 0.0 {
            round2(n as f64 / dur)
        } else {
            0.0
        }
    };
    let broker = match (cli.g.broker_pid, &o.broker) {
        (Some(pid), Some(b)) => {
            let ns = b.t_end.saturating_sub(b.t_go).max(1) as f64;
            Some(BrokerJson {
                pid,
                cpu_pct: round2(
                    b.cpu_end.saturating_sub(b.cpu_go) as f64 / tck / (ns / 1e9) * 100.0,
                ),
                rss_kb_before_connect: b.rss_base,
                rss_kb_start: b.rss_go,
                rss_kb_end: b.rss_end,
                rss_bytes_per_connection: if c.connected > 0 {
                    round2((b.rss_end as f64 - b.rss_base as f64) * 1024.0 / c.connected as f64)
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let mut args = serde_json::to_value(&cli.g).map_err(|e| e.to_string())?;
    if let (Some(a), Ok(serde_json::Value::Object(s))) =
        (args.as_object_mut(), serde_json::to_value(&cli.scenario))
    {
        a.extend(s);
        a.insert("qos".into(), cli.scenario.qos(&cli.g).into());
    }
    let churn = cli.scenario.churn().map(|_| ChurnJson {
        reconnects: c.reconnects,
        reconnects_per_s: per_s(c.reconnects),
        session_present_failures: c.session_lost,
        reconnect_connack_us: summarize(&rca),
        queued_deliveries: c.queued,
        queued_latency_us: summarize(&q),
        queued_histogram_b64: hist_to_b64(&q),
    });
    let connect_start_s = if c.first_attempt_ns > o.t0 {
        round2((c.first_attempt_ns - o.t0) as f64 / 1e9 * 1000.0) / 1000.0
    } else {
        0.0
    };
    Ok((
        ResultJson {
            scenario: cli.scenario.name().into(),
            args,
            connections: c.connected,
            devices: c.devices,
            duration_s: dur,
            sent: c.sent,
            received: c.received,
            received_in_window: c.received_in_window,
            sent_per_s: per_s(c.sent),
            received_per_s: per_s(c.received_in_window),
            expected,
            lost: stats::lost(expected, c.unique),
            duplicates: c.duplicates,
            errors: c.errors,
            stale: c.stale,
            first_error,
            latency_us: summarize(&lat),
            acked: c.acked,
            acked_per_s: per_s(c.acked_in_window),
            refused: c.refused,
            puback_us: summarize(&pa),
            puback_histogram_b64: hist_to_b64(&pa),
            connack_us: summarize(&ca),
            connect_per_s: if ramp_s > 0.0 {
                round2(c.connected as f64 / ramp_s)
            } else {
                0.0
            },
            ramp_up_s: round2(ramp_s * 1000.0) / 1000.0,
            connect_start_s,
            tls_resumed: c.tls_resumed,
            loadgen: LoadgenJson {
                cpu_pct: round2(cpu_pct),
                rss_kb,
                rss_bytes_per_device: if c.connected > 0 {
                    round2(rss_dev_kb as f64 * 1024.0 / c.connected as f64)
                } else {
                    0.0
                },
                processes: o.procs.len(),
            },
            broker,
            histogram_b64: hist_to_b64(&lat),
            connack_histogram_b64: hist_to_b64(&ca),
            churn,
            retained: o.retained.clone(),
        },
        lat,
    ))
}

pub(crate) fn print_summary(r: &ResultJson) {
    let l = &r.latency_us;
    let ca = &r.connack_us;
    println!("scenario        {}", r.scenario);
    println!(
        "connections     {} of {} devices (errors {})",
        r.connections, r.devices, r.errors
    );
    if let Some(e) = &r.first_error {
        println!("first error     {e}");
    }
    println!(
        "connect         {:.0} conn/s over {:.3} s; CONNACK µs p50 {} p90 {} p99 {} p999 {} max {}",
        r.connect_per_s, r.ramp_up_s, ca.p50, ca.p90, ca.p99, ca.p999, ca.max
    );
    if let Some(rt) = &r.retained {
        println!(
            "setup           {} of {} retained messages acknowledged in {:.3} s, {} cleared at the end",
            rt.setup_acked, rt.topics, rt.setup_s, rt.cleared
        );
        println!(
            "retained        {} of {} expected delivered to {} of {} subscribers ({:.0} msgs/s); not retained {}, count mismatches {}",
            r.received_in_window,
            r.expected,
            rt.complete_subscribers,
            rt.subscribers,
            rt.retained_per_s,
            rt.not_retained,
            rt.count_mismatches
        );
        println!(
            "per subscriber  SUBSCRIBE -> all retained µs p50 {} p99 {} max {} (n={})",
            l.p50, l.p99, l.max, l.count
        );
    } else if r.scenario != "idle" && r.scenario != "connect-storm" {
        println!("duration        {:.1} s", r.duration_s);
        println!(
            "sent            {} msgs  ({:.0} msgs/s)",
            r.sent, r.sent_per_s
        );
        println!(
            "received        {} msgs  ({:.0} msgs/s in the window)",
            r.received, r.received_per_s
        );
        println!(
            "loss            {} of {} expected ({:.4}%), duplicates {}",
            r.lost,
            r.expected,
            if r.expected > 0 {
                r.lost as f64 * 100.0 / r.expected as f64
            } else {
                0.0
            },
            r.duplicates
        );
        if r.stale > 0 {
            println!(
                "stale           {} deliveries from an earlier run ignored (broker backlog)",
                r.stale
            );
        }
        println!(
            "latency µs      p50 {} p90 {} p99 {} p999 {} max {} mean {:.1} (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        );
        if r.refused > 0 {
            println!(
                "refused         {} publishes (PUBACK/PUBREC 0x80 or more)",
                r.refused
            );
        }
        if r.puback_us.count > 0 {
            let pa = &r.puback_us;
            println!(
                "acknowledged    {} publishes ({:.0}/s in the window)",
                r.acked, r.acked_per_s
            );
            println!(
                "pub->ack µs     p50 {} p90 {} p99 {} p999 {} max {} mean {:.1} (n={}; PUBACK, QoS 2: PUBREC)",
                pa.p50, pa.p90, pa.p99, pa.p999, pa.max, pa.mean, pa.count
            );
        }
        if let Some(ch) = &r.churn {
            let rc = &ch.reconnect_connack_us;
            let q = &ch.queued_latency_us;
            println!(
                "reconnects      {} ({:.0}/s), session present missing {}; CONNACK µs p50 {} p90 {} p99 {} max {}",
                ch.reconnects,
                ch.reconnects_per_s,
                ch.session_present_failures,
                rc.p50,
                rc.p90,
                rc.p99,
                rc.max
            );
            println!(
                "queued µs       p50 {} p90 {} p99 {} max {} (n={}; published while the device was offline)",
                q.p50, q.p90, q.p99, q.max, q.count
            );
        }
    } else {
        println!("held            {:.1} s", r.duration_s);
    }
    println!(
        "loadgen         cpu {:.1}% ({} process(es)), rss {} KiB, {:.0} bytes/device",
        r.loadgen.cpu_pct, r.loadgen.processes, r.loadgen.rss_kb, r.loadgen.rss_bytes_per_device
    );
    if let Some(b) = &r.broker {
        println!(
            "broker pid {}  cpu {:.1}%, rss {} -> {} KiB (before connect {} KiB), {:.0} bytes/connection",
            b.pid,
            b.cpu_pct,
            b.rss_kb_start,
            b.rss_kb_end,
            b.rss_kb_before_connect,
            b.rss_bytes_per_connection
        );
    }
}
