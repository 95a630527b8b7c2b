//! Scripted protocol scenarios on the real core with a virtual clock: a test writes what each
//! client sends and when, and reads what the broker answered, without sockets or sleeps.
//! Timing rules (keep-alive, will delay, session expiry) take microseconds to check here and
//! cannot flake; `tests/scenarios.rs` holds them. Built on the driver of [`crate::hostile`].

use crate::hostile::Hostile;
use bytes::{Bytes, BytesMut};
use ringmq_codec::{
    decode_packet, encode, ByteStr, Connect, Disconnect, LastWill, Packet, PacketId, Properties,
    ProtocolVersion, PubResp, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use ringmq_core::Config;
use std::time::Duration;

/// Clients are slots 0..3; a slot's next CONNECT after its connection ended opens a new one.
pub struct Scenario {
    h: Hostile,
    versions: [ProtocolVersion; 3],
}

/// A CONNECT in the shape scenarios need.
pub struct Hello<'a> {
    pub version: ProtocolVersion,
    pub client_id: &'a str,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// MQTT 5 Session Expiry Interval.
    pub expiry: Option<u32>,
    /// Will topic and MQTT 5 Will Delay Interval.
    pub will: Option<(&'a str, u32)>,
    /// The CONNECT's username (trusted: scenarios check no password).
    pub username: Option<&'a str>,
}

impl Hello<'_> {
    pub fn new(version: ProtocolVersion, client_id: &str) -> Hello<'_> {
        Hello {
            version,
            client_id,
            clean_start: true,
            keep_alive: 0,
            expiry: None,
            will: None,
            username: None,
        }
    }
}

impl Scenario {
    pub fn new(nshards: usize) -> Scenario {
        Scenario::with(nshards, |_| {})
    }

    /// A scenario on a broker whose settings `tweak` changes (the defaults otherwise, with an
    /// inflight window of 4).
    pub fn with(nshards: usize, tweak: impl FnOnce(&mut Config)) -> Scenario {
        let mut h = Hostile::with(nshards, false, tweak);
        h.keep_output = true;
        Scenario {
            h,
            versions: [ProtocolVersion::V311; 3],
        }
    }

    fn send(&mut self, c: usize, p: &Packet) {
        let mut b = BytesMut::new();
        encode(p, self.versions[c], &mut b).expect("a scenario's packet encodes");
        self.h.send(c, &b);
    }

    pub fn connect(&mut self, c: usize, hello: Hello) {
        self.versions[c] = hello.version;
        let will = hello.will.map(|(topic, delay)| LastWill {
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(b"will"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: (delay > 0).then_some(delay),
                ..Properties::default()
            },
        });
        let connect = Connect {
            protocol: hello.version,
            clean_start: hello.clean_start,
            keep_alive: hello.keep_alive,
            client_id: ByteStr::from(hello.client_id),
            will,
            username: hello.username.map(ByteStr::from),
            password: None,
            properties: Properties {
                session_expiry_interval: hello.expiry,
                ..Properties::default()
            },
        };
        self.send(c, &Packet::Connect(Box::new(connect)));
    }

    /// Every shard takes these ACL rules (Mosquitto's format), as after a reload; the broker
    /// must have been made with `acl_file` set, so that sessions keep their usernames.
    pub fn set_acl(&mut self, rules: &str) {
        let acl = std::sync::Arc::new(ringmq_core::acl::Acl::parse(rules).expect("valid rules"));
        self.h.set_acl(acl);
    }

    pub fn subscribe(&mut self, c: usize, filter: &str, qos: QoS) {
        let s = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![SubscribeFilter {
                filter: ByteStr::from(filter),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Properties::default(),
        };
        self.send(c, &Packet::Subscribe(Box::new(s)));
    }

    pub fn publish(&mut self, c: usize, topic: &str, payload: &'static [u8]) {
        self.publish_at(c, topic, payload, QoS::AtMostOnce, 0);
    }

    /// A PUBLISH at `qos` with packet id `id` (ignored at QoS 0).
    pub fn publish_at(&mut self, c: usize, topic: &str, payload: &'static [u8], qos: QoS, id: u16) {
        self.publish_dup(c, topic, payload, qos, id, false);
    }

    /// A PUBLISH with its DUP flag as given (`true`: sent again).
    pub fn publish_dup(
        &mut self,
        c: usize,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        id: u16,
        dup: bool,
    ) {
        let p = Publish {
            dup,
            qos,
            retain: false,
            topic: ByteStr::from(topic),
            packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(id).expect("non-zero")),
            payload: Bytes::from_static(payload),
            properties: None,
        };
        self.send(c, &Packet::Publish(p));
    }

    /// PUBACK for a QoS 1 PUBLISH the slot received.
    pub fn puback(&mut self, c: usize, id: PacketId) {
        self.send(c, &Packet::PubAck(PubResp::new(id)));
    }

    /// Shard `k`'s driver has `n` batches waiting for shard `peer` beyond its channel.
    pub fn set_peer_backlog(&mut self, k: usize, peer: usize, n: usize) {
        self.h.set_peer_backlog(k, peer, n);
    }

    pub fn ping(&mut self, c: usize) {
        self.send(c, &Packet::PingReq);
    }

    pub fn disconnect(&mut self, c: usize) {
        let d = Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        self.send(c, &Packet::Disconnect(Box::new(d)));
        self.h.eof(c);
    }

    /// The client's socket ends without DISCONNECT.
    pub fn drop_connection(&mut self, c: usize) {
        self.h.eof(c);
    }

    /// Virtual time passes; the shards' ticks run.
    pub fn advance(&mut self, by: Duration) {
        self.h.advance(by);
    }

    /// The journal syncs (answers held for it go out).
    pub fn sync(&mut self) {
        self.h.sync_all();
    }

    /// Packets the broker wrote to the slot's latest connection since the last call, after the
    /// journal synced (as the broker's journal task does within milliseconds).
    pub fn received(&mut self, c: usize) -> Vec<Packet> {
        self.h.sync_all();
        let socket = self.socket(c);
        let Some((buf, _)) = self.h.written.get_mut(socket) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(p) = decode_packet(buf, self.versions[c], usize::MAX)
            .unwrap_or_else(|e| panic!("the broker wrote a packet that does not decode: {e}"))
        {
            out.push(p);
        }
        out
    }

    /// Whether the broker closed the slot's latest connection.
    pub fn closed(&self, c: usize) -> bool {
        self.h.written.get(self.socket(c)).is_some_and(|w| w.1)
    }

    fn socket(&self, c: usize) -> usize {
        usize::try_from(self.h.socket_of_slot(c)).expect("the slot connected")
    }
}
