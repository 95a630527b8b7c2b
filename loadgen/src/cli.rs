//! The command line: options shared by every scenario, and each scenario's own.

use crate::*;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    name = "ringmq-loadgen",
    version,
    about = "MQTT load generator and device simulator (fan-in, fan-out, pairs, idle, connect-storm, session-churn, retained, backlog)"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) g: Global,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Global {
    /// Broker host (IPv4 address or name).
    #[arg(long, default_value = "127.0.0.1", global = true)]
    pub(crate) host: String,
    #[arg(long, default_value_t = 1883, global = true)]
    pub(crate) port: u16,
    /// Executors (event-loop threads) in this process.
    #[arg(long, default_value_t = 1, global = true)]
    pub(crate) threads: usize,
    /// Pin executors to these cpus, e.g. "1" or "0,1" (round-robin); default: no pinning.
    #[arg(long, global = true)]
    pub(crate) cpus: Option<String>,
    /// Split devices over N worker processes (each with --threads executors).
    #[arg(long, default_value_t = 1, global = true)]
    pub(crate) processes: usize,
    /// Bind connections' source addresses round-robin over this range, e.g. 127.0.0.2-127.0.0.65.
    #[arg(long, global = true)]
    pub(crate) source_ips: Option<String>,
    /// 3 (= 3.1.1) or 5.
    #[arg(long, default_value_t = 3, global = true, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub(crate) mqtt_version: u8,
    /// Publish and subscribe QoS (default 0; session-churn and retained: 1).
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: Option<u8>,
    /// Payload size in bytes (>= 16: timestamp, publisher id, sequence).
    #[arg(long, default_value_t = 64, global = true)]
    pub(crate) payload: usize,
    /// Measurement duration in seconds, after ramp-up.
    #[arg(long, default_value_t = 10.0, global = true)]
    pub(crate) duration: f64,
    /// Limit of the connect phase in seconds.
    #[arg(long, default_value_t = 10.0, global = true)]
    pub(crate) ramp_up: f64,
    /// Max new connections per second (total over all executors and processes).
    #[arg(long, default_value_t = 5000.0, global = true)]
    pub(crate) connect_rate: f64,
    #[arg(long, default_value_t = 60, global = true)]
    pub(crate) keep_alive: u16,
    /// Bounded wait in seconds for in-flight deliveries after publishing stops.
    #[arg(long, default_value_t = 2.0, global = true)]
    pub(crate) drain: f64,
    /// Write the full result as JSON to FILE.
    #[arg(long, global = true)]
    pub(crate) json: Option<String>,
    /// Write a latency percentile plot (SVG) to FILE.
    #[arg(long, global = true)]
    pub(crate) plot: Option<String>,
    /// Sample this broker process's RSS and CPU.
    #[arg(long, global = true)]
    pub(crate) broker_pid: Option<u32>,
    /// No live progress line.
    #[arg(long, global = true)]
    pub(crate) quiet: bool,
    /// Subscribers keep persistent sessions (3.1.1: Clean Session 0; MQTT 5: Session Expiry
    /// Interval --session-expiry), so a durable broker journals their QoS 1/2 deliveries.
    #[arg(long, global = true)]
    pub(crate) persistent_subscribers: bool,
    /// MQTT 5 Session Expiry Interval in seconds of --persistent-subscribers.
    #[arg(long, default_value_t = 86400, global = true)]
    pub(crate) session_expiry: u32,
    /// Connect over TLS (the broker's mqtts:// listener at --port).
    #[arg(long, global = true)]
    pub(crate) tls: bool,
    /// PEM CA file the broker's certificate is verified against (with --tls).
    #[arg(long, global = true)]
    pub(crate) tls_ca: Option<String>,
    /// PEM client certificate and key every device presents (with --tls).
    #[arg(long, global = true, requires = "tls_key")]
    pub(crate) tls_cert: Option<String>,
    #[arg(long, global = true, requires = "tls_cert")]
    pub(crate) tls_key: Option<String>,
    /// Server name the devices ask for and verify (with --tls).
    #[arg(long, default_value = "localhost", global = true)]
    pub(crate) tls_server_name: String,
    /// TLS session resumption: every device of an executor may resume a session (ticket) an
    /// earlier connection got; false makes every handshake a full one.
    #[arg(long, default_value_t = true, global = true, action = clap::ArgAction::Set)]
    pub(crate) tls_resume: bool,
    /// MQTT over WebSocket (the broker's ws:// listener at --port; with --tls, wss://).
    #[arg(long, global = true)]
    pub(crate) ws: bool,
    /// The request path of the WebSocket upgrade (with --ws).
    #[arg(long, default_value = "/mqtt", global = true)]
    pub(crate) ws_path: String,
    /// Username (and --password) in every CONNECT.
    #[arg(long, global = true)]
    pub(crate) username: Option<String>,
    #[arg(long, global = true)]
    pub(crate) password: Option<String>,
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub(crate) worker_index: Option<usize>,
    #[arg(long, hide = true, default_value_t = 1)]
    #[serde(skip)]
    pub(crate) worker_count: usize,
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub(crate) run_tag: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    #[serde(skip)]
    pub(crate) worker_t0: u64,
}

#[derive(Subcommand, Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Scenario {
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
    /// Queue M QoS 1 messages for one offline persistent subscriber, read the broker's
    /// RssAnon (--broker-pid), then time the subscriber draining them in order.
    Backlog(Backlog),
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Backlog {
    #[arg(long, default_value_t = 100_000)]
    pub(crate) messages: u32,
    /// Unacknowledged publishes in flight.
    #[arg(long, default_value_t = 1000)]
    pub(crate) window: usize,
    /// After queueing, wait until FILE exists before draining (restart the broker meanwhile;
    /// a pid written in FILE is the broker to sample from then on).
    #[arg(long)]
    pub(crate) pause_until: Option<String>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Churn {
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: u32,
    #[arg(long, default_value_t = 10)]
    publishers: u32,
    /// Msgs/s per publisher (open loop, > 0).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Seconds each device stays disconnected per cycle.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) offline_secs: f64,
    /// Seconds each device stays connected per cycle.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) online_secs: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Retained {
    #[arg(long, default_value_t = 10000)]
    pub(crate) topics: u32,
    #[arg(long, default_value_t = 10)]
    pub(crate) subscribers: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct FanIn {
    #[arg(long, default_value_t = 1000)]
    publishers: u32,
    #[arg(long, default_value_t = 1)]
    pub(crate) subscribers: u32,
    /// Msgs/s per publisher; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Closed loop: outstanding per publisher (QoS 1/2) or messages per flush (QoS 0).
    #[arg(long, default_value_t = 16)]
    pub(crate) window: u32,
    /// QoS 0 closed loop: each publisher keeps at most --window messages that no subscriber has
    /// received yet, like devices whose sending follows what arrives rather than a flood. A
    /// message the broker dropped counts as done once a later one of its publisher arrives; a
    /// window with no receipt for 1 s is released. One process only (--processes 1).
    #[arg(long)]
    pub(crate) end_to_end: bool,
    /// Publish each message to <--target-prefix><k>, k a pseudo-random one of N topics, instead
    /// of bench/fanin/<publisher> (e.g. to fill N offline sessions made with `idle`).
    #[arg(long)]
    pub(crate) target_topics: Option<u32>,
    #[arg(long, default_value = "bench/idle/")]
    pub(crate) target_prefix: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct FanOut {
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: u32,
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    #[arg(long, default_value_t = 16)]
    pub(crate) window: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Pairs {
    #[arg(long, default_value_t = 1000)]
    pub(crate) pairs: u32,
    /// Msgs/s per publishing device; 0 = closed loop.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate: f64,
    #[arg(long, default_value_t = 16)]
    pub(crate) window: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Idle {
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: u32,
    /// Seconds to hold the connections (default: --duration).
    #[arg(long)]
    pub(crate) hold: Option<f64>,
    /// Topic index of the first device: device i subscribes bench/idle/<first + i> (to make
    /// many sessions in batches).
    #[arg(long, default_value_t = 0)]
    pub(crate) first: u32,
}

#[derive(Args, Debug, Clone, Serialize)]
pub(crate) struct Storm {
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: u32,
    /// Connect every device once and disconnect it before the measured storm, whose figures
    /// (connects/s, CONNACK times, connect_start_s) are then those of the second round: with
    /// --tls, each device resumes the session (ticket) its first connection got.
    #[arg(long)]
    pub(crate) warm_up: bool,
}

impl Global {
    /// --mqtt-version: 5, or 3.1.1 for anything else.
    pub(crate) fn version(&self) -> ringmq_codec::ProtocolVersion {
        if self.mqtt_version == 5 {
            ringmq_codec::ProtocolVersion::V5
        } else {
            ringmq_codec::ProtocolVersion::V311
        }
    }
}

impl Scenario {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Scenario::FanIn(_) => "fan-in",
            Scenario::FanOut(_) => "fan-out",
            Scenario::Pairs(_) => "pairs",
            Scenario::Idle(_) => "idle",
            Scenario::ConnectStorm(_) => "connect-storm",
            Scenario::SessionChurn(_) => "session-churn",
            Scenario::Retained(_) => "retained",
            Scenario::Backlog(_) => "backlog",
        }
    }

    /// --qos, or the scenario's default.
    pub(crate) fn qos(&self, g: &Global) -> u8 {
        g.qos.unwrap_or(match self {
            Scenario::SessionChurn(_) | Scenario::Retained(_) | Scenario::Backlog(_) => 1,
            _ => 0,
        })
    }

    pub(crate) fn churn(&self) -> Option<ChurnCfg> {
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

    pub(crate) fn devices(&self) -> u64 {
        match self {
            Scenario::FanIn(s) => s.publishers as u64 + s.subscribers as u64,
            Scenario::FanOut(s) => s.publishers as u64 + s.subscribers as u64,
            Scenario::Pairs(s) => 2 * s.pairs as u64,
            Scenario::Idle(s) => s.devices as u64,
            Scenario::ConnectStorm(s) => s.devices as u64,
            Scenario::SessionChurn(s) => s.devices as u64 + s.publishers as u64,
            Scenario::Retained(s) => s.subscribers as u64 + 1,
            Scenario::Backlog(_) => 2,
        }
    }

    /// Fan-in with an end-to-end window (`--end-to-end`).
    pub(crate) fn end_to_end(&self) -> bool {
        matches!(self, Scenario::FanIn(s) if s.end_to_end)
    }

    pub(crate) fn publishers(&self) -> u64 {
        match self {
            Scenario::FanIn(s) => s.publishers as u64,
            Scenario::FanOut(s) => s.publishers as u64,
            Scenario::Pairs(s) => s.pairs as u64,
            Scenario::SessionChurn(s) => s.publishers as u64,
            _ => 0,
        }
    }

    pub(crate) fn rate_window(&self) -> (f64, u32) {
        match self {
            Scenario::FanIn(s) => (s.rate, s.window),
            Scenario::FanOut(s) => (s.rate, s.window),
            Scenario::Pairs(s) => (s.rate, s.window),
            Scenario::SessionChurn(s) => (s.rate, 1),
            _ => (0.0, 1),
        }
    }

    /// The device with global index `g`. Subscribers come first so they connect first.
    pub(crate) fn spec(&self, g: u32) -> DevSpec {
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
            Scenario::Retained(_) | Scenario::Backlog(_) => mk(Role::Plain, 0, String::new(), 0, 0),
        }
    }

    /// Deliveries the subscribers should see, given what was sent.
    pub(crate) fn expected(&self, sent: u64, subs_up: u64) -> u64 {
        match self {
            Scenario::FanIn(_) | Scenario::FanOut(_) => sent * subs_up,
            Scenario::Pairs(_) | Scenario::SessionChurn(_) => sent,
            Scenario::Retained(r) => r.topics as u64 * r.subscribers as u64,
            _ => 0,
        }
    }

    pub(crate) fn has_traffic(&self) -> bool {
        self.publishers() > 0
    }
}
