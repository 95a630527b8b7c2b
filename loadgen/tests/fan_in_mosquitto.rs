//! End-to-end: a short QoS 1 fan-in against a real Mosquitto that this test starts itself on a
//! free port. Fails (does not skip) when /usr/sbin/mosquitto is missing.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_mosquitto(dir: &Path) -> (Broker, u16) {
    assert!(
        Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: install mosquitto (apt-get install mosquitto) to run this test"
    );
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    // Unlimited queue: a closed-loop QoS 1 fan-in outpaces delivery to the one subscriber, and
    // the default limit of 1000 queued messages would make the broker drop (that is loss the
    // broker chose, not what this test checks).
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
             max_queued_messages 0\nmax_inflight_messages 0\npersistence false\n"
        ),
    )
    .unwrap();
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let broker = Broker(child);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, port)
}

#[test]
fn fan_in_qos1_against_mosquitto() {
    let dir = std::env::temp_dir().join(format!("ringmq-loadgen-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_broker, port) = start_mosquitto(&dir);
    let json = dir.join("result.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-loadgen"))
        .args(["--port", &port.to_string(), "--qos", "1", "--quiet"])
        .args(["--duration", "1", "--ramp-up", "5", "--drain", "5"])
        .arg("--json")
        .arg(&json)
        .args(["fan-in", "--publishers", "10"])
        .output()
        .expect("run ringmq-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
    };
    assert_eq!(v["scenario"], "fan-in");
    assert_eq!(n("connections"), 11, "{stdout}");
    assert!(n("sent") > 0, "{stdout}");
    assert!(n("received") > 0, "{stdout}");
    assert_eq!(n("expected"), n("sent"), "one subscriber: {stdout}");
    assert_eq!(n("lost"), 0, "{stdout}");
    assert_eq!(n("duplicates"), 0, "{stdout}");
    assert_eq!(n("errors"), 0, "{stdout}");
    assert!(v["latency_us"]["count"].as_u64().unwrap() > 0);
    assert!(!v["histogram_b64"].as_str().unwrap().is_empty());
    assert!(v["broker"].is_null());
    let _ = std::fs::remove_dir_all(&dir);
}
