//! Deterministic `HashMap` order. The core keeps sessions, acknowledgements and retained
//! messages in std `HashMap`s and iterates some of them (session expiry, restore, compaction,
//! retained queries), and std seeds each map from the OS random source: a seed would not
//! replay exactly. This module defines the C `getrandom` symbol, which std's weak lookup finds
//! before glibc's (the executable's dynamic symbols come first), and answers from a per-thread
//! seed. Each simulated run happens on a fresh thread whose seed is set first, so every map it
//! creates gets the same keys on every replay, and different seeds explore different orders.
//!
//! Only test binaries link this crate (`publish = false`); nothing in them needs real entropy.
//! [`check`] verifies at run time that the interposition took effect.

use std::cell::Cell;

thread_local! {
    static SEED: Cell<u64> = const { Cell::new(0x5eed_5eed_5eed_5eed) };
}

/// Sets the calling thread's entropy seed; call first thing on a fresh thread.
pub fn set_thread_seed(seed: u64) {
    SEED.with(|s| s.set(seed ^ 0xa076_1d64_78bd_642f));
}

/// The `getrandom(2)` wrapper std looks up: deterministic bytes from the thread's seed.
///
/// # Safety
/// `buf` must be valid for `len` bytes of writes (the libc contract).
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, len: usize, _flags: u32) -> isize {
    let mut x = SEED.with(|s| s.get());
    for i in 0..len {
        if i % 8 == 0 {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // SAFETY: i < len, and the caller gives a buffer of len bytes.
        unsafe { *buf.add(i) = (z >> ((i % 8) * 8)) as u8 };
    }
    SEED.with(|s| s.set(x));
    len as isize
}

/// Whether two fresh threads with the same seed see the same `HashMap` order (true when the
/// interposition works).
pub fn check() -> bool {
    fn order() -> Vec<u32> {
        std::thread::spawn(|| {
            set_thread_seed(42);
            let m: std::collections::HashMap<u32, ()> = (0..64).map(|i| (i, ())).collect();
            m.keys().copied().collect()
        })
        .join()
        .expect("probe thread")
    }
    order() == order()
}
