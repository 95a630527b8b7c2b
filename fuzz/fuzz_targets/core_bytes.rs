//! Arbitrary bytes from a few connections, cut into reads, with time, syncs and crashes, fed to
//! the real core of one or two shards with a real journal (`ringmq_sim::hostile`): no panic,
//! no effect on a connection the core does not have, a journal that always opens again, no
//! connection or ended session left behind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmq_sim::hostile::run(data);
});
