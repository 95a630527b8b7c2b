//! The receiving side of QoS 2: packet ids between PUBLISH and PUBREL, so that a retransmission
//! is answered without being routed twice [MQTT-4.3.3-9].

use ringmq_codec::PacketId;
use std::collections::HashMap;

/// QoS 2 PUBLISHes received and not yet released by PUBREL. The map is allocated on the first
/// one and released when the last is released: most sessions never publish at QoS 2.
#[derive(Debug, Default)]
pub struct InboundQos2 {
    // Boxed on purpose: 8 bytes per session instead of 48 for a bare `HashMap`.
    #[allow(clippy::box_collection)]
    ids: Option<Box<HashMap<u16, Qos2Routing>>>,
}

/// How far a received QoS 2 message's routing got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos2Routing {
    /// Being routed (or held until its receipt is durable).
    Pending,
    /// Every shard took it: PUBREC may go.
    Routed,
    /// Read back from the journal at start without a record that its routing finished: a
    /// crash may have cut it short.
    Unknown,
    /// Refused (MQTT 5, PUBREC 0x97): the flow ended, but the answer may have been lost with
    /// the connection. Not counted against Receive Maximum.
    Refused,
}

/// What a QoS 2 PUBLISH's packet id says about the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos2Seen {
    /// First seen: route it.
    New,
    /// A retransmission of a message routed or being routed [MQTT-4.3.3-9]: answer again only.
    Again,
    /// Received before a restart whose routing may not have finished: route it again (a
    /// second copy at some subscribers beats losing it at others).
    Unknown,
    /// A retransmission (DUP) of one refused: answer the refusal again (some subscribers may
    /// have it already, so routing it again would deliver it twice).
    Refused,
}

impl InboundQos2 {
    fn map(&mut self) -> &mut HashMap<u16, Qos2Routing> {
        self.ids.get_or_insert_with(Box::default)
    }

    /// A QoS 2 PUBLISH with this id arrived; `dup` is its DUP flag.
    pub fn on_publish(&mut self, id: PacketId, dup: bool) -> Qos2Seen {
        let ids = self.map();
        match ids.insert(id.get(), Qos2Routing::Pending) {
            None => Qos2Seen::New,
            Some(Qos2Routing::Unknown) => Qos2Seen::Unknown,
            Some(Qos2Routing::Refused) if dup => {
                ids.insert(id.get(), Qos2Routing::Refused);
                Qos2Seen::Refused
            }
            // The client took the refusal and uses the id for a new message.
            Some(Qos2Routing::Refused) => Qos2Seen::New,
            Some(state) => {
                ids.insert(id.get(), state);
                Qos2Seen::Again
            }
        }
    }

    /// Its routing finished; true if it was pending (the change to make durable).
    pub fn routed(&mut self, id: PacketId) -> bool {
        match self.ids.as_mut().and_then(|m| m.get_mut(&id.get())) {
            Some(r) if *r != Qos2Routing::Routed => {
                *r = Qos2Routing::Routed;
                true
            }
            _ => false,
        }
    }

    /// It was refused, and the answer may not reach the client: a retransmission is refused
    /// again rather than taken for a success or routed twice.
    pub fn refused(&mut self, id: PacketId) {
        if let Some(r) = self.ids.as_mut().and_then(|m| m.get_mut(&id.get())) {
            *r = Qos2Routing::Refused;
        }
    }

    /// A packet id read back from the journal at start.
    pub fn restore(&mut self, id: PacketId, routed: bool) {
        let state = if routed {
            Qos2Routing::Routed
        } else {
            Qos2Routing::Unknown
        };
        self.map().insert(id.get(), state);
    }

    /// Forgets the id; true if it was pending. A refused one was not: its flow ended with the
    /// refusal, and a PUBREL for it (a client that ignored the PUBREC's reason code) is
    /// answered "Packet Identifier not found".
    pub fn on_pubrel(&mut self, id: PacketId) -> bool {
        let Some(m) = self.ids.as_mut() else {
            return false;
        };
        let found = m
            .remove(&id.get())
            .is_some_and(|r| r != Qos2Routing::Refused);
        if m.is_empty() {
            self.ids = None;
        }
        found
    }

    pub fn ids(&self) -> impl Iterator<Item = (u16, Qos2Routing)> + '_ {
        self.ids
            .iter()
            .flat_map(|m| m.iter().map(|(&i, &r)| (i, r)))
    }

    pub fn len(&self) -> usize {
        self.ids.as_ref().map_or(0, |m| m.len())
    }

    /// Ids whose flow is not over: what Receive Maximum bounds.
    pub fn unreleased(&self) -> usize {
        self.ids.as_ref().map_or(0, |m| {
            m.values().filter(|r| **r != Qos2Routing::Refused).count()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.ids = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    #[test]
    fn a_refused_qos2_id_refuses_its_retransmission_and_frees_it_for_a_new_message() {
        let mut q = InboundQos2::default();
        assert_eq!(q.on_publish(pid(5), false), Qos2Seen::New);
        q.refused(pid(5));
        assert_eq!(q.unreleased(), 0, "a refused flow is over");
        assert_eq!(
            q.on_publish(pid(5), true),
            Qos2Seen::Refused,
            "DUP: the same message"
        );
        assert_eq!(
            q.on_publish(pid(5), false),
            Qos2Seen::New,
            "no DUP: a new message"
        );
        assert_eq!(q.unreleased(), 1);
        q.refused(pid(5));
        assert!(
            !q.on_pubrel(pid(5)),
            "a PUBREL after a refusal finds no flow"
        );
        assert!(q.is_empty(), "and the id is gone");
    }

    #[test]
    fn inbound_qos2_holds_a_map_only_while_ids_are_unreleased() {
        let mut q = InboundQos2::default();
        assert!(q.ids.is_none());
        assert_eq!(q.on_publish(pid(5), false), Qos2Seen::New);
        assert_eq!(q.on_publish(pid(5), false), Qos2Seen::Again);
        assert!(q.routed(pid(5)));
        assert!(!q.routed(pid(6)));
        assert!(!q.on_pubrel(pid(6)));
        assert!(q.on_pubrel(pid(5)));
        assert!(q.ids.is_none() && q.is_empty());
        assert!(!q.on_pubrel(pid(5)), "released once [MQTT-4.3.3-9]");
    }

    #[test]
    fn inbound_qos2_routes_once() {
        // [MQTT-4.3.3-9] a retransmitted QoS 2 PUBLISH is not delivered onwards twice.
        let mut i = InboundQos2::default();
        assert_eq!(i.on_publish(pid(7), false), Qos2Seen::New);
        assert_eq!(i.on_publish(pid(7), false), Qos2Seen::Again);
        assert!(i.on_pubrel(pid(7)));
        assert!(!i.on_pubrel(pid(7)));
        let again = i.on_publish(pid(7), false);
        assert_eq!(again, Qos2Seen::New, "after PUBREL the id is free again");
    }

    #[test]
    fn inbound_qos2_unknown_routing_routes_once_more() {
        // An id read back from the journal without a record that its routing finished: the
        // first retransmission is routed (the crash may have cut the routing short), later
        // ones are not; one whose routing finished is not routed again [MQTT-4.3.3-9].
        let mut i = InboundQos2::default();
        i.restore(pid(7), false);
        i.restore(pid(8), true);
        assert_eq!(i.on_publish(pid(8), false), Qos2Seen::Again);
        assert_eq!(i.on_publish(pid(7), false), Qos2Seen::Unknown);
        assert_eq!(i.on_publish(pid(7), false), Qos2Seen::Again);
        assert!(i.routed(pid(7)), "pending until routed");
        assert!(!i.routed(pid(7)), "routed once");
        assert!(!i.routed(pid(8)));
        assert_eq!(i.len(), 2);
        assert!(i.on_pubrel(pid(8)));
        assert!(i.on_pubrel(pid(7)));
        assert!(i.is_empty());
    }
}
