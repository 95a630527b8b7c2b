//! Feeds arbitrary bytes to `decode_packet` under MQTT 3.1, 3.1.1 and 5.0 with several packet
//! size limits; every packet that decodes must re-encode (with an exact `encoded_len`) and
//! decode again to an equal packet. The body lives in the codec
//! (`ringmq_codec::fuzzing::fuzz_roundtrip`) so that stable `cargo test` runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmq_codec::fuzzing::fuzz_roundtrip(data);
});
