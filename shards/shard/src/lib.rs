//! The glommio driver of a shard: the only crate that touches glommio, sockets and the clock.
//! Every protocol decision is made by the sans-I/O core, `ringmq-core`.
//!
//! # Layout
//! - [`runtime`]: one pinned glommio executor per shard; every shard listens on every address with
//!   SO_REUSEPORT; the accept loop, the tick, the journal task, `$SYS` and the metrics endpoint.
//! - [`driver`]: [`driver::Shard`], which calls into the core and carries out its effects, and
//!   the task of each connection (wait for the socket, read into the shard's scratch buffer).
//! - [`mesh`]: the channel mesh between shards, sending and receiving.
//! - [`io`]: the socket calls made directly: `recv` into a shared scratch buffer, vectored `sendmsg`.
//!
//! A client's session lives on its home shard, `fnv1a_64(client_id) % shards`. A connection
//! accepted elsewhere is handed over after its CONNECT is read: a duplicate of the socket's
//! descriptor and the bytes read past CONNECT travel in one mesh message. Retained messages live
//! on the shard `fnv1a_64(topic) % shards`.

pub mod driver;
pub mod io;
pub mod mesh;
pub mod runtime;

pub use ringmq_core::{auth, config, Config};
pub use runtime::{check_fd_limit, run};
