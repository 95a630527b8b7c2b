//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 section 4.8.2): each message that
//! matches a group's filter goes to one member of the group, whichever shard the member's
//! session lives on.
//!
//! Every shard holds a replica of every group's membership (members join and leave with
//! `ShareJoin`/`ShareLeave` over the mesh), so the shard where a message is published picks a
//! member itself, round-robin, and sends the message straight to that member's shard: one hop,
//! as for an ordinary subscription. Replicas may list members in different orders; the spec
//! asks only that each message reaches one member.

use ringmq_codec::{ByteStr, SubscriptionOptions};
use ringmq_router::SubscriptionTree;
use std::collections::HashMap;

/// One member: a session on some shard, with its subscription's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub shard: u16,
    /// The session's id on its own shard.
    pub session: u64,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

struct Group {
    /// The whole `$share/{group}/{filter}` as subscribed.
    key: ByteStr,
    members: Vec<Member>,
    cursor: usize,
}

/// Group id on this shard; never 0, so 0 can mean "not shared".
pub type GroupId = u32;

#[derive(Default)]
pub struct SharedGroups {
    tree: SubscriptionTree<GroupId, ()>,
    groups: HashMap<GroupId, Group>,
    ids: HashMap<ByteStr, GroupId>,
    next: GroupId,
}

impl SharedGroups {
    /// Adds or updates a member of the group `key` (= `$share/{group}/{filter}`).
    pub fn join(&mut self, key: &ByteStr, filter: &str, m: Member) -> GroupId {
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => {
                self.next += 1;
                let id = self.next;
                self.ids.insert(key.clone(), id);
                self.groups.insert(
                    id,
                    Group {
                        key: key.clone(),
                        members: Vec::new(),
                        cursor: 0,
                    },
                );
                self.tree.insert(filter, id, ());
                id
            }
        };
        let g = self.groups.get_mut(&id).expect("just ensured");
        match g
            .members
            .iter_mut()
            .find(|x| x.shard == m.shard && x.session == m.session)
        {
            Some(x) => *x = m,
            None => g.members.push(m),
        }
        id
    }

    /// Removes a member; a group left empty is dropped.
    pub fn leave(&mut self, key: &ByteStr, filter: &str, shard: u16, session: u64) {
        let Some(&id) = self.ids.get(key) else {
            return;
        };
        let g = self.groups.get_mut(&id).expect("ids and groups agree");
        g.members
            .retain(|x| !(x.shard == shard && x.session == session));
        if g.members.is_empty() {
            self.groups.remove(&id);
            self.ids.remove(key);
            self.tree.remove(filter, id);
        }
    }

    pub fn id(&self, key: &ByteStr) -> Option<GroupId> {
        self.ids.get(key).copied()
    }

    /// The groups whose filter matches `topic`.
    pub fn matching(&self, topic: &str, out: &mut Vec<GroupId>) {
        self.tree.for_each_match(topic, |id, _| out.push(id));
    }

    /// The next member of a group, round-robin, skipping `exclude`.
    pub fn pick(&mut self, id: GroupId, exclude: Option<(u16, u64)>) -> Option<Member> {
        let g = self.groups.get_mut(&id)?;
        let n = g.members.len();
        for _ in 0..n {
            let m = g.members[g.cursor % n];
            g.cursor = g.cursor.wrapping_add(1);
            if Some((m.shard, m.session)) != exclude {
                return Some(m);
            }
        }
        None
    }

    /// Members of a group, on every shard.
    pub fn members(&self, id: GroupId) -> usize {
        self.groups.get(&id).map_or(0, |g| g.members.len())
    }

    pub fn key(&self, id: GroupId) -> Option<&ByteStr> {
        self.groups.get(&id).map(|g| &g.key)
    }

    /// Groups known here (with members anywhere).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(shard: u16, session: u64) -> Member {
        Member {
            shard,
            session,
            options: SubscriptionOptions::default(),
            subscription_id: None,
        }
    }

    #[test]
    fn round_robin_over_members_and_groups_match_by_filter() {
        let mut g = SharedGroups::default();
        let key = ByteStr::from("$share/g/a/+");
        let id = g.join(&key, "a/+", m(0, 1));
        g.join(&key, "a/+", m(1, 7));
        g.join(&key, "a/+", m(1, 7)); // again: an update, not a second member
        let mut ids = Vec::new();
        g.matching("a/b", &mut ids);
        assert_eq!(ids, vec![id]);
        ids.clear();
        g.matching("b", &mut ids);
        assert!(ids.is_empty());
        let picks: Vec<_> = (0..4).map(|_| g.pick(id, None).unwrap().session).collect();
        assert_eq!(picks, vec![1, 7, 1, 7]);
        assert_eq!(g.pick(id, Some((0, 1))).unwrap().session, 7);
        g.leave(&key, "a/+", 1, 7);
        assert_eq!(g.pick(id, Some((0, 1))), None);
        g.leave(&key, "a/+", 0, 1);
        assert!(g.is_empty());
        g.matching("a/b", &mut ids);
        assert!(ids.is_empty(), "an empty group no longer matches");
    }
}
