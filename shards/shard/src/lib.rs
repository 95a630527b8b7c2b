//! The driver of a shard: the only crate that touches glommio, io_uring, sockets and the clock.
//! Every protocol decision is made by the sans-I/O core, `ringmq-core`.
//!
//! # Layout
//! - [`runtime`]: one pinned glommio executor per shard; every shard listens on every address with
//!   SO_REUSEPORT; the tick, the journal task, `$SYS` and the metrics endpoint.
//! - [`driver`]: [`driver::Shard`], which calls into the core and carries out its effects, and
//!   the shard's network task, which hands the network ring's completions to the core in batches.
//! - [`net`]: the connections as the network ring sees them: a slot per connection, accepts,
//!   closes and lingering sockets; `backlog`: TLS handshakes and the closes of connections
//!   whose peer went away, a budget of each per turn behind the traffic.
//! - [`ring`]: the network ring itself (io_uring, multishot receives into provided buffers).
//! - [`mesh`]: the channel mesh between shards, sending and receiving.
//! - [`certs`]: each TLS listener's rustls settings from its files (SNI, mutual TLS, reload).
//! - `admit`: what a listener lets in (its connection limit, accept rate, handshakes).
//! - [`tls`] and `secure`: TLS sessions on the shard's scratch buffers; [`ws`] and `wsdrive`:
//!   WebSocket (RFC 6455), also under TLS; `proxy`: the PROXY protocol header before either;
//!   `fdtable`: a transport's sessions by descriptor.
//! - [`access`]: the ACL file, loaded and reloaded for the shards' cores.
//! - [`logins`]: password checks on verifier threads, answers back to the shard.
//! - [`io`]: the socket calls made directly: vectored `sendmsg`, `recv` for a takeover's drain.
//!
//! A client's session lives on its home shard, `fnv1a_64(client_id) % shards`. A connection
//! accepted elsewhere is handed over after its CONNECT is read: a duplicate of the socket's
//! descriptor and the bytes read past CONNECT travel in one mesh message. Retained messages live
//! on the shard `fnv1a_64(topic) % shards`.

pub mod access;
mod admit;
mod backlog;
pub mod certs;
pub mod driver;
mod fdtable;
pub mod io;
pub mod logins;
pub mod mesh;
pub mod net;
mod proxy;
mod published;
mod records;
pub mod ring;
pub mod runtime;
mod secure;
pub mod tls;
pub mod ws;
mod wsdrive;

pub use ringmq_core::{auth, config, Config};
pub use runtime::{check_fd_limit, run};
