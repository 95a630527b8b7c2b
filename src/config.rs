//! Layered configuration: built-in defaults < TOML file (`--config`) < environment variables
//! (`RINGMQ_<KEY>`) < command-line flags.
//!
//! # How settings are declared
//!
//! Each setting is declared once, as one entry of the `settings!` table in `config/table.rs`:
//!
//! ```text
//! /// Unacknowledged QoS 1/2 PUBLISHes per client in each direction, ...
//! max_inflight: u16 = "32", int(1, 65_535), "N" => max_inflight;
//! ```
//!
//! The doc comment is the `--help` text (with `[default: 32]` appended), the key names the flag
//! (`--max-inflight`), the TOML key and the environment variable (`RINGMQ_MAX_INFLIGHT`), the
//! type is the field of [`Settings`] and what `--print-config` writes, the kind is the check and
//! the "expected ..." of its error, and `=> field` (with `: |v| conversion` when the types
//! differ) is the field of the shard's `Config` it sets. The macro (`config/declare.rs`) is a
//! plain `macro_rules!`: no new dependency, no proc-macro crate, and the core crate stays free of
//! clap and toml. The shard's `Config` is built as one struct literal, so a `Config` field that
//! no entry sets, or that two entries set, does not compile; the tests check that every entry
//! changes `Config` (or is a process setting), prints, and reads back.
//!
//! Every layer produces raw text for some keys; one check per key (driven by its [`Kind`])
//! treats that text identically whichever layer it came from, so `max_inflight = 0` in the file
//! fails with the same "expected ..." as `--max-inflight 0`. Values in every layer are checked,
//! also when a higher layer overrides them.

mod declare;
mod kind;
mod listener;
mod table;
#[cfg(test)]
mod tests;

pub use declare::Spec;
pub use kind::Kind;
pub use ringmq_shard::config::Fsync;
pub use table::{LogFormat, Settings, SPECS};

use kind::{check, Val};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

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
        let list = spec.kind.is_list();
        let shown = if list {
            quoted(&values.join(","))
        } else {
            quoted(values.last().map_or("", String::as_str))
        };
        let values = if list {
            values
        } else {
            values.last().cloned().into_iter().collect()
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
        let values = if spec.kind.is_list() {
            text.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        } else {
            vec![text.clone()]
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
            (Kind::Addrs | Kind::Listeners, toml::Value::Array(items)) => {
                let mut v = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => v.push(s.to_owned()),
                        // A `[[listener]]` table, as inline TOML text (`config/listener.rs`).
                        toml::Value::Table(_) if matches!(spec.kind, Kind::Listeners) => {
                            v.push(item.to_string())
                        }
                        _ => return Err(invalid(spec, &shown, &source)),
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

/// The built-in default of `spec`, as raw text to be checked like any other value (a mistake in
/// the table then fails every run, and the tests).
fn default_raw(spec: &Spec) -> Raw {
    let text = spec
        .compute
        .map_or_else(|| spec.default.to_owned(), |f| f());
    Raw {
        shown: quoted(&text),
        values: vec![text],
        source: Source::Default,
    }
}

/// Merges `layers` (highest precedence first) over the built-in defaults. Every value of every
/// layer is checked, also those a higher layer overrides.
pub fn resolve(layers: &[&Layer]) -> Result<Settings, ConfigError> {
    let mut vals: BTreeMap<&'static str, Val> = BTreeMap::new();
    let mut given = BTreeSet::new();
    for spec in SPECS {
        let mut chosen = None;
        for layer in layers {
            if let Some(raw) = layer.get(spec.key) {
                let v = check(spec, raw)?;
                chosen.get_or_insert(v);
            }
        }
        let v = match chosen {
            Some(v) => {
                given.insert(spec.key);
                v
            }
            None => check(spec, &default_raw(spec))?,
        };
        vals.insert(spec.key, v);
    }
    let mut s = Settings::from_checked(vals);
    fit_journal_segments(&mut s, given.contains("journal_segment_bytes"))?;
    choose_listeners(&mut s, given.contains("listen"))?;
    Ok(s)
}

/// `listen`'s default address is for a broker started with no listener at all: URLs given
/// with `listener` replace it unless `listen` was given too. TLS listeners need their files.
fn choose_listeners(s: &mut Settings, listen_given: bool) -> Result<(), ConfigError> {
    if !s.listener.is_empty() && !listen_given {
        s.listen.clear();
    }
    if s.listen.is_empty() && s.listener.is_empty() {
        return Err(ConfigError(
            "no listener: give listen (ADDR:PORT) or listener (mqtt://ADDR:PORT, \
             mqtts://ADDR:PORT)"
                .into(),
        ));
    }
    if !s.ws_path.starts_with('/') {
        return Err(ConfigError(format!(
            "invalid value {} for ws_path: expected a path starting with /",
            quoted(&s.ws_path)
        )));
    }
    if s.listener.len() + s.listen.len() > 255 {
        return Err(ConfigError("at most 255 listeners".into()));
    }
    for l in s.listener.iter().filter(|l| l.is_tls()) {
        let own = l.own.as_deref().cloned().unwrap_or_default();
        let cert = own.tls_cert.is_some() || !s.tls_cert.is_empty();
        let key = own.tls_key.is_some() || !s.tls_key.is_empty();
        if !cert || !key {
            return Err(ConfigError(format!(
                "listener {l} needs tls_cert and tls_key (--tls-cert FILE --tls-key FILE, or \
                 in its [[listener]] table)"
            )));
        }
        let ca = own.tls_ca.is_some() || !s.tls_ca.is_empty();
        let require = own.require_certificate.unwrap_or(s.require_certificate);
        let crl = own.tls_crl.is_some() || !s.tls_crl.is_empty();
        if (require || crl) && !ca {
            return Err(ConfigError(format!(
                "listener {l}: require_certificate and tls_crl need tls_ca, the CA file \
                 client certificates are verified against"
            )));
        }
    }
    if (s.require_certificate || !s.tls_crl.is_empty()) && s.tls_ca.is_empty() {
        return Err(ConfigError(
            "require_certificate and tls_crl need tls_ca, the CA file client certificates \
             are verified against"
                .into(),
        ));
    }
    Ok(())
}

/// A journal record never spans segments; the largest is a delivery of the largest packet. The
/// default segment size grows to fit; a size given explicitly must fit.
fn fit_journal_segments(s: &mut Settings, given: bool) -> Result<(), ConfigError> {
    let largest = s.max_packet_size as u64;
    let need = (2 * largest).next_power_of_two();
    if s.journal_segment_bytes < need && !given {
        s.journal_segment_bytes = need;
    }
    if s.journal_segment_bytes < 2 * largest {
        return Err(ConfigError(format!(
            "invalid combination: journal_segment_bytes ({}) must be at least twice \
             max_packet_size ({largest}), so that the largest message fits in one journal \
             segment",
            s.journal_segment_bytes
        )));
    }
    Ok(())
}

impl Settings {
    /// The effective configuration as a TOML `--config` file: every key, in [`SPECS`] order.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# ringmq effective configuration\n");
        for (key, value) in self.values() {
            out.push_str(&format!("{key} = {value}\n"));
        }
        out
    }
}
