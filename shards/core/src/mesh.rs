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
        ack: Option<AckToken>,
        /// When the sending shard queued it, for the cross-shard hop histogram.
        sent_at: std::time::Instant,
    },
    /// The answer to an acknowledged `Publish` or `RetainSet`, sent once the receiving shard
    /// has made the message durable where it had to.
    PublishAck {
        token: AckToken,
        taken: Taken,
    },
    /// The sender's first session subscribed to `filter` at QoS 1/2 with a full queue
    /// (`full: true`), or its last one drained: MQTT 5 publishes matching it are refused.
    FullRoute {
        filter: ByteStr,
        from: u16,
        full: bool,
    },
    /// The sender now has a local subscriber for `filter`; answer with `RouteAck { token }`.
    RouteAdd {
        filter: ByteStr,
        from: u16,
        token: RouteToken,
    },
    RouteAck {
        token: RouteToken,
    },
    /// A session on the sender joined the shared subscription `key` (`$share/{group}/{filter}`);
    /// answer with `RouteAck { token }` (`RouteToken::NONE`: nobody waits).
    ShareJoin {
        key: ByteStr,
        member: crate::shared::Member,
        token: RouteToken,
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
        ack: Option<AckToken>,
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
        ack: Option<AckToken>,
    },
    /// Ask the owner of retained messages for those matching `filter`.
    RetainQuery(Box<RetainQuery>),
    /// The answer to a `RetainQuery`, sent to the subscriber's shard.
    RetainReply(Box<RetainReply>),
    /// Shard `reply_to` scrapes metrics: answer with `MetricsReply { token, .. }`.
    MetricsRequest {
        reply_to: u16,
        token: ScrapeToken,
    },
    /// A snapshot of the sending shard's counters, histograms and gauges.
    MetricsReply {
        token: ScrapeToken,
        metrics: Box<ShardMetrics>,
    },
}

#[derive(Debug)]
pub struct Handoff {
    /// The accepted socket; the receiving shard owns it (the glommio driver sends a duplicate
    /// descriptor).
    pub socket: crate::state::SocketId,
    /// The listener it was accepted on.
    pub listener: u8,
    pub connect: Box<Connect>,
    /// Bytes read after the CONNECT packet.
    pub leftover: Bytes,
    /// When the connection was accepted, for the connect-to-CONNACK histogram.
    pub opened_at: std::time::Instant,
    /// The driver's transport state (a TLS session), attached by the handing driver.
    pub transport: Option<crate::state::Transport>,
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

/// What a shard did with a message whose publisher waits for its answer. Answers from several
/// shards combine by taking the greatest: one refusal makes the publish refused, one delivery
/// makes it delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Taken {
    /// No subscription matched (MQTT 5 reason 0x10 if nowhere else either).
    NoSubscribers,
    /// The ACL does not let the publisher write the topic: routed nowhere; MQTT 5 hears 0x87,
    /// 3.1.x a success (acknowledged and discarded, as Mosquitto does). Never combined with
    /// other shards' answers: it is decided before routing.
    NotAuthorized,
    /// In every matching session (durable where it had to be).
    Delivered,
    /// Refused, before it went anywhere, for a full session queue (`quota.rs`), or a QoS 2
    /// retransmission of a refused message: answered 0x97 to an MQTT 5 publisher.
    QueueFull,
    /// A journal had no room for it: answered 0x97, never success.
    Refused,
}

impl Taken {
    /// Not taken: the publisher is never told it was.
    pub fn is_refused(self) -> bool {
        self >= Taken::QueueFull
    }

    pub fn new(matched: bool, refused: bool) -> Taken {
        match (matched, refused) {
            (_, true) => Taken::Refused,
            (true, false) => Taken::Delivered,
            (false, false) => Taken::NoSubscribers,
        }
    }
}

/// Names an acknowledged publish (or retained set) sent to another shard: the publisher's
/// PUBACK/PUBREC waits for a `PublishAck` carrying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AckToken(pub u64);

/// Names a SUBACK (or the start-up restore) waiting for other shards' `RouteAck`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteToken(pub u64);

impl RouteToken {
    /// Nobody waits for the acknowledgement.
    pub const NONE: RouteToken = RouteToken(0);
}

/// Names a metrics scrape waiting for other shards' `MetricsReply`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScrapeToken(pub u64);

macro_rules! display_token {
    ($($t:ident),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_token!(AckToken, RouteToken, ScrapeToken);
