//! End-to-end: a short QoS 1 fan-in against a real Mosquitto that this test starts itself on a
//! free port. Fails (does not skip) when /usr/sbin/mosquitto is missing.

mod common;

use common::{num, run_loadgen, start_mosquitto};

#[test]
fn fan_in_qos1_against_mosquitto() {
    let b = start_mosquitto("fan-in");
    let (v, stdout) = run_loadgen(
        &b,
        "fan-in",
        &[
            "--qos",
            "1",
            "--duration",
            "1",
            "--ramp-up",
            "5",
            "--drain",
            "5",
            "fan-in",
            "--publishers",
            "10",
        ],
    );
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
    assert!(!v["histogram_b64"].as_str().unwrap().is_empty());
    assert!(v["broker"].is_null());
}
