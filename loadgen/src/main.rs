//! ringmq-loadgen: MQTT load generator / device simulator.
//!
//! One process runs `--threads` executors (epoll loops, see `engine`); `--processes N` re-executes
//! this binary N times as workers that talk to the parent over stdin/stdout, and the parent
//! merges their counters and histograms. Phases: ramp-up (connect + subscribe, bounded), a
//! measurement window of `--duration`, a bounded drain, then a clean disconnect.

mod backlog;
mod churn;
mod cli;
mod engine;
mod local;
mod payload;
mod plot;
mod report;
mod retained;
mod stats;
mod sys;
mod workers;

use clap::{Args, Parser, Subcommand};
use engine::{ChurnCfg, DevSpec, Exec, ExecResult, Role, RunCfg, Shared};
use ringmq_codec::QoS;
use serde::{Deserialize, Serialize};
use stats::{hist_from_b64, hist_to_b64, merge_into, new_hist, summarize, Counters, Summary};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use sys::now_ns;

use cli::*;
use local::*;
use report::*;
use workers::*;

// ------------------------------------------------------------------------- coordination

struct Progress {
    quiet: bool,
    t0: u64,
    last_t: u64,
    last: Status,
    total: u64,
}

impl Progress {
    fn tick(&mut self, phase: &str, s: &Status) {
        let now = now_ns();
        if now < self.last_t + 1_000_000_000 {
            return;
        }
        let dt = (now - self.last_t) as f64 / 1e9;
        if !self.quiet {
            eprintln!(
                "[{:6.1}s] {:<7} conns {}/{}  sent/s {:.0}  recv/s {:.0}  errors {}",
                (now - self.t0) as f64 / 1e9,
                phase,
                s.up,
                self.total,
                (s.sent - self.last.sent.min(s.sent)) as f64 / dt,
                (s.recv - self.last.recv.min(s.recv)) as f64 / dt,
                s.errors
            );
        }
        self.last = *s;
        self.last_t = now;
    }
}

#[derive(Default)]
struct BrokerSamples {
    cpu_go: u64,
    cpu_end: u64,
    rss_base: u64,
    rss_go: u64,
    rss_end: u64,
    t_go: u64,
    t_end: u64,
}

struct Outcome {
    procs: Vec<ProcResult>,
    broker: Option<BrokerSamples>,
    duration_s: f64,
    t0: u64,
    retained: Option<retained::RetainedJson>,
}

/// This process's and the broker's CPU / RSS at one moment.
#[derive(Default, Clone, Copy)]
struct Snap {
    t: u64,
    cpu: u64,
    rss: u64,
    bcpu: u64,
    brss: u64,
}

fn snap(bpid: Option<u32>) -> Snap {
    Snap {
        t: now_ns(),
        cpu: sys::proc_cpu_ticks(None).unwrap_or(0),
        rss: sys::proc_rss_kb(None).unwrap_or(0),
        bcpu: bpid.and_then(|p| sys::proc_cpu_ticks(Some(p))).unwrap_or(0),
        brss: bpid.and_then(|p| sys::proc_rss_kb(Some(p))).unwrap_or(0),
    }
}

/// The retained scenario runs sequentially in this thread (see `retained`).
fn run_retained(
    cli: &Cli,
    r: &Retained,
    t0: u64,
    tag: &str,
    broker: Option<BrokerSamples>,
) -> Result<Outcome, String> {
    let g = &cli.g;
    if g.processes > 1 || g.threads > 1 {
        eprintln!("note: retained runs its subscribers one after another in one thread; --threads/--processes are ignored");
    }
    let cfg = retained::Cfg {
        addr: resolve(&g.host, g.port)?,
        version: g.version(),
        qos: QoS::from_u8(cli.scenario.qos(g)).unwrap_or_default(),
        payload: g.payload,
        keep_alive: g.keep_alive,
        topics: r.topics,
        subscribers: r.subscribers,
        setup_limit_ns: (g.ramp_up * 1e9) as u64,
        per_sub_limit_ns: (g.duration * 1e9) as u64,
        idle_limit_ns: (g.drain.max(0.1) * 1e9) as u64,
        client_prefix: format!("lg{tag}-"),
        quiet: g.quiet,
    };
    let bpid = g.broker_pid;
    let base = snap(None);
    let mut go = base;
    let mut end = base;
    let out = retained::run(&cfg, &mut || go = snap(bpid), &mut || end = snap(bpid))?;
    let proc = ProcResult {
        counters: out.counters,
        latency_b64: hist_to_b64(&out.latency),
        puback_b64: hist_to_b64(&new_hist()),
        connack_b64: hist_to_b64(&out.connack),
        queued_b64: hist_to_b64(&new_hist()),
        reconnack_b64: hist_to_b64(&new_hist()),
        cpu_ticks_base: base.cpu,
        cpu_ticks_go: go.cpu,
        cpu_ticks_end: end.cpu,
        t_base: base.t,
        t_go: go.t,
        t_end: end.t,
        rss_kb_base: base.rss,
        rss_kb_go: go.rss,
        rss_kb_end: end.rss,
        first_error: out.first_error,
    };
    let broker = broker.map(|b| BrokerSamples {
        cpu_go: go.bcpu,
        cpu_end: end.bcpu,
        rss_go: go.brss,
        rss_end: end.brss,
        t_go: go.t,
        t_end: end.t,
        ..b
    });
    Ok(Outcome {
        procs: vec![proc],
        broker,
        duration_s: (out.measured_s * 1000.0).round() / 1000.0,
        t0,
        retained: Some(out.json),
    })
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn run(cli: &Cli) -> Result<Outcome, String> {
    let t0 = now_ns();
    let tag = cli
        .g
        .run_tag
        .clone()
        .unwrap_or_else(|| format!("{:x}", std::process::id()));
    let bpid = cli.g.broker_pid;
    let mut broker = bpid.map(|p| BrokerSamples {
        rss_base: sys::proc_rss_kb(Some(p)).unwrap_or(0),
        ..Default::default()
    });
    if let (Some(p), Some(b)) = (bpid, &broker) {
        if b.rss_base == 0 {
            eprintln!("warning: cannot read /proc/{p}/status (--broker-pid)");
        }
    }
    let total = cli.scenario.devices();
    if cli.g.payload < payload::HEADER_LEN {
        return Err(format!(
            "--payload must be >= {} bytes",
            payload::HEADER_LEN
        ));
    }
    if let Scenario::Retained(r) = &cli.scenario {
        return run_retained(cli, r, t0, &tag, broker);
    }
    if let Scenario::SessionChurn(c) = &cli.scenario {
        if c.rate <= 0.0 || c.devices == 0 {
            return Err("session-churn needs --rate > 0 and --devices > 0".into());
        }
    }
    let mut be = Backend::start(cli, t0, &tag)?;
    let mut prog = Progress {
        quiet: cli.g.quiet,
        t0,
        last_t: t0,
        last: Status::default(),
        total,
    };
    // Ramp-up: the executors stop by themselves at the deadline.
    let ramp_deadline = t0 + (cli.g.ramp_up * 1e9) as u64 + 3_000_000_000;
    let mut st;
    loop {
        st = match be.status() {
            Ok(s) => s,
            Err(e) => {
                be.end();
                return Err(e);
            }
        };
        if st.ready || now_ns() > ramp_deadline {
            break;
        }
        prog.tick("ramp-up", &st);
        sleep_ms(20);
    }
    if st.up == 0 && total > 0 {
        be.end();
        let why = be
            .first_error()
            .unwrap_or_else(|| "no device could connect".into());
        let _ = be.collect();
        return Err(format!("no device connected: {why}"));
    }
    // Measurement.
    let duration_s = match &cli.scenario {
        Scenario::Idle(i) => i.hold.unwrap_or(cli.g.duration),
        Scenario::ConnectStorm(_) => 0.0,
        _ => cli.g.duration,
    };
    let go = now_ns() + 20_000_000;
    if let (Some(p), Some(b)) = (bpid, broker.as_mut()) {
        b.cpu_go = sys::proc_cpu_ticks(Some(p)).unwrap_or(0);
        b.rss_go = sys::proc_rss_kb(Some(p)).unwrap_or(0);
        b.t_go = now_ns();
    }
    be.go(go);
    let wend = go + (duration_s * 1e9) as u64;
    loop {
        let now = now_ns();
        if now >= wend {
            break;
        }
        st = be.status()?;
        prog.tick("measure", &st);
        sleep_ms(((wend - now) / 1_000_000).clamp(1, 50));
    }
    be.window_end();
    if let (Some(p), Some(b)) = (bpid, broker.as_mut()) {
        b.cpu_end = sys::proc_cpu_ticks(Some(p)).unwrap_or(0);
        b.rss_end = sys::proc_rss_kb(Some(p)).unwrap_or(0);
        b.t_end = now_ns();
    }
    // Drain: until every expected delivery arrived and every QoS 1/2 publish was acknowledged.
    if cli.scenario.has_traffic() {
        let deadline = now_ns() + (cli.g.drain * 1e9) as u64;
        sleep_ms(5);
        loop {
            st = be.status()?;
            let expected = cli.scenario.expected(st.sent, st.subs_up);
            if (st.unique >= expected && st.inflight == 0) || now_ns() >= deadline {
                break;
            }
            prog.tick("drain", &st);
            sleep_ms(10);
        }
    }
    be.end();
    let procs = be.collect()?;
    Ok(Outcome {
        procs,
        broker,
        duration_s,
        t0,
        retained: None,
    })
}

/// The backlog scenario (see `backlog`): sequential, with its own report. Exits 1 when an
/// acknowledged message was not delivered once and in order.
fn run_backlog(cli: &Cli, b: &Backlog) -> ! {
    let g = &cli.g;
    let tag = g
        .run_tag
        .clone()
        .unwrap_or_else(|| format!("{:x}", std::process::id()));
    let cfg = resolve(&g.host, g.port).map(|addr| backlog::Cfg {
        addr,
        version: g.version(),
        payload: g.payload,
        keep_alive: g.keep_alive,
        messages: b.messages,
        window: b.window,
        publish_limit_ns: (g.ramp_up * 1e9) as u64,
        drain_limit_ns: (g.duration * 1e9) as u64,
        idle_limit_ns: (g.drain.max(0.1) * 1e9) as u64,
        client_prefix: format!("lg{tag}-"),
        broker_pid: g.broker_pid,
        pause_until: b.pause_until.clone(),
        quiet: g.quiet,
    });
    let j = match cfg.and_then(|c| backlog::run(&c)) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("ringmq-loadgen: error: {e}");
            std::process::exit(1);
        }
    };
    let text = serde_json::to_string_pretty(&j).unwrap_or_default();
    println!("{text}");
    if let Some(path) = &g.json {
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("ringmq-loadgen: cannot write {path}: {e}");
        }
    }
    let lost = j.missing > 0 || j.duplicates > 0 || j.out_of_order > 0;
    std::process::exit(i32::from(lost));
}

fn main() {
    let cli = Cli::parse();
    if cli.g.worker_index.is_some() {
        std::process::exit(worker_main(cli));
    }
    if let Scenario::Backlog(b) = &cli.scenario {
        run_backlog(&cli, b);
    }
    let out = match run(&cli) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ringmq-loadgen: error: {e}");
            std::process::exit(1);
        }
    };
    let (res, lat) = match build_result(&cli, &out) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringmq-loadgen: error: {e}");
            std::process::exit(1);
        }
    };
    print_summary(&res);
    if let Some(path) = &cli.g.json {
        match serde_json::to_string_pretty(&res) {
            Ok(s) => {
                if let Err(e) = std::fs::write(path, s + "\n") {
                    eprintln!("ringmq-loadgen: cannot write {path}: {e}");
                }
            }
            Err(e) => eprintln!("ringmq-loadgen: json: {e}"),
        }
    }
    if let Some(path) = &cli.g.plot {
        let title = format!(
            "{} — {} conns, {:.0} msgs/s received",
            res.scenario, res.connections, res.received_per_s
        );
        if let Err(e) = std::fs::write(path, plot::latency_svg(&lat, &title)) {
            eprintln!("ringmq-loadgen: cannot write {path}: {e}");
        }
    }
}
