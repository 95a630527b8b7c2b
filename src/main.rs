//! `ringmq`: parse flags, prepare the process (open-file limit, data directory, logging), then
//! hand over to the shard runtime, which runs one pinned executor per core until the end.

use clap::Parser;
use ringmq_shard::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Thread-per-core MQTT 3.1/3.1.1/5.0 broker on io_uring.
#[derive(Parser, Debug)]
#[command(name = "ringmq", version, about, max_term_width = 100)]
struct Args {
    /// Address to accept MQTT connections on (repeatable). Every shard listens on each with
    /// SO_REUSEPORT.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:1883")]
    listen: Vec<SocketAddr>,

    /// Number of shards: one pinned executor thread each [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: Option<u16>,

    /// Directory for the broker's data.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Largest number of client connections held at once; more are refused at accept.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_connections: usize,

    /// Largest MQTT packet accepted from a client, in bytes, fixed header included (advertised to
    /// MQTT 5 clients as Maximum Packet Size). Larger packets close the connection (MQTT 5: 0x95).
    #[arg(long, value_name = "BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u32).range(64..=268_435_460))]
    max_packet_size: u32,

    /// Unacknowledged QoS 1/2 PUBLISHes per client in each direction (advertised to MQTT 5
    /// clients as Receive Maximum; a client's smaller Receive Maximum wins for delivery).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_inflight: u16,

    /// QoS 1/2 messages queued per session behind a full inflight window or while a persistent
    /// session is offline; further messages for it are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_queued_messages: usize,

    /// Bytes of unwritten output per connection above which QoS 0 messages to it are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = 1_048_576)]
    max_outgoing_bytes: usize,

    /// Seconds a new connection has to send a complete CONNECT before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    connect_timeout: u64,

    /// Keep-alive in seconds imposed on clients that ask for 0 (sent to MQTT 5 clients as Server
    /// Keep Alive); 0 imposes none.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    default_keep_alive: u16,

    /// Largest keep-alive in seconds a client may use; larger requests are lowered to it.
    #[arg(long, value_name = "SECS", default_value_t = 65_535,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_keep_alive: u16,

    /// Largest number of levels in a topic name or filter.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_topic_levels: usize,

    /// Largest number of subscriptions one session may hold.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_subscriptions_per_client: usize,

    /// Bytes of pinned io_uring buffer memory per shard; counts against the locked-memory limit
    /// (ulimit -l).
    #[arg(long, value_name = "BYTES", default_value_t = 512 * 1024)]
    io_memory: usize,

    /// Entries of each io_uring ring per shard (a power of two). Every idle connection keeps a
    /// poll armed in the kernel; deeper rings make finding one (on each cancel) cheaper.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = parse_ring_depth)]
    ring_depth: usize,

    /// Microseconds each executor busy-polls before sleeping when idle; 0 parks at once. Only
    /// for machines the broker has to itself.
    #[arg(long, value_name = "MICROS", default_value_t = 0)]
    spin_us: u64,

    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
}

fn parse_ring_depth(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && (128..=32768).contains(&n) {
        Ok(n)
    } else {
        Err("a power of two from 128 to 32768".into())
    }
}

fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = Config {
        listen: args.listen,
        shards: args.shards.map_or(cores, usize::from),
        data_dir: args.data_dir,
        max_connections: args.max_connections,
        max_packet_size: args.max_packet_size as usize,
        max_inflight: args.max_inflight,
        max_queued_messages: args.max_queued_messages,
        max_outgoing_bytes: args.max_outgoing_bytes,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        default_keep_alive: args.default_keep_alive,
        max_keep_alive: args.max_keep_alive,
        max_topic_levels: args.max_topic_levels,
        max_subscriptions_per_client: args.max_subscriptions_per_client,
        io_memory: args.io_memory,
        ring_depth: args.ring_depth,
        spin: (args.spin_us > 0).then(|| Duration::from_micros(args.spin_us)),
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
