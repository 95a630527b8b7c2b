//! The settings a shard runs with. Built once by the binary from its settings table (flags,
//! environment, config file: src/config/table.rs); read-only afterwards.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS over TCP.
    Mqtts,
    /// MQTT over WebSocket (RFC 6455) over TCP.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

/// A listener: a URL as `--listener` gives it (`mqtt://ADDR:PORT`, `mqtts://ADDR:PORT`), or a
/// `[[listener]]` table of the config file with settings of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub scheme: Scheme,
    pub addr: SocketAddr,
    /// Settings of its own (a table); `None`, a URL alone, takes every one from the global ones.
    pub own: Option<Box<ListenerSettings>>,
}

/// What a `[[listener]]` table sets for its listener alone; `None` takes the global setting of
/// the same name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerSettings {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_crl: Option<PathBuf>,
    pub require_certificate: Option<bool>,
    pub use_identity_as_username: Option<bool>,
    pub allow_anonymous: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_accept_rate: Option<u32>,
    pub max_handshakes: Option<usize>,
    /// Further certificates, each served to clients that ask for one of its DNS names (SNI).
    pub sni: Vec<SniCert>,
    /// The request path a WebSocket listener upgrades.
    pub ws_path: Option<String>,
    /// The `Origin` values a WebSocket listener accepts (empty: any).
    pub ws_origins: Vec<String>,
    /// Connections start with a PROXY protocol (v1 or v2) header from a load balancer.
    pub proxy_protocol: bool,
}

/// A certificate chain and its key, chosen by the server name a TLS client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniCert {
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

/// A listener's settings with the global ones filled in ([`Config::effective`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_crl: Option<PathBuf>,
    pub require_certificate: bool,
    pub use_identity_as_username: bool,
    pub allow_anonymous: bool,
    /// Connections from this listener held by the whole process (0: no limit of its own).
    pub max_connections: usize,
    /// Connections accepted per second (0: no limit).
    pub max_accept_rate: u32,
    /// TLS handshakes in progress at once (0: no limit).
    pub max_handshakes: usize,
    pub sni: Vec<SniCert>,
    pub ws_path: String,
    pub ws_origins: Vec<String>,
    pub proxy_protocol: bool,
}

impl Listener {
    pub fn plain(addr: SocketAddr) -> Listener {
        Listener {
            scheme: Scheme::Mqtt,
            addr,
            own: None,
        }
    }

    /// Parses `scheme://ADDR:PORT` (a trailing `/` allowed); `None` for anything else.
    pub fn parse(url: &str) -> Option<Listener> {
        let (scheme, rest) = url.trim().split_once("://")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return None,
        };
        let addr = rest.strip_suffix('/').unwrap_or(rest).parse().ok()?;
        Some(Listener {
            scheme,
            addr,
            own: None,
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.scheme, Scheme::Mqtts | Scheme::Wss)
    }

    pub fn is_ws(&self) -> bool {
        matches!(self.scheme, Scheme::Ws | Scheme::Wss)
    }

    /// The URL alone, without the settings of its own.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        format!("{scheme}://{}", self.addr)
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Plain MQTT addresses (`--listen`); every shard accepts on each with SO_REUSEPORT.
    pub listen: Vec<SocketAddr>,
    /// Listeners given by URL (`--listener`), with their protocol; accepted like `listen`.
    pub listeners: Vec<Listener>,
    /// PEM certificate chain and private key of every TLS listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates client certificates are verified against; with it, TLS listeners
    /// ask clients for a certificate.
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate revocation lists: a client certificate they revoke is refused.
    pub tls_crl: Option<PathBuf>,
    /// A client without a valid certificate is refused during the handshake.
    pub require_certificate: bool,
    /// The client certificate's subject CN (else its first DNS or email SAN) replaces the
    /// CONNECT's username.
    pub use_identity_as_username: bool,
    /// Usernames and passwords (Mosquitto's format); the driver verifies them off the shard
    /// thread, the core only knows that there is one.
    pub password_file: Option<PathBuf>,
    /// Whether clients that do not authenticate are accepted; `None`: unless a password file
    /// or certificate identities are configured ([`Config::anonymous_allowed`]).
    pub allow_anonymous: Option<bool>,
    /// Who may publish and subscribe to what (Mosquitto's `acl_file` format); the driver
    /// reads it and hands the rules to each shard ([`crate::ShardState::set_acl`]).
    pub acl_file: Option<PathBuf>,
    pub shards: usize,
    pub data_dir: PathBuf,
    /// Connections held by the whole process; more are refused at accept.
    pub max_connections: usize,
    /// Connections each listener accepts per second (0: no limit); a listener's table may
    /// set its own.
    pub max_accept_rate: u32,
    /// TLS handshakes each TLS listener has in progress at once (0: no limit); a listener's
    /// table may set its own.
    pub max_handshakes: usize,
    /// The request path WebSocket listeners upgrade (others get 404); a listener's table may
    /// set its own.
    pub ws_path: String,
    /// Largest packet accepted from a client, fixed header included; advertised in CONNACK.
    pub max_packet_size: usize,
    /// Unacknowledged QoS 1/2 PUBLISHes per direction per client; advertised as Receive Maximum.
    pub max_inflight: u16,
    /// QoS 1/2 messages queued per session behind a full window or while offline at which its
    /// queue is full (0: no count limit).
    pub max_queued_messages: usize,
    /// Bytes (topic and payload) queued per session at which its queue is full (0: no limit).
    pub max_queued_bytes: u64,
    /// Answers a session may owe before its connection stops being read (`state/backpressure.rs`).
    pub max_pending_acks: usize,
    /// What a full session queue does with one more QoS 1/2 message.
    pub queue_full: QueueFull,
    /// Bytes of QoS 0 output buffered for one connection before further QoS 0 messages are dropped.
    pub max_outgoing_bytes: usize,
    /// A connection must complete CONNECT within this time.
    pub connect_timeout: Duration,
    /// Keep-alive in seconds imposed when a client asks for 0; 0 imposes none.
    pub default_keep_alive: u16,
    /// Largest keep-alive in seconds the server accepts.
    pub max_keep_alive: u16,
    /// Largest number of topic levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions_per_client: usize,
    /// Where shard 0 serves `GET /metrics` and `GET /healthz`; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Highest QoS accepted (Maximum QoS).
    pub max_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscriptions: bool,
    pub subscription_identifiers: bool,
    pub shared_subscriptions: bool,
    /// Topic aliases a client may set per connection.
    pub topic_alias_maximum: u16,
    /// Largest Session Expiry Interval granted.
    pub max_session_expiry: u32,
    /// Redirect every client there (CONNACK 0x9C, or 0x9D with `server_moved`).
    pub server_reference: Option<String>,
    pub server_moved: bool,
    /// Enhanced authentication methods offered to MQTT 5 clients.
    pub auth: crate::auth::AuthMethods,
    /// Between $SYS publications (by shard 0); zero = none.
    pub sys_interval: Duration,
    pub fsync: Fsync,
    pub journal_segment_bytes: u64,
    /// Per shard; 0 = unbounded.
    pub journal_max_bytes: u64,
    /// Start with damaged segments renamed aside instead of refusing to start.
    pub journal_move_aside: bool,
    /// Bytes of pinned io_uring buffer memory per shard (glommio's io_memory); counts against
    /// RLIMIT_MEMLOCK.
    pub io_memory: usize,
    /// Entries of each of glommio's io_uring submission rings per shard.
    pub ring_depth: usize,
    /// Provided receive buffers (4 KiB each, a power of two) of the shard's network ring.
    pub receive_buffers: usize,
    /// How long a shard busy with traffic lets arrivals gather before it looks again.
    pub batch_window: Duration,
    /// Busy-poll before parking, for machines the broker has to itself.
    pub spin: Option<Duration>,
    /// Batches that one shard may have in flight to another before senders wait.
    pub mesh_channel_batches: usize,
}

/// What a QoS 1/2 message does when a session's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFull {
    /// Nothing is acknowledged and then dropped: the message is queued beyond the limit and its
    /// publisher's PUBACK/PUBREC waits until the queue is under its limits again, so the
    /// publisher's window fills and it slows down. Messages no publisher waits for (wills,
    /// retained messages for a new subscription) are queued beyond the limit.
    Backpressure,
    /// The new message is dropped for that session (counted): the operator's choice.
    DropNew,
    /// The oldest queued message is dropped for the new one (counted): the operator's choice.
    DropOldest,
}

/// When the journal is synced before the acknowledgements that depend on it are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// A sync starts as soon as records are waiting and none is in flight.
    Always,
    /// A sync starts at most once per period (group commit).
    Every(Duration),
    /// Never synced for acknowledgements: the page cache holds the records, so they survive a
    /// crash of the process but not of the machine.
    Never,
}

/// For tests and embedding. The broker's settings, their defaults and how each becomes a field
/// here are declared once in the binary (src/config/table.rs, see docs/configuration.md); these
/// values follow them (a test there compares the two) except where a test must not get what the
/// binary starts: one shard, no metrics endpoint, no $SYS publications.
impl Config {
    /// Every listener: the URLs of `listeners`, then `listen` as plain MQTT.
    pub fn all_listeners(&self) -> Vec<Listener> {
        let plain = self.listen.iter().map(|&a| Listener::plain(a));
        self.listeners.iter().cloned().chain(plain).collect()
    }

    /// The settings listener `l` runs with: its own where its table sets them, else the
    /// global ones.
    pub fn effective(&self, l: &Listener) -> Effective {
        let own = l.own.as_deref().cloned().unwrap_or_default();
        let use_identity = own
            .use_identity_as_username
            .unwrap_or(self.use_identity_as_username);
        Effective {
            tls_cert: own.tls_cert.or_else(|| self.tls_cert.clone()),
            tls_key: own.tls_key.or_else(|| self.tls_key.clone()),
            tls_ca: own.tls_ca.or_else(|| self.tls_ca.clone()),
            tls_crl: own.tls_crl.or_else(|| self.tls_crl.clone()),
            require_certificate: own.require_certificate.unwrap_or(self.require_certificate),
            use_identity_as_username: use_identity,
            allow_anonymous: own
                .allow_anonymous
                .or(self.allow_anonymous)
                .unwrap_or(self.password_file.is_none() && !use_identity),
            max_connections: own.max_connections.unwrap_or(0),
            max_accept_rate: own.max_accept_rate.unwrap_or(self.max_accept_rate),
            max_handshakes: own.max_handshakes.unwrap_or(self.max_handshakes),
            sni: own.sni,
            ws_path: own.ws_path.unwrap_or_else(|| self.ws_path.clone()),
            ws_origins: own.ws_origins,
            proxy_protocol: own.proxy_protocol,
        }
    }

    /// Whether a client of listener `index` that does not authenticate (no password
    /// checked, no certificate identity, no enhanced authentication) is accepted: by default
    /// only while no authentication source is configured for it.
    pub fn anonymous_allowed(&self, index: usize) -> bool {
        let own = self.listeners.get(index).and_then(|l| l.own.as_deref());
        let identity = own
            .and_then(|o| o.use_identity_as_username)
            .unwrap_or(self.use_identity_as_username);
        own.and_then(|o| o.allow_anonymous)
            .or(self.allow_anonymous)
            .unwrap_or(self.password_file.is_none() && !identity)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec!["0.0.0.0:1883".parse().expect("valid literal")],
            listeners: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_crl: None,
            require_certificate: false,
            use_identity_as_username: false,
            password_file: None,
            allow_anonymous: None,
            acl_file: None,
            shards: 1,
            data_dir: PathBuf::from("./data"),
            max_connections: 1_000_000,
            max_accept_rate: 0,
            max_handshakes: 0,
            ws_path: "/mqtt".into(),
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 100_000,
            max_queued_bytes: 64 << 20,
            max_pending_acks: 1024,
            queue_full: QueueFull::Backpressure,
            max_outgoing_bytes: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            default_keep_alive: 60,
            max_keep_alive: u16::MAX,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            metrics_addr: None,
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            topic_alias_maximum: 64,
            max_session_expiry: u32::MAX,
            server_reference: None,
            server_moved: false,
            auth: crate::auth::AuthMethods::default(),
            sys_interval: Duration::ZERO,
            fsync: Fsync::Every(Duration::from_millis(2)),
            journal_segment_bytes: 64 << 20,
            journal_max_bytes: 0,
            journal_move_aside: false,
            io_memory: 512 * 1024,
            ring_depth: 4096,
            receive_buffers: 512,
            batch_window: Duration::from_micros(200),
            spin: None,
            mesh_channel_batches: 1024,
        }
    }
}

/// FNV-1a, 64-bit: the home shard of a client id is `fnv1a_64(id) % shards`. Stable across
/// releases so that operators and tests can place clients on chosen shards.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn home_shard(client_id: &[u8], shards: usize) -> usize {
    (fnv1a_64(client_id) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }
}
