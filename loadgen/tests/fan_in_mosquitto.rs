//! End-to-end: a short QoS 1 fan-in against a real Mosquitto that this test starts itself on a
//! free port. Fails (does not skip) when /usr/sbin/mosquitto is missing.

mod common;

use common::{num, run_loadgen, start_mosquitto};

/// A 1 s fan-in at `qos` with `fan_in_args` after `fan-in`.
fn short_fan_in(name: &str, qos: &str, fan_in_args: &[&str]) -> (serde_json::Value, String) {
    let b = start_mosquitto(name);
    let mut args = vec![
        "--qos",
        qos,
        "--duration",
        "1",
        "--ramp-up",
        "5",
        "--drain",
        "5",
        "fan-in",
    ];
    args.extend_from_slice(fan_in_args);
    run_loadgen(&b, name, &args)
}

#[test]
fn fan_in_qos1_against_mosquitto() {
    let (v, stdout) = short_fan_in("fan-in", "1", &["--publishers", "10"]);
    let n = |k: &str| num(&v, &[k]);
    assert_eq!(v["scenario"], "fan-in");
    assert_eq!(n("connections"), 11, "{stdout}");
    assert!(n("sent") > 0, "{stdout}");
    assert!(n("received") > 0, "{stdout}");
    assert_eq!(n("expected"), n("sent"), "one subscriber: {stdout}");
    assert_eq!(n("lost"), 0, "{stdout}");
    assert_eq!(n("duplicates"), 0, "{stdout}");
    assert_eq!(n("errors"), 0, "{stdout}");
    assert!(num(&v, &["latency_us", "count"]) > 0);
    // Publisher side: every QoS 1 publish got its PUBACK, each timed.
    assert_eq!(n("acked"), n("sent"), "{stdout}");
    assert_eq!(num(&v, &["puback_us", "count"]), n("sent"), "{stdout}");
    assert!(num(&v, &["puback_us", "p50"]) > 0, "{stdout}");
    assert!(num(&v, &["puback_us", "p999"]) >= num(&v, &["puback_us", "p50"]));
    assert!(!v["puback_histogram_b64"].as_str().unwrap().is_empty());
    assert!(!v["histogram_b64"].as_str().unwrap().is_empty());
    assert!(v["broker"].is_null());
}

/// Offline persistent sessions made in two batches (`idle --persistent-subscribers --first`),
/// filled by publishers spreading over their topics (`fan-in --target-topics`), then one batch
/// reconnects with the same client ids and gets its backlog.
#[test]
fn persistent_sessions_fill_and_reconnect_against_mosquitto() {
    let b = start_mosquitto("sessions");
    for (k, first) in [("0", "0"), ("1", "20")] {
        let (v, out) = run_loadgen(
            &b,
            &format!("sessions-{k}"),
            &[
                "--qos",
                "1",
                "--persistent-subscribers",
                "--run-tag",
                &format!("sess{k}"),
                "idle",
                "--devices",
                "20",
                "--first",
                first,
                "--hold",
                "0",
            ],
        );
        assert_eq!(num(&v, &["connections"]), 20, "{out}");
        assert_eq!(num(&v, &["errors"]), 0, "{out}");
    }
    // Open loop: exactly 4 publishers x 100 msgs/s x 1 s, over bench/idle/0..39.
    let (v, out) = run_loadgen(
        &b,
        "fill",
        &[
            "--qos",
            "1",
            "--duration",
            "1",
            "--drain",
            "5",
            "fan-in",
            "--publishers",
            "4",
            "--subscribers",
            "0",
            "--rate",
            "100",
            "--target-topics",
            "40",
        ],
    );
    assert_eq!(num(&v, &["sent"]), 400, "{out}");
    assert_eq!(num(&v, &["acked"]), 400, "{out}");
    assert_eq!(num(&v, &["puback_us", "count"]), 400, "{out}");
    // Reconnect both batches (same run tags, so the same client ids) and count the backlog:
    // it was stamped before these runs started, so it shows up as `stale`.
    let mut backlog = 0;
    for (k, first) in [("0", "0"), ("1", "20")] {
        let (v, out) = run_loadgen(
            &b,
            &format!("reconnect-{k}"),
            &[
                "--qos",
                "1",
                "--persistent-subscribers",
                "--run-tag",
                &format!("sess{k}"),
                "idle",
                "--devices",
                "20",
                "--first",
                first,
                "--hold",
                "1",
            ],
        );
        assert_eq!(num(&v, &["connections"]), 20, "{out}");
        backlog += num(&v, &["stale"]) + num(&v, &["received"]);
    }
    assert_eq!(backlog, 400, "every queued message delivered once");
}

/// QoS 0 fan-in with an end-to-end window: each publisher waits for its messages to reach the
/// subscriber, so a broker with room for them all loses none, and every message sent arrives.
#[test]
fn fan_in_qos0_end_to_end_against_mosquitto() {
    let (v, stdout) = short_fan_in(
        "fan-in-e2e",
        "0",
        &["--publishers", "20", "--window", "4", "--end-to-end"],
    );
    let n = |k: &str| num(&v, &[k]);
    assert_eq!(n("connections"), 21, "{stdout}");
    assert!(n("sent") > 1000, "{stdout}");
    assert_eq!(n("received"), n("sent"), "{stdout}");
    assert_eq!(n("lost"), 0, "{stdout}");
    assert_eq!(n("errors"), 0, "{stdout}");
}
