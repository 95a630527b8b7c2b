//! End-to-end: the retained scenario (200 topics, 2 subscribers) against a real Mosquitto that
//! the test starts itself on a free port. Fails (does not skip) when /usr/sbin/mosquitto is
//! missing.

mod common;
use common::{num, run_loadgen, start_mosquitto};

#[test]
fn retained_against_mosquitto() {
    let b = start_mosquitto("retained");
    for version in ["3", "5"] {
        let (v, out) = run_loadgen(
            &b,
            &format!("retained-v{version}"),
            &[
                "--mqtt-version",
                version,
                "--duration",
                "5",
                "retained",
                "--topics",
                "200",
                "--subscribers",
                "2",
            ],
        );
        assert_eq!(v["scenario"], "retained");
        assert_eq!(num(&v, &["errors"]), 0, "{out}");
        assert_eq!(num(&v, &["connections"]), 3, "{out}");
        assert_eq!(num(&v, &["retained", "setup_acked"]), 200, "{out}");
        assert_eq!(num(&v, &["expected"]), 400, "{out}");
        assert_eq!(num(&v, &["received_in_window"]), 400, "{out}");
        assert_eq!(num(&v, &["lost"]), 0, "{out}");
        assert_eq!(num(&v, &["retained", "complete_subscribers"]), 2, "{out}");
        assert_eq!(num(&v, &["retained", "not_retained"]), 0, "{out}");
        assert_eq!(num(&v, &["retained", "count_mismatches"]), 0, "{out}");
        assert_eq!(
            num(&v, &["latency_us", "count"]),
            2,
            "one sample per subscriber"
        );
        assert!(num(&v, &["latency_us", "max"]) > 0);
        // The second round (v5) sees exactly 200 again only because the first one cleared.
        assert_eq!(num(&v, &["retained", "cleared"]), 200, "{out}");
    }
}
