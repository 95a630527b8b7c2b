//! `ringmq`: resolve the configuration (flags > environment > file > defaults, see
//! [`config`]), prepare the process (open-file limit, data directory, logging), then
//! hand over to the shard runtime, which runs one pinned executor per core until the end.

mod config;

use clap::{CommandFactory, Parser};
use config::{ConfigError, LogFormat, Settings};
use ringmq_shard::Config;
use std::path::PathBuf;
use std::time::Duration;

/// Thread-per-core MQTT 3.1/3.1.1/5.0 broker on io_uring.
#[derive(Parser, Debug)]
#[command(name = "ringmq", version, about, long_about = None, max_term_width = 100)]
#[command(
    after_help = "Every option can also be set in a TOML file (--config; key = option \
name with '-' -> '_') or an environment variable RINGMQ_<KEY> (e.g. RINGMQ_MAX_INFLIGHT=64; \
RINGMQ_LISTEN is comma-separated). Precedence: flags > environment > file > defaults."
)]
struct Args {
    /// TOML configuration file (keys are the option names with '-' -> '_'); also from
    /// RINGMQ_CONFIG.
    #[arg(long, value_name = "FILE", env = "RINGMQ_CONFIG")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML (a valid --config file) and exit.
    #[arg(long)]
    print_config: bool,

    /// Address to accept MQTT connections on (repeatable). Every shard listens on each with
    /// SO_REUSEPORT. [default: 0.0.0.0:1883]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,

    /// Number of shards (1 to 256): one pinned executor thread each [default: number of cores].
    #[arg(long, value_name = "N")]
    shards: Option<String>,

    /// Directory for the broker's data. [default: ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,

    /// Largest number of client connections held at once; more are refused at accept.
    /// [default: 1000000]
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,

    /// Largest MQTT packet accepted from a client, in bytes (64 to 268435460), fixed header
    /// included (advertised to MQTT 5 clients as Maximum Packet Size). Larger packets close the
    /// connection (MQTT 5: 0x95). [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<String>,

    /// Unacknowledged QoS 1/2 PUBLISHes per client in each direction, 1 to 65535 (advertised to
    /// MQTT 5 clients as Receive Maximum; a client's smaller Receive Maximum wins for delivery).
    /// [default: 32]
    #[arg(long, value_name = "N")]
    max_inflight: Option<String>,

    /// QoS 1/2 messages queued per session behind a full inflight window or while a persistent
    /// session is offline; further messages for it are dropped and counted. [default: 1000]
    #[arg(long, value_name = "N")]
    max_queued_messages: Option<String>,

    /// Bytes of unwritten output per connection above which QoS 0 messages to it are dropped.
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    max_outgoing_bytes: Option<String>,

    /// Seconds (1 to 3600) a new connection has to send a complete CONNECT before it is closed.
    /// [default: 10]
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<String>,

    /// Keep-alive in seconds imposed on clients that ask for 0 (sent to MQTT 5 clients as Server
    /// Keep Alive); 0 imposes none. [default: 60]
    #[arg(long, value_name = "SECS")]
    default_keep_alive: Option<String>,

    /// Largest keep-alive in seconds (1 to 65535) a client may use; larger requests are lowered
    /// to it. [default: 65535]
    #[arg(long, value_name = "SECS")]
    max_keep_alive: Option<String>,

    /// Largest number of levels in a topic name or filter. [default: 128]
    #[arg(long, value_name = "N")]
    max_topic_levels: Option<String>,

    /// Largest number of subscriptions one session may hold. [default: 1000]
    #[arg(long, value_name = "N")]
    max_subscriptions_per_client: Option<String>,

    /// Address of the HTTP endpoint serving Prometheus metrics (GET /metrics) and health
    /// (GET /healthz), on shard 0; `none` disables it. [default: 127.0.0.1:9883]
    #[arg(long, value_name = "ADDR:PORT|none")]
    metrics_addr: Option<String>,

    /// Highest QoS accepted (0 to 2), advertised to MQTT 5 clients as Maximum QoS; subscriptions
    /// are granted at most this, a PUBLISH above it closes the connection (MQTT 5: 0x9B).
    /// [default: 2]
    #[arg(long, value_name = "QOS")]
    max_qos: Option<String>,

    /// Whether retained messages are supported (Retain Available); when false a PUBLISH with
    /// RETAIN closes the connection (MQTT 5: 0x9A). [default: true]
    #[arg(long, value_name = "true|false")]
    retain_available: Option<String>,

    /// Whether filters with + or # are accepted (Wildcard Subscription Available); when false
    /// they get SUBACK 0xA2. [default: true]
    #[arg(long, value_name = "true|false")]
    wildcard_subscriptions: Option<String>,

    /// Whether Subscription Identifiers are accepted (Subscription Identifiers Available).
    /// [default: true]
    #[arg(long, value_name = "true|false")]
    subscription_identifiers: Option<String>,

    /// Whether $share/{group}/{filter} subscriptions are accepted (Shared Subscription
    /// Available); when false they get SUBACK 0x9E. [default: true]
    #[arg(long, value_name = "true|false")]
    shared_subscriptions: Option<String>,

    /// Topic aliases an MQTT 5 client may set per connection (Topic Alias Maximum, 0 to
    /// 65535); 0 refuses aliases. [default: 64]
    #[arg(long, value_name = "N")]
    topic_alias_maximum: Option<String>,

    /// Largest Session Expiry Interval granted, in seconds; larger requests are lowered to it and
    /// the client is told in CONNACK. 4294967295 = sessions may never expire.
    /// [default: 4294967295]
    #[arg(long, value_name = "SECS")]
    max_session_expiry: Option<String>,

    /// Redirect every client: MQTT 5 clients get CONNACK 0x9C Use another server (0x9D Server
    /// moved with --server-moved true) with this Server Reference; 3.1.x clients get return
    /// code 3 (server unavailable). Empty: no redirection. [default: ]
    #[arg(long, value_name = "REFERENCE")]
    server_reference: Option<String>,

    /// With --server-reference: the server has moved for good (0x9D) rather than temporarily
    /// (0x9C). [default: false]
    #[arg(long, value_name = "true|false")]
    server_moved: Option<String>,

    /// Offers MQTT 5 enhanced authentication method RINGMQ-CHALLENGE-SHA256 with this shared
    /// secret: the client must answer a random nonce with HMAC-SHA256(secret, client id ||
    /// nonce) (docs/protocol.md). Empty: no method is offered and any Authentication Method gets
    /// CONNACK 0x8C. [default: ]
    #[arg(long, value_name = "SECRET")]
    auth_challenge_secret: Option<String>,

    /// Seconds between publications of broker statistics under $SYS/broker/... (retained);
    /// 0 turns them off. [default: 10]
    #[arg(long, value_name = "SECS")]
    sys_interval: Option<String>,

    /// When the journal is synced to disk before a PUBACK/PUBREC/SUBACK that depends on it is
    /// sent: always (after every event that wrote to it), every=<ms> (group commit at most
    /// every ms milliseconds), or never (acknowledge at once; survives a crash of the process,
    /// not of the machine). See docs/journal.md. [default: every=2]
    #[arg(long, value_name = "always|every=MS|never")]
    fsync: Option<String>,

    /// Size of each journal segment file, a power of two from 65536 to 1073741824.
    /// [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    journal_segment_bytes: Option<String>,

    /// Largest disk space of the journal of each shard; when reached, publishes that need it are
    /// refused (MQTT 5: 0x97 Quota exceeded) and nothing acknowledged is dropped; 0 = no bound.
    /// [default: 0]
    #[arg(long, value_name = "BYTES")]
    journal_max_bytes: Option<String>,

    /// What to do when a journal segment is damaged in the middle of the log: refuse to start,
    /// or move-aside (rename the damaged segment and later ones to *.damaged and start from the
    /// last good record). [default: refuse]
    #[arg(long, value_name = "refuse|move-aside")]
    journal_on_corruption: Option<String>,

    /// Bytes of pinned io_uring buffer memory per shard; counts against the locked-memory limit
    /// (ulimit -l). [default: 524288]
    #[arg(long, value_name = "BYTES")]
    io_memory: Option<String>,

    /// Entries of each io_uring ring per shard (a power of two from 128 to 32768). Every idle
    /// connection keeps a poll armed in the kernel; deeper rings, up to 4096 (where the kernel's
    /// cancel hash reaches its 256 buckets), make finding one on each cancel cheaper.
    /// [default: 4096]
    #[arg(long, value_name = "N")]
    ring_depth: Option<String>,

    /// Microseconds each executor busy-polls before sleeping when idle; 0 parks at once. Only
    /// for machines the broker has to itself. [default: 0]
    #[arg(long, value_name = "MICROS")]
    spin_us: Option<String>,

    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it. [default: info]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,

    /// Log line format on stderr: plain or json. [default: plain]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

/// Reads every layer and merges them; any error is for the caller to print and exit 2.
fn settings(matches: &clap::ArgMatches) -> Result<Settings, ConfigError> {
    let given = config::SPECS.iter().filter_map(|s| {
        let from_cli = matches.value_source(s.key) == Some(clap::parser::ValueSource::CommandLine);
        let values = matches
            .get_many::<String>(s.key)?
            .cloned()
            .collect::<Vec<_>>();
        from_cli.then_some((s.key, values))
    });
    let flags = config::flag_layer(given);
    let env = config::env_layer(|name| std::env::var(name).ok());
    let file = match matches.get_one::<PathBuf>("config") {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            config::file_layer(&text, path)?
        }
        None => config::Layer::new(),
    };
    config::resolve(&[&flags, &env, &file])
}

fn main() {
    let matches = Args::command().get_matches();
    let print_config = matches.get_flag("print_config");
    let s = settings(&matches).unwrap_or_else(|e| {
        eprintln!("ringmq: {e}");
        std::process::exit(2);
    });
    if print_config {
        print!("{}", s.to_toml());
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&s.log_level));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match s.log_format {
        LogFormat::Plain => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }

    let cfg = Config {
        listen: s.listen,
        shards: usize::from(s.shards),
        data_dir: s.data_dir,
        max_connections: s.max_connections,
        max_packet_size: s.max_packet_size as usize,
        max_inflight: s.max_inflight,
        max_queued_messages: s.max_queued_messages,
        max_outgoing_bytes: s.max_outgoing_bytes,
        connect_timeout: Duration::from_secs(s.connect_timeout),
        default_keep_alive: s.default_keep_alive,
        max_keep_alive: s.max_keep_alive,
        max_topic_levels: s.max_topic_levels,
        max_subscriptions_per_client: s.max_subscriptions_per_client,
        metrics_addr: s.metrics_addr,
        max_qos: s.max_qos,
        retain_available: s.retain_available,
        wildcard_subscriptions: s.wildcard_subscriptions,
        subscription_identifiers: s.subscription_identifiers,
        shared_subscriptions: s.shared_subscriptions,
        topic_alias_maximum: s.topic_alias_maximum,
        max_session_expiry: s.max_session_expiry,
        server_reference: (!s.server_reference.is_empty()).then_some(s.server_reference),
        server_moved: s.server_moved,
        auth: ringmq_shard::auth::AuthMethods(if s.auth_challenge_secret.is_empty() {
            Vec::new()
        } else {
            vec![std::sync::Arc::new(
                ringmq_shard::auth::ChallengeSha256::new(s.auth_challenge_secret.as_bytes()),
            )]
        }),
        sys_interval: Duration::from_secs(s.sys_interval),
        fsync: match s.fsync {
            config::Fsync::Always => ringmq_shard::config::Fsync::Always,
            config::Fsync::Never => ringmq_shard::config::Fsync::Never,
            config::Fsync::Every(ms) => {
                ringmq_shard::config::Fsync::Every(Duration::from_millis(ms))
            }
        },
        journal_segment_bytes: s.journal_segment_bytes,
        journal_max_bytes: s.journal_max_bytes,
        journal_move_aside: s.journal_move_aside,
        io_memory: s.io_memory,
        ring_depth: s.ring_depth,
        spin: (s.spin_us > 0).then(|| Duration::from_micros(s.spin_us)),
        mesh_channel_batches: 1024,
    };
    if let Err(e) = std::fs::create_dir_all(&cfg.data_dir) {
        eprintln!(
            "ringmq: cannot create data directory {}: {e}",
            cfg.data_dir.display()
        );
        std::process::exit(1);
    }
    ringmq_shard::check_fd_limit(cfg.max_connections);
    tracing::info!(
        shards = cfg.shards,
        listen = ?cfg.listen,
        data_dir = %cfg.data_dir.display(),
        "ringmq {} starting",
        env!("CARGO_PKG_VERSION")
    );
    if let Err(e) = ringmq_shard::run(cfg) {
        eprintln!("ringmq: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    /// Every setting has a flag whose help shows its built-in default.
    #[test]
    fn every_setting_has_a_flag_showing_its_default() {
        let cmd = Args::command();
        for spec in config::SPECS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == spec.key)
                .unwrap_or_else(|| panic!("no flag for {}", spec.key));
            assert_eq!(
                format!("--{}", arg.get_long().unwrap()),
                config::flag_name(spec.key)
            );
            let help = arg.get_help().unwrap().to_string();
            let default = spec.default.unwrap_or("number of cores");
            assert!(
                help.contains(&format!("[default: {default}]")),
                "{}: {help}",
                spec.key
            );
        }
    }
}
