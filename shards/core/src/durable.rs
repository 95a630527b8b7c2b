//! The shard's side of the journal: writing records as durable state changes, holding back the
//! acknowledgements that depend on them until a sync covers them, and rebuilding state from the
//! records at start.
//!
//! What is durable: persistent sessions (3.1.x Clean Session 0, MQTT 5 Session Expiry Interval
//! above 0), their subscriptions, their queued and inflight QoS 1/2 deliveries, QoS 2 packet ids
//! received and not yet released, and retained messages. Clean sessions and QoS 0 deliveries
//! never touch the journal; retained messages do whatever their QoS, since they are state.

use crate::config::Fsync;
use crate::mesh::{AckToken, RetainQuery, Taken};
use crate::records::{MsgRecord, MsgView, Record, RefView, RetainRecord, MSG, MSG_REF};
use bytes::BytesMut;
use ringmq_codec::{Packet, SubAck, SubscriptionOptions};
use ringmq_journal::{Appended, Journal, JournalConfig, JournalError, RecordLoc, RecoveryReport};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

/// A journal sequence number: how far the journal was when something happened, or how far a
/// sync must reach before an answer that depends on it may go. `NONE` (0): nothing to wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct JournalSeq(pub u64);

impl JournalSeq {
    pub const NONE: JournalSeq = JournalSeq(0);
}

/// Records re-appended per compaction step, so one step never holds the reactor for long.
pub const COMPACT_STEP_RECORDS: usize = 4096;

/// The connection a held-back answer is for: its session, and which of the session's
/// connections (see `Session::attachment`). An answer for an earlier connection is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub session: u64,
    pub attachment: u32,
}

/// Something to do once the journal is synced through a sequence number.
pub enum AfterSync {
    /// Send the session's PUBACK/PUBREC answers that are now ready.
    ReleaseAcks(u64),
    /// Tell the publishing shard that this one has taken (and made durable) its message.
    MeshAck {
        peer: usize,
        token: AckToken,
        taken: Taken,
    },
    /// A SUBACK whose subscriptions are now durable (routes were acknowledged already).
    SubAck {
        to: ConnRef,
        suback: Box<SubAck>,
        retained: Vec<RetainQuery>,
    },
    /// A control packet (PUBCOMP, UNSUBACK) for the session's current connection.
    Send { to: ConnRef, packet: Packet },
    /// A PUBLISH held until its QoS 2 receipt is durable (see `state/held.rs`), with the
    /// token of its PUBACK/PUBREC slot.
    Route {
        session: u64,
        msg: ringmq_session::Message,
        ack: Option<AckToken>,
    },
    /// The CONNACK of a connection in `Phase::AwaitSync`.
    ConnAck { to: ConnRef, packet: Packet },
}

/// A compaction in progress: live state is being re-appended; when that is done and synced,
/// every segment before `start_segment` holds only superseded records and is removed.
pub struct Checkpoint {
    pub start_segment: u64,
    pub start_bytes: u64,
    pub sessions: Vec<String>,
    /// A session whose deliveries queued in the journal are being copied forward, a bounded
    /// number per step (a session may have millions).
    pub spilling: Option<String>,
    /// A copy of a record held only in the journal failed: the old segments must stay.
    pub failed: bool,
    pub retained: Vec<String>,
    /// Set when everything is re-appended: the seq that must be synced before removal.
    pub end_seq: Option<u64>,
    /// Messages of journal-only deliveries copied forward so far (old location -> new), so
    /// that references to one message stay references to one copy (`state/spill.rs`).
    pub bodies: HashMap<u64, RecordLoc>,
}

pub struct Durable {
    pub journal: Journal,
    buf: BytesMut,
    pub next_msg_id: u64,
    /// In sequence order (sequence numbers only grow).
    pub waiting: VecDeque<(JournalSeq, AfterSync)>,
    pub policy: Fsync,
    segment_bytes: u64,
    max_bytes: u64,
    /// Set by an append: the driver rings its journal task and clears it.
    pub sync_wanted: bool,
    pub checkpoint: Option<Checkpoint>,
    /// Bytes the last compaction re-appended: an estimate of live state.
    pub live_bytes: u64,
    /// `bytes_appended` when the last compaction finished.
    pub appended_at_compaction: u64,
    pub compacted_at: Option<Instant>,
    /// Appends that failed (I/O error or full) for bookkeeping records, which are never refused.
    pub write_errors: u64,
}

impl Durable {
    pub fn new(journal: Journal, policy: Fsync, segment_bytes: u64, max_bytes: u64) -> Durable {
        Durable {
            journal,
            buf: BytesMut::with_capacity(4096),
            next_msg_id: 1,
            waiting: VecDeque::new(),
            policy,
            segment_bytes,
            max_bytes,
            sync_wanted: false,
            checkpoint: None,
            live_bytes: 0,
            appended_at_compaction: 0,
            compacted_at: None,
            write_errors: 0,
        }
    }

    /// Whether acknowledgements wait for syncs.
    pub fn gates(&self) -> bool {
        self.policy != Fsync::Never
    }

    /// Room for new data (deliveries, retained messages, subscriptions) under
    /// `--journal-max-bytes`: one segment is kept free for bookkeeping records.
    pub fn has_room(&self) -> bool {
        self.max_bytes == 0 || self.journal.disk_bytes() + self.segment_bytes <= self.max_bytes
    }

    /// Appends a record. Errors are the caller's to handle for data records; bookkeeping
    /// records go through [`Durable::note`].
    pub fn write(&mut self, rec: &Record) -> Result<u64, JournalError> {
        self.buf.clear();
        rec.encode(&mut self.buf);
        Ok(self.append(rec.kind())?.seq)
    }

    /// Appends a delivery record straight from the session's copy of the message.
    pub fn write_msg(&mut self, m: &MsgView<'_>) -> Result<Appended, JournalError> {
        self.buf.clear();
        m.encode(&mut self.buf);
        self.append(MSG)
    }

    /// Appends a delivery that refers to the delivery record at `body` for its message, if it
    /// lands in the same segment (compaction then keeps or copies the two together); `None`
    /// if it would not: the caller writes the delivery in full instead.
    pub fn write_ref(
        &mut self,
        m: &RefView<'_>,
        body: RecordLoc,
    ) -> Result<Option<Appended>, JournalError> {
        self.buf.clear();
        m.encode(&mut self.buf);
        if !self.journal.lands_in(body.segment(), self.buf.len()) {
            return Ok(None);
        }
        self.append(MSG_REF).map(Some)
    }

    /// [`Durable::write_msg`] for bookkeeping (compaction re-appends): failures are counted.
    pub fn note_msg(&mut self, m: &MsgView<'_>) {
        if let Err(e) = self.write_msg(m) {
            self.write_errors += 1;
            tracing::error!(error = %e, "journal append failed");
        }
    }

    fn append(&mut self, kind: u8) -> Result<Appended, JournalError> {
        let a = self.journal.append(kind, &self.buf)?;
        self.sync_wanted = true;
        Ok(a)
    }

    /// Copies the record at `at` to the end of the journal (compaction keeping a record that
    /// lives nowhere else): its new location.
    pub fn copy_record(&mut self, at: RecordLoc) -> Result<RecordLoc, JournalError> {
        let a = self.journal.copy_record(at)?;
        self.sync_wanted = true;
        a.at.ok_or(JournalError::Config(
            "journal location out of range (2^32 segments)".into(),
        ))
    }

    /// Appends a bookkeeping record (an acknowledgement, a state change, a removal), which
    /// must not be refused: a failure is logged and counted; the worst outcome after a restart
    /// is a redelivery.
    pub fn note(&mut self, rec: &Record) {
        if let Err(e) = self.write(rec) {
            self.write_errors += 1;
            tracing::error!(error = %e, kind = rec.kind(), "journal append failed");
        }
    }

    /// The last record appended now: compared later to see what an event appended.
    pub fn mark(&self) -> JournalSeq {
        JournalSeq(self.journal.last_seq())
    }

    /// The seq that acknowledgements of work done since `mark` must wait for; `NONE` if
    /// nothing was appended since, it is synced already, or syncs gate nothing (`--fsync never`).
    pub fn need(&self, mark: JournalSeq) -> JournalSeq {
        let last = self.journal.last_seq();
        if self.gates() && last > mark.0 && last > self.journal.synced_seq() {
            JournalSeq(last)
        } else {
            JournalSeq::NONE
        }
    }

    /// Whether what waits for `seq` may go.
    pub fn is_synced(&self, seq: JournalSeq) -> bool {
        seq == JournalSeq::NONE || !self.gates() || self.journal.synced_seq() >= seq.0
    }

    /// Whether compaction should start: the journal holds much more than live state, or it
    /// is at `--journal-max-bytes` and enough was appended since the last compaction that
    /// another may free something (so a journal full of live state does not compact in a loop).
    pub fn should_compact(&self, now: Instant) -> bool {
        if self.checkpoint.is_some() || self.journal.segment_count() < 2 {
            return false;
        }
        let disk = self.journal.disk_bytes();
        let appended = self.journal.stats().bytes_appended - self.appended_at_compaction;
        // Full: retry at most once a second unless much was appended, since acknowledgements
        // (tiny records) are what frees the space of large ones.
        let retry = appended >= self.segment_bytes / 2
            || self
                .compacted_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        disk > 2 * self.live_bytes + 4 * self.segment_bytes || (!self.has_room() && retry)
    }
}

/// A persistent session as the journal describes it.
#[derive(Debug, Default)]
pub struct RecoveredSession {
    /// A session record was replayed. Records of a session may come before its session
    /// record: compaction re-appends the session record after deliveries that stay where
    /// they are (queued in the journal only, spill.rs). A session never confirmed by the end
    /// of the replay is dropped ([`Recovered::finish`]).
    pub confirmed: bool,
    pub expiry_interval: u32,
    pub protocol: u8,
    pub disconnected_unix_ms: u64,
    pub username: Option<String>,
    pub subs: BTreeMap<String, (SubscriptionOptions, u32)>,
    /// By delivery id, which is the order they were queued in.
    pub msgs: BTreeMap<u64, RecoveredMsg>,
    /// QoS 2 packet ids received and not released -> whether their routing finished.
    pub qos2_in: HashMap<u16, bool>,
}

/// A delivery as the journal left it. Its body stays in the journal (`At`): a rebuilt
/// session's queue costs a location per message, and only inflight ones are read back.
#[derive(Debug)]
pub struct RecoveredMsg {
    pub packet_id: u16,
    pub state: u8,
    pub body: RecoveredBody,
}

#[derive(Debug)]
pub enum RecoveredBody {
    /// The record is at this location; `weight` is its topic and payload bytes.
    At { at: RecordLoc, weight: u64 },
    /// Replayed without a location (unit tests, or one out of [`RecordLoc`]'s range).
    Copy(Box<MsgRecord>),
}

/// State rebuilt by replaying a journal.
#[derive(Debug, Default)]
pub struct Recovered {
    pub sessions: HashMap<String, RecoveredSession>,
    pub retained: HashMap<String, RetainRecord>,
    pub max_msg_id: u64,
    pub records: u64,
    /// Checksummed records that did not decode (a format mismatch); fatal unless moving aside.
    pub undecodable: Vec<(u64, u8)>,
}

impl Recovered {
    /// The session a record is about, provisional if its session record is not replayed yet.
    fn session(&mut self, client_id: String) -> Option<&mut RecoveredSession> {
        Some(self.sessions.entry(client_id).or_default())
    }

    /// Ends a replay: drops sessions whose records were replayed without a session record
    /// (left by a session that ended, or by a takeover with Clean Start).
    pub fn finish(&mut self) {
        self.sessions.retain(|_, s| s.confirmed);
    }

    pub fn apply(&mut self, rec: Record) {
        self.apply_at(rec, None);
    }

    /// Replays one record; `at` is where it is in the journal, so deliveries keep only that.
    pub fn apply_at(&mut self, rec: Record, at: Option<RecordLoc>) {
        self.records += 1;
        match rec {
            Record::Session {
                client_id,
                expiry_interval,
                protocol,
                disconnected_unix_ms,
                fresh,
                username,
            } => {
                let s = self.sessions.entry(client_id).or_default();
                if fresh {
                    *s = RecoveredSession::default();
                }
                s.confirmed = true;
                s.username = username;
                s.expiry_interval = expiry_interval;
                s.protocol = protocol;
                s.disconnected_unix_ms = disconnected_unix_ms;
            }
            Record::SessionGone { client_id } => {
                self.sessions.remove(&client_id);
            }
            Record::Sub {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                if let Some(s) = self.session(client_id) {
                    s.subs.insert(filter, (options, subscription_id));
                }
            }
            Record::Unsub { client_id, filter } => {
                if let Some(s) = self.session(client_id) {
                    s.subs.remove(&filter);
                }
            }
            Record::Msg(mut m) => {
                self.max_msg_id = self.max_msg_id.max(m.id);
                if let Some(s) = self.session(std::mem::take(&mut m.client_id)) {
                    let (id, packet_id, state) = (m.id, m.packet_id, m.state);
                    let body = match at {
                        Some(at) => RecoveredBody::At {
                            at,
                            weight: (m.topic.len() + m.payload.len()) as u64,
                        },
                        None => RecoveredBody::Copy(m),
                    };
                    let msg = RecoveredMsg {
                        packet_id,
                        state,
                        body,
                    };
                    s.msgs.insert(id, msg);
                }
            }
            Record::MsgRef(mut m) => {
                self.max_msg_id = self.max_msg_id.max(m.id);
                // Its message is read from the body record when it is sent; without a location
                // (unit tests) it cannot be found again.
                let Some(at) = at else {
                    tracing::error!(
                        id = m.id,
                        "a delivery reference replayed without a location"
                    );
                    return;
                };
                if let Some(s) = self.session(std::mem::take(&mut m.client_id)) {
                    let msg = RecoveredMsg {
                        packet_id: m.packet_id,
                        state: m.state,
                        body: RecoveredBody::At {
                            at,
                            weight: u64::from(m.weight),
                        },
                    };
                    s.msgs.insert(m.id, msg);
                }
            }
            Record::MsgState {
                client_id,
                id,
                packet_id,
                state,
            } => {
                if let Some(m) = self
                    .sessions
                    .get_mut(&client_id)
                    .and_then(|s| s.msgs.get_mut(&id))
                {
                    m.packet_id = packet_id;
                    m.state = state;
                }
            }
            Record::MsgDone { client_id, id } => {
                if let Some(s) = self.session(client_id) {
                    s.msgs.remove(&id);
                }
            }
            Record::Qos2In {
                client_id,
                packet_id,
                routed,
            } => {
                if let Some(s) = self.session(client_id) {
                    *s.qos2_in.entry(packet_id).or_default() |= routed;
                }
            }
            Record::Qos2Done {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.session(client_id) {
                    s.qos2_in.remove(&packet_id);
                }
            }
            Record::Retain(r) => {
                self.retained.insert(r.topic.clone(), *r);
            }
            Record::RetainClear { topic } => {
                self.retained.remove(&topic);
            }
        }
    }
}

/// Opens (recovering) the journal of shard `id` under `data_dir`.
pub fn open(
    data_dir: &Path,
    id: usize,
    segment_bytes: u64,
    move_aside: bool,
) -> Result<(Journal, RecoveryReport, Recovered), String> {
    let dir = data_dir.join(format!("shard-{id}"));
    let mut cfg = JournalConfig::new(&dir);
    cfg.segment_size = segment_bytes;
    cfg.salvage = move_aside;
    let mut rec = Recovered::default();
    let (journal, report) = Journal::open(cfg, |r| match Record::decode(r.kind, r.payload) {
        Some(x) => rec.apply_at(x, RecordLoc::new(r.segment, r.offset)),
        None => rec.undecodable.push((r.seq, r.kind)),
    })
    .inspect(|_| rec.finish())
    .map_err(|e| {
        let hint = if matches!(e, JournalError::Corrupt { .. }) {
            " (start with --journal-on-corruption move-aside to move the damaged segments \
             aside and recover what precedes the damage)"
        } else {
            ""
        };
        format!("journal of shard {id} in {}: {e}{hint}", dir.display())
    })?;
    if let Some((seq, kind)) = rec.undecodable.first() {
        if !move_aside {
            return Err(format!(
                "journal of shard {id} in {}: record {seq} (kind {kind}) is intact but not \
                 understood by this version of ringmq ({} such records)",
                dir.display(),
                rec.undecodable.len()
            ));
        }
        tracing::warn!(
            shard = id,
            count = rec.undecodable.len(),
            "skipping journal records this version does not understand"
        );
    }
    Ok((journal, report, rec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringmq_codec::QoS;

    fn msg(client: &str, id: u64) -> Record {
        Record::Msg(Box::new(MsgRecord {
            client_id: client.into(),
            id,
            qos: QoS::AtLeastOnce,
            retain: false,
            packet_id: 0,
            state: crate::records::STATE_QUEUED,
            topic: "t".into(),
            payload: Bytes::from_static(b"p"),
            properties: None,
            expires_unix_ms: 0,
            subscription_ids: vec![],
        }))
    }

    fn session(client: &str, fresh: bool) -> Record {
        Record::Session {
            client_id: client.into(),
            expiry_interval: 60,
            protocol: 4,
            disconnected_unix_ms: 0,
            fresh,
            username: None,
        }
    }

    #[test]
    fn replay_applies_upserts_and_removals_in_order() {
        let mut r = Recovered::default();
        for rec in [
            session("a", true),
            msg("a", 1),
            msg("a", 2),
            Record::MsgState {
                client_id: "a".into(),
                id: 2,
                packet_id: 9,
                state: crate::records::STATE_AWAIT_ACK,
            },
            Record::MsgDone {
                client_id: "a".into(),
                id: 1,
            },
            Record::Qos2In {
                client_id: "a".into(),
                packet_id: 5,
                routed: true,
            },
            session("b", true),
            msg("b", 3),
            Record::SessionGone {
                client_id: "b".into(),
            },
            // A message for a session that no longer exists is ignored.
            msg("b", 4),
        ] {
            r.apply(rec);
        }
        r.finish();
        let a = &r.sessions["a"];
        assert_eq!(a.msgs.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(a.msgs[&2].packet_id, 9);
        assert_eq!(a.qos2_in.get(&5), Some(&true));
        assert!(!r.sessions.contains_key("b"));
        assert_eq!(r.max_msg_id, 4);
        // Replaying the same state again (what compaction appends) changes nothing; a fresh
        // session record starts over.
        r.apply(session("a", false));
        assert_eq!(r.sessions["a"].msgs.len(), 1);
        r.apply(session("a", true));
        assert!(r.sessions["a"].msgs.is_empty());
    }

    /// Compaction leaves deliveries queued in the journal where they are and re-appends the
    /// session record after them: replay must attach them to the session that follows.
    #[test]
    fn records_before_their_session_record_belong_to_it() {
        let mut r = Recovered::default();
        for rec in [
            msg("a", 7),
            msg("gone", 8),
            session("a", false),
            msg("a", 9),
            msg("b", 10),
            session("b", true),
        ] {
            r.apply(rec);
        }
        r.finish();
        assert_eq!(
            r.sessions["a"].msgs.keys().copied().collect::<Vec<_>>(),
            vec![7, 9]
        );
        // A Clean Start after them discards them; no session record at all drops them.
        assert!(r.sessions["b"].msgs.is_empty());
        assert!(!r.sessions.contains_key("gone"));
    }
}
