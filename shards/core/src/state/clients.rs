//! Sessions by client id. The index holds only session ids and reads each key from the session
//! itself: 8 bytes per session (plus the table's spare room) instead of a second copy of the
//! client id and a shared-bytes header beside every session.

use ringmq_session::Session;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// Keyed SipHash: client ids come from the network, so their hashes must not be predictable.
pub(super) struct ClientIndex {
    table: hashbrown::HashTable<u64>,
    hasher: RandomState,
}

type Sessions = HashMap<u64, Box<Session>>;

impl ClientIndex {
    pub(super) fn new() -> ClientIndex {
        ClientIndex {
            table: hashbrown::HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    fn hash(hasher: &RandomState, client_id: &str) -> u64 {
        hasher.hash_one(client_id)
    }

    pub(super) fn get(&self, sessions: &Sessions, client_id: &str) -> Option<u64> {
        let h = Self::hash(&self.hasher, client_id);
        self.table
            .find(h, |sid| {
                sessions
                    .get(sid)
                    .is_some_and(|s| s.client_id.as_str() == client_id)
            })
            .copied()
    }

    /// Indexes session `sid`, which must already be in `sessions` (its client id is the key),
    /// as must every session indexed before it (a resize rehashes them).
    pub(super) fn insert(&mut self, sessions: &Sessions, sid: u64) {
        let Some(new) = sessions.get(&sid) else {
            debug_assert!(false, "indexing a session that is not there");
            return;
        };
        let hasher = &self.hasher;
        // A session missing here would be a bug elsewhere; it hashes anywhere rather than panic.
        let key = |id: &u64| {
            sessions
                .get(id)
                .map_or(0, |s| Self::hash(hasher, s.client_id.as_str()))
        };
        let h = Self::hash(hasher, new.client_id.as_str());
        match self.table.find_entry(h, |id| {
            *id == sid
                || sessions
                    .get(id)
                    .is_some_and(|s| s.client_id == new.client_id)
        }) {
            Ok(mut e) => *e.get_mut() = sid,
            Err(_) => {
                self.table.insert_unique(h, sid, key);
            }
        }
    }

    /// Forgets session `sid` under `client_id`; the session itself may already be gone.
    pub(super) fn remove(&mut self, client_id: &str, sid: u64) {
        let h = Self::hash(&self.hasher, client_id);
        if let Ok(e) = self.table.find_entry(h, |id| *id == sid) {
            e.remove();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_codec::ProtocolVersion;

    fn session(sid: u64, cid: &str) -> Box<Session> {
        Box::new(Session::new(sid, cid, ProtocolVersion::V311, 16, 100))
    }

    #[test]
    fn finds_inserts_replaces_and_removes_by_client_id() {
        let mut sessions = Sessions::new();
        let mut ix = ClientIndex::new();
        for sid in 1..=5_000u64 {
            sessions.insert(sid, session(sid, &format!("c{sid}")));
            ix.insert(&sessions, sid);
        }
        assert_eq!(ix.len(), 5_000);
        assert_eq!(ix.get(&sessions, "c4321"), Some(4321));
        assert_eq!(ix.get(&sessions, "c0"), None);
        // A new session for a client id replaces the old one in the index.
        sessions.insert(9_000, session(9_000, "c7"));
        ix.insert(&sessions, 9_000);
        assert_eq!(ix.get(&sessions, "c7"), Some(9_000));
        assert_eq!(ix.len(), 5_000);
        // Removal by id works after the session left the map, and leaves others alone.
        sessions.remove(&7);
        ix.remove("c7", 7);
        assert_eq!(ix.get(&sessions, "c7"), Some(9_000));
        sessions.remove(&9_000);
        ix.remove("c7", 9_000);
        assert_eq!(ix.get(&sessions, "c7"), None);
        assert_eq!(ix.len(), 4_999);
    }
}
