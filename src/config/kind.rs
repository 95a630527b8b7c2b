//! What a setting accepts: its [`Kind`], the sentence error messages use for it, and the one
//! check that turns the raw text of any layer into a [`Val`].

use super::{invalid, Raw, Spec};
use super::{ConfigError, Fsync};
use ringmq_shard::config::Listener;
use std::net::SocketAddr;
use std::time::Duration;

/// How a key's value is checked.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Integer in `min..=max`.
    Int { min: u64, max: u64 },
    /// Power of two in `min..=max`.
    Pow2 { min: u64, max: u64 },
    /// List of socket addresses (a command line gives at least one).
    Addrs,
    /// List of listener URLs (`mqtt://ADDR:PORT`, `mqtts://ADDR:PORT`), possibly empty.
    Listeners,
    /// One socket address, or `none`.
    AddrOrNone,
    /// Any non-empty string (a path).
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

pub const fn int(min: u64, max: u64) -> Kind {
    Kind::Int { min, max }
}

pub const fn pow2(min: u64, max: u64) -> Kind {
    Kind::Pow2 { min, max }
}

/// Any integer that fits in u64; described as "a non-negative integer".
pub const ANY: Kind = int(0, u64::MAX);

impl Kind {
    /// Whether the key takes a list (repeatable flag, comma-separated variable, TOML array).
    pub fn is_list(self) -> bool {
        matches!(self, Kind::Addrs | Kind::Listeners)
    }

    /// What the key accepts, as said in error messages.
    pub fn accepted(self) -> String {
        match self {
            Kind::Int {
                min: 0,
                max: u64::MAX,
            } => "a non-negative integer".into(),
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Pow2 { min, max } => format!("a power of two from {min} to {max}"),
            Kind::Addrs => "a list of ADDR:PORT socket addresses (e.g. 127.0.0.1:1883)".into(),
            Kind::Listeners => "a list of listener URLs: mqtt://ADDR:PORT, mqtts://ADDR:PORT, \
                 ws://ADDR:PORT or wss://ADDR:PORT (e.g. mqtts://0.0.0.0:8883), or of [[listener]] tables with a url"
                .into(),
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

/// A checked value, in the shape its [`Kind`] gives; the setting's declared type is made from
/// it (see [`super::declare::Value`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(u64),
    Bool(bool),
    Text(String),
    Addrs(Vec<SocketAddr>),
    Listeners(Vec<Listener>),
    Addr(Option<SocketAddr>),
    Fsync(Fsync),
}

/// Checks one layer's raw value of `spec`; the same code for every layer, so a value is
/// accepted or refused with the same words wherever it was written.
pub fn check(spec: &Spec, raw: &Raw) -> Result<Val, ConfigError> {
    let bad = || invalid(spec, &raw.shown, &raw.source);
    let one = raw.values.first().map_or("", String::as_str).trim();
    let in_range = |min: u64, max: u64, pow2: bool| {
        let n: u64 = one.parse().map_err(|_| bad())?;
        if (min..=max).contains(&n) && (!pow2 || n.is_power_of_two()) {
            Ok(Val::Int(n))
        } else {
            Err(bad())
        }
    };
    match spec.kind {
        Kind::Int { min, max } => in_range(min, max, false),
        Kind::Pow2 { min, max } => in_range(min, max, true),
        Kind::Listeners => {
            let items = raw.values.iter().filter(|s| !s.trim().is_empty());
            let parsed = items.map(|s| match super::listener::parse(s) {
                Ok(l) => Ok(l),
                Err(_) if !s.trim().starts_with('{') => Err(bad()),
                Err(e) => Err(ConfigError(format!(
                    "invalid listener table {} (from {}): {e}",
                    s.trim(),
                    raw.source
                ))),
            });
            Ok(Val::Listeners(parsed.collect::<Result<_, _>>()?))
        }
        Kind::Addrs => {
            let addrs = raw.values.iter().map(|s| s.trim().parse::<SocketAddr>());
            Ok(Val::Addrs(
                addrs.collect::<Result<_, _>>().map_err(|_| bad())?,
            ))
        }
        Kind::AddrOrNone if one == "none" => Ok(Val::Addr(None)),
        Kind::AddrOrNone => Ok(Val::Addr(Some(one.parse().map_err(|_| bad())?))),
        // The path as given (not trimmed): only its being empty is refused.
        Kind::Path if one.is_empty() => Err(bad()),
        Kind::Path => Ok(Val::Text(raw.values[0].clone())),
        Kind::Choice(words) if words.contains(&one) => Ok(Val::Text(one.to_owned())),
        Kind::Choice(_) => Err(bad()),
        Kind::Bool => match one {
            "true" => Ok(Val::Bool(true)),
            "false" => Ok(Val::Bool(false)),
            _ => Err(bad()),
        },
        // Untrimmed and possibly empty: a secret or a server reference is taken as written.
        Kind::Text => Ok(Val::Text(raw.values.first().cloned().unwrap_or_default())),
        Kind::Fsync => check_fsync(one).map(Val::Fsync).ok_or_else(bad),
        Kind::Filter => {
            tracing_subscriber::EnvFilter::try_new(one).map_err(|_| bad())?;
            Ok(Val::Text(one.to_owned()))
        }
    }
}

fn check_fsync(word: &str) -> Option<Fsync> {
    match word {
        "always" => Some(Fsync::Always),
        "never" => Some(Fsync::Never),
        _ => {
            let ms: u64 = word.strip_prefix("every=")?.parse().ok()?;
            (1..=10_000)
                .contains(&ms)
                .then(|| Fsync::Every(Duration::from_millis(ms)))
        }
    }
}
