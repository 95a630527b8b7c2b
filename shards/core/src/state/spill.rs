//! Queues on disk: a delivery queued for a persistent session is written to the journal
//! anyway, so once the session is offline, or its in-memory queue holds
//! [`ringmq_session::IN_MEMORY_QUEUE`] messages, the journal record is its only copy and the
//! session keeps the record's location (8 bytes). It is read back from the segment mapping
//! when the inflight window has room. Compaction copies such records forward before it removes
//! their segments, a bounded number per step, so a session offline for days pins nothing.

use super::*;
use crate::records::MsgRecord;
use ringmq_journal::RecordLoc;

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

/// The delivery record at `at`, decoded; `None` (logged) if there is none.
pub(super) fn read_delivery(d: &Durable, at: RecordLoc) -> Option<Box<MsgRecord>> {
    let rec = match d.journal.read(at) {
        Ok(r) => Record::decode(r.kind, r.payload),
        Err(e) => {
            tracing::error!(error = %e, "a delivery's journal record is unreadable");
            return None;
        }
    };
    let Some(Record::Msg(m)) = rec else {
        tracing::error!(
            segment = at.segment(),
            offset = at.offset(),
            "a delivery's journal location holds no delivery record"
        );
        return None;
    };
    Some(m)
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
        match durable.write_msg(&view) {
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
            match d.copy_record(loc) {
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
