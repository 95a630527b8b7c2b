//! Listeners with settings of their own: a `[[listener]]` table of the config file (or an
//! inline table in the `listener` array) beside the plain URLs.
//!
//! ```toml
//! [[listener]]
//! url = "mqtts://0.0.0.0:8883"
//! tls_cert = "/etc/ringmq/broker.pem"
//! tls_key = "/etc/ringmq/broker.key"
//! max_handshakes = 500
//! sni = [{ tls_cert = "/etc/ringmq/other.pem", tls_key = "/etc/ringmq/other.key" }]
//! ```
//!
//! Through the layers a table travels as its inline TOML text (a `Raw` value is text), and is
//! parsed here, by the same check whichever layer it came from.

use ringmq_shard::config::{Listener, ListenerSettings, SniCert};
use std::path::PathBuf;

/// The keys a listener table accepts, in `--print-config` order.
pub const KEYS: &[&str] = &[
    "url",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_crl",
    "require_certificate",
    "use_identity_as_username",
    "allow_anonymous",
    "max_connections",
    "max_accept_rate",
    "max_handshakes",
    "sni",
    "ws_path",
    "ws_origins",
    "proxy_protocol",
];

/// A listener from one element of the `listener` list: a URL, or an inline table.
pub fn parse(text: &str) -> Result<Listener, String> {
    let text = text.trim();
    if !text.starts_with('{') {
        return Listener::parse(text).ok_or_else(|| format!("{text:?} is not a listener URL"));
    }
    let doc: toml::Table = format!("t = {text}")
        .parse()
        .map_err(|e| format!("not a TOML table: {e}"))?;
    match doc.get("t") {
        Some(toml::Value::Table(t)) => from_table(t),
        _ => Err("not a TOML table".into()),
    }
}

fn from_table(t: &toml::Table) -> Result<Listener, String> {
    if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key {k:?}; accepted keys: {}",
            KEYS.join(", ")
        ));
    }
    let url = match t.get("url") {
        Some(toml::Value::String(u)) => u,
        Some(_) => return Err("url must be a string".into()),
        None => return Err("a listener table needs url (mqtt://ADDR:PORT or mqtts://...)".into()),
    };
    let mut l = Listener::parse(url).ok_or_else(|| format!("url {url:?} is not a listener URL"))?;
    let own = ListenerSettings {
        tls_cert: path(t, "tls_cert")?,
        tls_key: path(t, "tls_key")?,
        tls_ca: path(t, "tls_ca")?,
        tls_crl: path(t, "tls_crl")?,
        require_certificate: boolean(t, "require_certificate")?,
        use_identity_as_username: boolean(t, "use_identity_as_username")?,
        allow_anonymous: boolean(t, "allow_anonymous")?,
        max_connections: int(t, "max_connections", usize::MAX as u64)?.map(|n| n as usize),
        max_accept_rate: int(t, "max_accept_rate", u32::MAX.into())?.map(|n| n as u32),
        max_handshakes: int(t, "max_handshakes", usize::MAX as u64)?.map(|n| n as usize),
        sni: sni(t)?,
        ws_path: match t.get("ws_path") {
            None => None,
            Some(toml::Value::String(p)) if p.starts_with('/') => Some(p.clone()),
            Some(_) => return Err("ws_path must be a path starting with /".into()),
        },
        proxy_protocol: boolean(t, "proxy_protocol")?.unwrap_or(false),
        ws_origins: match t.get("ws_origins") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("ws_origins must be a list of origins (\"https://app.example.com\")")?,
            Some(_) => return Err("ws_origins must be a list of origins".into()),
        },
    };
    let tls_only = [
        ("tls_cert", own.tls_cert.is_some()),
        ("tls_key", own.tls_key.is_some()),
        ("tls_ca", own.tls_ca.is_some()),
        ("tls_crl", own.tls_crl.is_some()),
        ("require_certificate", own.require_certificate.is_some()),
        (
            "use_identity_as_username",
            own.use_identity_as_username.is_some(),
        ),
        ("max_handshakes", own.max_handshakes.is_some()),
        ("sni", !own.sni.is_empty()),
    ];
    if let Some((k, _)) = tls_only.iter().find(|(_, set)| *set && !l.is_tls()) {
        return Err(format!("{k} is for TLS listeners; {url} is not one"));
    }
    let ws_only = [
        ("ws_path", own.ws_path.is_some()),
        ("ws_origins", !own.ws_origins.is_empty()),
    ];
    if let Some((k, _)) = ws_only.iter().find(|(_, set)| *set && !l.is_ws()) {
        return Err(format!("{k} is for WebSocket listeners; {url} is not one"));
    }
    if own != ListenerSettings::default() {
        l.own = Some(Box::new(own));
    }
    Ok(l)
}

fn path(t: &toml::Table, key: &str) -> Result<Option<PathBuf>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
        Some(_) => Err(format!("{key} must be a non-empty string (a path)")),
    }
}

fn boolean(t: &toml::Table, key: &str) -> Result<Option<bool>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{key} must be true or false")),
    }
}

fn int(t: &toml::Table, key: &str, max: u64) -> Result<Option<u64>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if *n >= 0 && (*n as u64) <= max => Ok(Some(*n as u64)),
        Some(_) => Err(format!(
            "{key} must be an integer from 0 to {max} (0: no limit)"
        )),
    }
}

fn sni(t: &toml::Table) -> Result<Vec<SniCert>, String> {
    let Some(v) = t.get("sni") else {
        return Ok(Vec::new());
    };
    let bad = || "sni must be a list of tables { tls_cert = FILE, tls_key = FILE }".to_owned();
    let items = v.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|item| {
            let c = item.as_table().ok_or_else(bad)?;
            if c.len() != 2 {
                return Err(bad());
            }
            match (path(c, "tls_cert")?, path(c, "tls_key")?) {
                (Some(tls_cert), Some(tls_key)) => Ok(SniCert { tls_cert, tls_key }),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The listener as `--print-config` writes it: its URL, or an inline table when it has
/// settings of its own (read back by [`parse`]).
pub fn to_toml(l: &Listener) -> toml::Value {
    let Some(own) = l.own.as_deref() else {
        return toml::Value::String(l.url());
    };
    let mut t = toml::Table::new();
    let s = |p: &PathBuf| toml::Value::String(p.display().to_string());
    t.insert("url".into(), toml::Value::String(l.url()));
    let paths = [
        ("tls_cert", &own.tls_cert),
        ("tls_key", &own.tls_key),
        ("tls_ca", &own.tls_ca),
        ("tls_crl", &own.tls_crl),
    ];
    for (k, v) in paths {
        if let Some(p) = v {
            t.insert(k.into(), s(p));
        }
    }
    let flags = [
        ("require_certificate", own.require_certificate),
        ("use_identity_as_username", own.use_identity_as_username),
        ("allow_anonymous", own.allow_anonymous),
    ];
    for (k, v) in flags {
        if let Some(b) = v {
            t.insert(k.into(), toml::Value::Boolean(b));
        }
    }
    let ints = [
        ("max_connections", own.max_connections.map(|n| n as u64)),
        ("max_accept_rate", own.max_accept_rate.map(u64::from)),
        ("max_handshakes", own.max_handshakes.map(|n| n as u64)),
    ];
    for (k, v) in ints {
        if let Some(n) = v {
            t.insert(
                k.into(),
                toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
            );
        }
    }
    if let Some(p) = &own.ws_path {
        t.insert("ws_path".into(), toml::Value::String(p.clone()));
    }
    if own.proxy_protocol {
        t.insert("proxy_protocol".into(), toml::Value::Boolean(true));
    }
    if !own.ws_origins.is_empty() {
        let list = own.ws_origins.iter().cloned().map(toml::Value::String);
        t.insert("ws_origins".into(), toml::Value::Array(list.collect()));
    }
    if !own.sni.is_empty() {
        let certs = own.sni.iter().map(|c| {
            let mut e = toml::Table::new();
            e.insert("tls_cert".into(), s(&c.tls_cert));
            e.insert("tls_key".into(), s(&c.tls_key));
            toml::Value::Table(e)
        });
        t.insert("sni".into(), toml::Value::Array(certs.collect()));
    }
    toml::Value::Table(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reads_back_as_printed() {
        let text = r#"{ url = "mqtts://127.0.0.1:8883", tls_cert = "c.pem", tls_key = "k.pem",
            allow_anonymous = false, max_connections = 10, max_accept_rate = 100,
            max_handshakes = 5, sni = [{ tls_cert = "b.pem", tls_key = "bk.pem" }] }"#;
        let l = parse(text).unwrap();
        let own = l.own.as_deref().unwrap();
        assert_eq!(own.max_handshakes, Some(5));
        assert_eq!(own.sni.len(), 1);
        assert_eq!(own.allow_anonymous, Some(false));
        let printed = to_toml(&l).to_string();
        assert_eq!(parse(&printed).unwrap(), l);
    }

    #[test]
    fn a_websocket_listener_keeps_its_path() {
        let l = parse(
            r#"{ url = "ws://127.0.0.1:8080", ws_path = "/ws", max_connections = 5,
                 ws_origins = ["https://a.example", "http://localhost:3000"] }"#,
        )
        .unwrap();
        assert!(l.is_ws());
        assert_eq!(l.own.as_deref().unwrap().ws_path.as_deref(), Some("/ws"));
        assert_eq!(parse(&to_toml(&l).to_string()).unwrap(), l);
    }

    #[test]
    fn a_url_alone_has_no_settings_of_its_own() {
        let l = parse(r#"{ url = "mqtt://127.0.0.1:1883" }"#).unwrap();
        assert_eq!(l, Listener::parse("mqtt://127.0.0.1:1883").unwrap());
        assert_eq!(to_toml(&l).to_string(), r#""mqtt://127.0.0.1:1883""#);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                r#"{ url = "mqtt://127.0.0.1:1", tls_cert = "c.pem" }"#,
                "tls_cert is for TLS",
            ),
            (
                r#"{ url = "mqtt://127.0.0.1:1", max_conections = 1 }"#,
                "unknown key",
            ),
            (r#"{ tls_cert = "c.pem" }"#, "needs url"),
            (r#"{ url = "http://127.0.0.1:1" }"#, "not a listener URL"),
            (
                r#"{ url = "mqtt://127.0.0.1:1", max_accept_rate = -1 }"#,
                "max_accept_rate",
            ),
            (
                r#"{ url = "mqtts://127.0.0.1:1", sni = ["x"] }"#,
                "sni must be",
            ),
            (
                r#"{ url = "mqtt://127.0.0.1:1", allow_anonymous = "no" }"#,
                "true or false",
            ),
            ("{ url = ", "not a TOML table"),
            (
                r#"{ url = "mqtt://127.0.0.1:1", ws_path = "/x" }"#,
                "ws_path is for WebSocket",
            ),
            (
                r#"{ url = "ws://127.0.0.1:1", ws_path = "x" }"#,
                "ws_path must be",
            ),
            (
                r#"{ url = "mqtts://127.0.0.1:1", ws_origins = ["https://a"] }"#,
                "ws_origins is for WebSocket",
            ),
            (
                r#"{ url = "ws://127.0.0.1:1", ws_origins = [1] }"#,
                "ws_origins must be",
            ),
            (
                r#"{ url = "ws://127.0.0.1:1", tls_cert = "c.pem" }"#,
                "tls_cert is for TLS",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
