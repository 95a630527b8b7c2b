//! The ACL applied: PUBLISH (and a CONNECT's will) needs `write`, a SUBSCRIBE filter `read`
//! over all it matches, and every delivery `read` of its topic for the receiving session, so
//! retained messages, wills, restored subscriptions and subscriptions made before a reload
//! are all held to the rules in force when the message goes.

use super::publish::Qos2In;
use super::*;
use crate::acl::{Acl, Who};

impl ShardState {
    /// The ACL to apply from now on (`None`: everything allowed): at start, and after a
    /// reload (SIGHUP), from the driver.
    pub fn set_acl(&mut self, acl: Option<Arc<Acl>>) {
        self.acl = acl;
    }

    fn who(s: &Session) -> Who<'_> {
        Who {
            client_id: s.client_id.as_str(),
            username: s.username.as_deref().map(String::as_str),
        }
    }

    /// Whether session `sid` may publish to `topic`; counted when not.
    pub(super) fn may_write(&mut self, sid: u64, topic: &str) -> bool {
        let Some(acl) = self.acl.as_deref() else {
            return true;
        };
        let ok = self
            .sessions
            .get(&sid)
            .is_some_and(|s| acl.can_write(&Self::who(s), topic));
        if !ok {
            self.counters.acl_denied_publish += 1;
        }
        ok
    }

    /// Whether session `sid` may subscribe to `filter` (of a shared subscription: the filter
    /// inside `$share/GROUP/`); counted when not.
    pub(super) fn may_subscribe(&mut self, sid: u64, filter: &str) -> bool {
        let Some(acl) = self.acl.as_deref() else {
            return true;
        };
        let inner = match parse_shared(filter, usize::MAX) {
            Ok(Some(sh)) => sh.filter,
            _ => filter,
        };
        let ok = self
            .sessions
            .get(&sid)
            .is_some_and(|s| acl.can_subscribe(&Self::who(s), inner));
        if !ok {
            self.counters.acl_denied_subscribe += 1;
        }
        ok
    }

    /// Whether a delivery of `topic` may go to `s`. Not a method on `self`: the caller
    /// holds the session.
    pub(super) fn may_read(acl: Option<&Acl>, s: &Session, topic: &str) -> bool {
        acl.is_none_or(|acl| acl.can_read(&Self::who(s), topic))
    }

    /// Whether a CONNECT's will may be published by its client; counted when not.
    pub(super) fn will_allowed(&mut self, c: &Connect) -> bool {
        let (Some(acl), Some(w)) = (self.acl.as_deref(), c.will.as_ref()) else {
            return true;
        };
        let who = Who {
            client_id: c.client_id.as_str(),
            username: c.username.as_deref(),
        };
        let ok = acl.can_write(&who, &w.topic);
        if !ok {
            self.counters.acl_denied_publish += 1;
        }
        ok
    }

    /// A PUBLISH the ACL refuses: QoS 0 is dropped; QoS 1/2 is answered in order with the
    /// session's other answers (0x87 to MQTT 5, success to 3.1.x, whose QoS 2 flow then
    /// completes as for a message routed nowhere).
    pub(super) fn deny_publish(&mut self, key: usize, sid: u64, p: &Publish) {
        let Some(id) = p.packet_id else {
            return;
        };
        if p.qos == QoS::ExactlyOnce {
            match self.receive_qos2(sid, id, p.dup) {
                Qos2In::New | Qos2In::Again | Qos2In::Refused => {}
                Qos2In::Gone => return,
                Qos2In::TooMany => {
                    let reason = ReasonCode::RECEIVE_MAXIMUM_EXCEEDED;
                    return self.close_conn(key, Close::Error(reason));
                }
            }
            if !self.conns[key].version.is_v5() {
                self.qos2_routed(sid, id);
            }
        }
        let need = self.sync_needed_since(JournalSeq::NONE);
        self.queue_ack(key, sid, id, p.qos, None, Taken::NotAuthorized, need);
    }
}
