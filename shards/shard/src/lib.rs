//! The shard runtime: the only crate that touches glommio.
//!
//! # Layout
//! - [`runtime`]: one pinned glommio executor per shard; every shard listens on every address with
//!   SO_REUSEPORT; a channel mesh joins the shards. Tasks here only wait for I/O, peers and timers.
//! - [`state`]: [`state::ShardState`], the shard's connections, sessions, subscriptions, route table
//!   and retained messages, and every protocol decision, as synchronous code.
//! - [`mesh`]: the messages shards exchange, batched per peer per event.
//! - [`io`]: the socket calls made directly: `recv` into a shared scratch buffer, vectored `sendmsg`.
//! - [`durable`] and [`records`]: what the shard journals, acknowledgements held until the
//!   journal is synced, and the rebuild from the journal at start.
//! - [`config`]: settings, and the home-shard hash of client ids.
//! - [`sys`]: the `$SYS/broker/...` statistics shard 0 publishes.
//!
//! A client's session lives on its home shard, `fnv1a_64(client_id) % shards`. A connection
//! accepted elsewhere is handed over after its CONNECT is read: the socket's descriptor and the
//! bytes read past CONNECT travel in one mesh message. Retained messages live on the shard
//! `fnv1a_64(topic) % shards`.

pub mod auth;
pub mod config;
pub mod durable;
pub mod io;
pub mod mesh;
pub mod metrics;
pub mod records;
pub mod runtime;
pub mod shared;
pub mod state;
pub mod sys;

pub use config::Config;
pub use runtime::{check_fd_limit, run};
