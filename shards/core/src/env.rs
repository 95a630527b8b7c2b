//! What the core may know of the world outside it: the time and random bytes. Both come in
//! from the caller (the glommio driver, or the simulator with a virtual clock and a seeded
//! generator), so the core itself never reads a clock or a random source and a run is
//! reproducible from its inputs.

use std::time::Instant;

/// The time, as the driver or the simulator sees it.
pub trait Clock {
    /// Monotonic time: deadlines, latencies, expiry.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch: what the journal stores, so deadlines survive a
    /// restart.
    fn unix_ms(&self) -> u64;
}

/// Random bytes: authentication nonces and assigned client ids.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]);

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// A small deterministic generator (SplitMix64): the simulator's entropy, and tests'. Not for
/// secrets: the driver gives the OS's random source.
pub struct SplitMix64(pub u64);

impl Entropy for SplitMix64 {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Wall-clock form of a monotonic deadline, for the journal; 0 = none.
pub fn instant_to_unix_ms(clock: &dyn Clock, t: Option<Instant>) -> u64 {
    match t {
        None => 0,
        Some(t) => {
            let now = clock.now();
            let now_ms = clock.unix_ms();
            if t >= now {
                now_ms + t.duration_since(now).as_millis() as u64
            } else {
                now_ms.saturating_sub(now.duration_since(t).as_millis() as u64)
            }
        }
    }
    .max(u64::from(t.is_some()))
}

/// Monotonic form of a wall-clock deadline read back from the journal.
pub fn unix_ms_to_instant(clock: &dyn Clock, ms: u64) -> Option<Instant> {
    use std::time::Duration;
    if ms == 0 {
        return None;
    }
    let now = clock.now();
    let now_ms = clock.unix_ms();
    Some(if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    })
}

/// A clock that moves only when told: for tests and the simulator.
pub struct ManualClock {
    pub start: Instant,
    pub start_unix_ms: u64,
    pub elapsed: std::cell::Cell<std::time::Duration>,
}

impl ManualClock {
    pub fn new(start: Instant, start_unix_ms: u64) -> ManualClock {
        ManualClock {
            start,
            start_unix_ms,
            elapsed: std::cell::Cell::new(std::time::Duration::ZERO),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.elapsed.set(self.elapsed.get() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed.get()
    }

    fn unix_ms(&self) -> u64 {
        self.start_unix_ms + self.elapsed.get().as_millis() as u64
    }
}

impl<C: Clock + ?Sized> Clock for std::rc::Rc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn unix_ms(&self) -> u64 {
        (**self).unix_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wall_clock_round_trip() {
        let c = ManualClock::new(Instant::now(), 1_700_000_000_000); // lint: test-only clock
        c.advance(Duration::from_secs(5));
        let t = c.now() + Duration::from_secs(30);
        let ms = instant_to_unix_ms(&c, Some(t));
        assert_eq!(ms, 1_700_000_035_000);
        assert_eq!(unix_ms_to_instant(&c, ms), Some(t));
        let past = c.now() - Duration::from_secs(2);
        assert_eq!(instant_to_unix_ms(&c, Some(past)), 1_700_000_003_000);
        assert_eq!(instant_to_unix_ms(&c, None), 0);
        assert_eq!(unix_ms_to_instant(&c, 0), None);
    }
}
