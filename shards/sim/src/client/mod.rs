//! Simulated MQTT clients (3.1.1 and 5.0) that behave like correct clients: packet ids,
//! QoS 1/2 flows in both directions, retransmission with DUP on a resumed session, keep-alive,
//! wills, resubscription after a lost session. And the checks made where packets cross the
//! wire: acknowledgements at the moment the broker emits them, deliveries as clients get them.

use crate::model::{self, Obligation, Will, WillEnd};
use crate::rng::Rng;
use crate::world::Sim;
use bytes::{Bytes, BytesMut};
use ringmq_codec::{
    decode_packet, encode, ByteStr, Connect, Disconnect, LastWill, Packet, PacketId, Properties,
    ProtocolVersion, PubResp, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions, Unsubscribe,
};
use ringmq_core::config::home_shard;
use std::collections::{BTreeMap, BTreeSet};

mod actions;
mod receive;

pub const TOPICS: &[&str] = &["a", "a/b", "a/c", "b/x", "b/y"];
pub const FILTERS: &[&str] = &["a", "a/b", "a/+", "a/#", "b/+", "+/x", "#", "will/#"];
/// Slack for the broker's whole-second expiry arithmetic.
const EXPIRY_MARGIN_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Offline,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    Active,
}

/// An outgoing QoS 1/2 message not yet completely acknowledged, in the order first sent.
#[derive(Debug)]
pub struct OutMsg {
    pub pid: u16,
    pub msg: u64,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    pub payload: Bytes,
    /// PUBREC received, PUBREL sent: waiting for PUBCOMP.
    pub released: bool,
}

#[derive(Debug)]
pub enum Op {
    Sub { pid: u16, filters: Vec<String> },
    Unsub { pid: u16, filters: Vec<String> },
}

impl Op {
    fn pid(&self) -> u16 {
        match self {
            Op::Sub { pid, .. } | Op::Unsub { pid, .. } => *pid,
        }
    }
}

#[derive(Debug)]
pub struct SubState {
    pub qos: u8,
    /// Event at which the SUBACK was seen.
    pub established: u64,
}

pub struct Client {
    pub id: String,
    pub version: ProtocolVersion,
    /// Wants a persistent session (3.1.1 Clean Session 0, v5 expiry > 0).
    pub persistent: bool,
    /// v5 Session Expiry Interval when persistent.
    pub expiry: u32,
    pub keep_alive: u16,
    pub receive_maximum: Option<u16>,
    /// Allocates the lowest free packet id (else the next one in sequence).
    pub lowest_pid: bool,
    /// Outgoing QoS 1/2 messages in flight at most.
    pub window: usize,
    pub conn: Option<usize>,
    pub phase: Phase,
    pub rx: BytesMut,
    /// The client believes the broker holds its persistent session.
    pub has_session: bool,
    /// A journal-gated acknowledgement arrived in this session.
    pub durable_session: bool,
    /// Session incarnation, as the client knows it.
    pub epoch: u64,
    pub offline_since_ms: u64,
    pub out: Vec<OutMsg>,
    pub in_qos2: BTreeSet<u16>,
    pub op: Option<Op>,
    pub subs: BTreeMap<String, SubState>,
    /// A SUBACK that may have been the late answer to an earlier connection's SUBSCRIBE: the
    /// packet id and filters waiting for the second answer.
    pub unconfirmed: Option<(u16, Vec<String>)>,
    next_pid: u16,
    pub last_tx_ms: u64,
    /// Sends nothing until the broker closes the connection.
    pub silent: bool,
    /// The Clean Start flag of the CONNECT in flight.
    asked_clean: bool,
    /// Event at which the client last saw its persistent session confirmed (CONNACK).
    session_confirmed: u64,
    /// The CONNECT in flight asks to resume the session the client holds state for.
    asked_resume: bool,
    /// The next CONNECT must start clean (the broker holds a session the client has no
    /// state for).
    must_clean: bool,
    pub is_probe: bool,
    /// Per packet id: PUBLISHes of earlier connections of this session that the client never
    /// saw answered there (their acknowledgement may come on a later connection).
    pub stale: BTreeMap<u16, u32>,
    /// The messages those PUBLISHes carried.
    pub stale_msgs: BTreeSet<u64>,
    /// Retained messages the probe collected, by topic.
    pub probe_retained: BTreeMap<String, Vec<u64>>,
}

impl Client {
    pub fn random(i: usize, rng: &mut Rng, max_inflight: u16) -> Client {
        let version = if rng.chance(500) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let persistent = rng.chance(650);
        let expiry = *rng.pick(&[30u32, 300, 3600, u32::MAX]);
        let keep_alive = if version == ProtocolVersion::V5 {
            *rng.pick(&[0u16, 5, 10, 30])
        } else {
            *rng.pick(&[5u16, 10, 30])
        };
        let receive_maximum =
            (version == ProtocolVersion::V5 && rng.chance(400)).then(|| rng.range(1, 6) as u16);
        Client {
            id: format!("c{i}"),
            version,
            persistent,
            expiry,
            keep_alive,
            receive_maximum,
            lowest_pid: rng.chance(500),
            window: (max_inflight as usize).min(8),
            conn: None,
            phase: Phase::Offline,
            rx: BytesMut::new(),
            has_session: false,
            durable_session: false,
            epoch: 0,
            offline_since_ms: 0,
            out: Vec::new(),
            in_qos2: BTreeSet::new(),
            op: None,
            subs: BTreeMap::new(),
            unconfirmed: None,
            next_pid: 1,
            last_tx_ms: 0,
            silent: false,
            asked_clean: true,
            session_confirmed: 0,
            asked_resume: false,
            must_clean: false,
            is_probe: false,
            stale: BTreeMap::new(),
            stale_msgs: BTreeSet::new(),
            probe_retained: BTreeMap::new(),
        }
    }

    pub fn probe(i: usize) -> Client {
        let mut rng = Rng::new(0);
        let mut c = Client::random(i, &mut rng, 32);
        c.id = "probe".into();
        c.version = ProtocolVersion::V5;
        c.persistent = false;
        c.keep_alive = 60;
        c.receive_maximum = None;
        c.is_probe = true;
        c
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {} ka {}s{}{}",
            self.id,
            self.version,
            if !self.persistent {
                "clean".to_string()
            } else if self.version == ProtocolVersion::V5 {
                format!("persistent (expiry {})", self.expiry)
            } else {
                "persistent".to_string()
            },
            self.keep_alive,
            self.receive_maximum
                .map_or(String::new(), |r| format!(" receive-max {r}")),
            if self.lowest_pid { " lowest-pid" } else { "" }
        )
    }

    fn v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    /// A free packet id. With `avoid_stale`, not one that may still get a late answer from
    /// an earlier connection (a workaround for a known broker issue, so that runs tolerating
    /// it do not trip over its consequences).
    pub(crate) fn alloc_pid(&mut self, avoid_stale: bool) -> u16 {
        let used = |p: u16, c: &Client| {
            c.out.iter().any(|o| o.pid == p)
                || c.op.as_ref().is_some_and(|o| o.pid() == p)
                || (avoid_stale && c.stale.contains_key(&p))
        };
        if self.lowest_pid {
            let mut p = 1;
            while used(p, self) {
                p += 1;
            }
            return p;
        }
        loop {
            let p = self.next_pid;
            self.next_pid = if p == u16::MAX { 1 } else { p + 1 };
            if !used(p, self) {
                return p;
            }
        }
    }

    /// The subscription qos a client always uses for a filter (so that re-subscribing never
    /// changes what an established subscription promises).
    fn sub_qos(&self, filter: &str) -> u8 {
        let h = model_hash(&self.id) ^ model_hash(filter);
        (h % 3) as u8
    }

    /// Whether a reconnect may resume the session: the client believes it exists and it
    /// cannot have expired yet.
    fn may_resume(&self, now_ms: u64) -> bool {
        if !self.persistent || !self.has_session {
            return false;
        }
        if self.version != ProtocolVersion::V5 || self.expiry == u32::MAX {
            return true;
        }
        now_ms.saturating_sub(self.offline_since_ms) + EXPIRY_MARGIN_MS
            < u64::from(self.expiry) * 1000
    }

    /// Effective keep-alive in ms (what the broker enforces).
    fn keep_alive_ms(&self) -> u64 {
        let ka = if self.keep_alive == 0 {
            60
        } else {
            self.keep_alive
        };
        u64::from(ka) * 1000
    }
}

fn model_hash(s: &str) -> u64 {
    ringmq_core::config::fnv1a_64(s.as_bytes())
}

fn pid(p: u16) -> PacketId {
    PacketId::new(p).expect("packet ids start at 1")
}
