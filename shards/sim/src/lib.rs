//! A deterministic simulator for ringmq, in the spirit of TigerBeetle's VOPR and FoundationDB's
//! simulation: the real protocol core ([`ringmq_core::ShardState`], one per shard, with its
//! real journal) driven by simulated clients, a simulated network and simulated faults, all
//! decided by one seeded generator. A seed replays a run exactly.
//!
//! # What a run is
//! One seed picks 1 to 3 shards, 2 to 6 clients (MQTT 3.1.1 or 5.0, clean or persistent
//! sessions, keep-alives, receive maxima, packet id habits) and the broker's settings (journal
//! segment size, `--fsync` policy, inflight window; in a third of the seeds, passwords checked
//! asynchronously and answered in random order, and an ACL applied to everything), then runs
//! three phases:
//! 1. **chaos**: a few thousand random steps. Each step may advance the virtual clock (the
//!    broker ticks every 250 ms of it), then does one thing: bytes arrive in the broker's socket
//!    buffer in random splits, a shard reads them, a client reads what the broker wrote, a batch
//!    crosses the mesh between two shards, a blocked write drains, a closing connection
//!    finishes, a shard's journal task syncs (and compacts), a client acts (publishes at QoS
//!    0/1/2, retained or not, subscribes, unsubscribes, pings, disconnects with or without its
//!    will, resets the connection, abandons it and reconnects — a takeover — or goes silent),
//!    or the broker crashes (a process kill, or a power loss that keeps only what was synced).
//! 2. **quiesce**: no faults, no new work; clients reconnect and finish their flows, and time
//!    passes until keep-alives and delayed wills have run out.
//! 3. **teardown**: everyone leaves, sessions end, retained messages are cleared; the broker
//!    must be empty, and so must what it recovers from its journals.
//!
//! # Checks (README.md has the precise definitions)
//! - at least once: an acknowledged QoS 1/2 message reaches every subscription that was
//!   established (SUBACK seen) before the message was first sent and still exists;
//! - exactly once: no QoS 2 delivery reaches a client twice as a new message;
//! - order per publisher and topic [MQTT-4.6.0-6]; acknowledgements in the order of the
//!   PUBLISHes on the connection [MQTT-4.6.0-2/3], and only for packets read on it;
//! - durability: when a PUBACK/PUBREC/PUBCOMP/SUBACK/UNSUBACK leaves the broker, the synced
//!   prefix of the journal already holds what it promises (and a PUBREC's message no longer
//!   travels to another shard); a SUBACK leaves no route announcement in flight;
//! - persistent sessions survive (Session Present on resume), Clean Start gets none;
//! - wills: never after DISCONNECT 0x00 or with a crashed broker, always when due;
//! - retained messages match the acknowledged retained publishes;
//! - an empty broker at the end, in memory and after a restart.
//!
//! Violations have a kind ([`KINDS`]); [`KNOWN`] lists the ones the core currently has (see
//! README.md, "Known findings"), which the default test run counts instead of failing on.
//!
//! A canary ([`Bug::LyingFsync`]) plants a bug in the simulated driver to show that lost
//! acknowledged data is caught.
//!
//! # Layout
//! - `world`: shards, connections, the driver ([`ringmq_core::Effects`] applied as
//!   `shards/shard/src/driver.rs` does), the journal task, crashes, phases.
//! - `client`: the MQTT clients.
//! - `checks`: the emission-time checks, the end-of-run checks, teardown.
//! - `model`: what was published and received, and the delivery rules.
//! - `jlog`: the journals read back record by record; power-loss tail cutting.
//! - `rng`, `trace`, `detrand` (deterministic `HashMap` order).
//! - `hostile`: arbitrary client bytes instead of simulated clients (the `core_bytes` fuzz
//!   target); `scenario`: scripted protocol scenarios on a virtual clock (tests/scenarios.rs).

mod checks;
mod client;
pub mod detrand;
pub mod hostile;
mod jlog;
mod model;
pub mod rng;
pub mod scenario;
mod trace;
mod world;

use std::time::Instant;

/// A bug planted in the simulated driver, to show the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The journal task reports every sync as done without doing it: acknowledgements are
    /// released early, and a power loss then takes acknowledged data.
    LyingFsync,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Chaos steps (default 3000).
    pub steps: Option<usize>,
    /// Crash chance per step in millionths (default: chosen by the seed).
    pub crash_ppm: Option<u64>,
    /// Crashes may be power losses (default: chosen by the seed).
    pub power_loss: Option<bool>,
    pub bug: Option<Bug>,
    /// Events kept for the failure report.
    pub trace_len: usize,
    /// Violation kinds to count instead of failing on (see [`KINDS`]).
    pub allow: Vec<&'static str>,
}

/// Kinds of violation that are known broker findings (see README.md, "Findings"): the default
/// test run counts them instead of failing, so that it can look for anything else;
/// `SIM_STRICT=1` fails on them too.
pub const KNOWN: &[&str] = &["exactly-once-crash"];

/// The kinds of violation the checks report.
pub const KINDS: &[&str] = &[
    "at-least-once",
    "qos2-crash",
    "exactly-once",
    "exactly-once-crash",
    "order",
    "refused-delivered",
    "ack-order",
    "stale-ack",
    "durability",
    "durability-qos2",
    "durability-pubcomp",
    "durability-sub",
    "durability-connack",
    "suback-route",
    "session",
    "will",
    "retained",
    "teardown",
    "liveness",
    "journal",
    "protocol",
    "panic",
];

impl Options {
    pub fn seed(seed: u64) -> Options {
        Options {
            seed,
            steps: None,
            crash_ppm: None,
            power_loss: None,
            bug: None,
            trace_len: 400,
            allow: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub crashes: u64,
    pub power_losses: u64,
    pub syncs: u64,
    pub ticks: u64,
    pub connections: u64,
    pub deliveries: u64,
    pub acked: u64,
    /// QoS 1/2 PUBLISHes answered 0x97 for a full queue.
    pub refused: u64,
    pub bytes_out: u64,
    pub messages: u64,
    pub journal_records: u64,
    /// Journal segments removed by compaction, and created.
    pub segments_removed: u64,
    pub segments_created: u64,
}

pub struct Outcome {
    pub seed: u64,
    /// The violations and the trace, if the run failed.
    pub failure: Option<String>,
    pub stats: Stats,
    /// Hash of every event: equal for two runs of one seed.
    pub digest: u64,
    pub secs: f64,
    /// Violations of tolerated kinds, by kind.
    pub tolerated: std::collections::BTreeMap<&'static str, u64>,
    /// The violations that failed the run (kind, description).
    pub violations: Vec<(&'static str, String)>,
}

/// Runs one seed on a fresh thread (so that its `HashMap`s get the seed's keys) and reports.
pub fn run(opts: Options) -> Outcome {
    std::thread::Builder::new()
        .name(format!("sim-{}", opts.seed))
        .spawn(move || {
            detrand::set_thread_seed(opts.seed);
            run_here(&opts)
        })
        .expect("spawn the simulation thread")
        .join()
        .unwrap_or_else(|_| panic!("simulation thread of seed {} died", 0))
}

fn run_here(opts: &Options) -> Outcome {
    let t0 = Instant::now();
    let mut sim = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let s = sim.insert(world::Sim::new(opts));
        s.run();
    }));
    let secs = t0.elapsed().as_secs_f64();
    let Some(mut sim) = sim else {
        return Outcome {
            seed: opts.seed,
            failure: Some(format!("seed {}: the simulator failed to start", opts.seed)),
            stats: Stats::default(),
            digest: 0,
            secs,
            tolerated: Default::default(),
            violations: Vec::new(),
        };
    };
    if let Err(panic) = result {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        sim.model.violation("panic", format!("panic: {msg}"));
        sim.failed = true;
    }
    sim.count_journal_stats();
    sim.stats.messages = sim.model.msgs.len() as u64;
    sim.stats.journal_records = sim.jlogs.iter().map(|j| j.records).sum();
    let failure = (!sim.model.violations.is_empty()).then(|| report(&sim, opts));
    Outcome {
        seed: opts.seed,
        failure,
        stats: sim.stats.clone(),
        digest: sim.trace.digest,
        secs,
        tolerated: sim.model.tolerated.clone(),
        violations: sim.model.violations.clone(),
    }
}

fn report(sim: &world::Sim, opts: &Options) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "=== ringmq-sim: seed {} FAILED ===", opts.seed);
    for (kind, v) in sim.model.violations.iter().take(5) {
        let _ = writeln!(s, "violation ({kind}): {v}");
    }
    let _ = writeln!(s, "--- last {} events ---", opts.trace_len);
    s.push_str(&sim.trace.dump());
    let mut env = format!("SIM_SEED={}", opts.seed);
    if let Some(steps) = opts.steps {
        env += &format!(" SIM_STEPS={steps}");
    }
    if let Some(ppm) = opts.crash_ppm {
        env += &format!(" SIM_CRASH_PPM={ppm}");
    }
    if let Some(p) = opts.power_loss {
        env += &format!(" SIM_POWER_LOSS={}", u8::from(p));
    }
    if opts.bug.is_some() {
        env += " SIM_BUG=lying-fsync";
    }
    env += " SIM_STRICT=1";
    if !opts.allow.is_empty() {
        env += &format!(" SIM_ALLOW={}", opts.allow.join(","));
    }
    let _ = writeln!(
        s,
        "--- reproduce: {env} SIM_TRACE=100000 cargo test -p ringmq-sim --release -- \
         --nocapture seeds"
    );
    s
}
