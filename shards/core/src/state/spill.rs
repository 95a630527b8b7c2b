//! Queues on disk: a delivery queued for a persistent session is written to the journal
//! anyway, so once the session is offline, or its in-memory queue holds
//! [`ringmq_session::IN_MEMORY_QUEUE`] messages, the journal record is its only copy and the
//! session keeps the record's location (8 bytes). It is read back from the segment mapping
//! when the inflight window has room. Compaction copies such records forward before it removes
//! their segments, a bounded number per step, so a session offline for days pins nothing.
//!
//! A message one publish delivers to several persistent sessions of a shard is written once:
//! the first delivery record holds it, the others refer to that record ([`records::MSG_REF`]),
//! as long as they land in the same segment (else a delivery is written in full and becomes
//! the record later ones refer to). Compaction therefore keeps or copies a reference and its
//! message together: a reference copied forward refers to the copy of its message made in this
//! compaction, or is written in full.

use super::*;
use crate::records::{MsgRecord, MsgRefRecord, RefView};
use ringmq_journal::{Appended, JournalError, RecordLoc};

/// Reads a queued delivery back from its journal record. `None` (logged) if the record is
/// missing or not a delivery: the caller counts it as lost.
pub(super) fn load_spilled(d: Option<&Durable>, clock: &dyn Clock, at: u64) -> Option<Queued> {
    let m = read_delivery(d?, RecordLoc::from_bits(at))?;
    Some(Queued {
        qos: m.qos,
        message: Message {
            topic: ByteStr::from(m.topic),
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.map(Arc::new),
            origin: 0,
            expires_at: env::unix_ms_to_instant(clock, m.expires_unix_ms),
            received_at: clock.now(),
        },
        retain: m.retain,
        subscription_ids: m.subscription_ids,
        journal_id: m.id,
        shared_group: 0,
    })
}

/// The delivery record at `at`, decoded, with its message read from its body record if it
/// refers to one; `None` (logged) if there is none.
pub(super) fn read_delivery(d: &Durable, at: RecordLoc) -> Option<Box<MsgRecord>> {
    match read_record(d, at)? {
        Record::Msg(m) => Some(m),
        Record::MsgRef(r) => {
            let body = RecordLoc::from_bits(r.body);
            let Some(Record::Msg(b)) = read_record(d, body) else {
                tracing::error!(
                    segment = body.segment(),
                    offset = body.offset(),
                    "a delivery's message record is missing"
                );
                return None;
            };
            Some(Box::new(r.with_body(*b)))
        }
        _ => {
            tracing::error!(
                segment = at.segment(),
                offset = at.offset(),
                "a delivery's journal location holds no delivery record"
            );
            None
        }
    }
}

fn read_record(d: &Durable, at: RecordLoc) -> Option<Record> {
    match d.journal.read(at) {
        Ok(r) => Record::decode(r.kind, r.payload),
        Err(e) => {
            tracing::error!(error = %e, "a delivery's journal record is unreadable");
            None
        }
    }
}

impl Durable {
    /// Journals a delivery: as a reference to `shared`, the record of an earlier delivery of
    /// the same message, when it can; else in full, and then it becomes `shared`.
    pub(super) fn write_delivery(
        &mut self,
        view: &MsgView<'_>,
        shared: Option<&mut Option<RecordLoc>>,
    ) -> Result<Appended, JournalError> {
        let Some(shared) = shared else {
            return self.write_msg(view);
        };
        if let Some(body) = *shared {
            let r = RefView {
                client_id: view.client_id,
                id: view.id,
                qos: view.qos,
                retain: view.retain,
                packet_id: view.packet_id,
                state: view.state,
                subscription_ids: view.subscription_ids,
                body: body.to_bits(),
                weight: (view.topic.len() + view.payload.len()) as u32,
            };
            if let Some(a) = self.write_ref(&r, body)? {
                return Ok(a);
            }
        }
        let a = self.write_msg(view)?;
        *shared = a.at;
        Ok(a)
    }

    /// Copies a journal-only delivery forward for compaction; `bodies` maps the messages
    /// copied so far in this compaction (old location -> new), so references stay shared.
    fn copy_delivery(
        &mut self,
        at: RecordLoc,
        bodies: &mut HashMap<u64, RecordLoc>,
    ) -> Result<RecordLoc, JournalError> {
        let r = match self.journal.read(at) {
            Ok(x) if x.kind == records::MSG_REF => Record::decode(x.kind, x.payload),
            _ => return self.copy_record(at),
        };
        let Some(Record::MsgRef(r)) = r else {
            return self.copy_record(at);
        };
        let r: Box<MsgRefRecord> = r;
        if let Some(&body) = bodies.get(&r.body) {
            let mut view = r.view();
            view.body = body.to_bits();
            if let Some(a) = self.write_ref(&view, body)? {
                return a.at.ok_or(out_of_range());
            }
        }
        let old_body = r.body;
        let Some(m) = read_delivery(self, at) else {
            return Err(JournalError::Config(
                "a queued delivery's message record is unreadable".into(),
            ));
        };
        let new = self.write_msg(&m.view())?.at.ok_or(out_of_range())?;
        bodies.insert(old_body, new);
        Ok(new)
    }
}

fn out_of_range() -> JournalError {
    JournalError::Config("journal location out of range (2^32 segments)".into())
}

impl ShardState {
    /// Queues a delivery to journaled session `sid` as its journal record only. `Err` if that
    /// is not possible (the append failed, which is flagged; or the location is out of range):
    /// the caller then keeps the message in memory without journaling it again.
    pub(super) fn spill_delivery(
        &mut self,
        sid: u64,
        journal_id: u64,
        msg: &Message,
        d: &Delivery,
    ) -> Result<(), ()> {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Err(());
        };
        let view = msg_view(
            &*self.clock,
            s.client_id.as_str(),
            journal_id,
            d.qos,
            d.retain,
            0,
            records::STATE_QUEUED,
            msg,
            &d.subscription_ids,
        );
        let durable = self.durable.as_mut().expect("journaled");
        match durable.write_delivery(&view, self.shared_body.as_mut()) {
            Ok(a) => match a.at {
                Some(at) => {
                    let weight = (msg.topic.len() + msg.payload.len()) as u64;
                    s.outbound.spill(at.to_bits(), weight);
                    Ok(())
                }
                None => Err(()),
            },
            Err(e) => {
                // Kept in memory and delivered, but the publisher must not be told it is stored.
                durable.write_errors += 1;
                self.delivery_refused = true;
                tracing::error!(shard = self.id, error = %e, "journal append failed");
                Err(())
            }
        }
    }

    /// Copies forward up to `budget` of `client_id`'s journal-only deliveries that sit in
    /// segments the running compaction will remove. Returns the records copied and whether
    /// the session is done.
    pub(super) fn reappend_spilled(&mut self, client_id: &str, budget: usize) -> (usize, bool) {
        let Some(sid) = self.by_client.get(&self.sessions, client_id) else {
            return (0, true);
        };
        let (Some(d), Some(s)) = (self.durable.as_mut(), self.sessions.get_mut(&sid)) else {
            return (0, true);
        };
        let Some(start) = d.checkpoint.as_ref().map(|c| c.start_segment) else {
            return (0, true);
        };
        let mut n = 0;
        for at in s.outbound.spilled_mut() {
            let loc = RecordLoc::from_bits(*at);
            if loc.segment() >= start {
                continue;
            }
            if n == budget {
                return (n, false);
            }
            n += 1;
            let bodies = &mut d.checkpoint.as_mut().expect("compacting").bodies;
            let mut moved = std::mem::take(bodies);
            let copied = d.copy_delivery(loc, &mut moved);
            d.checkpoint.as_mut().expect("compacting").bodies = moved;
            match copied {
                Ok(new) => *at = new.to_bits(),
                Err(e) => {
                    d.write_errors += 1;
                    if let Some(cp) = d.checkpoint.as_mut() {
                        cp.failed = true;
                    }
                    tracing::error!(
                        shard = self.id,
                        error = %e,
                        "journal compaction could not copy a queued message; keeping old segments"
                    );
                    return (n, true);
                }
            }
        }
        (n, true)
    }

    /// Whether any journal-only delivery still lives in a segment before `start`: compaction
    /// must then keep those segments (a bug guard; copying forward should have moved them).
    pub(super) fn spilled_before(&self, start: u64) -> bool {
        self.sessions.values().any(|s| {
            s.outbound
                .spilled()
                .any(|at| RecordLoc::from_bits(at).segment() < start)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fsync;
    use ringmq_journal::fuzzing::{config, TempDir};
    use ringmq_journal::Journal;

    fn view<'a>(client: &'a str, id: u64, payload: &'a [u8]) -> MsgView<'a> {
        MsgView {
            client_id: client,
            id,
            qos: QoS::AtLeastOnce,
            retain: false,
            packet_id: 0,
            state: records::STATE_QUEUED,
            topic: "t/1",
            payload,
            properties: None,
            expires_unix_ms: 0,
            subscription_ids: &[],
        }
    }

    #[test]
    fn deliveries_of_one_message_share_its_record_within_a_segment() {
        let dir = TempDir::new("shared-body");
        let seg = 8 * 1024;
        let (j, _) = Journal::open(config(dir.path(), seg, false), |_| {}).expect("open");
        let mut d = Durable::new(j, Fsync::Never, seg, 0);
        let payload = vec![7u8; 100];
        let mut shared = None;
        let (mut full, mut refs) = (0, 0);
        for id in 0..400u64 {
            let client = format!("c{id}");
            let a = d
                .write_delivery(&view(&client, id, &payload), Some(&mut shared))
                .expect("append");
            let at = a.at.expect("in range");
            match d.journal.read(at).expect("readable").kind {
                records::MSG => {
                    full += 1;
                    assert_eq!(shared, Some(at), "a full record is what later ones share");
                }
                records::MSG_REF => {
                    refs += 1;
                    let body = shared.expect("a reference has a body");
                    assert_eq!(body.segment(), at.segment(), "never across segments");
                }
                k => panic!("kind {k}"),
            }
            let m = read_delivery(&d, at).expect("reads back");
            assert_eq!((m.client_id.as_str(), m.id), (client.as_str(), id));
            assert_eq!((m.topic.as_str(), &m.payload[..]), ("t/1", &payload[..]));
        }
        // A reference takes about 64 bytes: one full record per 8 KiB segment, not per delivery.
        assert!((3..=6).contains(&full), "{full} full records");
        assert_eq!(full + refs, 400);
        let without = d
            .write_delivery(&view("x", 999, &payload), None)
            .expect("append");
        let kind = d
            .journal
            .read(without.at.expect("in range"))
            .expect("readable")
            .kind;
        assert_eq!(kind, records::MSG, "one delivery alone is written in full");
    }
}
