//! Messages between shards. Everything here is `Send`; payloads travel as `Bytes`, so a fan-out
//! to other cores shares the publisher's buffer by reference count.
//!
//! Shards exchange `Vec<ShardMsg>` batches, in the glommio driver over its channel mesh: one
//! bounded SPSC channel per ordered pair of shards. A shard collects what it sends while it handles one event (a read,
//! a batch from a peer, a timer tick) and sends at most one batch per peer at the end of it.

use bytes::Bytes;
use ringmq_codec::{ByteStr, Connect, SubscriptionOptions};
use ringmq_metrics::ShardMetrics;
use ringmq_session::Message;

pub type Batch = Vec<ShardMsg>;

#[derive(Debug)]
pub enum ShardMsg {
    /// A connection whose CONNECT named a client homed on the receiving shard.
    Handoff(Box<Handoff>),
    /// Deliver to the receiving shard's local subscribers. With `ack`, answer
    /// `PublishAck { token: ack }` once the message is in every matching session: the
    /// publisher's PUBACK/PUBREC waits for that.
    Publish {
        msg: Message,
        ack: Option<u64>,
        /// When the sending shard queued it, for the cross-shard hop histogram.
        sent_at: std::time::Instant,
    },
    /// The answer to an acknowledged `Publish` or `RetainSet`, sent once the receiving shard
    /// has made the message durable where it had to; `matched` tells whether any subscription
    /// matched there (MQTT 5 reason 0x10 otherwise); `refused` that the journal was full for
    /// it (0x97).
    PublishAck {
        token: u64,
        matched: bool,
        refused: bool,
    },
    /// The sender now has a local subscriber for `filter`; answer with `RouteAck { token }`.
    RouteAdd {
        filter: ByteStr,
        from: u16,
        token: u64,
    },
    RouteAck {
        token: u64,
    },
    /// A session on the sender joined the shared subscription `key` (`$share/{group}/{filter}`);
    /// answer with `RouteAck { token }` (0: nobody waits).
    ShareJoin {
        key: ByteStr,
        member: crate::shared::Member,
        token: u64,
    },
    /// A session left the shared subscription `key`.
    ShareLeave {
        key: ByteStr,
        shard: u16,
        session: u64,
    },
    /// Deliver to one member of a shared subscription, the receiver's session `session`. If it
    /// is no longer a member, the receiver picks another (at most `hops` more times).
    SharedPublish {
        msg: Message,
        key: ByteStr,
        session: u64,
        ack: Option<u64>,
        hops: u8,
    },
    /// The sender's last local subscriber for `filter` is gone.
    RouteRemove {
        filter: ByteStr,
        from: u16,
    },
    /// Store (or, with an empty payload, delete) a retained message on its owner shard.
    RetainSet {
        msg: Message,
        ack: Option<u64>,
    },
    /// Ask the owner of retained messages for those matching `filter`.
    RetainQuery(Box<RetainQuery>),
    /// The answer to a `RetainQuery`, sent to the subscriber's shard.
    RetainReply(Box<RetainReply>),
    /// Shard `reply_to` scrapes metrics: answer with `MetricsReply { token, .. }`.
    MetricsRequest {
        reply_to: u16,
        token: u64,
    },
    /// A snapshot of the sending shard's counters, histograms and gauges.
    MetricsReply {
        token: u64,
        metrics: Box<ShardMetrics>,
    },
}

#[derive(Debug)]
pub struct Handoff {
    /// The accepted socket; the receiving shard owns it (the glommio driver sends a duplicate
    /// descriptor).
    pub socket: crate::state::SocketId,
    pub connect: Box<Connect>,
    /// Bytes read after the CONNECT packet.
    pub leftover: Bytes,
    /// When the connection was accepted, for the connect-to-CONNACK histogram.
    pub opened_at: std::time::Instant,
}

#[derive(Debug, Clone)]
pub struct RetainQuery {
    pub filter: ByteStr,
    pub from: u16,
    pub session: u64,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

#[derive(Debug)]
pub struct RetainReply {
    pub session: u64,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
    pub messages: Vec<Message>,
}
