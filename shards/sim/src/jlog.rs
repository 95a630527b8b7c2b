//! What the simulator knows of each shard's journal: every record the shard appended, read back
//! from the journal itself (`Journal::for_each_record`) and decoded with the core's own record
//! format, indexed for the durability checks; and the power-loss fault, which cuts a journal's
//! unsynced tail on disk before it is reopened.
//!
//! The checks ask "does the synced prefix of this journal already hold what this
//! acknowledgement promises?" — a question about records and `synced_seq()`, not about the
//! core's internals.

use ringmq_core::records::{MsgRecord, Record};
use ringmq_journal::format::{
    parse_segment_file_name, read_header, read_slot, write_header, Slot, HEADER_BYTES,
};
use ringmq_journal::{Journal, RecordLoc};
use std::collections::HashMap;
use std::path::Path;

/// A client's session-level records, in the order appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CRec {
    /// `Session { fresh: true }`: a new session replaces whatever was before.
    Fresh,
    Gone,
    Sub(String),
    Unsub(String),
    Qos2In(u16),
    Qos2Done(u16),
}

#[derive(Default)]
pub struct JLog {
    /// Highest seq read.
    pub cursor: u64,
    cursor_segment: u64,
    /// Message id -> (seq, client) of each delivery record of it (live deliveries only: the
    /// records of retained deliveries, which carry the retain flag, are not kept).
    copies: HashMap<u64, Vec<(u64, usize)>>,
    /// Per client, in seq order.
    client: HashMap<usize, Vec<(u64, CRec)>>,
    /// Records read (for statistics).
    pub records: u64,
}

/// The message record a delivery reference points to.
fn body(j: &Journal, at: u64) -> Option<MsgRecord> {
    let r = j.read(RecordLoc::from_bits(at)).ok()?;
    match Record::decode(r.kind, r.payload)? {
        Record::Msg(m) => Some(*m),
        _ => None,
    }
}

impl JLog {
    /// Reads the records appended since the last call.
    pub fn scan(
        &mut self,
        j: &Journal,
        resolve: &dyn Fn(&str) -> Option<usize>,
        msg_id: &dyn Fn(&[u8]) -> Option<u64>,
    ) -> Result<(), String> {
        if j.last_seq() <= self.cursor {
            return Ok(());
        }
        let cursor = self.cursor;
        let mut found: Vec<(u64, Record)> = Vec::new();
        let mut last_seg = self.cursor_segment;
        for seg in j.segments() {
            if seg < self.cursor_segment {
                continue;
            }
            let mut bad = None;
            j.for_each_record(seg, |r| {
                if r.seq > cursor {
                    match Record::decode(r.kind, r.payload) {
                        // A delivery whose message is in another record: read it from there,
                        // as the broker will (a reference to nothing fails the run).
                        Some(Record::MsgRef(m)) => match body(j, m.body) {
                            Some(b) => found.push((r.seq, Record::Msg(Box::new(m.with_body(b))))),
                            None => bad = Some(r.seq),
                        },
                        Some(rec) => found.push((r.seq, rec)),
                        None => bad = Some(r.seq),
                    }
                }
            })
            .map_err(|e| format!("journal unreadable: {e}"))?;
            if let Some(seq) = bad {
                return Err(format!("journal record {seq} does not decode"));
            }
            last_seg = seg;
        }
        self.cursor_segment = last_seg;
        for (seq, rec) in found {
            self.apply(seq, rec, resolve, msg_id);
            self.cursor = seq;
            self.records += 1;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        seq: u64,
        rec: Record,
        resolve: &dyn Fn(&str) -> Option<usize>,
        msg_id: &dyn Fn(&[u8]) -> Option<u64>,
    ) {
        let (cid, c) = match rec {
            Record::Session {
                client_id, fresh, ..
            } => {
                if !fresh {
                    return;
                }
                (client_id, CRec::Fresh)
            }
            Record::SessionGone { client_id } => (client_id, CRec::Gone),
            Record::Sub {
                client_id, filter, ..
            } => (client_id, CRec::Sub(filter)),
            Record::Unsub { client_id, filter } => (client_id, CRec::Unsub(filter)),
            Record::Qos2In {
                client_id,
                packet_id,
                ..
            } => (client_id, CRec::Qos2In(packet_id)),
            Record::Qos2Done {
                client_id,
                packet_id,
            } => (client_id, CRec::Qos2Done(packet_id)),
            Record::Msg(m) => {
                if m.retain {
                    return;
                }
                if let (Some(c), Some(id)) = (resolve(&m.client_id), msg_id(&m.payload)) {
                    self.copies.entry(id).or_default().push((seq, c));
                }
                return;
            }
            _ => return,
        };
        if let Some(c_idx) = resolve(&cid) {
            self.client.entry(c_idx).or_default().push((seq, c));
        }
    }

    /// Forgets every record after `cut` (the tail a power loss took).
    pub fn truncate(&mut self, cut: u64) {
        for v in self.copies.values_mut() {
            v.retain(|(s, _)| *s <= cut);
        }
        for v in self.client.values_mut() {
            v.retain(|(s, _)| *s <= cut);
        }
        self.cursor = self.cursor.min(cut);
        self.cursor_segment = 0;
    }

    /// After a restart: the journal starts over at segment indexes found on disk.
    pub fn reopened(&mut self, last_seq: u64) {
        self.truncate(last_seq);
        self.cursor = last_seq;
    }

    /// Where the client's current session incarnation starts on this shard (its last
    /// `Fresh` or `Gone` record, 0 if none).
    fn incarnation(&self, client: usize) -> u64 {
        self.client
            .get(&client)
            .and_then(|v| {
                v.iter()
                    .rev()
                    .find(|(_, r)| matches!(r, CRec::Fresh | CRec::Gone))
            })
            .map_or(0, |(s, _)| *s)
    }

    /// Every session of the current incarnation holding a delivery record of `msg` has one
    /// synced. Returns the first client without one.
    pub fn copies_synced(&self, msg: u64, synced: u64) -> Result<(), (usize, u64)> {
        let Some(v) = self.copies.get(&msg) else {
            return Ok(());
        };
        let mut need: Vec<(usize, u64, bool)> = Vec::new();
        for &(seq, c) in v {
            if seq <= self.incarnation(c) {
                continue;
            }
            match need.iter_mut().find(|(x, _, _)| *x == c) {
                Some(e) => e.2 |= seq <= synced,
                None => need.push((c, seq, seq <= synced)),
            }
        }
        match need.into_iter().find(|(_, _, ok)| !ok) {
            Some((c, seq, _)) => Err((c, seq)),
            None => Ok(()),
        }
    }

    /// Whether the synced part of the journal has a `Sub` for the client's filter `f` in its
    /// current session (since its last `Fresh`/`Gone`). A later `Unsub` (one the client
    /// pipelined behind the SUBSCRIBE) does not undo that the subscription was made durable.
    pub fn sub_durable(&self, client: usize, f: &str, synced: u64) -> bool {
        self.client.get(&client).is_some_and(|v| {
            v.iter()
                .rev()
                .filter(|(s, _)| *s <= synced)
                .find_map(|(_, r)| match r {
                    CRec::Sub(x) if x == f => Some(true),
                    CRec::Fresh | CRec::Gone => Some(false),
                    _ => None,
                })
                .unwrap_or(false)
        })
    }

    /// Whether the synced part of the journal no longer holds the client's subscription to
    /// `f`: an `Unsub` (or the session's end) after its last `Sub`, skipping a `Sub` the
    /// client may have pipelined behind the UNSUBSCRIBE.
    pub fn unsub_durable(&self, client: usize, f: &str, synced: u64) -> bool {
        let Some(v) = self.client.get(&client) else {
            return true;
        };
        let mut subscribed_later = false;
        for (_, r) in v.iter().rev().filter(|(s, _)| *s <= synced) {
            match r {
                CRec::Unsub(x) if x == f => return true,
                CRec::Fresh | CRec::Gone => return !subscribed_later,
                CRec::Sub(x) if x == f => subscribed_later = true,
                _ => {}
            }
        }
        !subscribed_later
    }

    /// Whether the synced journal still describes an older session of the client (its last
    /// synced `Fresh`/`Gone` is a `Fresh`) while a newer `Fresh`/`Gone` is not synced yet:
    /// a power loss now would bring the old session back.
    pub fn old_session_durable(&self, client: usize, synced: u64) -> bool {
        let Some(v) = self.client.get(&client) else {
            return false;
        };
        let pending = v
            .iter()
            .rev()
            .take_while(|(s, _)| *s > synced)
            .any(|(_, r)| matches!(r, CRec::Fresh | CRec::Gone));
        let old = v
            .iter()
            .rev()
            .filter(|(s, _)| *s <= synced)
            .find_map(|(_, r)| match r {
                CRec::Fresh => Some(true),
                CRec::Gone => Some(false),
                _ => None,
            })
            .unwrap_or(false);
        pending && old
    }

    /// Whether the durable state has QoS 2 packet id `pid` of the client as received and not
    /// released (Some(true)), released (Some(false)), or never seen in this session (None).
    pub fn qos2_durable(&self, client: usize, pid: u16, synced: u64) -> Option<bool> {
        self.client.get(&client).and_then(|v| {
            v.iter()
                .rev()
                .filter(|(s, _)| *s <= synced)
                .find_map(|(_, r)| match r {
                    CRec::Qos2In(p) if *p == pid => Some(Some(true)),
                    CRec::Qos2Done(p) if *p == pid => Some(Some(false)),
                    CRec::Fresh | CRec::Gone => Some(None),
                    _ => None,
                })
                .flatten()
        })
    }
}

/// A power loss: every record after seq `keep` in the journal directory `dir` is gone, and so
/// is the header of any segment activated after it (both were only in the page cache). The
/// journal's recovery then finds a clean end (or an unused spare) where the records stop.
pub fn lose_tail(dir: &Path, segment_bytes: u64, keep: u64) -> std::io::Result<u64> {
    let mut cut_bytes = 0;
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            parse_segment_file_name(name.to_str()?).map(|i| (i, e.path()))
        })
        .collect();
    files.sort();
    let seg = segment_bytes as usize;
    for (_, path) in files {
        let mut buf = std::fs::read(&path)?;
        let Ok(h) = read_header(&buf) else { continue };
        let mut changed = false;
        if h.first_seq != 0 && h.first_seq > keep {
            cut_bytes += buf[HEADER_BYTES..].iter().filter(|b| **b != 0).count() as u64;
            write_header(&mut buf[..HEADER_BYTES], h.index, 0, segment_bytes);
            buf[HEADER_BYTES..].fill(0);
            changed = true;
        } else {
            let mut off = HEADER_BYTES;
            while let Slot::Record(p) = read_slot(&buf, off, seg) {
                if p.seq > keep {
                    cut_bytes += (buf.len() - off) as u64;
                    buf[off..].fill(0);
                    changed = true;
                    break;
                }
                off = p.next;
            }
        }
        if changed {
            std::fs::write(&path, &buf)?;
        }
    }
    Ok(cut_bytes)
}
