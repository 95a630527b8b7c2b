//! Runs the fuzz target's body on a few thousand pseudo-random inputs with a fixed seed, so a
//! stable `cargo test` exercises the same paths as `cargo fuzz run journal_open`.

use ringmq_journal::fuzzing::fuzz_open;

/// splitmix64: tiny, seedable, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_images_never_panic() {
    let mut rng = Rng(0x5EED_0F1A_u64);
    for _ in 0..3000 {
        let len = match rng.below(4) {
            0 => rng.below(80),
            1 => rng.below(4200),
            _ => rng.below(9000),
        } as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if data.is_empty() {
            continue;
        }
        // Mostly raw images (even mode byte); sparse bytes make plausible record headers.
        data[0] = (rng.next() as u8) & !1;
        if rng.below(2) == 0 {
            for b in data.iter_mut().skip(4) {
                if rng.below(8) != 0 {
                    *b = 0;
                }
            }
        }
        fuzz_open(&data);
    }
}

#[test]
fn random_damage_never_panics() {
    let mut rng = Rng(0x00DA_4A6E);
    for _ in 0..300 {
        let len = 11 + rng.below(70) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        data[0] |= 1;
        fuzz_open(&data);
    }
}
