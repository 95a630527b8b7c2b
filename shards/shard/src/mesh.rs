//! The channel mesh between shards, both directions: sending the batches the core produced at
//! the end of each event, and receiving the peers' batches into the core.
//!
//! glommio's mesh gives one bounded SPSC channel per ordered pair of shards. A batch the channel
//! cannot take at once goes to a per-peer spill queue that a flusher task sends in order,
//! waiting for room; while anything is spilled, later batches queue behind it so that order per
//! pair of shards holds. The core learns the spill depth (`set_peer_backlog`), drops QoS 0 to a
//! peer that is far behind and stops reading the publishers of QoS 1/2 messages to it until
//! the flusher has sent it down to a quarter.

use crate::runtime::current;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use ringmq_core::mesh::Batch;
use ringmq_core::state::PEER_BACKLOG_MAX;
use ringmq_core::ShardState;
use std::cell::Cell;
use std::rc::Rc;

pub type Builder = MeshBuilder<Batch, Full>;

/// This shard's ends of the mesh.
pub struct Mesh {
    senders: Option<Rc<Senders<Batch>>>,
    /// Per peer: the spill queue's sender (`None` for this shard, or with one shard).
    spill: Vec<Option<LocalSender<Batch>>>,
    /// Per peer: batches spilled and not yet sent.
    spilled: Vec<Rc<Cell<usize>>>,
}

impl Mesh {
    /// Joins the mesh (with one shard there is none): this shard's id, its ends, and the
    /// receivers to start once the shard exists.
    pub async fn join(
        builder: Option<Builder>,
        nshards: usize,
    ) -> std::io::Result<(usize, Mesh, Option<Receivers<Batch>>)> {
        let (senders, receivers, id) = match builder {
            Some(b) => {
                let (s, r) = b
                    .join()
                    .await
                    .map_err(|_| std::io::Error::other("channel mesh join failed"))?;
                let id = s.peer_id();
                (Some(Rc::new(s)), Some(r), id)
            }
            None => (None, None, 0),
        };
        let mesh = Mesh {
            senders,
            spill: (0..nshards).map(|_| None).collect(),
            spilled: (0..nshards).map(|_| Rc::default()).collect(),
        };
        Ok((id, mesh, receivers))
    }

    /// One flusher task per peer, started with the shard so that nothing is spawned on the
    /// message path.
    pub fn start_flushers(&mut self, id: usize) {
        let Some(senders) = self.senders.clone() else {
            return;
        };
        for peer in 0..self.spill.len() {
            if peer == id {
                continue;
            }
            let (tx, rx) = local_channel::new_unbounded::<Batch>();
            self.spill[peer] = Some(tx);
            let spilled = self.spilled[peer].clone();
            let senders = senders.clone();
            glommio::spawn_local(async move {
                while let Some(batch) = rx.recv().await {
                    if senders.send_to(peer, batch).await.is_err() {
                        tracing::warn!(peer, "shard channel closed; dropping batch");
                    }
                    spilled.set(spilled.get() - 1);
                    // Publishers held back for this peer are read again (the shard may be
                    // idle otherwise, with nothing else to tell the core).
                    if spilled.get() == PEER_BACKLOG_MAX / 4 {
                        current().with_state(|st| st.set_peer_backlog(peer, spilled.get()));
                    }
                }
            })
            .detach();
        }
    }

    /// Sends each peer its batch of this event, in order behind anything still spilled.
    pub fn send(&self, st: &mut ShardState, batches: &mut [Batch]) {
        let Some(senders) = self.senders.as_ref() else {
            return;
        };
        for (peer, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            let spilled = &self.spilled[peer];
            let batch = if spilled.get() > 0 {
                batch
            } else {
                match senders.try_send_to(peer, batch) {
                    Ok(()) => continue,
                    Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(b))) => {
                        st.counters.mesh_backpressure += 1;
                        b
                    }
                    Err(_) => {
                        st.counters.mesh_send_failed += 1;
                        continue;
                    }
                }
            };
            let spill = self.spill[peer]
                .as_ref()
                .expect("flushers start with the shard");
            if spill.try_send(batch).is_ok() {
                spilled.set(spilled.get() + 1);
            } else {
                st.counters.mesh_send_failed += 1;
            }
        }
        for (peer, n) in self.spilled.iter().enumerate() {
            if st.peer_backlog[peer] != n.get() {
                st.set_peer_backlog(peer, n.get());
            }
        }
    }
}

/// One task per peer feeds its batches into the core.
pub fn start_receivers(receivers: Option<Receivers<Batch>>) {
    let Some(mut r) = receivers else {
        return;
    };
    for (_peer, rx) in r.streams() {
        glommio::spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                current().with_state(|st| st.on_batch(batch));
            }
        })
        .detach();
    }
}
