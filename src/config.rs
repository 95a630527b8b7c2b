//! Layered configuration: built-in defaults < TOML file (`--config`) < environment variables
//! (`RINGMQ_<KEY>`) < command-line flags.
//!
//! Every layer produces raw text for some keys; one parser per key (driven by [`SPECS`]) checks
//! that text identically whichever layer it came from, so `max_inflight = 0` in the file fails
//! with the same "expected ..." as `--max-inflight 0`. Values in every layer are checked, also
//! when a higher layer overrides them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How a key's value is checked.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Integer in `min..=max`.
    Int { min: u64, max: u64 },
    /// Power of two in `min..=max`.
    Pow2 { min: u64, max: u64 },
    /// Non-empty list of socket addresses.
    Addrs,
    /// One socket address, or `none`.
    AddrOrNone,
    /// Any string (a path).
    Path,
    /// One of the listed words.
    Choice(&'static [&'static str]),
    /// A tracing `EnvFilter` directive list.
    Filter,
    /// `always`, `never` or `every=<ms>` (1 to 10000).
    Fsync,
    /// true or false (TOML booleans in a file).
    Bool,
    /// Any string, empty allowed.
    Text,
}

impl Kind {
    /// What the key accepts, as said in error messages.
    pub fn accepted(self) -> String {
        match self {
            Kind::Int {
                min: 0,
                max: u64::MAX,
            } => "a non-negative integer".into(),
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Pow2 { min, max } => format!("a power of two from {min} to {max}"),
            Kind::Addrs => {
                "a non-empty list of ADDR:PORT socket addresses (e.g. 127.0.0.1:1883)".into()
            }
            Kind::AddrOrNone => "an ADDR:PORT socket address (e.g. 127.0.0.1:9883) or none".into(),
            Kind::Path => "a path".into(),
            Kind::Choice(words) => format!("one of {}", words.join(", ")),
            Kind::Filter => "a log filter in tracing's EnvFilter syntax (e.g. info)".into(),
            Kind::Fsync => "always, never or every=<ms> with ms from 1 to 10000".into(),
            Kind::Bool => "true or false".into(),
            Kind::Text => "a string".into(),
        }
    }
}

/// One setting: its file key (the flag is `--` + key with `_` → `-`, the environment variable
/// `RINGMQ_` + upper-case key).
#[derive(Debug)]
pub struct Spec {
    pub key: &'static str,
    pub kind: Kind,
    /// Built-in default as it would be written after the flag; `None` = computed (shards).
    pub default: Option<&'static str>,
}

const fn int(min: u64, max: u64) -> Kind {
    Kind::Int { min, max }
}

const ANY: Kind = int(0, u64::MAX);

/// Every setting, in the order `--print-config` writes them.
pub const SPECS: &[Spec] = &[
    Spec {
        key: "listen",
        kind: Kind::Addrs,
        default: Some("0.0.0.0:1883"),
    },
    Spec {
        key: "shards",
        kind: int(1, 256),
        default: None,
    },
    Spec {
        key: "data_dir",
        kind: Kind::Path,
        default: Some("./data"),
    },
    Spec {
        key: "max_connections",
        kind: ANY,
        default: Some("1000000"),
    },
    Spec {
        key: "max_packet_size",
        kind: int(64, 268_435_460),
        default: Some("1048576"),
    },
    Spec {
        key: "max_inflight",
        kind: int(1, 65_535),
        default: Some("32"),
    },
    Spec {
        key: "max_queued_messages",
        kind: ANY,
        default: Some("1000"),
    },
    Spec {
        key: "max_outgoing_bytes",
        kind: ANY,
        default: Some("1048576"),
    },
    Spec {
        key: "connect_timeout",
        kind: int(1, 3600),
        default: Some("10"),
    },
    Spec {
        key: "default_keep_alive",
        kind: int(0, 65_535),
        default: Some("60"),
    },
    Spec {
        key: "max_keep_alive",
        kind: int(1, 65_535),
        default: Some("65535"),
    },
    Spec {
        key: "max_topic_levels",
        kind: ANY,
        default: Some("128"),
    },
    Spec {
        key: "max_subscriptions_per_client",
        kind: ANY,
        default: Some("1000"),
    },
    Spec {
        key: "metrics_addr",
        kind: Kind::AddrOrNone,
        default: Some("127.0.0.1:9883"),
    },
    Spec {
        key: "max_qos",
        kind: int(0, 2),
        default: Some("2"),
    },
    Spec {
        key: "retain_available",
        kind: Kind::Bool,
        default: Some("true"),
    },
    Spec {
        key: "wildcard_subscriptions",
        kind: Kind::Bool,
        default: Some("true"),
    },
    Spec {
        key: "subscription_identifiers",
        kind: Kind::Bool,
        default: Some("true"),
    },
    Spec {
        key: "shared_subscriptions",
        kind: Kind::Bool,
        default: Some("true"),
    },
    Spec {
        key: "topic_alias_maximum",
        kind: int(0, 65_535),
        default: Some("64"),
    },
    Spec {
        key: "max_session_expiry",
        kind: int(0, 4_294_967_295),
        default: Some("4294967295"),
    },
    Spec {
        key: "server_reference",
        kind: Kind::Text,
        default: Some(""),
    },
    Spec {
        key: "server_moved",
        kind: Kind::Bool,
        default: Some("false"),
    },
    Spec {
        key: "auth_challenge_secret",
        kind: Kind::Text,
        default: Some(""),
    },
    Spec {
        key: "sys_interval",
        kind: int(0, 86_400),
        default: Some("10"),
    },
    Spec {
        key: "fsync",
        kind: Kind::Fsync,
        default: Some("every=2"),
    },
    Spec {
        key: "journal_segment_bytes",
        kind: Kind::Pow2 {
            min: 65_536,
            max: 1 << 30,
        },
        default: Some("67108864"),
    },
    Spec {
        key: "journal_max_bytes",
        kind: ANY,
        default: Some("0"),
    },
    Spec {
        key: "journal_on_corruption",
        kind: Kind::Choice(&["refuse", "move-aside"]),
        default: Some("refuse"),
    },
    Spec {
        key: "io_memory",
        kind: ANY,
        default: Some("524288"),
    },
    Spec {
        key: "ring_depth",
        kind: Kind::Pow2 {
            min: 128,
            max: 32768,
        },
        default: Some("4096"),
    },
    Spec {
        key: "spin_us",
        kind: ANY,
        default: Some("0"),
    },
    Spec {
        key: "log_level",
        kind: Kind::Filter,
        default: Some("info"),
    },
    Spec {
        key: "log_format",
        kind: Kind::Choice(&["plain", "json"]),
        default: Some("plain"),
    },
];

pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

pub fn env_name(key: &str) -> String {
    format!("RINGMQ_{}", key.to_ascii_uppercase())
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "built-in default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// A configuration error; printed as `ringmq: <message>` with exit code 2.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A value as one layer gave it, before checking.
#[derive(Debug, Clone)]
pub struct Raw {
    /// One element for scalar keys; the list's elements for `listen`.
    pub values: Vec<String>,
    /// The value as given, for messages.
    pub shown: String,
    pub source: Source,
}

/// The values one layer sets.
pub type Layer = BTreeMap<&'static str, Raw>;

fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn invalid(spec: &Spec, shown: &str, source: &Source) -> ConfigError {
    ConfigError(format!(
        "invalid value {shown} for {} (from {source}): expected {}",
        spec.key,
        spec.kind.accepted()
    ))
}

/// Flag layer: `(key, values given on the command line)` for the keys given.
pub fn flag_layer<'a>(given: impl IntoIterator<Item = (&'a str, Vec<String>)>) -> Layer {
    let mut layer = Layer::new();
    for (key, values) in given {
        let Some(spec) = spec(key) else { continue };
        let shown = match spec.kind {
            Kind::Addrs => quoted(&values.join(",")),
            _ => quoted(values.last().map_or("", String::as_str)),
        };
        let values = match spec.kind {
            Kind::Addrs => values,
            _ => values.last().cloned().into_iter().collect(),
        };
        let source = Source::Flag(flag_name(spec.key));
        layer.insert(
            spec.key,
            Raw {
                values,
                shown,
                source,
            },
        );
    }
    layer
}

/// Environment layer from `RINGMQ_<KEY>` variables (`listen` is comma-separated).
pub fn env_layer(lookup: impl Fn(&str) -> Option<String>) -> Layer {
    let mut layer = Layer::new();
    for spec in SPECS {
        let name = env_name(spec.key);
        let Some(text) = lookup(&name) else { continue };
        let values = match spec.kind {
            Kind::Addrs => text
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => vec![text.clone()],
        };
        let shown = quoted(&text);
        layer.insert(
            spec.key,
            Raw {
                values,
                shown,
                source: Source::Env(name),
            },
        );
    }
    layer
}

/// File layer from TOML text. Unknown keys and values of the wrong TOML type are errors.
pub fn file_layer(text: &str, path: &Path) -> Result<Layer, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    let mut layer = Layer::new();
    for (key, value) in &table {
        let Some(spec) = spec(key) else {
            let keys: Vec<&str> = SPECS.iter().map(|s| s.key).collect();
            return Err(ConfigError(format!(
                "config file {}: unknown key {}; accepted keys: {}",
                path.display(),
                quoted(key),
                keys.join(", ")
            )));
        };
        let source = Source::File(path.to_owned());
        let shown = value.to_string();
        let values = match (spec.kind, value) {
            (Kind::Int { .. } | Kind::Pow2 { .. }, toml::Value::Integer(n)) => vec![n.to_string()],
            (Kind::Bool, toml::Value::Boolean(b)) => vec![b.to_string()],
            (Kind::Addrs, toml::Value::Array(items)) => {
                let mut v = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => v.push(s.to_owned()),
                        None => return Err(invalid(spec, &shown, &source)),
                    }
                }
                v
            }
            (
                Kind::Path
                | Kind::Choice(_)
                | Kind::Filter
                | Kind::AddrOrNone
                | Kind::Fsync
                | Kind::Text,
                toml::Value::String(s),
            ) => {
                vec![s.clone()]
            }
            _ => return Err(invalid(spec, &shown, &source)),
        };
        layer.insert(
            spec.key,
            Raw {
                values,
                shown,
                source,
            },
        );
    }
    Ok(layer)
}

/// A checked value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(u64),
    Str(String),
    Addrs(Vec<SocketAddr>),
}

fn check(spec: &Spec, raw: &Raw) -> Result<Val, ConfigError> {
    let bad = || invalid(spec, &raw.shown, &raw.source);
    let one = || raw.values.first().map_or("", String::as_str).trim();
    match spec.kind {
        Kind::Int { min, max } => {
            let n: u64 = one().parse().map_err(|_| bad())?;
            if (min..=max).contains(&n) {
                Ok(Val::Int(n))
            } else {
                Err(bad())
            }
        }
        Kind::Pow2 { min, max } => {
            let n: u64 = one().parse().map_err(|_| bad())?;
            if n.is_power_of_two() && (min..=max).contains(&n) {
                Ok(Val::Int(n))
            } else {
                Err(bad())
            }
        }
        Kind::Addrs => {
            if raw.values.is_empty() {
                return Err(bad());
            }
            let addrs = raw
                .values
                .iter()
                .map(|s| s.trim().parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad())?;
            Ok(Val::Addrs(addrs))
        }
        Kind::AddrOrNone => {
            let w = one();
            if w == "none" {
                Ok(Val::Str("none".into()))
            } else {
                let a: SocketAddr = w.parse().map_err(|_| bad())?;
                Ok(Val::Str(a.to_string()))
            }
        }
        Kind::Path => {
            if one().is_empty() {
                return Err(bad());
            }
            Ok(Val::Str(raw.values[0].clone()))
        }
        Kind::Choice(words) => {
            let w = one();
            if words.contains(&w) {
                Ok(Val::Str(w.to_owned()))
            } else {
                Err(bad())
            }
        }
        Kind::Bool => match one() {
            "true" => Ok(Val::Int(1)),
            "false" => Ok(Val::Int(0)),
            _ => Err(bad()),
        },
        Kind::Text => Ok(Val::Str(raw.values.first().cloned().unwrap_or_default())),
        Kind::Fsync => {
            let w = one();
            match w {
                "always" | "never" => Ok(Val::Str(w.to_owned())),
                _ => {
                    let ms: u64 = w
                        .strip_prefix("every=")
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(bad)?;
                    if (1..=10_000).contains(&ms) {
                        Ok(Val::Str(format!("every={ms}")))
                    } else {
                        Err(bad())
                    }
                }
            }
        }
        Kind::Filter => {
            let f = one();
            tracing_subscriber::EnvFilter::try_new(f).map_err(|_| bad())?;
            Ok(Val::Str(f.to_owned()))
        }
    }
}

/// When the journal syncs before acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Every(u64),
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The effective configuration after merging every layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub shards: u16,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    pub max_packet_size: u32,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_outgoing_bytes: usize,
    pub connect_timeout: u64,
    pub default_keep_alive: u16,
    pub max_keep_alive: u16,
    pub max_topic_levels: usize,
    pub max_subscriptions_per_client: usize,
    /// Where the Prometheus/health HTTP endpoint listens; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    pub max_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscriptions: bool,
    pub subscription_identifiers: bool,
    pub shared_subscriptions: bool,
    pub topic_alias_maximum: u16,
    pub max_session_expiry: u32,
    /// Empty: no redirection.
    pub server_reference: String,
    pub server_moved: bool,
    /// Empty: the RINGMQ-CHALLENGE-SHA256 method is not offered.
    pub auth_challenge_secret: String,
    /// Seconds between $SYS publications; 0 = none.
    pub sys_interval: u64,
    pub fsync: Fsync,
    pub journal_segment_bytes: u64,
    /// 0 = unbounded.
    pub journal_max_bytes: u64,
    /// Move damaged segments aside and start, instead of refusing to start.
    pub journal_move_aside: bool,
    pub io_memory: usize,
    pub ring_depth: usize,
    pub spin_us: u64,
    pub log_level: String,
    pub log_format: LogFormat,
}

/// Default shard count: the number of cores, within the accepted 1..=256.
pub fn default_shards() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, 256) as u16
}

/// Merges `layers` (highest precedence first) over the built-in defaults. Every value of every
/// layer is checked, also those a higher layer overrides.
pub fn resolve(layers: &[&Layer]) -> Result<Settings, ConfigError> {
    let mut vals: BTreeMap<&'static str, Val> = BTreeMap::new();
    let mut given = std::collections::BTreeSet::new();
    for spec in SPECS {
        let mut chosen = None;
        for layer in layers {
            if let Some(raw) = layer.get(spec.key) {
                let v = check(spec, raw)?;
                chosen.get_or_insert(v);
            }
        }
        let v = match (chosen, spec.default) {
            (Some(v), _) => {
                given.insert(spec.key);
                v
            }
            (None, Some(d)) => {
                let raw = Raw {
                    values: vec![d.to_owned()],
                    shown: quoted(d),
                    source: Source::Default,
                };
                check(spec, &raw)?
            }
            (None, None) => Val::Int(u64::from(default_shards())),
        };
        vals.insert(spec.key, v);
    }
    let int = |k: &str| match vals.get(k) {
        Some(Val::Int(n)) => *n,
        other => unreachable!("{k}: {other:?}"),
    };
    let text = |k: &str| match vals.get(k) {
        Some(Val::Str(s)) => s.clone(),
        other => unreachable!("{k}: {other:?}"),
    };
    // A journal record never spans segments; the largest is a delivery of the largest packet.
    // The default segment size grows to fit; a size given explicitly must fit.
    let mut segment_bytes = int("journal_segment_bytes");
    let need = (2 * int("max_packet_size")).next_power_of_two();
    if segment_bytes < need && !given.contains("journal_segment_bytes") {
        segment_bytes = need;
    }
    if segment_bytes < 2 * int("max_packet_size") {
        return Err(ConfigError(format!(
            "invalid combination: journal_segment_bytes ({}) must be at least twice \
             max_packet_size ({}), so that the largest message fits in one journal segment",
            segment_bytes,
            int("max_packet_size")
        )));
    }
    // Every narrowing below is within the range the spec checked.
    Ok(Settings {
        listen: match vals.get("listen") {
            Some(Val::Addrs(a)) => a.clone(),
            other => unreachable!("listen: {other:?}"),
        },
        shards: int("shards") as u16,
        data_dir: PathBuf::from(text("data_dir")),
        max_connections: int("max_connections") as usize,
        max_packet_size: int("max_packet_size") as u32,
        max_inflight: int("max_inflight") as u16,
        max_queued_messages: int("max_queued_messages") as usize,
        max_outgoing_bytes: int("max_outgoing_bytes") as usize,
        connect_timeout: int("connect_timeout"),
        default_keep_alive: int("default_keep_alive") as u16,
        max_keep_alive: int("max_keep_alive") as u16,
        max_topic_levels: int("max_topic_levels") as usize,
        max_subscriptions_per_client: int("max_subscriptions_per_client") as usize,
        metrics_addr: match text("metrics_addr").as_str() {
            "none" => None,
            a => Some(a.parse().expect("checked by its spec")),
        },
        max_qos: int("max_qos") as u8,
        retain_available: int("retain_available") == 1,
        wildcard_subscriptions: int("wildcard_subscriptions") == 1,
        subscription_identifiers: int("subscription_identifiers") == 1,
        shared_subscriptions: int("shared_subscriptions") == 1,
        topic_alias_maximum: int("topic_alias_maximum") as u16,
        max_session_expiry: int("max_session_expiry") as u32,
        server_reference: text("server_reference"),
        server_moved: int("server_moved") == 1,
        auth_challenge_secret: text("auth_challenge_secret"),
        sys_interval: int("sys_interval"),
        fsync: match text("fsync").as_str() {
            "always" => Fsync::Always,
            "never" => Fsync::Never,
            w => Fsync::Every(
                w.trim_start_matches("every=")
                    .parse()
                    .expect("checked by its spec"),
            ),
        },
        journal_segment_bytes: segment_bytes,
        journal_max_bytes: int("journal_max_bytes"),
        journal_move_aside: text("journal_on_corruption") == "move-aside",
        io_memory: int("io_memory") as usize,
        ring_depth: int("ring_depth") as usize,
        spin_us: int("spin_us"),
        log_level: text("log_level"),
        log_format: if text("log_format") == "json" {
            LogFormat::Json
        } else {
            LogFormat::Plain
        },
    })
}

impl Settings {
    fn value(&self, key: &str) -> toml::Value {
        use toml::Value as V;
        let n = |x: u64| V::Integer(i64::try_from(x).unwrap_or(i64::MAX));
        match key {
            "listen" => V::Array(
                self.listen
                    .iter()
                    .map(|a| V::String(a.to_string()))
                    .collect(),
            ),
            "shards" => n(self.shards.into()),
            "data_dir" => V::String(self.data_dir.display().to_string()),
            "max_connections" => n(self.max_connections as u64),
            "max_packet_size" => n(self.max_packet_size.into()),
            "max_inflight" => n(self.max_inflight.into()),
            "max_queued_messages" => n(self.max_queued_messages as u64),
            "max_outgoing_bytes" => n(self.max_outgoing_bytes as u64),
            "connect_timeout" => n(self.connect_timeout),
            "default_keep_alive" => n(self.default_keep_alive.into()),
            "max_keep_alive" => n(self.max_keep_alive.into()),
            "max_topic_levels" => n(self.max_topic_levels as u64),
            "max_subscriptions_per_client" => n(self.max_subscriptions_per_client as u64),
            "metrics_addr" => V::String(
                self.metrics_addr
                    .map_or_else(|| "none".to_owned(), |a| a.to_string()),
            ),
            "max_qos" => n(self.max_qos.into()),
            "retain_available" => V::Boolean(self.retain_available),
            "wildcard_subscriptions" => V::Boolean(self.wildcard_subscriptions),
            "subscription_identifiers" => V::Boolean(self.subscription_identifiers),
            "shared_subscriptions" => V::Boolean(self.shared_subscriptions),
            "topic_alias_maximum" => n(self.topic_alias_maximum.into()),
            "max_session_expiry" => n(self.max_session_expiry.into()),
            "server_reference" => V::String(self.server_reference.clone()),
            "server_moved" => V::Boolean(self.server_moved),
            "auth_challenge_secret" => V::String(self.auth_challenge_secret.clone()),
            "sys_interval" => n(self.sys_interval),
            "fsync" => V::String(match self.fsync {
                Fsync::Always => "always".into(),
                Fsync::Never => "never".into(),
                Fsync::Every(ms) => format!("every={ms}"),
            }),
            "journal_segment_bytes" => n(self.journal_segment_bytes),
            "journal_max_bytes" => n(self.journal_max_bytes),
            "journal_on_corruption" => V::String(
                if self.journal_move_aside {
                    "move-aside"
                } else {
                    "refuse"
                }
                .into(),
            ),
            "io_memory" => n(self.io_memory as u64),
            "ring_depth" => n(self.ring_depth as u64),
            "spin_us" => n(self.spin_us),
            "log_level" => V::String(self.log_level.clone()),
            "log_format" => V::String(
                match self.log_format {
                    LogFormat::Plain => "plain",
                    LogFormat::Json => "json",
                }
                .into(),
            ),
            _ => unreachable!("unknown key {key}"),
        }
    }

    /// The effective configuration as a TOML `--config` file: every key, in [`SPECS`] order.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# ringmq effective configuration\n");
        for spec in SPECS {
            out.push_str(&format!("{} = {}\n", spec.key, self.value(spec.key)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&'static str, &str)]) -> Layer {
        flag_layer(pairs.iter().map(|(k, v)| (*k, vec![v.to_string()])))
    }

    fn env(pairs: &[(&str, &str)]) -> Layer {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env_layer(|name| map.get(name).cloned())
    }

    fn file(text: &str) -> Result<Layer, ConfigError> {
        file_layer(text, Path::new("test.toml"))
    }

    /// The error for a file, whether reading or resolving it fails; `None` for invalid TOML.
    fn file_err(text: &str) -> Option<String> {
        match file(text) {
            Ok(layer) => Some(err_of(resolve(&[&layer]))),
            Err(e) if e.0.contains("unknown key") || e.0.contains("invalid value") => Some(e.0),
            Err(_) => None,
        }
    }

    fn err_of(r: Result<Settings, ConfigError>) -> String {
        r.expect_err("should be rejected").0
    }

    #[test]
    fn defaults() {
        let s = resolve(&[]).unwrap();
        assert_eq!(
            s.listen,
            vec!["0.0.0.0:1883".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.shards, default_shards());
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.max_connections, 1_000_000);
        assert_eq!(s.max_packet_size, 1_048_576);
        assert_eq!(s.max_inflight, 32);
        assert_eq!(s.max_queued_messages, 1000);
        assert_eq!(s.max_outgoing_bytes, 1_048_576);
        assert_eq!(s.connect_timeout, 10);
        assert_eq!(s.default_keep_alive, 60);
        assert_eq!(s.max_keep_alive, 65_535);
        assert_eq!(s.max_topic_levels, 128);
        assert_eq!(s.max_subscriptions_per_client, 1000);
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9883".parse().unwrap()));
        assert_eq!(s.io_memory, 512 * 1024);
        assert_eq!(s.ring_depth, 4096);
        assert_eq!(s.spin_us, 0);
        assert_eq!(s.log_level, "info");
        assert_eq!(s.log_format, LogFormat::Plain);
    }

    #[test]
    fn precedence_flag_over_env_over_file_over_default() {
        let f = file("max_inflight = 10\nmax_queued_messages = 11\nspin_us = 12\n").unwrap();
        let e = env(&[
            ("RINGMQ_MAX_INFLIGHT", "20"),
            ("RINGMQ_MAX_QUEUED_MESSAGES", "21"),
        ]);
        let fl = flags(&[("max_inflight", "30")]);
        let s = resolve(&[&fl, &e, &f]).unwrap();
        assert_eq!(s.max_inflight, 30); // flag
        assert_eq!(s.max_queued_messages, 21); // env
        assert_eq!(s.spin_us, 12); // file
        assert_eq!(s.connect_timeout, 10); // default
    }

    #[test]
    fn listen_from_each_layer() {
        let f = file("listen = [\"127.0.0.1:1\", \"[::1]:2\"]").unwrap();
        let s = resolve(&[&f]).unwrap();
        assert_eq!(s.listen.len(), 2);
        let e = env(&[("RINGMQ_LISTEN", "127.0.0.1:3, 127.0.0.1:4")]);
        let s = resolve(&[&e, &f]).unwrap();
        assert_eq!(
            s.listen,
            vec![
                "127.0.0.1:3".parse().unwrap(),
                "127.0.0.1:4".parse().unwrap()
            ]
        );
        let fl = flag_layer([("listen", vec!["127.0.0.1:5".into(), "127.0.0.1:6".into()])]);
        let s = resolve(&[&fl, &e, &f]).unwrap();
        assert_eq!(s.listen[1], "127.0.0.1:6".parse().unwrap());
        assert!(err_of(resolve(&[&file("listen = []").unwrap()])).contains("listen"));
        assert!(err_of(resolve(&[&env(&[("RINGMQ_LISTEN", "nope")])])).contains("listen"));
    }

    #[test]
    fn overridden_values_are_still_checked() {
        let f = file("max_inflight = 0").unwrap();
        let fl = flags(&[("max_inflight", "5")]);
        assert!(err_of(resolve(&[&fl, &f])).contains("config file test.toml"));
    }

    /// (key, rejected, accepted) for every range check.
    const RANGES: &[(&str, &str, &str)] = &[
        ("shards", "0", "1"),
        ("shards", "257", "256"),
        ("max_packet_size", "63", "64"),
        ("max_packet_size", "268435461", "268435460"),
        ("max_inflight", "0", "1"),
        ("max_inflight", "65536", "65535"),
        ("connect_timeout", "0", "1"),
        ("connect_timeout", "3601", "3600"),
        ("default_keep_alive", "65536", "0"),
        ("max_keep_alive", "0", "1"),
        ("max_keep_alive", "65536", "65535"),
        ("ring_depth", "64", "128"),
        ("ring_depth", "65536", "32768"),
        ("ring_depth", "1000", "1024"),
        ("max_connections", "-1", "0"),
        ("spin_us", "x", "0"),
        ("journal_segment_bytes", "65537", "4194304"),
        ("sys_interval", "86401", "0"),
    ];

    #[test]
    fn journal_segments_must_hold_the_largest_packet() {
        let e = err_of(resolve(&[&flags(&[
            ("journal_segment_bytes", "1048576"),
            ("max_packet_size", "1048576"),
        ])]));
        assert!(e.contains("at least twice max_packet_size"), "{e}");
        // Not given: the default grows to fit.
        let s = resolve(&[&flags(&[("max_packet_size", "100000000")])]).unwrap();
        assert_eq!(s.journal_segment_bytes, 1 << 28);
        let s = resolve(&[&flags(&[("fsync", "every=5")])]).unwrap();
        assert_eq!(s.fsync, Fsync::Every(5));
        for bad in ["every=0", "sometimes", "every=10001", "every="] {
            let e = err_of(resolve(&[&flags(&[("fsync", bad)])]));
            assert!(e.ends_with("expected always, never or every=<ms> with ms from 1 to 10000"));
            let f = file_err(&format!("fsync = \"{bad}\"")).unwrap();
            assert!(f.ends_with("expected always, never or every=<ms> with ms from 1 to 10000"));
        }
        let e = err_of(resolve(&[&flags(&[("journal_on_corruption", "ignore")])]));
        assert!(e.ends_with("expected one of refuse, move-aside"), "{e}");
        assert_eq!(s.journal_segment_bytes, 64 << 20);
    }

    #[test]
    fn range_checks_same_in_every_layer() {
        for (key, bad, good) in RANGES {
            let spec = spec(key).unwrap();
            let expect = format!("expected {}", spec.kind.accepted());
            let from_flag = err_of(resolve(&[&flags(&[(spec.key, bad)])]));
            let from_env = err_of(resolve(&[&env(&[(&env_name(key), bad)])]));
            let from_file = file_err(&format!("{key} = {bad}"))
                .unwrap_or_else(|| file_err(&format!("{key} = \"{bad}\"")).unwrap());
            for (msg, src) in [
                (&from_flag, flag_name(key)),
                (&from_env, env_name(key)),
                (&from_file, "test.toml".into()),
            ] {
                assert!(msg.contains(key), "{msg}");
                assert!(msg.ends_with(&expect), "{msg}");
                assert!(msg.contains(&src), "{msg}");
            }
            assert_eq!(
                from_flag.replace(&format!("flag {}", flag_name(key)), "X"),
                from_env.replace(&format!("environment variable {}", env_name(key)), "X"),
            );
            assert!(
                resolve(&[&flags(&[(spec.key, good)])]).is_ok(),
                "{key} = {good}"
            );
            assert!(
                resolve(&[&env(&[(&env_name(key), good)])]).is_ok(),
                "{key} = {good}"
            );
            assert!(
                resolve(&[&file(&format!("{key} = {good}")).unwrap()]).is_ok(),
                "{key}"
            );
        }
    }

    #[test]
    fn file_message_matches_flag_message() {
        let a = err_of(resolve(&[&file("max_inflight = 0").unwrap()]));
        let b = err_of(resolve(&[&flags(&[("max_inflight", "0")])]));
        assert_eq!(
            a,
            "invalid value 0 for max_inflight (from config file test.toml): \
             expected an integer from 1 to 65535"
        );
        assert_eq!(
            b,
            "invalid value \"0\" for max_inflight (from flag --max-inflight): \
             expected an integer from 1 to 65535"
        );
    }

    #[test]
    fn other_value_checks() {
        assert!(err_of(resolve(&[&flags(&[("log_format", "xml")])])).contains("one of plain, json"));
        assert!(
            resolve(&[&flags(&[("log_format", "json")])])
                .unwrap()
                .log_format
                == LogFormat::Json
        );
        assert!(err_of(resolve(&[&flags(&[("log_level", "a=b=c")])])).contains("log_level"));
        assert!(err_of(resolve(&[&flags(&[("data_dir", "")])])).contains("data_dir"));
        assert!(err_of(resolve(&[&flags(&[("metrics_addr", "9883")])])).contains("or none"));
        let s = resolve(&[&flags(&[("metrics_addr", "none")])]).unwrap();
        assert_eq!(s.metrics_addr, None);
        assert_eq!(resolve(&[&file(&s.to_toml()).unwrap()]).unwrap(), s);
        let e = env(&[("RINGMQ_METRICS_ADDR", "0.0.0.0:1234")]);
        assert_eq!(
            resolve(&[&e]).unwrap().metrics_addr,
            Some("0.0.0.0:1234".parse().unwrap())
        );
    }

    #[test]
    fn file_type_errors_name_key_given_and_accepted() {
        let e = file_err("max_inflight = \"64\"").unwrap();
        assert_eq!(
            e,
            "invalid value \"64\" for max_inflight (from config file test.toml): \
             expected an integer from 1 to 65535"
        );
        let e = file("listen = \"127.0.0.1:1883\"").unwrap_err().0;
        assert!(
            e.contains("listen") && e.contains("\"127.0.0.1:1883\"") && e.contains("list"),
            "{e}"
        );
        let e = file("log_format = 1").unwrap_err().0;
        assert!(
            e.contains("log_format") && e.contains("one of plain, json"),
            "{e}"
        );
        assert!(file("max_inflight = ").is_err());
    }

    #[test]
    fn unknown_key_rejected_with_accepted_keys() {
        let e = file("max_inflight = 5\nmax_infligth = 5\n").unwrap_err().0;
        assert!(e.contains("unknown key \"max_infligth\""), "{e}");
        for s in SPECS {
            assert!(e.contains(s.key), "{e}");
        }
    }

    #[test]
    fn print_config_round_trip() {
        let f = file("listen = [\"127.0.0.1:1\", \"[::1]:2\"]\ndata_dir = \"/tmp/a \\\"b\\\"\"\n")
            .unwrap();
        let fl = flags(&[
            ("max_inflight", "7"),
            ("log_format", "json"),
            ("log_level", "warn,x=debug"),
        ]);
        let s = resolve(&[&fl, &f]).unwrap();
        let text = s.to_toml();
        let again = resolve(&[&file(&text).unwrap()]).unwrap();
        assert_eq!(s, again);
        assert_eq!(again.to_toml(), text);
        // every key, in SPECS order
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" = ").next().unwrap())
            .collect();
        assert_eq!(keys, SPECS.iter().map(|s| s.key).collect::<Vec<_>>());
        let d = resolve(&[]).unwrap();
        assert_eq!(resolve(&[&file(&d.to_toml()).unwrap()]).unwrap(), d);
    }
}
