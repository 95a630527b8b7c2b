//! One test per rejection rule, each naming the spec statement it checks. Statement ids
//! `[MQTT-x.y.z-n]` are the normative statements of MQTT 5.0 unless the test says 3.1.1; bare
//! section numbers `[3.8.3.1]` refer to MQTT 5.0 text without a statement id.

use super::*;

/// A frame: first byte, Remaining Length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v5 QoS 0 PUBLISH to "t" with these raw property bytes and payload "p".
fn publish_v5(props: &[u8]) -> Vec<u8> {
    frame(0x30, &cat(&[&[0, 1, b't', props.len() as u8], props, b"p"]))
}

/// A v5 CONNECT with these raw property bytes and client id "c".
fn connect_v5(props: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[
            &[
                0,
                4,
                b'M',
                b'Q',
                b'T',
                b'T',
                5,
                0x02,
                0,
                60,
                props.len() as u8,
            ],
            props,
            &[0, 1, b'c'],
        ]),
    )
}

/// A v5 CONNACK (accepted) with these raw property bytes.
fn connack_v5(props: &[u8]) -> Vec<u8> {
    frame(0x20, &cat(&[&[0, 0, props.len() as u8], props]))
}

/// A CONNECT body after the protocol name and level: flags, keep alive 60, payload.
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[&[0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60], payload]),
    )
}

// ---- Fixed header and framing ---------------------------------------------------------------

#[test]
fn remaining_length_at_most_4_bytes() {
    // [MQTT-1.5.5-1]
    for v in ALL {
        malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], v);
        // Known to be bad as soon as the 4th byte has its continuation bit set.
        malformed(&[0xC0, 0x80, 0x80, 0x80, 0x80], v);
    }
    assert!(frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], usize::MAX).is_err());
}

/// Remaining Lengths whose value fits in fewer bytes than used.
const NON_MINIMAL_REMAINING_LENGTHS: &[&[u8]] = &[
    &[0x80, 0x00],             // 0 in 2 bytes
    &[0xFF, 0x00],             // 127 in 2 bytes
    &[0x80, 0x80, 0x00],       // 0 in 3 bytes
    &[0x80, 0x80, 0x80, 0x00], // 0 in 4 bytes
    &[0x82, 0x80, 0x00],       // 2 in 3 bytes
    &[0x80, 0x81, 0x00],       // 128 in 3 bytes
    &[0xFF, 0xFF, 0xFF, 0x00], // 2,097,151 in 4 bytes
];

#[test]
fn remaining_length_minimal_encoding_mqtt_1_5_5_1() {
    // [MQTT-1.5.5-1] the minimum number of bytes; rejected from the fixed header alone, before
    // any body byte, for every version and packet type.
    for rl in NON_MINIMAL_REMAINING_LENGTHS {
        for first in [0x10u8, 0x30, 0x40, 0xC0] {
            let bytes = cat(&[&[first], rl]);
            assert!(
                matches!(
                    frame_len(&bytes, usize::MAX),
                    Err(DecodeError::Malformed(_))
                ),
                "{bytes:02X?}"
            );
            for v in ALL {
                malformed(&bytes, v);
                // The same header with the body it announces (2) is still rejected.
                malformed(&cat(&[&bytes, &[0, 1]]), v);
            }
        }
    }
    // Malformed Packet, like every other malformed case.
    let e = dec(&[0xC0, 0x80, 0x00], V5).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // A framing error leaves the buffer alone.
    let mut buf = BytesMut::from(&[0xC0u8, 0x80, 0x00][..]);
    assert!(decode_packet(&mut buf, V311, usize::MAX).is_err());
    assert_eq!(buf.len(), 3);
}

#[test]
fn remaining_length_minimal_boundaries_accepted_mqtt_1_5_5_1() {
    // [MQTT-1.5.5-1] the smallest and largest value of each length, and the incomplete forms
    // (a continuation byte with nothing after it yet is "need more", not malformed).
    let ok: &[(&[u8], usize)] = &[
        (&[0x00], 0),
        (&[0x7F], 127),
        (&[0x80, 0x01], 128),
        (&[0xFF, 0x7F], 16_383),
        (&[0x80, 0x80, 0x01], 16_384),
        (&[0xFF, 0xFF, 0x7F], 2_097_151),
        (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
        (&[0xFF, 0xFF, 0xFF, 0x7F], MAX_REMAINING_LENGTH),
    ];
    for (rl, n) in ok {
        let h = frame_len(&cat(&[&[0x30], rl]), usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.header_len, h.remaining_len),
            (1 + rl.len(), *n),
            "{rl:02X?}"
        );
    }
    for partial in [
        &[0x30u8, 0x80][..],
        &[0x30, 0x80, 0x80],
        &[0x30, 0xFF, 0x80, 0x80],
    ] {
        assert_eq!(frame_len(partial, usize::MAX), Ok(None), "{partial:02X?}");
        for v in ALL {
            assert_eq!(dec(partial, v), Ok(None), "{partial:02X?}");
        }
    }
}

#[test]
fn incomplete_frames_need_more_bytes() {
    for v in ALL {
        assert_eq!(dec(&[], v), Ok(None));
        assert_eq!(dec(&[0x30], v), Ok(None));
        assert_eq!(dec(&[0x30, 0x80], v), Ok(None));
        assert_eq!(dec(&[0x30, 5, 0, 1], v), Ok(None));
    }
}

#[test]
fn packet_too_large_before_the_body_arrives() {
    // [MQTT-3.2.2-15]-style limit: rejected from the fixed header alone.
    let r = frame_len(&[0x30, 0xFF, 0x7F], 100);
    assert_eq!(
        r,
        Err(DecodeError::PacketTooLarge {
            size: 3 + 16_383,
            max: 100
        })
    );
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    assert!(matches!(
        decode_packet(&mut buf, V5, 100),
        Err(DecodeError::PacketTooLarge { .. })
    ));
    assert_eq!(buf.len(), 3, "framing errors leave the buffer alone");
    // The limit counts the whole frame: 2-byte header + 2-byte body.
    assert!(frame_len(&[0x40, 2], 4).unwrap().is_some());
    assert!(frame_len(&[0x40, 2], 3).is_err());
    assert_eq!(
        DecodeError::PacketTooLarge { size: 1, max: 0 }.reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
}

#[test]
fn packet_type_0_is_reserved() {
    // [2.1.2] type 0 is Reserved
    for v in ALL {
        malformed(&[0x00, 0], v);
    }
}

#[test]
fn reserved_flags_must_match() {
    // [MQTT-2.1.3-1] flags of every type but PUBLISH are fixed
    for v in ALL {
        malformed(&[0xC1, 0], v); // PINGREQ
        malformed(&[0xD8, 0], v); // PINGRESP
        malformed(&[0xE2, 0], v); // DISCONNECT
        malformed(&[0x42, 2, 0, 1], v); // PUBACK
        malformed(&[0x21, 2, 0, 0], v); // CONNACK
        malformed(&[0x11, 0], v); // CONNECT
    }
    malformed(&[0xF1, 0], V5); // AUTH
}

#[test]
fn pubrel_flags_0010() {
    // [MQTT-3.6.1-1]
    for v in ALL {
        malformed(&[0x60, 2, 0, 1], v);
        malformed(&[0x63, 2, 0, 1], v);
    }
}

#[test]
fn subscribe_flags_0010() {
    // [MQTT-3.8.1-1]
    for v in ALL {
        malformed(&[0x80, 6, 0, 1, 0, 1, b'a', 0], v);
    }
}

#[test]
fn unsubscribe_flags_0010() {
    // [MQTT-3.10.1-1]
    for v in ALL {
        malformed(&[0xA0, 5, 0, 1, 0, 1, b'a'], v);
    }
}

#[test]
fn publish_qos_3() {
    // [MQTT-3.3.1-4]
    for v in ALL {
        malformed(&[0x36, 7, 0, 1, b't', 0, 1, 0, b'p'], v);
    }
}

#[test]
fn publish_dup_on_qos_0() {
    // [MQTT-3.3.1-2]
    for v in ALL {
        malformed(&[0x38, 4, 0, 1, b't', b'p'], v);
    }
}

#[test]
fn auth_before_v5() {
    // [2.1.2] type 15 is Reserved in 3.1.1
    malformed(&[0xF0, 0], V311);
    malformed(&[0xF0, 0], V31);
    assert_eq!(dec_ok(&[0xF0, 0], V5), Packet::Auth(Box::default()));
}

#[test]
fn decode_frame_checks_its_arguments() {
    let bytes = Bytes::from_static(&[0xC0, 0]);
    let h = frame_len(&bytes, usize::MAX).unwrap().unwrap();
    assert_eq!(decode_frame(h, bytes.clone(), V5), Ok(Packet::PingReq));
    let wrong = FrameHeader {
        remaining_len: 1,
        ..h
    };
    assert!(matches!(
        decode_frame(wrong, bytes, V5),
        Err(DecodeError::Malformed(_))
    ));
}

// ---- MQTT 3.1 retries ----------------------------------------------------------------------

/// (3.1 retry with DUP + QoS 1 (flags 1010), the same packet with the 3.1.1 flags 0010).
const V31_DUP_RETRIES: &[(&[u8], &[u8])] = &[
    (&[0x6A, 2, 0, 1], &[0x62, 2, 0, 1]), // PUBREL
    (
        &[0x8A, 6, 0, 1, 0, 1, b'a', 1],
        &[0x82, 6, 0, 1, 0, 1, b'a', 1],
    ), // SUBSCRIBE
    (&[0xAA, 5, 0, 1, 0, 1, b'a'], &[0xA2, 5, 0, 1, 0, 1, b'a']), // UNSUBSCRIBE
];

#[test]
fn v31_dup_on_pubrel_subscribe_unsubscribe_accepted() {
    // MQTT 3.1 sections 3.6, 3.8, 3.10: DUP is set on retries; the fixed 0010 flags
    // [MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1] are 3.1.1 rules.
    for (dup, plain) in V31_DUP_RETRIES {
        assert_eq!(dec_ok(dup, V31), dec_ok(plain, V31), "{dup:02X?}");
        let h = frame_len(dup, usize::MAX).unwrap().unwrap();
        let frame = Bytes::copy_from_slice(dup);
        assert_eq!(
            decode_frame(h, frame.clone(), V31).ok(),
            Some(dec_ok(plain, V31))
        );
        // The packet model has no DUP for these: a 3.1 retry re-encodes with flags 0010.
        assert_eq!(enc(&dec_ok(dup, V31), V31), plain.to_vec());
        for v in [V311, V5] {
            assert!(matches!(
                decode_frame(h, frame.clone(), v),
                Err(DecodeError::Malformed(_))
            ));
        }
    }
}

#[test]
fn dup_on_pubrel_subscribe_unsubscribe_malformed_from_3_1_1() {
    // [MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1] unchanged for levels 4 and 5, and still
    // rejected from the first byte, before the body arrives.
    for (dup, _) in V31_DUP_RETRIES {
        for v in [V311, V5] {
            malformed(dup, v);
            malformed(&dup[..2], v);
        }
    }
    // 3.1 accepts DUP + QoS 1 only: no other flag combination.
    for first in [0x60u8, 0x68, 0x6B, 0x6E, 0x88, 0x8B, 0x8C, 0xA8, 0xAE, 0xAB] {
        malformed(&[first, 2, 0, 1], V31);
    }
}

// ---- Trailing bytes -------------------------------------------------------------------------

#[test]
fn trailing_bytes_after_the_body() {
    // [2.1.4] the Remaining Length is the exact size of the body
    for v in ALL {
        malformed(&[0xC0, 1, 0], v); // PINGREQ
        malformed(&[0xD0, 1, 0], v); // PINGRESP
    }
    for v in [V31, V311] {
        malformed(&[0x40, 3, 0, 1, 0], v); // PUBACK
        malformed(&[0xE0, 1, 0], v); // DISCONNECT
        malformed(&[0xB0, 3, 0, 1, 0], v); // UNSUBACK
        malformed(&[0x20, 3, 0, 0, 0], v); // CONNACK
    }
    // CONNECT followed by junk
    let mut c = connect_v311(0x02, &[0, 1, b'c', 0xAA]);
    malformed(&c, V311);
    c = connect_v5(&[]);
    c[1] += 1;
    c.push(0);
    malformed(&c, V5);
    // v5 DISCONNECT with bytes after its property list
    malformed(&[0xE0, 3, 0, 0, 0], V5);
}

// ---- Variable byte integers, strings, lengths ----------------------------------------------

#[test]
fn property_vbi_at_most_4_bytes() {
    // [MQTT-1.5.5-1] Property Length and Subscription Identifier are VBIs too
    malformed(
        &frame(0x30, &[0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        V5,
    );
    malformed(&publish_v5(&[0x0B, 0x81, 0x81, 0x81, 0x81, 0x01]), V5);
}

#[test]
fn property_vbi_minimal_encoding_mqtt_1_5_5_1() {
    // [MQTT-1.5.5-1] every VBI inside the variable header, not only the Remaining Length.
    // Property Length 0 in 2 bytes (PUBLISH, CONNACK, PUBACK, SUBSCRIBE).
    malformed(&frame(0x30, &[0, 1, b't', 0x80, 0x00, b'p']), V5);
    malformed(&[0x20, 4, 0, 0, 0x80, 0x00], V5);
    malformed(&[0x40, 5, 0, 1, 0, 0x80, 0x00], V5);
    malformed(&frame(0x82, &[0, 1, 0x80, 0x00, 0, 1, b'a', 0]), V5);
    // Property Length 2 in 2 bytes, over a list that is valid (Payload Format Indicator 1).
    malformed(
        &frame(0x30, &[0, 1, b't', 0x82, 0x00, 0x01, 0x01, b'p']),
        V5,
    );
    // Subscription Identifier 1 in 2 and 3 bytes (PUBLISH and SUBSCRIBE).
    malformed(&publish_v5(&[0x0B, 0x81, 0x00]), V5);
    malformed(&publish_v5(&[0x0B, 0x81, 0x80, 0x00]), V5);
    malformed(
        &frame(0x82, &[0, 1, 3, 0x0B, 0x81, 0x00, 0, 1, b'a', 0]),
        V5,
    );
    // Property identifier 1 (Payload Format Indicator) in 2 bytes.
    malformed(&publish_v5(&[0x81, 0x00, 0x01]), V5);
    // The same properties minimally encoded decode.
    dec_ok(&publish_v5(&[0x0B, 0x01]), V5);
    dec_ok(&publish_v5(&[0x01, 0x01]), V5);
    dec_ok(&publish_v5(&[0x0B, 0x80, 0x01]), V5);
    // The journal's stored properties go through the same reader.
    assert!(matches!(
        decode_publish_properties(&Bytes::from_static(&[0x80, 0x00])),
        Err(DecodeError::Malformed(_))
    ));
    assert!(decode_publish_properties(&Bytes::from_static(&[0x00])).is_ok());
}

#[test]
fn string_invalid_utf8() {
    // [MQTT-1.5.4-1]
    for v in ALL {
        malformed(&[0x30, 4, 0, 2, 0xC3, 0x28], v);
        malformed(&[0x30, 3, 0, 1, 0xFF], v);
    }
}

#[test]
fn string_surrogate() {
    // [MQTT-1.5.4-1] U+D800..U+DFFF are not allowed (CESU-style encoding of U+D800)
    for v in ALL {
        malformed(&[0x30, 5, 0, 3, 0xED, 0xA0, 0x80], v);
    }
}

#[test]
fn string_null_character() {
    // [MQTT-1.5.4-2]
    for v in ALL {
        malformed(&[0x30, 5, 0, 3, b'a', 0, b'b'], v);
    }
    // in a property string too
    malformed(&publish_v5(&[0x03, 0, 1, 0]), V5);
}

#[test]
fn string_length_overruns_the_frame() {
    // [1.5.4] the length prefix counts bytes that must be in the packet
    for v in ALL {
        malformed(&[0x30, 3, 0, 5, b'a'], v);
        malformed(&[0x30, 1, 0], v);
    }
}

#[test]
fn client_id_must_be_utf8() {
    // [MQTT-3.1.3-4]
    malformed(&connect_v311(0x02, &[0, 2, 0xC0, 0x80]), V311);
}

// ---- PUBLISH --------------------------------------------------------------------------------

#[test]
fn publish_topic_no_wildcards() {
    // [MQTT-3.3.2-2]
    for v in ALL {
        malformed(&[0x30, 5, 0, 3, b'a', b'/', b'+'], v);
        malformed(&[0x30, 3, 0, 1, b'#'], v);
    }
}

#[test]
fn publish_empty_topic_before_v5() {
    // [MQTT-4.7.3-1] (3.1.1) topic names are at least one character long
    malformed(&[0x30, 3, 0, 0, b'p'], V311);
    malformed(&[0x30, 3, 0, 0, b'p'], V31);
}

#[test]
fn publish_empty_topic_without_alias_v5() {
    // [MQTT-3.3.2-1] / 3.3.2.3.4: a zero-length topic needs a Topic Alias
    protocol(&[0x30, 4, 0, 0, 0, b'p'], V5);
    protocol(&frame(0x30, &[0, 0, 2, 0x01, 1, b'p']), V5);
}

#[test]
fn packet_id_zero() {
    // [MQTT-2.2.1-3]
    for v in ALL {
        protocol(&[0x32, 5, 0, 1, b't', 0, 0], v); // PUBLISH QoS 1
        protocol(&[0x34, 5, 0, 1, b't', 0, 0], v); // PUBLISH QoS 2
        protocol(&[0x40, 2, 0, 0], v); // PUBACK
        protocol(&[0x50, 2, 0, 0], v); // PUBREC
        protocol(&[0x62, 2, 0, 0], v); // PUBREL
        protocol(&[0x70, 2, 0, 0], v); // PUBCOMP
        protocol(&[0x90, 3, 0, 0, 0], v); // SUBACK
        protocol(&[0xB0, 2, 0, 0], v); // UNSUBACK
    }
    for v in [V31, V311] {
        protocol(&[0x82, 6, 0, 0, 0, 1, b'a', 0], v); // SUBSCRIBE
        protocol(&[0xA2, 5, 0, 0, 0, 1, b'a'], v); // UNSUBSCRIBE
    }
    protocol(&[0x82, 7, 0, 0, 0, 0, 1, b'a', 0], V5);
    protocol(&[0xA2, 6, 0, 0, 0, 0, 1, b'a'], V5);
}

#[test]
fn truncated_before_packet_id() {
    // [MQTT-2.2.1-2] a QoS > 0 PUBLISH carries a packet id; acks are at least 2 bytes
    for v in ALL {
        malformed(&[0x32, 3, 0, 1, b't'], v);
        malformed(&[0x32, 4, 0, 1, b't', 0], v);
        malformed(&[0x40, 1, 0], v);
        malformed(&[0x40, 0], v);
        malformed(&[0x62, 0], v);
        malformed(&[0x82, 1, 0], v);
        malformed(&[0xA2, 0], v);
        malformed(&[0x90, 0], v);
        malformed(&[0xB0, 1, 0], v);
    }
}

// ---- CONNECT --------------------------------------------------------------------------------

#[test]
fn connect_protocol_name() {
    // [MQTT-3.1.2-1]
    malformed(
        &frame(
            0x10,
            &[0, 4, b'M', b'Q', b'T', b'X', 4, 2, 0, 60, 0, 1, b'c'],
        ),
        V311,
    );
    malformed(&frame(0x10, &[0, 1]), V311);
}

#[test]
fn connect_unsupported_level() {
    // [MQTT-3.1.2-2] unsupported level -> CONNACK 0x84 / return code 1
    let e = dec(
        &frame(
            0x10,
            &[0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 1, b'c'],
        ),
        V311,
    )
    .unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedProtocolVersion(6));
    assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    // name and level must agree
    assert_eq!(
        dec(
            &frame(
                0x10,
                &[0, 4, b'M', b'Q', b'T', b'T', 3, 2, 0, 60, 0, 1, b'c']
            ),
            V5
        ),
        Err(DecodeError::UnsupportedProtocolVersion(3))
    );
    assert_eq!(
        dec(
            &frame(
                0x10,
                &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4, 2, 0, 60, 0, 1, b'c']
            ),
            V5
        ),
        Err(DecodeError::UnsupportedProtocolVersion(4))
    );
    // bridge bit (0x84) is not a version we speak
    assert_eq!(
        dec(
            &frame(
                0x10,
                &[0, 4, b'M', b'Q', b'T', b'T', 0x84, 2, 0, 60, 0, 1, b'c']
            ),
            V5
        ),
        Err(DecodeError::UnsupportedProtocolVersion(0x84))
    );
}

#[test]
fn connect_reserved_flag() {
    // [MQTT-3.1.2-3]
    malformed(&connect_v311(0x03, &[0, 1, b'c']), V311);
    let mut c = connect_v5(&[]);
    c[9] |= 0x01; // connect flags
    malformed(&c, V5);
}

#[test]
fn connect_reserved_flag_not_checked_for_mqtt_3_1() {
    // [MQTT-3.1.2-3] is a 3.1.1 rule: MQTT 3.1 (level 3) only calls the bit unused. The
    // connection's version does not matter for CONNECT, which carries its own.
    let c = |flags: u8| {
        frame(
            0x10,
            &[
                0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, flags, 0, 60, 0, 1, b'c',
            ],
        )
    };
    for v in ALL {
        assert_eq!(dec_ok(&c(0x03), v), dec_ok(&c(0x02), v));
        assert_eq!(dec_ok(&c(0x01), v), dec_ok(&c(0x00), v));
        // The other CONNECT flag rules still apply to 3.1 [MQTT-3.1.2-13].
        malformed(&c(0x09), v);
    }
}

#[test]
fn connect_will_qos_without_will_flag() {
    // [MQTT-3.1.2-13] (3.1.1; MQTT-3.1.2-11 in 5.0)
    malformed(&connect_v311(0x0A, &[0, 1, b'c']), V311);
}

#[test]
fn connect_will_retain_without_will_flag() {
    // [MQTT-3.1.2-15] (3.1.1; MQTT-3.1.2-13 in 5.0)
    malformed(&connect_v311(0x22, &[0, 1, b'c']), V311);
}

#[test]
fn connect_will_qos_3() {
    // [MQTT-3.1.2-14] (3.1.1; MQTT-3.1.2-12 in 5.0)
    malformed(&connect_v311(0x1E, &[0, 1, b'c', 0, 1, b't', 0, 0]), V311);
}

#[test]
fn connect_password_without_user_name() {
    // [MQTT-3.1.2-22] (3.1.1); allowed in 5.0 (3.1.2.9)
    malformed(&connect_v311(0x42, &[0, 1, b'c', 0, 1, b'p']), V311);
    let c = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 60, 0, 0, 1, b'c', 0, 1, b'p',
        ],
    );
    let Packet::Connect(c) = dec_ok(&c, V5) else {
        panic!()
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password, Some(b(b"p")));
}

#[test]
fn connect_truncated_payload() {
    // [MQTT-3.1.3-1] the payload fields the flags announce must be present
    malformed(&connect_v311(0x82, &[0, 1, b'c']), V311); // user name flag, no user name
    malformed(&connect_v311(0x06, &[0, 1, b'c', 0, 1, b't']), V311); // will without payload
    malformed(&connect_v311(0x02, &[]), V311); // no client id
}

#[test]
fn connect_will_topic_rules() {
    // [MQTT-3.3.2-2] the will topic is a topic name: no wildcards; [MQTT-4.7.3-1] non-empty
    malformed(&connect_v311(0x06, &[0, 1, b'c', 0, 1, b'#', 0, 0]), V311);
    malformed(&connect_v311(0x06, &[0, 1, b'c', 0, 0, 0, 0]), V311);
}

#[test]
fn connect_will_properties_allowed_set() {
    // [2.2.2.2] Session Expiry Interval is not a will property
    let c = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 60, 0, 0, 1, b'c', 5, 0x11, 0, 0, 0, 1, 0, 1,
            b't', 0, 0,
        ],
    );
    malformed(&c, V5);
    // ... while Will Delay Interval is, and only there
    malformed(&connect_v5(&[0x18, 0, 0, 0, 1]), V5);
}

#[test]
fn connect_auth_data_without_method() {
    // [3.1.2.11.10] It is a Protocol Error to include Authentication Data without a Method
    protocol(&connect_v5(&[0x16, 0, 1, b'x']), V5);
    dec_ok(&connect_v5(&[0x15, 0, 1, b'm', 0x16, 0, 1, b'x']), V5);
}

// ---- Properties -----------------------------------------------------------------------------

#[test]
fn property_not_allowed_in_packet() {
    // [2.2.2.2] an Identifier not valid for the packet type is a Malformed Packet
    malformed(&connect_v5(&[0x23, 0, 1]), V5); // Topic Alias in CONNECT
    malformed(&publish_v5(&[0x11, 0, 0, 0, 1]), V5); // Session Expiry in PUBLISH
    malformed(&connack_v5(&[0x17, 1]), V5); // Request Problem Info in CONNACK
    malformed(&[0x40, 7, 0, 1, 0x10, 3, 0x23, 0, 1], V5); // Topic Alias in PUBACK
    malformed(&[0xE0, 4, 0, 2, 0x24, 1], V5); // Maximum QoS in DISCONNECT
    malformed(&[0x82, 10, 0, 1, 3, 0x1F, 0, 0, 0, 1, b'a', 0][..], V5); // Reason String in SUBSCRIBE
}

#[test]
fn property_unknown_identifier() {
    // [2.2.2.2]
    malformed(&publish_v5(&[0x04, 0]), V5);
    malformed(&publish_v5(&[0x2B, 0]), V5);
    malformed(&publish_v5(&[0x80, 0x01, 0]), V5); // a 2-byte identifier
}

#[test]
fn property_duplicate() {
    // "It is a Protocol Error to include <property> more than once" (3.1.2.11, 3.3.2.3, ...)
    protocol(&connect_v5(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), V5);
    protocol(&publish_v5(&[0x01, 0, 0x01, 0]), V5);
    protocol(&publish_v5(&[0x23, 0, 1, 0x23, 0, 1]), V5);
    protocol(&connack_v5(&[0x24, 0, 0x24, 0]), V5);
}

#[test]
fn subscription_identifier_once_in_subscribe_many_in_publish() {
    // [3.8.2.1.2] one Subscription Identifier in SUBSCRIBE; [3.3.2.3.8] several in PUBLISH
    protocol(
        &[0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0][..],
        V5,
    );
    let Packet::Publish(p) = dec_ok(&publish_v5(&[0x0B, 1, 0x0B, 2]), V5) else {
        panic!()
    };
    assert_eq!(p.properties.unwrap().subscription_identifiers, vec![1, 2]);
}

#[test]
fn subscription_identifier_zero() {
    // [3.3.2.3.8, 3.8.2.1.2] It is a Protocol Error if the Subscription Identifier has a value of 0
    protocol(&publish_v5(&[0x0B, 0]), V5);
    protocol(&[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0][..], V5);
}

#[test]
fn receive_maximum_zero() {
    // [3.1.2.11.3, 3.2.2.3.3]
    protocol(&connect_v5(&[0x21, 0, 0]), V5);
    protocol(&connack_v5(&[0x21, 0, 0]), V5);
}

#[test]
fn maximum_packet_size_zero() {
    // [3.1.2.11.4, 3.2.2.3.6]
    protocol(&connect_v5(&[0x27, 0, 0, 0, 0]), V5);
    protocol(&connack_v5(&[0x27, 0, 0, 0, 0]), V5);
}

#[test]
fn topic_alias_zero_is_left_to_the_receiver() {
    // [MQTT-3.3.2-8] forbids alias 0; the answer is 0x94 Topic Alias invalid, which the
    // receiver gives together with its own Topic Alias Maximum check, so the codec passes it.
    let mut b = bytes::BytesMut::from(&publish_v5(&[0x23, 0, 0])[..]);
    match decode_packet(&mut b, V5, 1 << 20) {
        Ok(Some(Packet::Publish(p))) => {
            assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn byte_booleans_are_0_or_1() {
    // [3.1.2.11.6, 3.1.2.11.7, 3.2.2.3.5, 3.2.2.3.11-13, 3.3.2.3.2]
    protocol(&connect_v5(&[0x17, 2]), V5);
    protocol(&connect_v5(&[0x19, 2]), V5);
    protocol(&connack_v5(&[0x25, 2]), V5);
    protocol(&connack_v5(&[0x28, 2]), V5);
    protocol(&connack_v5(&[0x29, 2]), V5);
    protocol(&connack_v5(&[0x2A, 0xFF]), V5);
    protocol(&publish_v5(&[0x01, 2]), V5); // Payload Format Indicator
}

#[test]
fn maximum_qos_0_or_1() {
    // [3.2.2.3.4] It is a Protocol Error to include Maximum QoS with a value other than 0 or 1
    protocol(&connack_v5(&[0x24, 2]), V5);
    dec_ok(&connack_v5(&[0x24, 1]), V5);
}

#[test]
fn response_topic_no_wildcards() {
    // [MQTT-3.3.2-14]
    protocol(&publish_v5(&[0x08, 0, 1, b'#']), V5);
}

#[test]
fn property_length_overruns_packet() {
    // [2.2.2.1]
    malformed(&frame(0x30, &[0, 1, b't', 9, 0x01, 0]), V5);
    malformed(&[0x40, 4, 0, 1, 0, 5], V5);
    malformed(&[0xE0, 2, 0, 1], V5);
    // a property value that overruns the property list (but not the packet)
    malformed(&frame(0x30, &[0, 1, b't', 2, 0x02, 0, 0, 0, 0]), V5);
    malformed(&publish_v5(&[0x03, 0, 5, b'a']), V5);
}

// ---- Reason codes ---------------------------------------------------------------------------

#[test]
fn reason_codes_must_be_in_the_packets_table() {
    // [3.2.2.2, 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1]
    malformed(&[0x20, 3, 0, 0x04, 0], V5); // CONNACK
    malformed(&[0x20, 3, 0, 0x8B, 0], V5); // CONNACK: Server shutting down is DISCONNECT-only
    malformed(&[0x40, 3, 0, 1, 0x92], V5); // PUBACK
    malformed(&[0x50, 3, 0, 1, 0x01], V5); // PUBREC
    malformed(&[0x62, 3, 0, 1, 0x10], V5); // PUBREL
    malformed(&[0x70, 3, 0, 1, 0x80], V5); // PUBCOMP
    malformed(&[0x90, 4, 0, 1, 0, 0x11], V5); // SUBACK
    malformed(&[0x90, 4, 0, 1, 0, 0x03], V5); // SUBACK
    malformed(&[0xB0, 4, 0, 1, 0, 0x01], V5); // UNSUBACK
    malformed(&[0xE0, 1, 0x18], V5); // DISCONNECT
    malformed(&[0xE0, 1, 0x01], V5); // DISCONNECT
    malformed(&[0xF0, 1, 0x04], V5); // AUTH
                                     // each table's members are accepted
    for &c in decode::allowed_reason_codes(14) {
        dec_ok(&[0xE0, 1, c], V5);
    }
    for &c in decode::allowed_reason_codes(4) {
        dec_ok(&[0x40, 3, 0, 1, c], V5);
    }
}

#[test]
fn connack_return_code_above_5() {
    // [3.2.2.3] (3.1.1) return codes 6-255 are reserved
    malformed(&[0x20, 2, 0, 6], V311);
    malformed(&[0x20, 2, 0, 0x80], V31);
}

#[test]
fn suback_return_codes_v3() {
    // [MQTT-3.9.3-2] (3.1.1) SUBACK return codes other than 0x00, 0x01, 0x02, 0x80 are reserved
    malformed(&[0x90, 3, 0, 1, 3], V311);
    malformed(&[0x90, 3, 0, 1, 0x97], V311);
}

#[test]
fn suback_and_unsuback_need_codes() {
    // [3.9.3, 3.11.3] one code per topic filter, and a SUBSCRIBE has at least one
    protocol(&[0x90, 2, 0, 1], V311);
    protocol(&[0x90, 3, 0, 1, 0], V5);
    protocol(&[0xB0, 3, 0, 1, 0], V5);
}

#[test]
fn connack_reserved_flags() {
    // [MQTT-3.2.2-1]
    malformed(&[0x20, 2, 0x02, 0], V311);
    malformed(&[0x20, 3, 0x80, 0, 0], V5);
}

#[test]
fn connack_session_present_on_refusal() {
    // [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6]
    protocol(&[0x20, 2, 1, 5], V311);
    protocol(&[0x20, 3, 1, 0x87, 0], V5);
}

#[test]
fn connack_auth_data_without_method() {
    // [3.2.2.3.18]
    protocol(&connack_v5(&[0x16, 0, 0]), V5);
}

#[test]
fn auth_data_without_method() {
    // [3.15.2.2.3]
    protocol(&[0xF0, 5, 0x18, 3, 0x16, 0, 0], V5);
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------------

#[test]
fn subscribe_needs_a_filter() {
    // [MQTT-3.8.3-3] (5.0 and 3.1.1)
    protocol(&[0x82, 2, 0, 1], V311);
    protocol(&[0x82, 3, 0, 1, 0], V5);
}

#[test]
fn subscribe_filter_without_options() {
    // [3.8.3] every filter is followed by its options byte
    for v in [V31, V311] {
        malformed(&[0x82, 5, 0, 1, 0, 1, b'a'], v);
        malformed(&[0x82, 9, 0, 1, 0, 1, b'a', 1, 0, 1, b'b'], v);
    }
    malformed(&[0x82, 6, 0, 1, 0, 0, 1, b'a'], V5);
}

#[test]
fn subscribe_empty_filter() {
    // [MQTT-4.7.3-1]
    malformed(&[0x82, 5, 0, 1, 0, 0, 0], V311);
    malformed(&[0xA2, 4, 0, 1, 0, 0], V311);
}

#[test]
fn subscribe_v5_reserved_option_bits() {
    // [MQTT-3.8.3-5]
    malformed(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40], V5);
    malformed(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x80], V5);
}

#[test]
fn subscribe_v5_qos_3() {
    // [3.8.3.1] It is a Protocol Error if the Maximum QoS field has the value 3
    protocol(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x03], V5);
}

#[test]
fn subscribe_v5_retain_handling_3() {
    // [3.8.3.1] It is a Protocol Error to send a Retain Handling value of 3
    protocol(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], V5);
}

#[test]
fn subscribe_v5_no_local_on_shared() {
    // [MQTT-3.8.3-4] (5.0)
    let mut b = vec![0x82, 0, 0, 1, 0, 0, 9];
    b.extend_from_slice(b"$share/g/");
    b.push(0x04);
    b[1] = (b.len() - 2) as u8;
    protocol(&b, V5);
}

#[test]
fn subscribe_v3_options_upper_bits() {
    // [MQTT-3.8.3-4] (3.1.1) the upper 6 bits of the requested QoS byte are reserved
    for v in [V31, V311] {
        malformed(&[0x82, 6, 0, 1, 0, 1, b'a', 0x04], v);
        malformed(&[0x82, 6, 0, 1, 0, 1, b'a', 0x80], v);
    }
}

#[test]
fn subscribe_v3_qos_3() {
    // [MQTT-3.8.3-4] (3.1.1)
    for v in [V31, V311] {
        malformed(&[0x82, 6, 0, 1, 0, 1, b'a', 0x03], v);
    }
}

#[test]
fn unsubscribe_needs_a_filter() {
    // [MQTT-3.10.3-2]
    protocol(&[0xA2, 2, 0, 1], V311);
    protocol(&[0xA2, 3, 0, 1, 0], V5);
}

#[test]
fn unsubscribe_truncated_filter() {
    // [3.10.3]
    malformed(&[0xA2, 4, 0, 1, 0, 1], V311);
}

#[test]
fn error_reason_codes_and_display() {
    assert_eq!(
        DecodeError::Malformed("x").reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        DecodeError::Protocol("x").reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(9).reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    let e: Box<dyn std::error::Error> =
        Box::new(DecodeError::Malformed("packet id 0 [MQTT-2.2.1-3]"));
    assert!(e.to_string().contains("MQTT-2.2.1-3"));
    let e: Box<dyn std::error::Error> = Box::new(EncodeError::TooLarge(70_000));
    assert!(e.to_string().contains("70000"));
}
