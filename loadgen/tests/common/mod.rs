//! Shared by the integration tests: a Mosquitto of their own on a free port, and running the
//! loadgen binary with a JSON result.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub struct Broker {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Mosquitto with unlimited queues (its default of 1000 queued messages per client
/// would drop retained messages and offline backlogs: loss the broker chose, not what the tests
/// check).
pub fn start_mosquitto(name: &str) -> Broker {
    assert!(
        Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: install mosquitto (apt-get install mosquitto) to run this test"
    );
    let dir = std::env::temp_dir().join(format!("ringmq-loadgen-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A port found free may be taken (by another test's client sockets) before Mosquitto binds
    // it: then Mosquitto exits, and another port is tried.
    for _ in 0..5 {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
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
        let mut broker = Broker {
            child,
            port,
            dir: dir.clone(),
        };
        let t = Instant::now();
        loop {
            if broker.child.try_wait().unwrap().is_some() {
                break; // exited: the port was taken
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Still running once listening: it is ours that answered.
                std::thread::sleep(Duration::from_millis(20));
                if broker.child.try_wait().unwrap().is_none() {
                    return broker;
                }
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Keep the directory for the next attempt.
        broker.dir = PathBuf::new();
    }
    panic!("mosquitto did not start on any of 5 free ports");
}

/// Runs the loadgen against `b` with `args` (global flags and scenario), returns the JSON
/// result and the summary.
pub fn run_loadgen(b: &Broker, tag: &str, args: &[&str]) -> (serde_json::Value, String) {
    let json = b.dir.join(format!("{tag}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq-loadgen"))
        .args(["--port", &b.port.to_string(), "--quiet"])
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .expect("run ringmq-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (v, stdout)
}

pub fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut x = v;
    for k in path {
        x = &x[k];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}
