//! The checker's model: every message published (and every will), what each client received,
//! and the rules a run must keep. Violations are collected as text; the run fails on the first.
//!
//! Time in the model is the simulator's event counter (`ev`), which strictly increases: "before"
//! and "after" are about causality as the simulator saw it, not about the virtual clock.

use std::collections::{BTreeMap, HashMap, HashSet};

/// A subscription whose SUBACK the client saw, in its session incarnation `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obligation {
    pub client: usize,
    pub epoch: u64,
    pub filter: String,
    /// Event at which the client saw the SUBACK.
    pub established: u64,
}

#[derive(Debug)]
pub struct MsgInfo {
    pub publisher: usize,
    pub topic: String,
    pub qos: u8,
    /// A retained publish with an empty payload (deletes the retained message).
    pub empty: bool,
    pub will: Option<usize>,
    /// Position among the publisher's messages on this topic.
    pub pub_seq: u64,
    /// First time the client wrote it to a connection.
    pub first_sent: Option<u64>,
    /// When the publisher saw its PUBACK / PUBREC (success).
    pub acked: Option<u64>,
    /// The broker crashed after the message was first sent and before it was acknowledged.
    pub crash_before_ack: bool,
    /// Its acknowledgement may have been a late answer to an earlier transmission (see the
    /// "stale-ack" finding): when the broker applied it is not known.
    pub stale_acked: bool,
    /// A PUBREC for it left before its routing was complete or durable (see
    /// "durability-qos2"): a crash may lose it though acknowledged.
    pub early_pubrec: bool,
    /// Subscriptions that must get it (fixed when acknowledged).
    pub obligations: Vec<Obligation>,
    /// The broker answered one of its transmissions 0x97 (a full queue): that transmission
    /// went nowhere, and a later one is a new message to the broker, so no order applies.
    pub refused: bool,
    /// The client sent it more than once (a retransmission after reconnecting).
    pub resent: bool,
}

/// How the connection that carried a will ended, as far as the simulator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WillEnd {
    /// DISCONNECT 0x00 sent by the client: the will must never be published.
    Normal,
    /// DISCONNECT 0x04, reset, abandoned or silent: the will is due.
    Due,
    /// The broker closed it while the client behaved (keep-alive after a clock jump, or a
    /// close the simulator did not plan): not checked.
    Unknown,
    /// The broker process died with the connection: the will is gone with it.
    Crash,
    /// The broker never accepted the CONNECT (connect timeout, refused, lost): there is no
    /// will to publish.
    NotAccepted,
}

#[derive(Debug)]
pub struct Will {
    pub msg: u64,
    pub client: usize,
    /// The connection whose CONNECT carried it.
    pub conn: usize,
    pub delay_s: u32,
    /// The session ends with the connection (v5 expiry 0, or 3.1.1 clean session).
    pub session_ends: bool,
    pub end: Option<(u64, WillEnd)>,
    /// A broker crash happened after the end: the will may have died with it.
    pub crash_after: bool,
}

#[derive(Default)]
pub struct Model {
    pub msgs: Vec<MsgInfo>,
    pub wills: Vec<Will>,
    pub violations: Vec<(&'static str, String)>,
    /// Violations of kinds the run was told to tolerate (known findings), counted by kind.
    pub tolerated: BTreeMap<&'static str, u64>,
    /// Per client: message ids it processed a PUBLISH of.
    pub received: Vec<HashSet<u64>>,
    /// (client, message) -> deliveries of it at QoS 2 to the application, and the event of
    /// the first.
    qos2_app: HashMap<(usize, u64), (u32, u64)>,
    /// Event of the last power loss.
    pub last_power_loss: u64,
    /// Events at which the broker crashed.
    pub crashes: Vec<u64>,
    /// (client, event) of Clean Start CONNACKs sent while the replaced session was still in
    /// the synced journal (see "durability-connack").
    pub connack_risk: Vec<(usize, u64)>,
    /// (client, epoch, publisher, topic) -> highest pub_seq delivered in order.
    order: HashMap<(usize, u64, usize, String), u64>,
    next_pub_seq: HashMap<(usize, String), u64>,
    /// Non-will retained publishes per topic, in creation order.
    pub retained: BTreeMap<String, Vec<u64>>,
}

impl Model {
    pub fn new(clients: usize) -> Model {
        Model {
            received: vec![HashSet::new(); clients],
            ..Model::default()
        }
    }

    pub fn violation(&mut self, kind: &'static str, what: String) {
        self.violations.push((kind, what));
    }

    pub fn new_msg(
        &mut self,
        publisher: usize,
        topic: &str,
        qos: u8,
        retain: bool,
        empty: bool,
        will: Option<usize>,
    ) -> u64 {
        let id = self.msgs.len() as u64;
        let seq = self
            .next_pub_seq
            .entry((publisher, topic.to_string()))
            .or_insert(0);
        *seq += 1;
        self.msgs.push(MsgInfo {
            publisher,
            topic: topic.to_string(),
            qos,
            empty,
            will,
            pub_seq: *seq,
            first_sent: None,
            acked: None,
            crash_before_ack: false,
            stale_acked: false,
            early_pubrec: false,
            obligations: Vec::new(),
            refused: false,
            resent: false,
        });
        if retain && will.is_none() {
            self.retained.entry(topic.to_string()).or_default().push(id);
        }
        id
    }

    /// A PUBLISH reached a client's application layer (`first`: not a duplicate the client
    /// recognised by its QoS 2 packet id). `ordered`: the client's subscription covering it
    /// was established before it was first sent, so the order rule applies. Returns the rule
    /// broken, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn on_receive(
        &mut self,
        ev: u64,
        client: usize,
        epoch: u64,
        msg: u64,
        qos: u8,
        retain_flag: bool,
        first: bool,
        ordered: bool,
    ) -> Option<(&'static str, String)> {
        let new = self.received[client].insert(msg);
        if retain_flag {
            return None;
        }
        let (publisher, topic, pub_seq, will, refused) = {
            let m = &self.msgs[msg as usize];
            (
                m.publisher,
                m.topic.clone(),
                m.pub_seq,
                m.will.is_some(),
                m.refused,
            )
        };
        if qos == 2 && first {
            let e = self.qos2_app.entry((client, msg)).or_insert((0, ev));
            e.0 += 1;
            let (n, first_ev) = *e;
            if n > 1 {
                // A crash after the message went out and before its PUBREC reached the
                // publisher: the broker routes the retransmission again, not knowing whether
                // the first routing finished (a known way to get a second copy).
                let m = &self.msgs[msg as usize];
                let sent = m.first_sent.unwrap_or(first_ev).min(first_ev);
                let crash_window = self
                    .crashes
                    .iter()
                    .any(|&c| c > sent && m.acked.is_none_or(|a| a > c));
                let kind = if crash_window {
                    "exactly-once-crash"
                } else {
                    "exactly-once"
                };
                return Some((
                    kind,
                    format!(
                        "exactly-once: client {client} got message {msg} (topic {topic}) at QoS 2 \
                     {n} times as a new message"
                    ),
                ));
            }
        }
        // Wills come from different connections, each published when its own ends: no order.
        if new && ordered && qos > 0 && !will && !refused {
            let key = (client, epoch, publisher, topic.clone());
            let last = self.order.entry(key).or_insert(0);
            if pub_seq < *last {
                let l = *last;
                return Some((
                    "order",
                    format!(
                        "order [MQTT-4.6.0-6]: client {client} got message {msg} (publisher \
                     {publisher}, topic {topic}, #{pub_seq}) after #{l} of the same publisher \
                     and topic"
                    ),
                ));
            }
            *last = pub_seq;
        }
        None
    }
}

/// The message id a payload carries: `m<id>.` (published) or `w<id>.` (will).
pub fn msg_id(payload: &[u8]) -> Option<u64> {
    let (first, rest) = payload.split_first()?;
    if *first != b'm' && *first != b'w' {
        return None;
    }
    let end = rest.iter().position(|b| *b == b'.')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// MQTT topic matching (no `$` topics are used).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/x", "b/x"));
        assert!(matches("#", "will/c1"));
        assert!(!matches("a", "a/b"));
    }

    #[test]
    fn payload_ids() {
        assert_eq!(msg_id(b"m12.xyz"), Some(12));
        assert_eq!(msg_id(b"w3."), Some(3));
        assert_eq!(msg_id(b""), None);
        assert_eq!(msg_id(b"x1."), None);
    }
}
