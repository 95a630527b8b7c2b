//! End-to-end: a short QoS 1 session-churn (MQTT 3.1.1 and 5) against a real Mosquitto that the
//! test starts itself on a free port. Fails (does not skip) when /usr/sbin/mosquitto is missing.

mod common;
use common::{num, run_loadgen, start_mosquitto};

#[test]
fn session_churn_against_mosquitto() {
    let b = start_mosquitto("churn");
    for version in ["3", "5"] {
        let (v, out) = run_loadgen(
            &b,
            &format!("churn-v{version}"),
            &[
                "--mqtt-version",
                version,
                "--duration",
                "2",
                "--ramp-up",
                "5",
                "--drain",
                "5",
                "session-churn",
                "--devices",
                "40",
                "--publishers",
                "2",
                "--rate",
                "50",
                "--online-secs",
                "0.3",
                "--offline-secs",
                "0.3",
            ],
        );
        assert_eq!(v["scenario"], "session-churn");
        assert_eq!(v["args"]["qos"], 1, "QoS 1 by default");
        assert_eq!(num(&v, &["connections"]), 42, "{out}");
        assert_eq!(num(&v, &["errors"]), 0, "{out}");
        // Every device goes offline and back several times in 2 s, keeping its session.
        assert!(num(&v, &["churn", "reconnects"]) >= 40, "{out}");
        assert_eq!(num(&v, &["churn", "session_present_failures"]), 0, "{out}");
        assert!(num(&v, &["churn", "reconnect_connack_us", "count"]) > 0);
        assert_eq!(num(&v, &["sent"]), 200, "2 publishers x 50/s x 2 s: {out}");
        assert_eq!(num(&v, &["expected"]), num(&v, &["sent"]));
        // Unlimited broker queue and all devices back online in the drain: nothing lost.
        assert_eq!(num(&v, &["lost"]), 0, "{out}");
        assert!(num(&v, &["received"]) >= num(&v, &["sent"]), "{out}");
        // About half of the messages find their device offline and wait in its session.
        let queued = num(&v, &["churn", "queued_deliveries"]);
        assert!(queued > 0, "{out}");
        assert_eq!(num(&v, &["churn", "queued_latency_us", "count"]), queued);
        assert!(num(&v, &["latency_us", "count"]) > 0, "{out}");
        assert!(out.contains("reconnects"), "{out}");
    }
}
