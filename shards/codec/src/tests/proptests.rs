//! Property-based tests: generated valid packets round-trip through encode/decode for every
//! version (after normalizing away what the version cannot carry), `encoded_len` and
//! `publish_header_len` are exact, and the decoder never panics on arbitrary or mutated input.

use super::*;
use crate::decode::{allowed_reason_codes, reason_from_return_code};
use crate::encode::{connack_return_code, suback_return_code};
use crate::fuzzing::{check_roundtrip, fuzz_roundtrip};
use crate::props::{self, retain_allowed, Ctx};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

// ---- Leaves ---------------------------------------------------------------------------------

/// MQTT strings: any chars but U+0000 (Rust chars are never surrogates), U+FEFF included.
fn arb_str() -> impl Strategy<Value = ByteStr> {
    prop_oneof![
        "[a-z/]{0,8}",
        vec(any::<char>(), 0..8).prop_map(|v| v.into_iter().collect::<String>()),
        Just("\u{FEFF}é/漢".to_string()),
    ]
    .prop_map(|s| ByteStr::from(s.replace('\0', "")))
}

/// A valid topic name: non-empty, no wildcards [MQTT-3.3.2-2, MQTT-4.7.3-1].
fn arb_topic() -> impl Strategy<Value = ByteStr> {
    arb_str().prop_map(|s| ByteStr::from(format!("t{}", s.replace(['+', '#'], ""))))
}

/// A non-empty topic filter (the codec does no further filter syntax checks).
fn arb_filter() -> impl Strategy<Value = ByteStr> {
    arb_str().prop_map(|s| ByteStr::from(format!("f{s}")))
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn arb_pid() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|n| PacketId::new(n).unwrap())
}

fn arb_bool01() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

fn arb_user_props() -> impl Strategy<Value = Vec<(ByteStr, ByteStr)>> {
    vec((arb_str(), arb_str()), 0..3)
}

/// Every property with a valid value, whatever the packet; see `normalize`.
fn arb_props() -> impl Strategy<Value = Properties> {
    let a = (
        arb_bool01(),
        option::of(any::<u32>()),
        option::of(arb_str()),
        option::of(arb_topic()),
        option::of(arb_bytes()),
        vec(1u32..=268_435_455, 0..3),
        option::of(any::<u32>()),
        option::of(arb_str()),
        option::of(any::<u16>()),
    );
    let b = (
        option::of(arb_str()),
        option::of(arb_bytes()),
        arb_bool01(),
        option::of(any::<u32>()),
        arb_bool01(),
        option::of(arb_str()),
        option::of(arb_str()),
        option::of(arb_str()),
        option::of(1u16..),
    );
    let c = (
        option::of(any::<u16>()),
        option::of(1u16..),
        arb_bool01(),
        arb_bool01(),
        arb_user_props(),
        option::of(1u32..),
        arb_bool01(),
        arb_bool01(),
        arb_bool01(),
    );
    (a, b, c).prop_map(|(a, b, c)| {
        let mut p = Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifier_available: c.7,
            shared_subscription_available: c.8,
        };
        // Authentication Data needs a method [3.1.2.11.10].
        if p.authentication_method.is_none() {
            p.authentication_data = None;
        }
        // Properties the packet may not carry are generated too: the encoder must drop them,
        // and `normalize` applies the same allowed set.
        p
    })
}

fn arb_reason(packet_type: u8) -> impl Strategy<Value = ReasonCode> {
    select(allowed_reason_codes(packet_type).to_vec()).prop_map(ReasonCode)
}

fn boxed_props(p: Properties) -> Option<Box<Properties>> {
    Some(Box::new(p))
}

// ---- Packets --------------------------------------------------------------------------------

fn arb_connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = option::of((
        arb_topic(),
        arb_bytes(),
        arb_qos(),
        any::<bool>(),
        arb_props(),
    ));
    (
        select(vec![ProtocolVersion::V31, ProtocolVersion::V311, v]),
        any::<bool>(),
        any::<u16>(),
        arb_str(),
        will,
        option::of(arb_str()),
        option::of(arb_bytes()),
        arb_props(),
    )
        .prop_map(
            |(
                protocol,
                clean_start,
                keep_alive,
                client_id,
                will,
                username,
                password,
                properties,
            )| {
                let password = if username.is_none() && !protocol.is_v5() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, properties)| LastWill {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                    }),
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn arb_publish(v: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        arb_qos(),
        any::<bool>(),
        arb_topic(),
        any::<bool>(),
        option::of(arb_pid()),
        arb_pid(),
        arb_bytes(),
        option::of(arb_props()),
    )
        .prop_map(
            move |(dup, qos, retain, topic, empty_topic, stray_id, id, payload, properties)| {
                let mut properties = properties.map(Box::new);
                let mut topic = topic;
                if v.is_v5() && empty_topic {
                    // An empty topic stands for a Topic Alias [3.3.2.3.4].
                    topic = ByteStr::default();
                    properties.get_or_insert_with(Box::default).topic_alias = Some(1);
                }
                Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos == QoS::AtMostOnce {
                        stray_id
                    } else {
                        Some(id)
                    },
                    payload,
                    properties,
                }
            },
        )
}

fn arb_pub_resp(ptype: u8) -> impl Strategy<Value = PubResp> {
    (arb_pid(), arb_reason(ptype), option::of(arb_props())).prop_map(|(packet_id, reason, p)| {
        PubResp {
            packet_id,
            reason,
            properties: p.and_then(boxed_props),
        }
    })
}

fn arb_sub_options() -> impl Strategy<Value = SubscriptionOptions> {
    (
        arb_qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
    )
        .prop_map(|(qos, no_local, retain_as_published, retain_handling)| {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            }
        })
}

pub(crate) fn arb_packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut s: Vec<BoxedStrategy<Packet>> = vec![
        arb_connect(v).boxed(),
        (any::<bool>(), arb_reason(2), arb_props())
            .prop_map(|(sp, reason, properties)| {
                Packet::ConnAck(Box::new(ConnAck {
                    session_present: sp && reason.0 == 0,
                    reason,
                    properties,
                }))
            })
            .boxed(),
        arb_publish(v).prop_map(Packet::Publish).boxed(),
        arb_pub_resp(4).prop_map(Packet::PubAck).boxed(),
        arb_pub_resp(5).prop_map(Packet::PubRec).boxed(),
        arb_pub_resp(6).prop_map(Packet::PubRel).boxed(),
        arb_pub_resp(7).prop_map(Packet::PubComp).boxed(),
        (
            arb_pid(),
            vec((arb_filter(), arb_sub_options()), 1..4),
            arb_props(),
        )
            .prop_map(|(packet_id, f, properties)| {
                Packet::Subscribe(Box::new(Subscribe {
                    packet_id,
                    filters: f
                        .into_iter()
                        .map(|(filter, options)| SubscribeFilter { filter, options })
                        .collect(),
                    properties,
                }))
            })
            .boxed(),
        (arb_pid(), vec(arb_reason(9), 1..4), arb_props())
            .prop_map(|(packet_id, reason_codes, properties)| {
                Packet::SubAck(Box::new(SubAck {
                    packet_id,
                    reason_codes,
                    properties,
                }))
            })
            .boxed(),
        (arb_pid(), vec(arb_filter(), 1..4), arb_props())
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Unsubscribe(Box::new(Unsubscribe {
                    packet_id,
                    filters,
                    properties,
                }))
            })
            .boxed(),
        (arb_pid(), vec(arb_reason(11), 1..4), arb_props())
            .prop_map(|(packet_id, reason_codes, properties)| {
                Packet::UnsubAck(Box::new(UnsubAck {
                    packet_id,
                    reason_codes,
                    properties,
                }))
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (arb_reason(14), arb_props())
            .prop_map(|(reason, properties)| {
                Packet::Disconnect(Box::new(Disconnect { reason, properties }))
            })
            .boxed(),
    ];
    if v.is_v5() {
        s.push(
            (arb_reason(15), arb_props())
                .prop_map(|(reason, properties)| {
                    Packet::Auth(Box::new(Auth { reason, properties }))
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(s).boxed()
}

// ---- Normalization: what a packet looks like after a trip through version `v` ---------------

fn norm_props(p: &Properties, ctx: Ctx, v: ProtocolVersion) -> Properties {
    if v.is_v5() {
        retain_allowed(p, ctx)
    } else {
        Properties::default()
    }
}

fn norm_opt_props(
    p: &Option<Box<Properties>>,
    ctx: Ctx,
    v: ProtocolVersion,
) -> Option<Box<Properties>> {
    let p = p.as_ref().map(|p| norm_props(p, ctx, v))?;
    if p.is_empty() {
        None
    } else {
        Some(Box::new(p))
    }
}

fn norm_resp(r: &PubResp, v: ProtocolVersion) -> PubResp {
    if v.is_v5() {
        PubResp {
            packet_id: r.packet_id,
            reason: r.reason,
            properties: norm_opt_props(&r.properties, props::PUBRESP, v),
        }
    } else {
        PubResp::new(r.packet_id)
    }
}

pub(crate) fn normalize(p: &Packet, v: ProtocolVersion) -> Packet {
    match p {
        Packet::Connect(c) => {
            let pv = c.protocol;
            let mut c = (**c).clone();
            c.properties = norm_props(&c.properties, props::CONNECT, pv);
            if let Some(w) = &mut c.will {
                w.properties = norm_props(&w.properties, props::WILL, pv);
            }
            Packet::Connect(Box::new(c))
        }
        Packet::ConnAck(c) => {
            let reason = if v.is_v5() {
                c.reason
            } else {
                reason_from_return_code(connack_return_code(c.reason)).unwrap()
            };
            Packet::ConnAck(Box::new(ConnAck {
                session_present: c.session_present && v != ProtocolVersion::V31,
                reason,
                properties: norm_props(&c.properties, props::CONNACK, v),
            }))
        }
        Packet::Publish(pb) => Packet::Publish(Publish {
            dup: pb.dup && pb.qos != QoS::AtMostOnce,
            packet_id: if pb.qos == QoS::AtMostOnce {
                None
            } else {
                pb.packet_id
            },
            properties: norm_opt_props(&pb.properties, props::PUBLISH, v),
            ..pb.clone()
        }),
        Packet::PubAck(r) => Packet::PubAck(norm_resp(r, v)),
        Packet::PubRec(r) => Packet::PubRec(norm_resp(r, v)),
        Packet::PubRel(r) => Packet::PubRel(norm_resp(r, v)),
        Packet::PubComp(r) => Packet::PubComp(norm_resp(r, v)),
        Packet::Subscribe(s) => Packet::Subscribe(Box::new(Subscribe {
            packet_id: s.packet_id,
            filters: s
                .filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: f.filter.clone(),
                    options: if v.is_v5() {
                        f.options
                    } else {
                        SubscriptionOptions {
                            qos: f.options.qos,
                            ..Default::default()
                        }
                    },
                })
                .collect(),
            properties: norm_props(&s.properties, props::SUBSCRIBE, v),
        })),
        Packet::SubAck(s) => Packet::SubAck(Box::new(SubAck {
            packet_id: s.packet_id,
            reason_codes: if v.is_v5() {
                s.reason_codes.clone()
            } else {
                s.reason_codes
                    .iter()
                    .map(|&c| ReasonCode(suback_return_code(c)))
                    .collect()
            },
            properties: norm_props(&s.properties, props::SUBACK, v),
        })),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Box::new(Unsubscribe {
            packet_id: u.packet_id,
            filters: u.filters.clone(),
            properties: norm_props(&u.properties, props::UNSUBSCRIBE, v),
        })),
        Packet::UnsubAck(u) => Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: u.packet_id,
            reason_codes: if v.is_v5() {
                u.reason_codes.clone()
            } else {
                Vec::new()
            },
            properties: norm_props(&u.properties, props::UNSUBACK, v),
        })),
        Packet::PingReq => Packet::PingReq,
        Packet::PingResp => Packet::PingResp,
        Packet::Disconnect(d) => Packet::Disconnect(Box::new(if v.is_v5() {
            Disconnect {
                reason: d.reason,
                properties: norm_props(&d.properties, props::DISCONNECT, v),
            }
        } else {
            Disconnect::default()
        })),
        Packet::Auth(a) => Packet::Auth(Box::new(Auth {
            reason: a.reason,
            properties: norm_props(&a.properties, props::AUTH, v),
        })),
    }
}

fn arb_version() -> impl Strategy<Value = ProtocolVersion> {
    select(ALL.to_vec())
}

fn arb_versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    arb_version().prop_flat_map(|v| (Just(v), arb_packet(v)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// encode -> decode equals the packet minus what the version cannot carry; encoded_len is
    /// exact; encode_publish_header + payload equals encode.
    #[test]
    fn roundtrip((v, p) in arb_versioned_packet()) {
        let mut out = BytesMut::new();
        encode(&p, v, &mut out).unwrap();
        prop_assert_eq!(out.len(), encoded_len(&p, v));
        let mut buf = out.clone();
        let q = decode_packet(&mut buf, v, usize::MAX).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        let expected = normalize(&p, v);
        prop_assert_eq!(&q, &expected);
        // The normalized packet encodes to the very same bytes.
        let mut again = BytesMut::new();
        encode(&expected, v, &mut again).unwrap();
        prop_assert_eq!(&again, &out);
        if let Packet::Publish(pb) = &p {
            let mut h = BytesMut::new();
            encode_publish_header(pb, v, &mut h).unwrap();
            prop_assert_eq!(h.len(), publish_header_len(pb, v));
            h.extend_from_slice(&pb.payload);
            prop_assert_eq!(&h, &out);
        }
        // The decoded packet passes the fuzz target's own checks.
        check_roundtrip(&q, v);
        // Framing sees the whole frame and honours the size limit exactly.
        let h = frame_len(&out, out.len()).unwrap().unwrap();
        prop_assert_eq!(h.frame_len(), out.len());
        let too_large = frame_len(&out, out.len() - 1).is_err();
        prop_assert!(too_large);
    }

    /// [MQTT-1.5.5-1] every value the encoder writes as a Variable Byte Integer uses the
    /// minimum number of bytes (no trailing 0 group), matches `vbi_len`, and reads back.
    #[test]
    fn vbi_encoding_is_minimal(v in 0usize..=MAX_REMAINING_LENGTH) {
        let mut out = BytesMut::new();
        crate::encode::put_vbi(&mut out, v).unwrap();
        prop_assert_eq!(out.len(), crate::encode::vbi_len(v));
        let minimal_len = 1 + (1..4).filter(|&i| v >> (7 * i) != 0).count();
        prop_assert_eq!(out.len(), minimal_len);
        prop_assert!(out.len() == 1 || out[out.len() - 1] != 0);
        prop_assert_eq!(
            crate::decode::read_vbi(&out),
            Ok(Some((v as u32, out.len())))
        );
    }

    /// Arbitrary bytes never panic the decoder, under every version and limit.
    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..300)) {
        fuzz_roundtrip(&data);
    }

    /// Arbitrary bodies behind a valid-looking fixed header reach the packet parsers.
    #[test]
    fn arbitrary_bodies_never_panic(ptype in 1u8..=15, body in vec(any::<u8>(), 0..120)) {
        let flags = match ptype { 6 | 8 | 10 => 2, _ => 0 };
        let mut data = vec![(ptype << 4) | flags, body.len() as u8];
        data.extend_from_slice(&body);
        fuzz_roundtrip(&data);
    }

    /// Valid encodings with a few bytes changed, dropped or inserted never panic the decoder,
    /// and whatever still decodes round-trips.
    #[test]
    fn mutated_encodings_never_panic(
        (v, p) in arb_versioned_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
    ) {
        let mut data = encode_packet_bytes(&p, v).unwrap().to_vec();
        for (i, byte, kind) in edits {
            if data.is_empty() {
                break;
            }
            let i = i.index(data.len());
            match kind {
                0 => data[i] = byte,
                1 => data[i] ^= 1 << (byte % 8),
                2 => { data.remove(i); }
                _ => data.insert(i, byte),
            }
        }
        fuzz_roundtrip(&data);
    }
}
