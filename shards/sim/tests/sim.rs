//! Entry points (see README.md):
//! - `cargo test -p ringmq-sim --release`: a batch of seeds, about a minute on one core;
//! - `SIM_SEEDS=N` (from `SIM_START`, default 1) runs N seeds; `SIM_SEED=S` runs one seed and
//!   prints its trace on failure; `SIM_STEPS` sets the chaos steps per seed, `SIM_TRACE` the
//!   events kept for the report;
//! - known broker findings (`ringmq_sim::KNOWN`) are counted, not failed on, unless
//!   `SIM_STRICT=1`; `SIM_ONLY=kind` is strict on that one only; `SIM_ALLOW=kind,...`
//!   tolerates more kinds;
//! - `SIM_BUG=lying-fsync` plants the canary's bug; `SIM_CRASH_PPM`, `SIM_POWER_LOSS=0|1` set
//!   the crash rate and kind instead of the seed.

use ringmq_sim::{run, Bug, Options};
use std::collections::BTreeMap;
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn options(seed: u64) -> Options {
    let mut o = Options::seed(seed);
    o.steps = env_u64("SIM_STEPS").map(|s| s as usize);
    o.crash_ppm = env_u64("SIM_CRASH_PPM");
    o.power_loss = env_u64("SIM_POWER_LOSS").map(|p| p != 0);
    if std::env::var("SIM_BUG").is_ok_and(|b| b == "lying-fsync") {
        o.bug = Some(Bug::LyingFsync);
        o.power_loss = Some(true);
    }
    if std::env::var("SIM_STRICT").map_or(true, |v| v.is_empty() || v == "0") {
        o.allow = ringmq_sim::KNOWN.to_vec();
    }
    // Strict on one known finding, tolerant of the others: its smallest reproductions.
    if let Ok(only) = std::env::var("SIM_ONLY") {
        assert!(
            ringmq_sim::KINDS.contains(&only.as_str()),
            "SIM_ONLY: unknown kind {only}"
        );
        o.allow = ringmq_sim::KNOWN
            .iter()
            .copied()
            .filter(|k| *k != only)
            .collect();
    }
    if let Ok(a) = std::env::var("SIM_ALLOW") {
        for k in a.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let kind = ringmq_sim::KINDS
                .iter()
                .find(|x| **x == k)
                .unwrap_or_else(|| panic!("SIM_ALLOW: unknown kind {k}"));
            if !o.allow.contains(kind) {
                o.allow.push(kind);
            }
        }
    }
    if let Some(t) = env_u64("SIM_TRACE") {
        o.trace_len = t as usize;
    }
    o
}

/// Seeds `SIM_START..SIM_START + SIM_SEEDS` (default 1..=6000, about a minute in release on
/// one core), or the single seed `SIM_SEED`.
#[test]
fn seeds() {
    assert!(
        ringmq_sim::detrand::check(),
        "HashMap order is not deterministic: the getrandom interposition did not take"
    );
    let (first, count) = match env_u64("SIM_SEED") {
        Some(s) => (s, 1),
        None => (
            env_u64("SIM_START").unwrap_or(1),
            // Unoptimised builds are about 20 times slower.
            env_u64("SIM_SEEDS").unwrap_or(if cfg!(debug_assertions) { 300 } else { 6000 }),
        ),
    };
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let mut steps = 0;
    let mut crashes = 0;
    let mut refused = 0;
    let mut ran = 0;
    // Known findings: in how many seeds each showed up, and the first such seed.
    let mut known: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for seed in first..first + count {
        let out = run(options(seed));
        ran += 1;
        steps += out.stats.steps;
        crashes += out.stats.crashes;
        refused += out.stats.refused;
        for kind in out.tolerated.keys() {
            known.entry(kind).or_insert((0, seed)).0 += 1;
        }
        if let Some(f) = out.failure {
            eprintln!("{f}");
            failed.push(seed);
            if failed.len() >= 5 {
                break;
            }
        } else if count == 1 {
            eprintln!(
                "seed {seed} passed in {:.3} s (event digest {:016x}): {:?}",
                out.secs, out.digest, out.stats
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for (kind, (n, seed)) in &known {
        eprintln!(
            "ringmq-sim: known finding {kind} tolerated in {n} seeds (first: SIM_SEED={seed} \
             SIM_STRICT=1)"
        );
    }
    eprintln!(
        "ringmq-sim: {ran} seeds from {first} in {secs:.1} s ({:.1} seeds/s), {steps} steps, \
         {crashes} crashes, {refused} PUBLISHes refused (0x97), {} failed {failed:?}",
        ran as f64 / secs,
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

/// A seed replays exactly: two runs see the same events.
#[test]
fn replay_is_exact() {
    for seed in [7, 8, 9] {
        let a = run(options(seed));
        let b = run(options(seed));
        assert_eq!(
            a.digest, b.digest,
            "seed {seed} did not replay the same events"
        );
    }
}

/// The canary: a journal task that reports syncs it did not do (a planted driver bug), with
/// power losses, loses acknowledged data, and the checks say so. The same seeds with an honest
/// journal task pass.
#[test]
fn canary_lying_fsync_is_caught() {
    let mut caught = Vec::new();
    for seed in 1..=20 {
        let mut o = Options::seed(seed);
        o.allow = ringmq_sim::KNOWN.to_vec();
        o.power_loss = Some(true);
        o.crash_ppm = Some(2000);
        let honest = run(o.clone());
        if let Some(f) = &honest.failure {
            panic!("canary seed {seed} fails without the planted bug:\n{f}");
        }
        o.bug = Some(Bug::LyingFsync);
        let lying = run(o);
        let kinds: Vec<&str> = lying.violations.iter().map(|(k, _)| *k).collect();
        eprintln!("canary seed {seed}: lying fsync -> {kinds:?}");
        // Lost data, or state lost under a client that was told it was kept (a second copy
        // of a completed QoS 2 message, a packet id answered early): anything but a known
        // finding, which the honest run tolerates too.
        if kinds.iter().any(|k| !ringmq_sim::KNOWN.contains(k)) {
            caught.push(seed);
        }
    }
    eprintln!("canary: lost durable state detected in seeds {caught:?} of 1..=20");
    assert!(
        caught.len() >= 7,
        "the planted lying fsync went unnoticed in most seeds (caught: {caught:?})"
    );
}
