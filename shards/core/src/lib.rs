//! The sans-I/O protocol core of a shard: every MQTT decision, taking events and returning
//! effects, with no socket, no executor, no clock and no random source of its own.
//!
//! # Layout
//! - [`state`]: [`state::ShardState`], one shard's connections, sessions, subscriptions, route
//!   table and retained messages, and its entry points (bytes read, connection finished, batch
//!   from a peer, journal synced, tick); what they cause is collected in [`state::Effects`].
//! - [`env`]: the [`env::Clock`] and [`env::Entropy`] the driver (or the simulator) passes in.
//! - [`negotiate`]: CONNECT negotiation as a pure function (what a client is granted).
//! - [`mesh`]: the messages shards exchange, batched per peer per event.
//! - [`durable`] and [`records`]: what the shard journals, acknowledgements held until the
//!   journal is synced, and the rebuild from the journal at start.
//! - [`shared`]: shared subscription groups, replicated on every shard.
//! - [`auth`]: MQTT 5 enhanced authentication methods; [`acl`]: who may publish and
//!   subscribe to what.
//! - [`config`]: settings, and the home-shard hash of client ids.
//! - [`sys`]: the `$SYS/broker/...` statistics shard 0 publishes.
//!
//! Who calls it: `ringmq-shard` (glommio, io_uring), one `ShardState` per executor thread;
//! nothing here is shared between threads except what travels in [`mesh::ShardMsg`].

pub mod acl;
pub mod auth;
pub mod config;
pub mod durable;
pub mod env;
pub mod mesh;
pub mod metrics;
pub mod negotiate;
pub mod records;
pub mod shared;
pub mod state;
pub mod sys;

pub use config::Config;
pub use env::{Clock, Entropy};
pub use state::{Close, Effects, Read, ShardState, SocketId};
