//! ringmq-loadgen: MQTT load generator / device simulator.
//!
//! One process runs `--threads` executors (epoll loops, see `engine`); `--processes N` re-executes
//! this binary N times as workers that talk to the parent over stdin/stdout, and the parent
//! merges their counters and histograms. Phases: ramp-up (connect + subscribe, bounded), a
//! measurement window of `--duration`, a bounded drain, then a clean disconnect.

mod churn;
mod engine;
mod payload;
mod plot;
mod retained;
mod stats;
mod sys;

use clap::{Args, Parser, Subcommand};
use engine::{ChurnCfg, DevSpec, Exec, ExecResult, Role, RunCfg, Shared};
use ringmq_codec::{ProtocolVersion, QoS};
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

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    name = "ringmq-loadgen",
    version,
    about = "MQTT load generator and device simulator (fan-in, fan-out, pairs, idle, connect-storm, session-churn, retained)"
)]
struct Cli {
    #[command(flatten)]
    g: Global,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug, Clone, Serialize)]
struct Global {
    /// Broker host (IPv4 address or name).
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// Executors (event-loop threads) in this process.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// Pin executors to these cpus, e.g. "1" or "0,1" (round-robin); default: no pinning.
    #[arg(long, global = true)]
    cpus: Option<String>,
    /// Split devices over N worker processes (each with --threads executors).
    #[arg(long, default_value_t = 1, global = true)]
    processes: usize,
    /// Bind connections' source addresses round-robin over this range, e.g. 127.0.0.2-127.0.0.65.
    #[arg(long, global = true)]
    source_ips: Option<String>,
    /// 3 (= 3.1.1) or 5.
    #[arg(long, default_value_t = 3, global = true, value_parser = clap::value_parser!(u8).range(3..=5))]
    mqtt_version: u8,
    /// Publish and subscribe QoS (default 0; session-churn and retained: 1).
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: Option<u8>,
    /// Payload size in bytes (>= 16: timestamp, publisher id, sequence).
    #[arg(long, default_value_t = 64, global = true)]
    payload: usize,
    /// Measurement duration in seconds, after ramp-up.
    #[arg(long, default_value_t = 10.0, global = true)]
    duration: f64,
    /// Limit of the connect phase in seconds.
    #[arg(long, default_value_t = 10.0, global = true)]
    ramp_up: f64,
    /// Max new connections per second (total over all executors and processes).
    #[arg(long, default_value_t = 5000.0, global = true)]
    connect_rate: f64,
    #[arg(long, default_value_t = 60, global = true)]
    keep_alive: u16,
    /// Bounded wait in seconds for in-flight deliveries after publishing stops.
    #[arg(long, default_value_t = 2.0, global = true)]
    drain: f64,
    /// Write the full result as JSON to FILE.
    #[arg(long, global = true)]
    json: Option<String>,
    /// Write a latency percentile plot (SVG) to FILE.
    #[arg(long, global = true)]
    plot: Option<String>,
    /// Sample this broker process's RSS and CPU.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// No live progress line.
    #[arg(long, global = true)]
    quiet: bool,
    /// Subscribers keep persistent sessions (3.1.1: Clean Session 0; MQTT 5: Session Expiry
    /// Interval --session-expiry), so a durable broker journals their QoS 1/2 deliveries.
    #[arg(long, global = true)]
    persistent_subscribers: bool,
    /// MQTT 5 Session Expiry Interval in seconds of --persistent-subscribers.
    #[arg(long, default_value_t = 86400, global = true)]
    session_expiry: u32,
    #[arg(long, hide = true)]
    #[serde(skip)]
    worker_index: Option<usize>,
    #[arg(long, hide = true, default_value_t = 1)]
    #[serde(skip)]
    worker_count: usize,
    #[arg(long, hide = true)]
    #[serde(skip)]
    run_tag: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    #[serde(skip)]
    worker_t0: u64,
}

#[derive(Subcommand, Debug, Clone, Serialize)]
#[serde(untagged)]
enum Scenario {
    /// N publishers -> few subscribers of bench/fanin/#.
    FanIn(FanIn),
    /// Few publishers -> N subscribers of bench/fanout.
    FanOut(FanOut),
    /// N point-to-point pairs: device i publishes to bench/pairs/<i>/cmd, its partner subscribes.
    Pairs(Pairs),
    /// N devices connect, subscribe bench/idle/<i> and hold with keep-alive.
    Idle(Idle),
    /// Connect N devices as fast as --connect-rate allows, then disconnect.
    ConnectStorm(Storm),
    /// N persistent-session devices subscribe bench/churn/<i> and cycle offline/online while P
    /// publishers send to random device topics.
    SessionChurn(Churn),
    /// Publish T retained messages, then time S wildcard subscribers receiving them all.
    Retained(Retained),
}

#[derive(Args, Debug, Clone, Serialize)]
struct Churn {
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    #[arg(long, default_value_t = 10)]
    publishers: u32,
    /// Msgs/s per publisher (open loop, > 0).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds each device stays disconnected per cycle.
    #[arg(long, default_value_t = 1.0)]
    offline_secs: f64,
    /// Seconds each device stays connected per cycle.
    #[arg(long, default_value_t = 1.0)]
    online_secs: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
struct Retained {
    #[arg(long, default_value_t = 10000)]
    topics: u32,
    #[arg(long, default_value_t = 10)]
    subscribers: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
struct FanIn {
    #[arg(long, default_value_t = 1000)]
    publishers: u32,
    #[arg(long, default_value_t = 1)]
    subscribers: u32,
    /// Msgs/s per publisher; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed loop: outstanding per publisher (QoS 1/2) or messages per flush (QoS 0).
    #[arg(long, default_value_t = 16)]
    window: u32,
    /// Publish each message to <--target-prefix><k>, k a pseudo-random one of N topics, instead
    /// of bench/fanin/<publisher> (e.g. to fill N offline sessions made with `idle`).
    #[arg(long)]
    target_topics: Option<u32>,
    #[arg(long, default_value = "bench/idle/")]
    target_prefix: String,
}

#[derive(Args, Debug, Clone, Serialize)]
struct FanOut {
    #[arg(long, default_value_t = 1000)]
    subscribers: u32,
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 16)]
    window: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
struct Pairs {
    #[arg(long, default_value_t = 1000)]
    pairs: u32,
    /// Msgs/s per publishing device; 0 = closed loop.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    #[arg(long, default_value_t = 16)]
    window: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
struct Idle {
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Seconds to hold the connections (default: --duration).
    #[arg(long)]
    hold: Option<f64>,
    /// Topic index of the first device: device i subscribes bench/idle/<first + i> (to make
    /// many sessions in batches).
    #[arg(long, default_value_t = 0)]
    first: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
struct Storm {
    #[arg(long, default_value_t = 1000)]
    devices: u32,
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::FanIn(_) => "fan-in",
            Scenario::FanOut(_) => "fan-out",
            Scenario::Pairs(_) => "pairs",
            Scenario::Idle(_) => "idle",
            Scenario::ConnectStorm(_) => "connect-storm",
            Scenario::SessionChurn(_) => "session-churn",
            Scenario::Retained(_) => "retained",
        }
    }

    /// --qos, or the scenario's default.
    fn qos(&self, g: &Global) -> u8 {
        g.qos.unwrap_or(match self {
            Scenario::SessionChurn(_) | Scenario::Retained(_) => 1,
            _ => 0,
        })
    }

    fn churn(&self) -> Option<ChurnCfg> {
        match self {
            Scenario::SessionChurn(s) => Some(ChurnCfg {
                devices: s.devices,
                plan: churn::ChurnPlan {
                    online_ns: (s.online_secs.max(0.001) * 1e9) as u64,
                    offline_ns: (s.offline_secs.max(0.0) * 1e9) as u64,
                },
            }),
            _ => None,
        }
    }

    fn devices(&self) -> u64 {
        match self {
            Scenario::FanIn(s) => s.publishers as u64 + s.subscribers as u64,
            Scenario::FanOut(s) => s.publishers as u64 + s.subscribers as u64,
            Scenario::Pairs(s) => 2 * s.pairs as u64,
            Scenario::Idle(s) => s.devices as u64,
            Scenario::ConnectStorm(s) => s.devices as u64,
            Scenario::SessionChurn(s) => s.devices as u64 + s.publishers as u64,
            Scenario::Retained(s) => s.subscribers as u64 + 1,
        }
    }

    fn publishers(&self) -> u64 {
        match self {
            Scenario::FanIn(s) => s.publishers as u64,
            Scenario::FanOut(s) => s.publishers as u64,
            Scenario::Pairs(s) => s.pairs as u64,
            Scenario::SessionChurn(s) => s.publishers as u64,
            _ => 0,
        }
    }

    fn rate_window(&self) -> (f64, u32) {
        match self {
            Scenario::FanIn(s) => (s.rate, s.window),
            Scenario::FanOut(s) => (s.rate, s.window),
            Scenario::Pairs(s) => (s.rate, s.window),
            Scenario::SessionChurn(s) => (s.rate, 1),
            _ => (0.0, 1),
        }
    }

    /// The device with global index `g`. Subscribers come first so they connect first.
    fn spec(&self, g: u32) -> DevSpec {
        let mk = |role, id, topic: String, base, count| DevSpec {
            global: g,
            role,
            id,
            topic,
            pub_base: base,
            pub_count: count,
        };
        match self {
            Scenario::FanIn(s) => {
                if g < s.subscribers {
                    mk(Role::Sub, 0, "bench/fanin/#".into(), 0, s.publishers)
                } else {
                    let id = g - s.subscribers;
                    mk(Role::Pub, id, format!("bench/fanin/{id}"), 0, 0)
                }
            }
            Scenario::FanOut(s) => {
                if g < s.subscribers {
                    mk(Role::Sub, 0, "bench/fanout".into(), 0, s.publishers)
                } else {
                    mk(Role::Pub, g - s.subscribers, "bench/fanout".into(), 0, 0)
                }
            }
            Scenario::Pairs(s) => {
                if g < s.pairs {
                    mk(Role::Sub, 0, format!("bench/pairs/{g}/cmd"), g, 1)
                } else {
                    let id = g - s.pairs;
                    mk(Role::Pub, id, format!("bench/pairs/{id}/cmd"), 0, 0)
                }
            }
            Scenario::Idle(s) => mk(Role::Sub, 0, format!("bench/idle/{}", s.first + g), 0, 0),
            Scenario::ConnectStorm(_) => mk(Role::Plain, 0, String::new(), 0, 0),
            Scenario::SessionChurn(s) => {
                if g < s.devices {
                    mk(Role::Sub, 0, format!("bench/churn/{g}"), 0, s.publishers)
                } else {
                    // Topic unused: each message picks a device topic.
                    mk(Role::Pub, g - s.devices, String::new(), 0, 0)
                }
            }
            Scenario::Retained(_) => mk(Role::Plain, 0, String::new(), 0, 0),
        }
    }

    /// Deliveries the subscribers should see, given what was sent.
    fn expected(&self, sent: u64, subs_up: u64) -> u64 {
        match self {
            Scenario::FanIn(_) | Scenario::FanOut(_) => sent * subs_up,
            Scenario::Pairs(_) | Scenario::SessionChurn(_) => sent,
            Scenario::Retained(r) => r.topics as u64 * r.subscribers as u64,
            _ => 0,
        }
    }

    fn has_traffic(&self) -> bool {
        self.publishers() > 0
    }
}

// ------------------------------------------------------------------------- in-process run

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Status {
    ready: bool,
    up: u64,
    subs_up: u64,
    sent: u64,
    recv: u64,
    unique: u64,
    errors: u64,
    inflight: u64,
}

impl Status {
    fn add(&mut self, o: &Status) {
        self.up += o.up;
        self.subs_up += o.subs_up;
        self.sent += o.sent;
        self.recv += o.recv;
        self.unique += o.unique;
        self.errors += o.errors;
        self.inflight += o.inflight;
    }
}

/// What one process reports at the end.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct ProcResult {
    counters: Counters,
    latency_b64: String,
    #[serde(default)]
    puback_b64: String,
    connack_b64: String,
    queued_b64: String,
    reconnack_b64: String,
    cpu_ticks_base: u64,
    cpu_ticks_go: u64,
    cpu_ticks_end: u64,
    t_base: u64,
    t_go: u64,
    t_end: u64,
    rss_kb_base: u64,
    rss_kb_go: u64,
    rss_kb_end: u64,
    first_error: Option<String>,
}

struct LocalRun {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<ExecResult>>,
    samples: ProcResult,
}

fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| format!("--cpus {s:?}: {e}"))
        })
        .collect()
}

fn parse_ip_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|e| format!("--source-ips {s:?}: {e}"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|e| format!("--source-ips {s:?}: {e}"))?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a {
        return Err(format!("--source-ips {s:?}: end before start"));
    }
    Ok((a, b - a + 1))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddrV4, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .find_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            _ => None,
        })
        .ok_or_else(|| format!("{host}: no IPv4 address"))
}

impl LocalRun {
    fn start(cli: &Cli, t0: u64, tag: &str) -> Result<LocalRun, String> {
        let g = &cli.g;
        let procs = g.worker_count.max(1) as u64;
        let pidx = g.worker_index.unwrap_or(0) as u64;
        let threads = g.threads.max(1);
        let cpus = match &g.cpus {
            Some(s) => parse_cpus(s)?,
            None => Vec::new(),
        };
        let (rate, window) = cli.scenario.rate_window();
        let duration = match &cli.scenario {
            Scenario::Idle(i) => i.hold.unwrap_or(g.duration),
            Scenario::ConnectStorm(_) => 0.0,
            _ => g.duration,
        };
        let version = if g.mqtt_version == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let cfg = Arc::new(RunCfg {
            addr: resolve(&g.host, g.port)?,
            source_ips: g.source_ips.as_deref().map(parse_ip_range).transpose()?,
            version,
            qos: QoS::from_u8(cli.scenario.qos(g)).unwrap_or_default(),
            payload: g.payload,
            keep_alive: g.keep_alive,
            connect_rate: g.connect_rate / (threads as f64 * procs as f64),
            ramp_start_ns: t0,
            ramp_deadline_ns: t0 + (g.ramp_up * 1e9) as u64,
            duration_ns: (duration * 1e9) as u64,
            rate,
            window,
            client_prefix: format!("lg{tag}-"),
            total_pubs: cli.scenario.publishers(),
            churn: cli.scenario.churn(),
            persistent_subs: g.persistent_subscribers,
            session_expiry: g.session_expiry,
            targets: match &cli.scenario {
                Scenario::FanIn(f) => f.target_topics.map(|n| (f.target_prefix.clone(), n)),
                _ => None,
            },
        });
        // Device g goes to process g % P, then executor (g / P) % T.
        let total = cli.scenario.devices();
        let mut per_exec: Vec<Vec<DevSpec>> = vec![Vec::new(); threads];
        let mut gi = pidx;
        while gi < total {
            let e = ((gi / procs) % threads as u64) as usize;
            per_exec[e].push(cli.scenario.spec(gi as u32));
            gi += procs;
        }
        let mine: u64 = per_exec.iter().map(|v| v.len() as u64).sum();
        let limit = sys::raise_nofile();
        if mine + 100 > limit {
            return Err(format!(
                "this process would hold {mine} connections but may open only {limit} files \
                 (hard limit); use --processes {} (or more) to split the devices over processes",
                mine.div_ceil(limit.saturating_sub(100).max(1))
                    .max(procs + 1)
            ));
        }
        let shared = Arc::new(Shared::new(threads));
        let mut handles = Vec::new();
        for (e, specs) in per_exec.into_iter().enumerate() {
            let cfg = cfg.clone();
            let sh = shared.clone();
            let cpu = if cpus.is_empty() {
                None
            } else {
                // Workers continue the round-robin where the previous process stopped.
                Some(cpus[(pidx as usize * threads + e) % cpus.len()])
            };
            let h = std::thread::Builder::new()
                .name(format!("lg-exec-{e}"))
                .spawn(move || {
                    if let Some(c) = cpu {
                        if let Err(err) = sys::pin_to_cpu(c) {
                            eprintln!("warning: cannot pin executor {e} to cpu {c}: {err}");
                        }
                    }
                    Exec::new(cfg, e, sh, specs).run()
                })
                .map_err(|e| format!("spawn executor: {e}"))?;
            handles.push(h);
        }
        while shared.inited.load(Relaxed) < threads {
            std::thread::sleep(Duration::from_micros(200));
        }
        let samples = ProcResult {
            cpu_ticks_base: sys::proc_cpu_ticks(None).unwrap_or(0),
            t_base: now_ns(),
            rss_kb_base: sys::proc_rss_kb(None).unwrap_or(0),
            ..Default::default()
        };
        shared.start.store(true, Relaxed);
        Ok(LocalRun {
            shared,
            threads: handles,
            samples,
        })
    }

    fn status(&self) -> Status {
        let mut s = Status {
            ready: self.shared.ready.load(Relaxed) == self.threads.len(),
            ..Default::default()
        };
        for l in &self.shared.live {
            s.add(&Status {
                ready: false,
                up: l.up.load(Relaxed),
                subs_up: l.subs_up.load(Relaxed),
                sent: l.sent.load(Relaxed),
                recv: l.recv.load(Relaxed),
                unique: l.unique.load(Relaxed),
                errors: l.errors.load(Relaxed),
                inflight: l.inflight.load(Relaxed),
            });
        }
        s
    }

    fn first_error(&self) -> Option<String> {
        self.shared.first_error.lock().unwrap().clone()
    }

    fn go(&mut self, t: u64) {
        self.samples.cpu_ticks_go = sys::proc_cpu_ticks(None).unwrap_or(0);
        self.samples.rss_kb_go = sys::proc_rss_kb(None).unwrap_or(0);
        self.samples.t_go = now_ns();
        self.shared.go_ns.store(t, Relaxed);
    }

    fn window_end(&mut self) {
        self.samples.cpu_ticks_end = sys::proc_cpu_ticks(None).unwrap_or(0);
        self.samples.rss_kb_end = sys::proc_rss_kb(None).unwrap_or(0);
        self.samples.t_end = now_ns();
    }

    fn end(&self) {
        self.shared.end.store(true, Relaxed);
    }

    fn collect(self) -> ProcResult {
        let mut c = Counters::default();
        let mut lat = new_hist();
        let mut pa = new_hist();
        let mut ca = new_hist();
        let mut q = new_hist();
        let mut rca = new_hist();
        for h in self.threads {
            match h.join() {
                Ok(r) => {
                    c.merge(&r.counters);
                    merge_into(&mut lat, &r.latency);
                    merge_into(&mut pa, &r.puback);
                    merge_into(&mut ca, &r.connack);
                    merge_into(&mut q, &r.queued);
                    merge_into(&mut rca, &r.reconnack);
                }
                Err(_) => eprintln!("error: an executor thread panicked"),
            }
        }
        let first_error = self.shared.first_error.lock().unwrap().clone();
        ProcResult {
            counters: c,
            latency_b64: hist_to_b64(&lat),
            puback_b64: hist_to_b64(&pa),
            connack_b64: hist_to_b64(&ca),
            queued_b64: hist_to_b64(&q),
            reconnack_b64: hist_to_b64(&rca),
            first_error,
            ..self.samples
        }
    }
}

// ------------------------------------------------------------------------- worker processes

/// Worker side: run the executors, relay status on stdout, obey "go T" / "wend" / "end".
fn worker_main(cli: Cli) -> i32 {
    let tag = cli.g.run_tag.clone().unwrap_or_else(|| "w".into());
    let t0 = if cli.g.worker_t0 != 0 {
        cli.g.worker_t0
    } else {
        now_ns()
    };
    let run = match LocalRun::start(&cli, t0, &tag) {
        Ok(r) => Arc::new(Mutex::new(Some(r))),
        Err(e) => {
            println!("fatal {e}");
            return 1;
        }
    };
    let r2 = run.clone();
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended2 = ended.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let mut g = r2.lock().unwrap();
            let Some(r) = g.as_mut() else { break };
            let mut it = line.split_whitespace();
            match it.next() {
                Some("go") => {
                    let t = it
                        .next()
                        .and_then(|x| x.parse().ok())
                        .unwrap_or_else(now_ns);
                    r.go(t);
                }
                Some("wend") => r.window_end(),
                Some("end") => {
                    r.end();
                    ended2.store(true, Relaxed);
                    break;
                }
                _ => {}
            }
        }
        // Parent gone or said end.
        if let Some(r) = r2.lock().unwrap().as_ref() {
            r.end();
        }
        ended2.store(true, Relaxed);
    });
    let mut out = std::io::stdout();
    let mut sent_error = false;
    while !ended.load(Relaxed) {
        {
            let g = run.lock().unwrap();
            let r = g.as_ref().unwrap();
            let st = r.status();
            if !sent_error {
                if let Some(e) = r.first_error() {
                    let _ = writeln!(out, "error {}", e.replace('\n', " "));
                    sent_error = true;
                }
            }
            let _ = writeln!(
                out,
                "status {}",
                serde_json::to_string(&st).unwrap_or_default()
            );
            let _ = out.flush();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = run.lock().unwrap().take().unwrap();
    let res = r.collect();
    let _ = writeln!(
        out,
        "result {}",
        serde_json::to_string(&res).unwrap_or_default()
    );
    let _ = out.flush();
    0
}

#[derive(Default)]
struct WorkerState {
    status: Status,
    error: Option<String>,
    fatal: Option<String>,
    result: Option<ProcResult>,
    exited: bool,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    state: Arc<Mutex<WorkerState>>,
    reader: Option<JoinHandle<()>>,
}

enum Backend {
    Local(Box<LocalRun>),
    Procs(Vec<Worker>),
}

impl Backend {
    fn start(cli: &Cli, t0: u64, tag: &str) -> Result<Backend, String> {
        if cli.g.processes <= 1 {
            return Ok(Backend::Local(Box::new(LocalRun::start(cli, t0, tag)?)));
        }
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut workers = Vec::new();
        for i in 0..cli.g.processes {
            let mut child = Command::new(&exe)
                .arg("--worker-index")
                .arg(i.to_string())
                .arg("--worker-count")
                .arg(cli.g.processes.to_string())
                .arg("--run-tag")
                .arg(tag)
                .arg("--worker-t0")
                .arg(t0.to_string())
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            let stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            let state = Arc::new(Mutex::new(WorkerState::default()));
            let st2 = state.clone();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
                    let mut s = st2.lock().unwrap();
                    match kind {
                        "status" => {
                            if let Ok(v) = serde_json::from_str(rest) {
                                s.status = v;
                            }
                        }
                        "error" => s.error = Some(rest.to_string()),
                        "fatal" => s.fatal = Some(rest.to_string()),
                        "result" => match serde_json::from_str(rest) {
                            Ok(r) => s.result = Some(r),
                            Err(e) => s.fatal = Some(format!("bad worker result: {e}")),
                        },
                        _ => {}
                    }
                }
                st2.lock().unwrap().exited = true;
            });
            workers.push(Worker {
                child,
                stdin,
                state,
                reader: Some(reader),
            });
        }
        Ok(Backend::Procs(workers))
    }

    fn status(&self) -> Result<Status, String> {
        match self {
            Backend::Local(l) => Ok(l.status()),
            Backend::Procs(ws) => {
                let mut s = Status {
                    ready: true,
                    ..Default::default()
                };
                for w in ws {
                    let st = w.state.lock().unwrap();
                    if let Some(f) = &st.fatal {
                        return Err(f.clone());
                    }
                    if st.exited && st.result.is_none() {
                        return Err("a worker process exited early".into());
                    }
                    s.ready &= st.status.ready;
                    s.add(&st.status);
                }
                Ok(s)
            }
        }
    }

    fn first_error(&self) -> Option<String> {
        match self {
            Backend::Local(l) => l.first_error(),
            Backend::Procs(ws) => ws
                .iter()
                .find_map(|w| w.state.lock().unwrap().error.clone()),
        }
    }

    fn send(&mut self, line: &str) {
        if let Backend::Procs(ws) = self {
            for w in ws {
                let _ = writeln!(w.stdin, "{line}");
                let _ = w.stdin.flush();
            }
        }
    }

    fn go(&mut self, t: u64) {
        match self {
            Backend::Local(l) => l.go(t),
            Backend::Procs(_) => self.send(&format!("go {t}")),
        }
    }

    fn window_end(&mut self) {
        match self {
            Backend::Local(l) => l.window_end(),
            Backend::Procs(_) => self.send("wend"),
        }
    }

    fn end(&mut self) {
        match self {
            Backend::Local(l) => l.end(),
            Backend::Procs(_) => self.send("end"),
        }
    }

    fn collect(self) -> Result<Vec<ProcResult>, String> {
        match self {
            Backend::Local(l) => Ok(vec![l.collect()]),
            Backend::Procs(ws) => {
                let mut out = Vec::new();
                for mut w in ws {
                    if let Some(r) = w.reader.take() {
                        let _ = r.join();
                    }
                    let _ = w.child.wait();
                    let mut st = w.state.lock().unwrap();
                    match st.result.take() {
                        Some(r) => out.push(r),
                        None => {
                            return Err(st
                                .fatal
                                .clone()
                                .unwrap_or_else(|| "a worker produced no result".into()))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

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
        version: if g.mqtt_version == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
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

// ------------------------------------------------------------------------- output

#[derive(Serialize)]
struct LoadgenJson {
    cpu_pct: f64,
    rss_kb: u64,
    rss_bytes_per_device: f64,
    processes: usize,
}

#[derive(Serialize)]
struct BrokerJson {
    pid: u32,
    cpu_pct: f64,
    rss_kb_before_connect: u64,
    rss_kb_start: u64,
    rss_kb_end: u64,
    rss_bytes_per_connection: f64,
}

#[derive(Serialize)]
struct ChurnJson {
    reconnects: u64,
    reconnects_per_s: f64,
    /// Reconnects whose CONNACK had session present 0 (also counted in errors).
    session_present_failures: u64,
    reconnect_connack_us: Summary,
    /// Deliveries published while their device was offline (latency includes the queueing).
    queued_deliveries: u64,
    queued_latency_us: Summary,
    queued_histogram_b64: String,
}

#[derive(Serialize)]
struct ResultJson {
    scenario: String,
    args: serde_json::Value,
    connections: u64,
    devices: u64,
    duration_s: f64,
    sent: u64,
    received: u64,
    received_in_window: u64,
    sent_per_s: f64,
    received_per_s: f64,
    expected: u64,
    lost: u64,
    duplicates: u64,
    errors: u64,
    /// Deliveries stamped before this run started (an earlier run's backlog), ignored.
    stale: u64,
    first_error: Option<String>,
    latency_us: Summary,
    /// QoS 1/2 publishes acknowledged (PUBACK / PUBREC), all and in the measurement window.
    acked: u64,
    acked_per_s: f64,
    /// Publisher side: PUBLISH (stamped time; intended time in open loop) to PUBACK (QoS 1) /
    /// PUBREC (QoS 2).
    puback_us: Summary,
    puback_histogram_b64: String,
    connack_us: Summary,
    connect_per_s: f64,
    ramp_up_s: f64,
    loadgen: LoadgenJson,
    broker: Option<BrokerJson>,
    histogram_b64: String,
    connack_histogram_b64: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    churn: Option<ChurnJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retained: Option<retained::RetainedJson>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn build_result(
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
    let expected = cli.scenario.expected(c.sent, c.subs_connected);
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
    let _ = o.t0;
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
            puback_us: summarize(&pa),
            puback_histogram_b64: hist_to_b64(&pa),
            connack_us: summarize(&ca),
            connect_per_s: if ramp_s > 0.0 {
                round2(c.connected as f64 / ramp_s)
            } else {
                0.0
            },
            ramp_up_s: round2(ramp_s * 1000.0) / 1000.0,
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

fn print_summary(r: &ResultJson) {
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

fn main() {
    let cli = Cli::parse();
    if cli.g.worker_index.is_some() {
        std::process::exit(worker_main(cli));
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
