use super::table::default_shards;
use super::*;
use ringmq_shard::Config;
use std::net::SocketAddr;
use std::time::Duration;

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
    assert_eq!(s.shards.to_string(), default_shards());
    assert_eq!(s.data_dir, PathBuf::from("./data"));
    assert_eq!(s.max_connections, 1_000_000);
    assert_eq!(s.max_packet_size, 1_048_576);
    assert_eq!(s.max_inflight, 32);
    assert_eq!(s.max_queued_messages, 100_000);
    assert_eq!(s.max_queued_bytes, 64 << 20);
    assert_eq!(s.max_outgoing_bytes, 1_048_576);
    assert_eq!(s.connect_timeout, 10);
    assert_eq!(s.default_keep_alive, 60);
    assert_eq!(s.max_keep_alive, 65_535);
    assert_eq!(s.max_topic_levels, 128);
    assert_eq!(s.max_subscriptions_per_client, 1000);
    assert_eq!(s.metrics_addr, Some("127.0.0.1:9883".parse().unwrap()));
    assert_eq!(s.io_memory, 512 * 1024);
    assert_eq!(s.ring_depth, 4096);
    assert_eq!(s.receive_buffers, 512);
    assert_eq!(s.batch_window_us, 200);
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
    assert_eq!(s.fsync, Fsync::Every(Duration::from_millis(5)));
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
    let f =
        file("listen = [\"127.0.0.1:1\", \"[::1]:2\"]\ndata_dir = \"/tmp/a \\\"b\\\"\"\n").unwrap();
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

/// A valid value of `spec` other than its default.
fn other_value(spec: &Spec) -> String {
    let default = default_raw(spec).values.remove(0);
    let n: u64 = default.parse().unwrap_or(0);
    match spec.kind {
        Kind::Int { min, .. } => if n == min { min + 1 } else { min }.to_string(),
        Kind::Pow2 { max, .. } => if n * 2 <= max { n * 2 } else { n / 2 }.to_string(),
        Kind::Bool => (default != "true").to_string(),
        Kind::Choice(words) => words.iter().find(|w| **w != default).unwrap().to_string(),
        Kind::Addrs => "127.0.0.1:1".into(),
        Kind::Listeners => "mqtt://127.0.0.1:1".into(),
        Kind::AddrOrNone if default == "none" => "127.0.0.1:1".into(),
        Kind::AddrOrNone => "none".into(),
        Kind::Path | Kind::Text => format!("{default}-other"),
        Kind::Fsync if default == "always" => "never".into(),
        Kind::Fsync => "always".into(),
        Kind::Filter => format!("{default},other=trace"),
    }
}

/// What a setting cannot be given without.
fn companions(key: &str) -> &'static [(&'static str, &'static str)] {
    match key {
        "require_certificate" | "tls_crl" => &[("tls_ca", "ca.pem")],
        _ => &[],
    }
}

/// `{:#?}` of a `Config` split into its top-level fields: name -> the text of its value (which
/// may span lines).
fn config_fields(c: &Config) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut current = String::new();
    for line in format!("{c:#?}").lines().skip(1) {
        let top = line.strip_prefix("    ").filter(|l| !l.starts_with(' '));
        if let Some((name, _)) = top.and_then(|l| l.split_once(':')) {
            current = name.to_owned();
        }
        fields
            .entry(current.clone())
            .or_insert_with(String::new)
            .push_str(line);
    }
    fields
}

/// The safety net of the table: a setting whose value does not reach the field of `Config` it
/// declares (or reaches another), or that `--print-config` does not write so that it reads back,
/// fails here.
#[test]
fn every_setting_is_wired_into_config_and_print_config() {
    let defaults = resolve(&[]).unwrap();
    let default_fields = config_fields(&defaults.clone().into_config());
    assert!(default_fields.len() > 30, "{default_fields:?}");
    for spec in SPECS {
        let value = other_value(spec);
        // A setting that needs another is given with it, and compared to that one alone.
        let needs = companions(spec.key);
        let defaults = resolve(&[&flags(needs)]).unwrap();
        let default_toml = defaults.to_toml();
        let default_fields = config_fields(&defaults.clone().into_config());
        let mut given = needs.to_vec();
        given.push((spec.key, &value));
        let s = resolve(&[&flags(&given)]).unwrap();
        assert_ne!(s, defaults, "{} = {value}", spec.key);
        // Listeners by URL replace listen's default address.
        let (also_key, also_field) = match spec.key {
            "listener" => (Some("listen"), Some("listen")),
            _ => (None, None),
        };
        // --print-config: this key's line changes, no other; the output reads back the same.
        let text = s.to_toml();
        let changed: Vec<&str> = text
            .lines()
            .filter(|l| !default_toml.lines().any(|d| d == *l))
            .map(|l| l.split(" = ").next().unwrap())
            .collect();
        let mut expected_keys: Vec<&str> = also_key.into_iter().collect();
        expected_keys.push(spec.key);
        assert_eq!(changed, expected_keys, "{text}");
        assert_eq!(resolve(&[&file(&text).unwrap()]).unwrap(), s, "{text}");
        // Config: the declared field changes, no other (none for the process settings).
        let fields = config_fields(&s.into_config());
        let differ: Vec<&str> = fields
            .iter()
            .filter(|(k, v)| default_fields.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .collect();
        let mut expected: Vec<&str> = also_field.into_iter().chain(spec.target).collect();
        expected.sort();
        assert_eq!(differ, expected, "{} = {value}", spec.key);
    }
    let process: Vec<&str> = SPECS
        .iter()
        .filter(|s| s.target.is_none())
        .map(|s| s.key)
        .collect();
    assert_eq!(process, ["log_level", "log_format"]);
}

/// A kind that accepts more than the declared type holds is a mistake in the table: the
/// conversion panics naming the key.
#[test]
fn every_accepted_integer_fits_the_declared_type() {
    for spec in SPECS {
        let (Kind::Int { min, max } | Kind::Pow2 { min, max }) = spec.kind else {
            continue;
        };
        for n in [min, max] {
            let mut vals: BTreeMap<&'static str, Val> = SPECS
                .iter()
                .map(|s| (s.key, check(s, &default_raw(s)).unwrap()))
                .collect();
            vals.insert(spec.key, Val::Int(n));
            let s = Settings::from_checked(vals);
            let printed = s
                .values()
                .into_iter()
                .find(|(k, _)| *k == spec.key)
                .unwrap();
            let expect = i64::try_from(n).unwrap_or(i64::MAX);
            assert_eq!(printed.1, toml::Value::Integer(expect), "{}", spec.key);
        }
    }
}

/// docs/configuration.md has a row for every setting with its flag, variable and default, and
/// its example file is complete and holds the defaults (except `shards`).
#[test]
fn docs_describe_every_setting() {
    let docs = include_str!("../../docs/configuration.md");
    let defaults = resolve(&[]).unwrap();
    for (key, value) in defaults.values() {
        let spec = spec(key).unwrap();
        let row = docs
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("no row for {key}"));
        assert!(row.contains(&format!("`{}`", flag_name(key))), "{row}");
        assert!(row.contains(&format!("`{}`", env_name(key))), "{row}");
        let default = match spec.compute {
            Some(_) => spec.default.to_owned(),
            None => format!("`{value}`"),
        };
        assert!(row.contains(&default), "{row} lacks {default}");
    }
    let example = docs
        .split("```toml\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .unwrap();
    let layer = file(example).unwrap();
    assert_eq!(layer.len(), SPECS.len(), "{example}");
    let shards = default_shards();
    let s = resolve(&[&flags(&[("shards", &shards)]), &layer]).unwrap();
    assert_eq!(s, defaults);
}

/// The core's `Config::default()` (for tests and embedding) keeps the table's defaults, except
/// that it starts no metrics endpoint and no $SYS publications (and one shard, which may also be
/// the number of cores).
#[test]
fn core_default_follows_the_table() {
    let table = config_fields(&resolve(&[]).unwrap().into_config());
    let core = config_fields(&Config::default());
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        core.keys().collect::<Vec<_>>()
    );
    let differ: Vec<&str> = table
        .iter()
        .filter(|(k, v)| k.as_str() != "shards" && core.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(differ, ["metrics_addr", "sys_interval"]);
    assert_eq!(core["shards"], "    shards: 1,");
}
