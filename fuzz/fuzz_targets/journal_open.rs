//! Feeds arbitrary bytes to `Journal::open`: either as one or two raw segment images (with the
//! header and record checksums optionally fixed up so the input gets past them), or as the
//! description of a valid journal plus damage (truncation, torn tail, bit flip). Opens with
//! salvage off and on; checks no panic, replay is a contiguous (and, for damage, a prefix of
//! the written) sequence, salvage never refuses, and a recovered journal reopens cleanly. The
//! body lives in the journal crate (`ringmq_journal::fuzzing::fuzz_open`) so that stable
//! `cargo test` runs it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmq_journal::fuzzing::fuzz_open(data);
});
