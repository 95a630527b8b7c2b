//! CONNECT negotiation as a pure function: from a CONNECT and the settings to what the client is
//! granted (inflight window, session expiry, keep-alive) and the CONNACK properties that tell an
//! MQTT 5 client so. No shard state: the shard applies the result (`state/connect.rs`).

use crate::config::Config;
use bytes::Bytes;
use ringmq_codec::{ByteStr, Connect, Properties};

/// An enhanced authentication exchange that succeeded: its method and final data.
pub type AuthDone = (ByteStr, Option<Vec<u8>>);

/// What one CONNECT is granted.
#[derive(Debug, PartialEq, Eq)]
pub struct Granted {
    /// Unacknowledged QoS 1/2 PUBLISHes toward the client: its Receive Maximum, capped by
    /// `--max-inflight`, at least 1.
    pub window: usize,
    /// Session Expiry Interval in seconds (`u32::MAX`: never; 0: ends with the connection).
    pub expiry_interval: u32,
    /// Keep-alive the server enforces, in seconds (0: none).
    pub keep_alive_s: u16,
    /// The CONNACK's properties (empty for MQTT 3.1.x).
    pub connack: Properties,
}

/// Negotiates a CONNECT accepted on its home shard. `assigned`: the client id the server gave
/// a client that sent none; `auth`: the enhanced authentication exchange it completed.
pub fn negotiate(
    cfg: &Config,
    c: &Connect,
    assigned: Option<ByteStr>,
    auth: Option<&AuthDone>,
) -> Granted {
    let v5 = c.protocol.is_v5();
    let window = c
        .properties
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(cfg.max_inflight)
        .max(1) as usize;
    let requested = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    // The server's maximum; an MQTT 5 client is told what it got [MQTT-3.2.2-?].
    let expiry_interval = requested.min(cfg.max_session_expiry);
    let (keep_alive_s, server_keep_alive) = keep_alive(cfg, c.keep_alive);
    let mut connack = Properties::default();
    if v5 {
        connack = capabilities(cfg);
        connack.server_keep_alive = server_keep_alive;
        connack.assigned_client_identifier = assigned;
        connack.session_expiry_interval = (requested != expiry_interval).then_some(expiry_interval);
        if let Some((method, data)) = auth {
            // The CONNACK names the method the exchange used (section 4.12).
            connack.authentication_method = Some(method.clone());
            connack.authentication_data = data.clone().map(Bytes::from);
        }
        if c.properties.request_response_information == Some(1) {
            // A topic prefix this client may use for responses (section 4.10).
            connack.response_information = Some(ByteStr::from(format!("response/{}", c.client_id)));
        }
    }
    Granted {
        window,
        expiry_interval,
        keep_alive_s,
        connack,
    }
}

/// The keep-alive enforced: the server's default for 0 and its maximum; `Some` when it differs
/// from what the client asked, which MQTT 5 clients are told as Server Keep Alive
/// [MQTT-3.2.2-21].
fn keep_alive(cfg: &Config, asked: u16) -> (u16, Option<u16>) {
    let mut keep_alive = asked;
    if keep_alive == 0 && cfg.default_keep_alive > 0 {
        keep_alive = cfg.default_keep_alive;
    }
    keep_alive = keep_alive.min(cfg.max_keep_alive);
    (keep_alive, (keep_alive != asked).then_some(keep_alive))
}

/// The server's limits and capabilities, as every MQTT 5 CONNACK announces them. Absent means
/// available (or QoS 2): only limits are announced.
fn capabilities(cfg: &Config) -> Properties {
    Properties {
        receive_maximum: Some(cfg.max_inflight),
        maximum_packet_size: Some(cfg.max_packet_size as u32),
        maximum_qos: (cfg.max_qos < 2).then_some(cfg.max_qos),
        retain_available: (!cfg.retain_available).then_some(0),
        wildcard_subscription_available: (!cfg.wildcard_subscriptions).then_some(0),
        subscription_identifier_available: (!cfg.subscription_identifiers).then_some(0),
        shared_subscription_available: (!cfg.shared_subscriptions).then_some(0),
        topic_alias_maximum: (cfg.topic_alias_maximum > 0).then_some(cfg.topic_alias_maximum),
        ..Properties::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_codec::ProtocolVersion;

    fn connect(protocol: ProtocolVersion, clean_start: bool, keep_alive: u16) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id: ByteStr::from("dev-1"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    #[test]
    fn keep_alive_gets_the_default_for_zero_and_the_maximum_above_it() {
        let cfg = Config {
            default_keep_alive: 60,
            max_keep_alive: 600,
            ..Config::default()
        };
        assert_eq!(keep_alive(&cfg, 0), (60, Some(60)));
        assert_eq!(keep_alive(&cfg, 30), (30, None));
        assert_eq!(keep_alive(&cfg, 601), (600, Some(600)));
        let none = Config {
            default_keep_alive: 0,
            ..cfg
        };
        assert_eq!(keep_alive(&none, 0), (0, None));
    }

    #[test]
    fn session_expiry_by_version_and_capped_by_the_server() {
        let cfg = Config {
            max_session_expiry: 3600,
            ..Config::default()
        };
        let g = negotiate(&cfg, &connect(ProtocolVersion::V311, true, 60), None, None);
        assert_eq!(g.expiry_interval, 0);
        assert!(g.connack.is_empty(), "3.1.1 CONNACKs carry no properties");
        let g = negotiate(&cfg, &connect(ProtocolVersion::V311, false, 60), None, None);
        assert_eq!(g.expiry_interval, 3600);
        let mut c = connect(ProtocolVersion::V5, false, 60);
        c.properties.session_expiry_interval = Some(u32::MAX);
        let g = negotiate(&cfg, &c, None, None);
        // [MQTT-3.2.2-?] the client is told the interval it got.
        assert_eq!(g.expiry_interval, 3600);
        assert_eq!(g.connack.session_expiry_interval, Some(3600));
        c.properties.session_expiry_interval = Some(10);
        assert_eq!(
            negotiate(&cfg, &c, None, None)
                .connack
                .session_expiry_interval,
            None
        );
    }

    #[test]
    fn window_is_the_smaller_receive_maximum_and_never_zero() {
        let cfg = Config {
            max_inflight: 32,
            ..Config::default()
        };
        let mut c = connect(ProtocolVersion::V5, true, 60);
        assert_eq!(negotiate(&cfg, &c, None, None).window, 32);
        c.properties.receive_maximum = Some(5);
        assert_eq!(negotiate(&cfg, &c, None, None).window, 5);
        c.properties.receive_maximum = Some(0);
        assert_eq!(negotiate(&cfg, &c, None, None).window, 1);
    }

    #[test]
    fn v5_connack_announces_limits_and_answers_requests() {
        let cfg = Config {
            max_qos: 1,
            retain_available: false,
            ..Config::default()
        };
        let mut c = connect(ProtocolVersion::V5, true, 0);
        c.properties.request_response_information = Some(1);
        let auth = (ByteStr::from("M"), Some(b"ok".to_vec()));
        let g = negotiate(&cfg, &c, Some(ByteStr::from("given")), Some(&auth));
        let p = &g.connack;
        assert_eq!(p.receive_maximum, Some(cfg.max_inflight));
        assert_eq!(p.maximum_qos, Some(1));
        assert_eq!(p.retain_available, Some(0));
        assert_eq!(p.wildcard_subscription_available, None);
        assert_eq!(p.server_keep_alive, Some(cfg.default_keep_alive));
        assert_eq!(p.assigned_client_identifier.as_deref(), Some("given"));
        assert_eq!(p.authentication_method.as_deref(), Some("M"));
        assert_eq!(p.authentication_data.as_deref(), Some(&b"ok"[..]));
        assert_eq!(p.response_information.as_deref(), Some("response/dev-1"));
    }
}
