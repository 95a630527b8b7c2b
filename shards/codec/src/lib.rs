//! MQTT 3.1, 3.1.1 and 5.0 wire format as pure functions over `bytes`: no I/O, no clocks.
//!
//! # Layout
//! - [`types`]: the packet model, one representation for every protocol version.
//! - [`decode`]: framing (`frame_len`) and parsing (`decode_packet`); a PUBLISH payload and every
//!   string are zero-copy slices of the frame. The packet size limit is checked from the fixed
//!   header, before the body is buffered.
//! - [`mod@encode`]: serialization, including `encode_publish_header` so fan-out writes one shared
//!   payload behind per-subscriber headers with vectored I/O.
//! - [`error`]: decode errors, each naming the spec statement it enforces and mapping to the MQTT 5
//!   reason code the broker answers with.
//! - `props` (private): the MQTT 5 property table, per-packet allowed sets, property codec.
//! - `fuzzing` (hidden): the cargo-fuzz target's body, shared with the stable test suite.

pub mod decode;
pub mod encode;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod props;
pub mod types;

pub use decode::{decode_frame, decode_packet, frame_len, FrameHeader};
pub use encode::{
    encode, encode_packet_bytes, encode_publish_header, encoded_len, publish_header_len,
};
pub use error::{DecodeError, EncodeError};
pub use props::{decode_publish_properties, encode_publish_properties, publish_properties_len};
pub use types::*;

/// Largest Remaining Length a variable byte integer can express [MQTT-1.5.5].
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[cfg(test)]
mod tests;
