//! Encoder specifics: version mapping, short forms, property filtering, error handling.

use super::*;
use crate::encode::{connack_return_code, suback_return_code};

fn connack(reason: u8) -> Packet {
    Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason: ReasonCode(reason),
        properties: Properties {
            maximum_qos: Some(1),
            ..Properties::default()
        },
    }))
}

#[test]
fn connack_v3_return_code_mapping() {
    // [3.2.2.3] (3.1.1) return codes 0..=5
    let table = [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x80, 3),
        (0x83, 3),
        (0x86, 4),
        (0x8C, 4),
        (0x87, 5),
        (0x8A, 5),
    ];
    for (reason, rc) in table {
        assert_eq!(connack_return_code(ReasonCode(reason)), rc, "{reason:#x}");
        for v in [V31, V311] {
            assert_eq!(
                enc(&connack(reason), v),
                [0x20, 2, 0, rc],
                "properties dropped"
            );
        }
    }
}

#[test]
fn connack_session_present_not_in_v31() {
    let p = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }));
    assert_eq!(enc(&p, V31), [0x20, 2, 0, 0]);
    assert_eq!(enc(&p, V311), [0x20, 2, 1, 0]);
    assert_eq!(enc(&p, V5), [0x20, 3, 1, 0, 0]);
}

#[test]
fn suback_v3_failure_mapping() {
    assert_eq!(suback_return_code(ReasonCode(2)), 2);
    assert_eq!(suback_return_code(ReasonCode(0x97)), 0x80);
    let p = Packet::SubAck(Box::new(SubAck {
        packet_id: pid(1),
        reason_codes: vec![
            ReasonCode(0),
            ReasonCode(0x87),
            ReasonCode(0xA2),
            ReasonCode(1),
        ],
        properties: Properties {
            reason_string: Some(s("no")),
            ..Properties::default()
        },
    }));
    assert_eq!(enc(&p, V311), [0x90, 6, 0, 1, 0, 0x80, 0x80, 1]);
}

#[test]
fn unsuback_v3_has_no_payload() {
    let p = Packet::UnsubAck(Box::new(UnsubAck {
        packet_id: pid(9),
        reason_codes: vec![ReasonCode(0x11)],
        properties: Properties::default(),
    }));
    assert_eq!(enc(&p, V311), [0xB0, 2, 0, 9]);
    assert_eq!(enc(&p, V31), [0xB0, 2, 0, 9]);
}

#[test]
fn disconnect_v3_has_no_body() {
    let p = Packet::Disconnect(Box::new(Disconnect {
        reason: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: Properties {
            reason_string: Some(s("bye")),
            ..Properties::default()
        },
    }));
    assert_eq!(enc(&p, V311), [0xE0, 0]);
    assert_eq!(
        enc(&p, V5),
        [0xE0, 8, 0x8B, 6, 0x1F, 0, 3, b'b', b'y', b'e']
    );
}

#[test]
fn short_forms_v5() {
    // [3.4.2.1] reason 0 and no properties -> 2-byte PUBACK; [3.14.2.1] DISCONNECT -> empty
    assert_eq!(
        enc(&Packet::PubAck(PubResp::new(pid(1))), V5),
        [0x40, 2, 0, 1]
    );
    let empty_props = PubResp {
        properties: Some(Box::default()),
        ..PubResp::new(pid(1))
    };
    assert_eq!(enc(&Packet::PubComp(empty_props), V5), [0x70, 2, 0, 1]);
    assert_eq!(
        enc(
            &Packet::PubAck(PubResp::with_reason(pid(1), ReasonCode(0x10))),
            V5
        ),
        [0x40, 3, 0, 1, 0x10]
    );
    assert_eq!(enc(&Packet::Disconnect(Box::default()), V5), [0xE0, 0]);
    assert_eq!(enc(&Packet::Auth(Box::default()), V5), [0xF0, 0]);
}

#[test]
fn v3_ignores_properties_and_v5_options() {
    let p = Packet::Subscribe(Box::new(Subscribe {
        packet_id: pid(1),
        filters: vec![SubscribeFilter {
            filter: s("a"),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
        properties: Properties {
            subscription_identifiers: vec![3],
            ..Properties::default()
        },
    }));
    assert_eq!(enc(&p, V311), [0x82, 6, 0, 1, 0, 1, b'a', 1]);
    let pb = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        payload: b(b"x"),
        properties: Some(Box::new(Properties {
            message_expiry_interval: Some(5),
            ..Properties::default()
        })),
    });
    assert_eq!(enc(&pb, V31), [0x30, 4, 0, 1, b't', b'x']);
}

#[test]
fn only_allowed_properties_are_written() {
    // [2.2.2.2] a property outside the packet's set would make the peer close the connection
    let p = Packet::PubAck(PubResp {
        packet_id: pid(1),
        reason: ReasonCode::SUCCESS,
        properties: Some(Box::new(Properties {
            topic_alias: Some(4),
            session_expiry_interval: Some(9),
            ..Properties::default()
        })),
    });
    assert_eq!(enc(&p, V5), [0x40, 2, 0, 1]);
    // SUBSCRIBE carries at most one Subscription Identifier [3.8.2.1.2]
    let sub = Packet::Subscribe(Box::new(Subscribe {
        packet_id: pid(1),
        filters: vec![SubscribeFilter {
            filter: s("a"),
            options: SubscriptionOptions::default(),
        }],
        properties: Properties {
            subscription_identifiers: vec![1, 2],
            ..Properties::default()
        },
    }));
    assert_eq!(enc(&sub, V5), [0x82, 9, 0, 1, 2, 0x0B, 1, 0, 1, b'a', 0]);
}

#[test]
fn dup_is_not_written_for_qos_0() {
    // [MQTT-3.3.1-2]
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: Some(pid(5)),
        payload: Bytes::new(),
        properties: None,
    });
    assert_eq!(enc(&p, V311), [0x30, 3, 0, 1, b't']);
}

#[test]
fn errors_leave_the_buffer_untouched() {
    let mut out = BytesMut::from(&b"prefix"[..]);
    let no_id = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        payload: Bytes::new(),
        properties: None,
    });
    assert!(matches!(
        encode(&no_id, V5, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    assert_eq!(&out[..], b"prefix");
    let long = ByteStr::from("x".repeat(70_000));
    let too_long = Packet::Publish(Publish {
        packet_id: Some(pid(1)),
        topic: long.clone(),
        ..match no_id {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    });
    assert_eq!(
        encode(&too_long, V5, &mut out),
        Err(EncodeError::TooLarge(70_000))
    );
    assert_eq!(&out[..], b"prefix");
    let user = Packet::Connect(Box::new(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 0,
        client_id: s("c"),
        will: None,
        username: Some(long),
        password: None,
        properties: Properties::default(),
    }));
    assert_eq!(
        encode(&user, V5, &mut out),
        Err(EncodeError::TooLarge(70_000))
    );
    assert_eq!(&out[..], b"prefix");
    assert!(matches!(
        encode(&Packet::Auth(Box::default()), V311, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    assert_eq!(&out[..], b"prefix");
}

#[test]
fn packet_over_max_remaining_length() {
    // [MQTT-1.5.5] 268,435,455 is the largest Remaining Length
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        payload: Bytes::from(vec![0u8; MAX_REMAINING_LENGTH]),
        properties: None,
    };
    let mut out = BytesMut::new();
    assert!(matches!(
        encode(&Packet::Publish(p.clone()), V311, &mut out),
        Err(EncodeError::TooLarge(_))
    ));
    assert!(matches!(
        encode_publish_header(&p, V311, &mut out),
        Err(EncodeError::TooLarge(_))
    ));
    assert!(out.is_empty());
}

#[test]
fn publish_header_then_payload() {
    let p = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: s("a/b"),
        packet_id: Some(pid(300)),
        payload: Bytes::from(vec![7u8; 200]),
        properties: Some(Box::new(Properties {
            subscription_identifiers: vec![1_000_000],
            ..Properties::default()
        })),
    };
    for v in ALL {
        let mut h = BytesMut::new();
        encode_publish_header(&p, v, &mut h).unwrap();
        assert_eq!(h.len(), publish_header_len(&p, v));
        let full = enc(&Packet::Publish(p.clone()), v);
        assert_eq!(&full[..h.len()], &h[..]);
        assert_eq!(&full[h.len()..], &p.payload[..]);
    }
}

#[test]
fn connect_v31_protocol_name() {
    let c = Connect {
        protocol: V31,
        clean_start: false,
        keep_alive: 0,
        client_id: s("c"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let bytes = enc(&Packet::Connect(Box::new(c)), V5);
    assert_eq!(&bytes[2..10], b"\x00\x06MQIsdp");
    assert_eq!(bytes[10], 3);
    // a 3.1.x CONNECT with a password but no user name cannot be encoded [MQTT-3.1.2-22]
    let c = Connect {
        protocol: V311,
        clean_start: false,
        keep_alive: 0,
        client_id: s("c"),
        will: None,
        username: None,
        password: Some(b(b"p")),
        properties: Properties::default(),
    };
    let mut out = BytesMut::new();
    assert!(encode(&Packet::Connect(Box::new(c)), V311, &mut out).is_err());
}

#[test]
fn encode_packet_bytes_is_exact() {
    let p = Packet::PubRec(PubResp::new(pid(2)));
    let bytes = encode_packet_bytes(&p, V5).unwrap();
    assert_eq!(&bytes[..], [0x50, 2, 0, 2]);
}

#[test]
fn large_remaining_lengths() {
    // VBI boundaries 127/128, 16383/16384, 2097151/2097152 [1.5.5]
    for n in [121usize, 122, 16_377, 16_378, 2_097_145, 2_097_146] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("abcd"),
            packet_id: None,
            payload: Bytes::from(vec![1u8; n]),
            properties: None,
        });
        let bytes = enc(&p, V311);
        assert_eq!(dec_ok(&bytes, V311), p, "payload {n}");
    }
}

#[test]
fn vbi_encoding_is_minimal_mqtt_1_5_5_1() {
    // [MQTT-1.5.5-1] the encoder writes the minimum number of bytes: the boundaries of each
    // length, byte for byte, and the decoder's reader agrees.
    use crate::decode::read_vbi;
    use crate::encode::{put_vbi, vbi_len};
    let table: &[(usize, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (MAX_REMAINING_LENGTH, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for (v, bytes) in table {
        let mut out = BytesMut::new();
        put_vbi(&mut out, *v).unwrap();
        assert_eq!(&out[..], *bytes, "{v}");
        assert_eq!(vbi_len(*v), bytes.len(), "{v}");
        assert_eq!(read_vbi(bytes), Ok(Some((*v as u32, bytes.len()))), "{v}");
    }
}
