//! The machinery behind the one declaration of each setting in `table.rs`: the `settings!`
//! macro, what it expands an entry into ([`Spec`], a typed field of `Settings`, a field of the
//! shard's `Config`), and the [`Value`] conversions between checked values, typed fields and
//! TOML.

use super::kind::{Kind, Val};
use super::Fsync;
use clap::ArgAction;
use ringmq_shard::config::Listener;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One setting as data, for the code that treats every setting alike: the layers, the checks,
/// the flags and the messages.
#[derive(Debug)]
pub struct Spec {
    /// The TOML key; the flag is `--` + key with `_` → `-`, the environment variable `RINGMQ_`
    /// + the key in upper case.
    pub key: &'static str,
    /// The key with `_` → `-`, made at compile time because clap takes `&'static str` names.
    pub long: &'static str,
    pub kind: Kind,
    /// The built-in default as it would be written after the flag; for a computed default,
    /// what it is (shown in `--help`).
    pub default: &'static str,
    /// Computes a default that depends on the machine; `None`: `default` is the value.
    pub compute: Option<fn() -> String>,
    /// Placeholder for the value in `--help`.
    pub value_name: &'static str,
    /// The entry's doc comment, one element per line; `--help` joins them.
    pub help: &'static [&'static str],
    /// The field of the shard's `Config` this setting sets; `None` for process settings
    /// (logging), which the binary uses itself. Only the tests read it: they check that the
    /// setting changes that field and no other.
    #[cfg_attr(not(test), allow(dead_code))]
    pub target: Option<&'static str>,
}

impl Spec {
    /// The `--help` text: the doc comment and the default, so that neither can be forgotten.
    pub fn help_text(&self) -> String {
        let lines: Vec<&str> = self
            .help
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        format!("{} [default: {}]", lines.join(" "), self.default)
    }

    /// The command-line flag. Values stay strings: they are checked with the other layers.
    pub fn arg(&self) -> clap::Arg {
        let action = if self.kind.is_list() {
            ArgAction::Append
        } else {
            ArgAction::Set
        };
        clap::Arg::new(self.key)
            .long(self.long)
            .value_name(self.value_name)
            .help(self.help_text())
            .action(action)
    }
}

/// `N` bytes of `key` with `_` → `-`; `N` must be `key.len()` (the macro passes it).
pub const fn dashed<const N: usize>(key: &str) -> [u8; N] {
    let bytes = key.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if bytes[i] == b'_' { b'-' } else { bytes[i] };
        i += 1;
    }
    out
}

/// A type a setting may be declared with: made from the checked value its kind gives, and
/// written back as TOML by `--print-config` (which must read back to the same value).
pub trait Value: Sized {
    /// `Err` returns the value when it does not fit the type: a kind that does not match the
    /// declared type, a mistake in the table that the tests catch.
    fn from_checked(v: Val) -> Result<Self, Val>;
    fn to_toml(&self) -> toml::Value;
}

/// The typed value of `key`, for the code the macro generates.
pub fn typed<T: Value>(key: &str, v: Option<Val>) -> T {
    let v = v.unwrap_or_else(|| panic!("{key} was not resolved"));
    T::from_checked(v)
        .unwrap_or_else(|v| panic!("{key}: its kind gives {v:?}, which its type cannot hold"))
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn from_checked(v: Val) -> Result<Self, Val> {
                match v {
                    Val::Int(n) => <$t>::try_from(n).map_err(|_| Val::Int(n)),
                    other => Err(other),
                }
            }
            fn to_toml(&self) -> toml::Value {
                // TOML integers are i64; only a flag or variable can give more (and the
                // printed file then says the largest TOML can hold).
                toml::Value::Integer(i64::try_from(*self as u64).unwrap_or(i64::MAX))
            }
        }
    )*};
}

int_value!(u8, u16, u32, u64, usize);

/// A `Value` whose check gives one [`Val`] variant and whose TOML is one `toml::Value` variant.
macro_rules! plain_value {
    ($t:ty, $val:ident($v:ident) => $make:expr, $this:ident => $toml:ident($show:expr)) => {
        impl Value for $t {
            fn from_checked(v: Val) -> Result<Self, Val> {
                match v {
                    Val::$val($v) => Ok($make),
                    other => Err(other),
                }
            }
            fn to_toml(&self) -> toml::Value {
                let $this = self;
                toml::Value::$toml($show)
            }
        }
    };
}

plain_value!(bool, Bool(b) => b, this => Boolean(*this));
plain_value!(String, Text(s) => s, this => String(this.clone()));
plain_value!(PathBuf, Text(s) => PathBuf::from(s), this => String(this.display().to_string()));
plain_value!(Option<SocketAddr>, Addr(a) => a,
    this => String(this.map_or_else(|| "none".to_owned(), |a| a.to_string())));
plain_value!(Vec<SocketAddr>, Addrs(a) => a,
    this => Array(this.iter().map(|a| toml::Value::String(a.to_string())).collect()));
plain_value!(Vec<Listener>, Listeners(l) => l,
    this => Array(this.iter().map(super::listener::to_toml).collect()));
plain_value!(Fsync, Fsync(f) => f, this => String(match this {
    Fsync::Always => "always".to_owned(),
    Fsync::Never => "never".to_owned(),
    Fsync::Every(period) => format!("every={}", period.as_millis()),
}));

/// An enum whose variants are the words of a [`Kind::Choice`]: `WORDS` is that kind's list, so
/// the words are written once, here.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident = $word:literal),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),*];
        }

        impl $crate::config::declare::Value for $name {
            fn from_checked(
                v: $crate::config::kind::Val,
            ) -> Result<Self, $crate::config::kind::Val> {
                match v {
                    $($crate::config::kind::Val::Text(w) if w == $word => Ok($name::$variant),)*
                    other => Err(other),
                }
            }
            fn to_toml(&self) -> toml::Value {
                toml::Value::String(match self { $($name::$variant => $word,)* }.to_owned())
            }
        }
    };
}

pub(crate) use choice;

/// Expands the table of settings (see `table.rs` and the module documentation of
/// [`crate::config`]) into [`SPECS`](super::SPECS), `Settings` (one typed field per setting),
/// `Settings::from_checked`, `Settings::values` (for `--print-config`) and
/// `Settings::into_config`. `into_config` is one struct literal of the shard's `Config`, so a
/// field of `Config` that no entry (or `not_settings`) sets, or that two entries set, does not
/// compile.
macro_rules! settings {
    (@compute) => { None };
    (@compute $f:path) => { Some($f as fn() -> String) };
    (@into $value:expr) => { $value };
    (@into $value:expr, |$v:ident| $convert:expr) => {{ let $v = $value; $convert }};
    (@long $key:ident) => {{
        const KEY: &str = stringify!($key);
        const LONG: [u8; KEY.len()] = $crate::config::declare::dashed(KEY);
        match ::std::str::from_utf8(&LONG) {
            Ok(long) => long,
            Err(_) => panic!("keys are ASCII"),
        }
    }};
    (@spec $key:ident, $default:literal, [$($compute:path)?], $kind:expr, $value_name:literal,
        [$($doc:literal),*], $target:expr) => {
        $crate::config::declare::Spec {
            key: stringify!($key),
            long: $crate::config::declare::settings!(@long $key),
            kind: $kind,
            default: $default,
            compute: $crate::config::declare::settings!(@compute $($compute)?),
            value_name: $value_name,
            help: &[$($doc),*],
            target: $target,
        }
    };
    (
        core { $(
            $(#[doc = $doc:literal])*
            $key:ident: $ty:ty = $default:literal $(by $compute:path)?, $kind:expr,
                $value_name:literal => $field:ident $(: |$v:ident| $convert:expr)?;
        )* }
        process { $(
            $(#[doc = $pdoc:literal])*
            $pkey:ident: $pty:ty = $pdefault:literal, $pkind:expr, $pvalue_name:literal;
        )* }
        not_settings { $($unset:ident),* $(,)? }
    ) => {
        /// Every setting, in the order of the table, which is the order `--print-config` writes
        /// them in.
        pub const SPECS: &[$crate::config::declare::Spec] = &[
            $($crate::config::declare::settings!(@spec $key, $default, [$($compute)?], $kind,
                $value_name, [$($doc),*], Some(stringify!($field))),)*
            $($crate::config::declare::settings!(@spec $pkey, $pdefault, [], $pkind,
                $pvalue_name, [$($pdoc),*], None),)*
        ];

        /// The effective configuration after merging every layer: one field per setting,
        /// named as its key.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $($(#[doc = $doc])* pub $key: $ty,)*
            $($(#[doc = $pdoc])* pub $pkey: $pty,)*
        }

        impl Settings {
            /// The typed settings from one checked value per key.
            pub(crate) fn from_checked(
                mut vals: ::std::collections::BTreeMap<&'static str, $crate::config::kind::Val>,
            ) -> Settings {
                use $crate::config::declare::typed;
                Settings {
                    $($key: typed(stringify!($key), vals.remove(stringify!($key))),)*
                    $($pkey: typed(stringify!($pkey), vals.remove(stringify!($pkey))),)*
                }
            }

            /// Every setting's value as TOML, in [`SPECS`] order.
            pub fn values(&self) -> Vec<(&'static str, toml::Value)> {
                use $crate::config::declare::Value;
                vec![
                    $((stringify!($key), self.$key.to_toml()),)*
                    $((stringify!($pkey), self.$pkey.to_toml()),)*
                ]
            }

            /// The shard's configuration; the process settings are left to the caller.
            pub fn into_config(self) -> Config {
                let unset = Config::default();
                Config {
                    $($field: $crate::config::declare::settings!(@into self.$key
                        $(, |$v| $convert)?),)*
                    $($unset: unset.$unset,)*
                }
            }
        }
    };
}

pub(crate) use settings;
