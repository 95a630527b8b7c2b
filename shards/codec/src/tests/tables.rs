//! Byte-literal tables: each row is decoded and compared with the packet, and the packet is
//! encoded and compared with the bytes (canonical encodings), for every packet type and version.
//! A second table holds non-canonical encodings that decode but do not re-encode identically.

use super::*;

struct Case {
    name: &'static str,
    versions: &'static [ProtocolVersion],
    bytes: &'static [u8],
    packet: Packet,
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s("test"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(qos: QoS, topic: &'static str, id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: s(topic),
        packet_id: id.map(pid),
        payload: b(payload),
        properties: None,
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |name, versions, bytes, packet| {
        v.push(Case {
            name,
            versions,
            bytes,
            packet,
        })
    };
    // ---- CONNECT
    add(
        "CONNECT 3.1.1 minimal",
        &[V311],
        &[
            0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b't', b'e', b's', b't',
        ],
        Packet::Connect(Box::new(connect(V311))),
    );
    add(
        "CONNECT 3.1 (MQIsdp, level 3)",
        &[V31, V311, V5],
        &[
            0x10, 0x12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 4, b't', b'e',
            b's', b't',
        ],
        Packet::Connect(Box::new(connect(V31))),
    );
    add(
        "CONNECT 3.1.1 with will, user name, password",
        &[V311],
        &[
            0x10, 0x1D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 10, 0, 3, b'c', b'i', b'd', 0, 1,
            b'w', 0, 2, b'h', b'i', 0, 1, b'u', 0, 2, b'p', b'w',
        ],
        Packet::Connect(Box::new(Connect {
            keep_alive: 10,
            client_id: s("cid"),
            will: Some(LastWill {
                topic: s("w"),
                payload: b(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            }),
            username: Some(s("u")),
            password: Some(b(b"pw")),
            ..connect(V311)
        })),
    );
    add(
        "CONNECT 5.0 with properties",
        &[V5, V311],
        &[
            0x10, 0x16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 8, 0x11, 0, 0, 0, 10, 0x21,
            0, 20, 0, 1, b'c',
        ],
        Packet::Connect(Box::new(Connect {
            client_id: s("c"),
            properties: Properties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(20),
                ..Properties::default()
            },
            ..connect(V5)
        })),
    );
    add(
        "CONNECT 5.0 will properties, password without user name",
        &[V5],
        &[
            0x10, 0x1F, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x46, 0, 60, 0, 0, 1, b'c', 7, 0x01, 1,
            0x18, 0, 0, 0, 5, 0, 1, b't', 0, 1, b'x', 0, 1, b'p',
        ],
        Packet::Connect(Box::new(Connect {
            client_id: s("c"),
            will: Some(LastWill {
                topic: s("t"),
                payload: b(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties {
                    payload_format_indicator: Some(1),
                    will_delay_interval: Some(5),
                    ..Properties::default()
                },
            }),
            password: Some(b(b"p")),
            ..connect(V5)
        })),
    );
    // ---- CONNACK
    add(
        "CONNACK 3.1.1 session present, accepted",
        &[V311],
        &[0x20, 2, 1, 0],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        })),
    );
    add(
        "CONNACK 3.1.x return code 5 = Not authorized",
        &[V31, V311],
        &[0x20, 2, 0, 5],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: Properties::default(),
        })),
    );
    add(
        "CONNACK 3.1 return code 2 = identifier rejected",
        &[V31],
        &[0x20, 2, 0, 2],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            properties: Properties::default(),
        })),
    );
    add(
        "CONNACK 5.0 with properties",
        &[V5],
        &[0x20, 9, 0, 0, 6, 0x12, 0, 1, b'a', 0x24, 1],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: Properties {
                assigned_client_identifier: Some(s("a")),
                maximum_qos: Some(1),
                ..Properties::default()
            },
        })),
    );
    add(
        "CONNACK 5.0 refused 0x9F",
        &[V5],
        &[0x20, 3, 0, 0x9F, 0],
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason: ReasonCode::CONNECTION_RATE_EXCEEDED,
            properties: Properties::default(),
        })),
    );
    // ---- PUBLISH
    add(
        "PUBLISH 3.1.x QoS 0",
        &[V31, V311],
        &[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'],
        Packet::Publish(publish(QoS::AtMostOnce, "a/b", None, b"hi")),
    );
    add(
        "PUBLISH 3.1.x QoS 1 DUP RETAIN",
        &[V31, V311],
        &[0x3B, 8, 0, 3, b'a', b'/', b'b', 0, 10, b'x'],
        Packet::Publish(Publish {
            dup: true,
            retain: true,
            ..publish(QoS::AtLeastOnce, "a/b", Some(10), b"x")
        }),
    );
    add(
        "PUBLISH 3.1.1 empty payload, U+FEFF kept [MQTT-1.5.4-3]",
        &[V311],
        &[0x30, 6, 0, 4, 0xEF, 0xBB, 0xBF, b'a'],
        Packet::Publish(publish(QoS::AtMostOnce, "\u{FEFF}a", None, b"")),
    );
    add(
        "PUBLISH 5.0 QoS 0 no properties",
        &[V5],
        &[0x30, 5, 0, 1, b't', 0, b'p'],
        Packet::Publish(publish(QoS::AtMostOnce, "t", None, b"p")),
    );
    add(
        "PUBLISH 5.0 QoS 2 with subscription ids and topic alias",
        &[V5],
        &[
            0x34, 15, 0, 1, b't', 0, 5, 8, 0x0B, 5, 0x0B, 0x81, 1, 0x23, 0, 3, b'p',
        ],
        Packet::Publish(Publish {
            properties: Some(Box::new(Properties {
                subscription_identifiers: vec![5, 129],
                topic_alias: Some(3),
                ..Properties::default()
            })),
            ..publish(QoS::ExactlyOnce, "t", Some(5), b"p")
        }),
    );
    add(
        "PUBLISH 5.0 empty topic with Topic Alias [3.3.2.3.4]",
        &[V5],
        &[0x30, 7, 0, 0, 3, 0x23, 0, 1, b'p'],
        Packet::Publish(Publish {
            properties: Some(Box::new(Properties {
                topic_alias: Some(1),
                ..Properties::default()
            })),
            ..publish(QoS::AtMostOnce, "", None, b"p")
        }),
    );
    // ---- PUBACK / PUBREC / PUBREL / PUBCOMP
    add(
        "PUBACK (5.0 short form)",
        &[V31, V311, V5],
        &[0x40, 2, 0, 1],
        Packet::PubAck(PubResp::new(pid(1))),
    );
    add(
        "PUBREC 5.0 reason 0x10 without properties",
        &[V5],
        &[0x50, 3, 0, 1, 0x10],
        Packet::PubRec(PubResp::with_reason(
            pid(1),
            ReasonCode::NO_MATCHING_SUBSCRIBERS,
        )),
    );
    add(
        "PUBREC 3.1.x",
        &[V31, V311],
        &[0x50, 2, 0xFF, 0xFF],
        Packet::PubRec(PubResp::new(pid(0xFFFF))),
    );
    add(
        "PUBREL 3.1.x",
        &[V31, V311, V5],
        &[0x62, 2, 0, 7],
        Packet::PubRel(PubResp::new(pid(7))),
    );
    add(
        "PUBREL 5.0 with reason string",
        &[V5],
        &[0x62, 8, 0, 1, 0x92, 4, 0x1F, 0, 1, b'r'],
        Packet::PubRel(PubResp {
            packet_id: pid(1),
            reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            properties: Some(Box::new(Properties {
                reason_string: Some(s("r")),
                ..Properties::default()
            })),
        }),
    );
    add(
        "PUBCOMP",
        &[V31, V311, V5],
        &[0x70, 2, 0, 1],
        Packet::PubComp(PubResp::new(pid(1))),
    );
    add(
        "PUBACK 5.0 reason 0 with user property",
        &[V5],
        &[0x40, 11, 0, 2, 0, 7, 0x26, 0, 1, b'k', 0, 1, b'v'],
        Packet::PubAck(PubResp {
            packet_id: pid(2),
            reason: ReasonCode::SUCCESS,
            properties: Some(Box::new(Properties {
                user_properties: vec![(s("k"), s("v"))],
                ..Properties::default()
            })),
        }),
    );
    // ---- SUBSCRIBE
    add(
        "SUBSCRIBE 3.1.x two filters",
        &[V31, V311],
        &[0x82, 12, 0, 1, 0, 3, b'a', b'/', b'b', 1, 0, 1, b'#', 2],
        Packet::Subscribe(Box::new(Subscribe {
            packet_id: pid(1),
            filters: vec![
                SubscribeFilter {
                    filter: s("a/b"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                },
                SubscribeFilter {
                    filter: s("#"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                },
            ],
            properties: Properties::default(),
        })),
    );
    add(
        "SUBSCRIBE 5.0 options and properties",
        &[V5],
        &[
            0x82, 16, 0, 2, 9, 0x0B, 7, 0x26, 0, 1, b'k', 0, 1, b'v', 0, 1, b't', 0x2D,
        ],
        Packet::Subscribe(Box::new(Subscribe {
            packet_id: pid(2),
            filters: vec![SubscribeFilter {
                filter: s("t"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: Properties {
                subscription_identifiers: vec![7],
                user_properties: vec![(s("k"), s("v"))],
                ..Properties::default()
            },
        })),
    );
    // ---- SUBACK
    add(
        "SUBACK 3.1.x",
        &[V31, V311],
        &[0x90, 5, 0, 1, 0, 1, 0x80],
        Packet::SubAck(Box::new(SubAck {
            packet_id: pid(1),
            reason_codes: vec![ReasonCode(0), ReasonCode(1), ReasonCode(0x80)],
            properties: Properties::default(),
        })),
    );
    add(
        "SUBACK 5.0",
        &[V5],
        &[0x90, 6, 0, 1, 0, 2, 0x97, 0xA2],
        Packet::SubAck(Box::new(SubAck {
            packet_id: pid(1),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::QUOTA_EXCEEDED,
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ],
            properties: Properties::default(),
        })),
    );
    // ---- UNSUBSCRIBE / UNSUBACK
    add(
        "UNSUBSCRIBE 3.1.x",
        &[V31, V311],
        &[0xA2, 10, 0, 3, 0, 1, b'a', 0, 3, b'a', b'/', b'+'],
        Packet::Unsubscribe(Box::new(Unsubscribe {
            packet_id: pid(3),
            filters: vec![s("a"), s("a/+")],
            properties: Properties::default(),
        })),
    );
    add(
        "UNSUBSCRIBE 5.0",
        &[V5],
        &[0xA2, 6, 0, 3, 0, 0, 1, b'a'],
        Packet::Unsubscribe(Box::new(Unsubscribe {
            packet_id: pid(3),
            filters: vec![s("a")],
            properties: Properties::default(),
        })),
    );
    add(
        "UNSUBACK 3.1.x (no payload)",
        &[V31, V311],
        &[0xB0, 2, 0, 3],
        Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: pid(3),
            reason_codes: vec![],
            properties: Properties::default(),
        })),
    );
    add(
        "UNSUBACK 5.0",
        &[V5],
        &[0xB0, 5, 0, 3, 0, 0x11, 0],
        Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: pid(3),
            reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED, ReasonCode::SUCCESS],
            properties: Properties::default(),
        })),
    );
    // ---- PINGREQ / PINGRESP / DISCONNECT / AUTH
    add("PINGREQ", &[V31, V311, V5], &[0xC0, 0], Packet::PingReq);
    add("PINGRESP", &[V31, V311, V5], &[0xD0, 0], Packet::PingResp);
    add(
        "DISCONNECT (5.0 short form: Normal disconnection)",
        &[V31, V311, V5],
        &[0xE0, 0],
        Packet::Disconnect(Box::default()),
    );
    add(
        "DISCONNECT 5.0 with will (0x04)",
        &[V5],
        &[0xE0, 1, 0x04],
        Packet::Disconnect(Box::new(Disconnect {
            reason: ReasonCode::DISCONNECT_WITH_WILL,
            properties: Properties::default(),
        })),
    );
    add(
        "DISCONNECT 5.0 with session expiry",
        &[V5],
        &[0xE0, 7, 0, 5, 0x11, 0, 0, 0, 0],
        Packet::Disconnect(Box::new(Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..Properties::default()
            },
        })),
    );
    add(
        "AUTH 5.0 short form",
        &[V5],
        &[0xF0, 0],
        Packet::Auth(Box::default()),
    );
    add(
        "AUTH 5.0 continue with method and data",
        &[V5],
        &[
            0xF0, 12, 0x18, 10, 0x15, 0, 3, b'S', b'C', b'R', 0x16, 0, 1, b'd',
        ],
        Packet::Auth(Box::new(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some(s("SCR")),
                authentication_data: Some(b(b"d")),
                ..Properties::default()
            },
        })),
    );
    v
}

#[test]
fn table_decode() {
    for c in cases() {
        for &v in c.versions {
            let got = dec_ok(c.bytes, v);
            assert_eq!(got, c.packet, "{} under {v:?}", c.name);
        }
    }
}

#[test]
fn table_encode() {
    for c in cases() {
        for &v in c.versions {
            assert_eq!(enc(&c.packet, v), c.bytes, "{} under {v:?}", c.name);
        }
    }
}

#[test]
fn table_byte_at_a_time() {
    // Framing: every proper prefix is "need more bytes", never an error.
    for c in cases() {
        for &v in c.versions {
            for n in 0..c.bytes.len() {
                assert_eq!(dec(&c.bytes[..n], v), Ok(None), "{} prefix {n}", c.name);
            }
        }
    }
}

#[test]
fn table_stream_of_packets() {
    // Several frames in one buffer decode one after the other.
    let all: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.versions.contains(&V5))
        .collect();
    let mut buf = BytesMut::new();
    for c in &all {
        buf.extend_from_slice(c.bytes);
    }
    for c in &all {
        let p = decode_packet(&mut buf, V5, usize::MAX).unwrap().unwrap();
        assert_eq!(p, c.packet, "{}", c.name);
    }
    assert!(buf.is_empty());
}

/// Encodings the decoder accepts that are not what the encoder writes.
#[test]
fn non_canonical_decodes() {
    let cases: &[(&str, ProtocolVersion, &[u8], Packet)] = &[
        (
            "PUBACK 5.0 reason without Property Length [3.4.2.2.1]",
            V5,
            &[0x40, 3, 0, 1, 0],
            Packet::PubAck(PubResp::new(pid(1))),
        ),
        (
            "PUBACK 5.0 reason and empty properties",
            V5,
            &[0x40, 4, 0, 1, 0, 0],
            Packet::PubAck(PubResp::new(pid(1))),
        ),
        (
            "DISCONNECT 5.0 reason 0 only [3.14.2.2.1]",
            V5,
            &[0xE0, 1, 0],
            Packet::Disconnect(Box::default()),
        ),
        (
            "AUTH 5.0 reason 0 with empty properties",
            V5,
            &[0xF0, 2, 0, 0],
            Packet::Auth(Box::default()),
        ),
        (
            "CONNACK 5.0 without Property Length",
            V5,
            &[0x20, 2, 0, 0],
            Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                reason: ReasonCode::SUCCESS,
                properties: Properties::default(),
            })),
        ),
        (
            "CONNACK 3.1 reserved first byte is ignored",
            V31,
            &[0x20, 2, 0xFF, 0],
            Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                reason: ReasonCode::SUCCESS,
                properties: Properties::default(),
            })),
        ),
        (
            "PUBLISH 5.0 empty property list decodes to None",
            V5,
            &[0x32, 7, 0, 1, b't', 0, 9, 0, b'p'],
            Packet::Publish(publish(QoS::AtLeastOnce, "t", Some(9), b"p")),
        ),
    ];
    for (name, v, bytes, p) in cases {
        assert_eq!(&dec_ok(bytes, *v), p, "{name}");
    }
}

#[test]
fn user_properties_repeat_and_keep_order() {
    // [2.2.2.2] User Property may appear multiple times; order is preserved [3.3.2.3.7].
    let bytes = [
        0x30, 19, 0, 1, b't', 14, 0x26, 0, 1, b'b', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2', b'p',
    ];
    let Packet::Publish(p) = dec_ok(&bytes, V5) else {
        panic!()
    };
    let props = p.properties.unwrap();
    assert_eq!(
        props.user_properties,
        vec![(s("b"), s("1")), (s("a"), s("2"))]
    );
    let Packet::Publish(p) = dec_ok(&bytes, V5) else {
        panic!()
    };
    assert_eq!(enc(&Packet::Publish(p), V5), bytes);
}

#[test]
fn publish_decode_is_zero_copy() {
    let mut buf = BytesMut::from(&[0x30u8, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'][..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode_packet(&mut buf, V311, 1024).unwrap() else {
        panic!()
    };
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
    assert_eq!(p.payload.as_ptr() as usize, base + 7);
    assert_eq!(p.properties, None);
}
