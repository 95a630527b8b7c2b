//! Every setting, declared once. An entry reads
//!
//! ```text
//! /// --help text ([default: ...] is added)
//! key: Type = "default", kind, "VALUE NAME" => config_field: |v| conversion;
//! ```
//!
//! and gives the flag `--key-with-dashes`, the TOML key `key`, the environment variable
//! `RINGMQ_KEY`, the check (`kind`), the typed field `Settings::key` (and its `--print-config`
//! line), and the field of the shard's `Config` it sets (`|v| conversion` when the types
//! differ). See the documentation of [`crate::config`] and docs/configuration.md.

use super::declare::{choice, settings};
use super::kind::{int, pow2, Kind, ANY};
use ringmq_shard::auth::{AuthMethods, ChallengeSha256};
use ringmq_shard::config::Listener;
use ringmq_shard::config::{Fsync, QueueFull};
use ringmq_shard::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

choice! {
    /// `journal_on_corruption`.
    OnCorruption { Refuse = "refuse", MoveAside = "move-aside" }
}

choice! {
    /// `queue_full`: what a full session queue does with one more QoS 1/2 message.
    QueueFullPolicy { Backpressure = "backpressure", DropNew = "drop-new", DropOldest = "drop-oldest" }
}

choice! {
    /// `allow_anonymous`.
    Anonymous { Auto = "auto", True = "true", False = "false" }
}

choice! {
    /// `log_format`: the format of log lines on stderr.
    LogFormat { Plain = "plain", Json = "json" }
}

settings! {
    core {
        /// Address to accept MQTT connections on (repeatable). Every shard listens on each with
        /// SO_REUSEPORT.
        listen: Vec<SocketAddr> = "0.0.0.0:1883", Kind::Addrs, "ADDR:PORT" => listen;

        /// Listener by URL (repeatable): mqtt://ADDR:PORT (plain MQTT), mqtts://ADDR:PORT
        /// (MQTT over TLS, with tls_cert and tls_key), ws://ADDR:PORT (MQTT over WebSocket, at
        /// ws_path) or wss://ADDR:PORT (the same over TLS). When any is given, listen's default is
        /// not used (give listen too to keep a plain address). In the config file a
        /// [[listener]] table gives one its own TLS files, SNI certificates, allow_anonymous
        /// and limits (docs/configuration.md).
        listener: Vec<Listener> = "", Kind::Listeners, "URL" => listeners;

        /// PEM file with the certificate chain of the TLS listeners (leaf first; RSA, ECDSA or
        /// Ed25519).
        tls_cert: String = "", Kind::Text, "FILE" => tls_cert: |v| optional_path(v);

        /// PEM file with the private key of tls_cert (PKCS#8, PKCS#1 or SEC1).
        tls_key: String = "", Kind::Text, "FILE" => tls_key: |v| optional_path(v);

        /// PEM file of CA certificates that client certificates are verified against; with it,
        /// TLS listeners ask clients for a certificate (required with require_certificate).
        tls_ca: String = "", Kind::Text, "FILE" => tls_ca: |v| optional_path(v);

        /// PEM file of certificate revocation lists (with tls_ca): a client certificate they
        /// revoke is refused, and so is one whose issuer has no CRL in the file.
        tls_crl: String = "", Kind::Text, "FILE" => tls_crl: |v| optional_path(v);

        /// Refuse TLS clients without a certificate that tls_ca verifies.
        require_certificate: bool = "false", Kind::Bool, "true|false" => require_certificate;

        /// Use the client certificate's identity as the username: its subject CN, else its
        /// first DNS or email subject alternative name. A TLS client without a certificate is
        /// then refused (CONNACK 0x87 / return code 5).
        use_identity_as_username: bool = "false", Kind::Bool, "true|false"
            => use_identity_as_username;

        /// Password file: username:hash lines as Debian's mosquitto_passwd writes them ($7$
        /// PBKDF2-SHA512, $6$, $argon2id$; `ringmq passwd` edits it). A client that gives a
        /// username must give its password (else CONNACK 0x86 / return code 4, after a short
        /// delay). Read again on SIGHUP.
        password_file: String = "", Kind::Text, "FILE" => password_file: |v| optional_path(v);

        /// ACL file in Mosquitto's acl_file format (user, topic [read|write|readwrite|deny]
        /// FILTER, pattern with %c and %u): checked on PUBLISH (MQTT 5: 0x87; 3.1.x:
        /// acknowledged and discarded), SUBSCRIBE (0x87 / 0x80), wills at CONNECT and every
        /// delivery. Read again on SIGHUP. Empty: everything is allowed.
        acl_file: String = "", Kind::Text, "FILE" => acl_file: |v| optional_path(v);

        /// Accept clients that do not authenticate (no username checked against
        /// password_file, no certificate identity, no enhanced authentication): true, false,
        /// or auto (true unless password_file or use_identity_as_username is set). Refused
        /// clients get CONNACK 0x87 / return code 5.
        allow_anonymous: Anonymous = "auto", Kind::Choice(Anonymous::WORDS),
            "auto|true|false" => allow_anonymous: |v| match v {
                Anonymous::Auto => None,
                Anonymous::True => Some(true),
                Anonymous::False => Some(false),
            };

        /// Number of shards (1 to 256): one pinned executor thread each
        shards: usize = "number of cores" by default_shards, int(1, 256), "N" => shards;

        /// Directory for the broker's data.
        data_dir: PathBuf = "./data", Kind::Path, "DIR" => data_dir;

        /// Largest number of client connections held at once; more are refused at accept.
        max_connections: usize = "1000000", ANY, "N" => max_connections;

        /// Connections each listener accepts per second (0: no limit; a [[listener]] table may
        /// set its own). Past it a shard stops accepting on that listener until the rate allows
        /// one more: the connections wait in the kernel's backlog.
        max_accept_rate: u32 = "0", int(0, 4_294_967_295), "N" => max_accept_rate;

        /// TLS handshakes each TLS listener has in progress at once (0: no limit; a
        /// [[listener]] table may set its own). At the limit, accepting on that listener waits
        /// until a handshake ends.
        max_handshakes: usize = "0", ANY, "N" => max_handshakes;

        /// The HTTP request path ws:// listeners upgrade to MQTT over WebSocket (others get
        /// 404); a [[listener]] table may set its own.
        ws_path: String = "/mqtt", Kind::Text, "PATH" => ws_path;

        /// Largest MQTT packet accepted from a client, in bytes (64 to 268435460), fixed header
        /// included (advertised to MQTT 5 clients as Maximum Packet Size). Larger packets close
        /// the connection (MQTT 5: 0x95).
        max_packet_size: usize = "1048576", int(64, 268_435_460), "BYTES" => max_packet_size;

        /// Unacknowledged QoS 1/2 PUBLISHes per client in each direction, 1 to 65535 (advertised
        /// to MQTT 5 clients as Receive Maximum; a client's smaller Receive Maximum wins for
        /// delivery).
        max_inflight: u16 = "32", int(1, 65_535), "N" => max_inflight;

        /// QoS 1/2 messages queued per session behind a full inflight window or while a
        /// persistent session is offline at which its queue is full (0: no count limit); what
        /// happens then is queue_full's choice.
        max_queued_messages: usize = "100000", ANY, "N" => max_queued_messages;

        /// Bytes of topic and payload queued per session at which its queue is full (0: no
        /// limit).
        max_queued_bytes: u64 = "67108864", ANY, "BYTES" => max_queued_bytes;

        /// PUBACK/PUBREC answers a client may be owed (its QoS 1/2 PUBLISHes waiting for full
        /// queues, the journal or other shards) before the broker stops reading its connection,
        /// 1 or more; reading starts again at a quarter of it.
        max_pending_acks: usize = "1024", int(1, 1 << 30), "N" => max_pending_acks;

        /// What a QoS 1/2 message does when a session's queue is full: backpressure (queued
        /// beyond the limit while its publisher's acknowledgement waits until there is room;
        /// nothing acknowledged is dropped), drop-new or drop-oldest (dropped and counted).
        queue_full: QueueFullPolicy = "backpressure", Kind::Choice(QueueFullPolicy::WORDS),
            "backpressure|drop-new|drop-oldest" => queue_full: |v| match v {
                QueueFullPolicy::Backpressure => QueueFull::Backpressure,
                QueueFullPolicy::DropNew => QueueFull::DropNew,
                QueueFullPolicy::DropOldest => QueueFull::DropOldest,
            };

        /// Bytes of unwritten output per connection above which QoS 0 messages to it are
        /// dropped.
        max_outgoing_bytes: usize = "1048576", ANY, "BYTES" => max_outgoing_bytes;

        /// Seconds (1 to 3600) a new connection has to send a complete CONNECT before it is
        /// closed.
        connect_timeout: u64 = "10", int(1, 3600), "SECS"
            => connect_timeout: |v| Duration::from_secs(v);

        /// Keep-alive in seconds imposed on clients that ask for 0 (sent to MQTT 5 clients as
        /// Server Keep Alive); 0 imposes none.
        default_keep_alive: u16 = "60", int(0, 65_535), "SECS" => default_keep_alive;

        /// Largest keep-alive in seconds (1 to 65535) a client may use; larger requests are
        /// lowered to it.
        max_keep_alive: u16 = "65535", int(1, 65_535), "SECS" => max_keep_alive;

        /// Largest number of levels in a topic name or filter.
        max_topic_levels: usize = "128", ANY, "N" => max_topic_levels;

        /// Largest number of subscriptions one session may hold.
        max_subscriptions_per_client: usize = "1000", ANY, "N" => max_subscriptions_per_client;

        /// Address of the HTTP endpoint serving Prometheus metrics (GET /metrics) and health
        /// (GET /healthz), on shard 0; `none` disables it.
        metrics_addr: Option<SocketAddr> = "127.0.0.1:9883", Kind::AddrOrNone, "ADDR:PORT|none"
            => metrics_addr;

        /// Highest QoS accepted (0 to 2), advertised to MQTT 5 clients as Maximum QoS;
        /// subscriptions are granted at most this, a PUBLISH above it closes the connection
        /// (MQTT 5: 0x9B).
        max_qos: u8 = "2", int(0, 2), "QOS" => max_qos;

        /// Whether retained messages are supported (Retain Available); when false a PUBLISH with
        /// RETAIN closes the connection (MQTT 5: 0x9A).
        retain_available: bool = "true", Kind::Bool, "true|false" => retain_available;

        /// Whether filters with + or # are accepted (Wildcard Subscription Available); when false
        /// they get SUBACK 0xA2.
        wildcard_subscriptions: bool = "true", Kind::Bool, "true|false" => wildcard_subscriptions;

        /// Whether Subscription Identifiers are accepted (Subscription Identifiers Available).
        subscription_identifiers: bool = "true", Kind::Bool, "true|false"
            => subscription_identifiers;

        /// Whether $share/{group}/{filter} subscriptions are accepted (Shared Subscription
        /// Available); when false they get SUBACK 0x9E.
        shared_subscriptions: bool = "true", Kind::Bool, "true|false" => shared_subscriptions;

        /// Topic aliases an MQTT 5 client may set per connection (Topic Alias Maximum, 0 to
        /// 65535); 0 refuses aliases.
        topic_alias_maximum: u16 = "64", int(0, 65_535), "N" => topic_alias_maximum;

        /// Largest Session Expiry Interval granted, in seconds; larger requests are lowered to it
        /// and the client is told in CONNACK. 4294967295 = sessions may never expire.
        max_session_expiry: u32 = "4294967295", int(0, 4_294_967_295), "SECS"
            => max_session_expiry;

        /// Redirect every client: MQTT 5 clients get CONNACK 0x9C Use another server (0x9D
        /// Server moved with --server-moved true) with this Server Reference; 3.1.x clients get
        /// return code 3 (server unavailable). Empty: no redirection.
        server_reference: String = "", Kind::Text, "REFERENCE"
            => server_reference: |v| (!v.is_empty()).then_some(v);

        /// With --server-reference: the server has moved for good (0x9D) rather than temporarily
        /// (0x9C).
        server_moved: bool = "false", Kind::Bool, "true|false" => server_moved;

        /// Offers MQTT 5 enhanced authentication method RINGMQ-CHALLENGE-SHA256 with this shared
        /// secret: the client must answer a random nonce with HMAC-SHA256(secret, client id ||
        /// nonce) (docs/protocol.md). Empty: no method is offered and any Authentication Method
        /// gets CONNACK 0x8C.
        auth_challenge_secret: String = "", Kind::Text, "SECRET"
            => auth: |v| auth_methods(&v);

        /// Seconds between publications of broker statistics under $SYS/broker/... (retained);
        /// 0 turns them off.
        sys_interval: u64 = "10", int(0, 86_400), "SECS"
            => sys_interval: |v| Duration::from_secs(v);

        /// When the journal is synced to disk before a PUBACK/PUBREC/SUBACK that depends on it is
        /// sent: always (after every event that wrote to it), every=<ms> (group commit at most
        /// every ms milliseconds), or never (acknowledge at once; survives a crash of the
        /// process, not of the machine). See docs/journal.md.
        fsync: Fsync = "every=2", Kind::Fsync, "always|every=MS|never" => fsync;

        /// Size of each journal segment file, a power of two from 65536 to 1073741824.
        journal_segment_bytes: u64 = "67108864", pow2(65_536, 1 << 30), "BYTES"
            => journal_segment_bytes;

        /// Largest disk space of the journal of each shard; when reached, publishes that need it
        /// are refused (MQTT 5: 0x97 Quota exceeded) and nothing acknowledged is dropped; 0 = no
        /// bound.
        journal_max_bytes: u64 = "0", ANY, "BYTES" => journal_max_bytes;

        /// What to do when a journal segment is damaged in the middle of the log: refuse to
        /// start, or move-aside (rename the damaged segment and later ones to *.damaged and start
        /// from the last good record).
        journal_on_corruption: OnCorruption = "refuse", Kind::Choice(OnCorruption::WORDS),
            "refuse|move-aside" => journal_move_aside: |v| v == OnCorruption::MoveAside;

        /// Bytes of pinned io_uring buffer memory per shard; counts against the locked-memory
        /// limit (ulimit -l).
        io_memory: usize = "524288", ANY, "BYTES" => io_memory;

        /// Entries of each of glommio's io_uring rings per shard (a power of two from 128 to
        /// 32768): the journal, timers and the shards' channels; connections live on the
        /// shard's own network ring.
        ring_depth: usize = "4096", pow2(128, 32_768), "N" => ring_depth;

        /// Receive buffers of 4 KiB per shard that every connection of the shard reads into (a
        /// power of two from 8 to 32768): the bytes that arrived and are not yet handled. A
        /// burst beyond them waits in the socket for the next batch (counted in
        /// receive_buffers_exhausted).
        receive_buffers: usize = "512", pow2(8, 32_768), "N" => receive_buffers;

        /// Microseconds a shard busy with traffic lets arrivals gather before it looks at its
        /// network ring again (0 = at once): one wake-up and one write per subscriber then
        /// carry several messages, which costs a message at most this much latency; a message
        /// that follows a quiet moment is handled at once.
        batch_window_us: u64 = "200", int(0, 10_000), "MICROS"
            => batch_window: |v| Duration::from_micros(v);

        /// Microseconds each executor busy-polls before sleeping when idle; 0 parks at once. Only
        /// for machines the broker has to itself.
        spin_us: u64 = "0", ANY, "MICROS" => spin: |v| (v > 0).then(|| Duration::from_micros(v));
    }
    process {
        /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
        log_level: String = "info", Kind::Filter, "FILTER";

        /// Log line format on stderr: plain or json.
        log_format: LogFormat = "plain", Kind::Choice(LogFormat::WORDS), "FORMAT";
    }
    // Fields of `Config` that are not settings: the core's default is the only value.
    not_settings { mesh_channel_batches }
}

/// Default shard count: the number of cores, within the accepted 1..=256 (as text, like every
/// default, so that it is checked the same way).
pub fn default_shards() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, 256).to_string()
}

/// An empty path setting is no file.
fn optional_path(v: String) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

/// The enhanced authentication methods offered: the challenge method when it has a secret.
fn auth_methods(secret: &str) -> AuthMethods {
    if secret.is_empty() {
        return AuthMethods::default();
    }
    AuthMethods(vec![Arc::new(ChallengeSha256::new(secret.as_bytes()))])
}
