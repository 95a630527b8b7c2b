//! The 16-byte latency header every benchmark PUBLISH payload starts with, and open-loop
//! scheduling of intended send times.

/// `u64` LE send timestamp (ns, CLOCK_MONOTONIC), `u32` LE publisher id, `u32` LE sequence.
pub const HEADER_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ts_ns: u64,
    pub pub_id: u32,
    pub seq: u32,
}

#[inline]
pub fn write_header(buf: &mut [u8], h: Header) {
    buf[0..8].copy_from_slice(&h.ts_ns.to_le_bytes());
    buf[8..12].copy_from_slice(&h.pub_id.to_le_bytes());
    buf[12..16].copy_from_slice(&h.seq.to_le_bytes());
}

#[inline]
pub fn read_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(Header {
        ts_ns: u64::from_le_bytes(buf[0..8].try_into().unwrap()),
        pub_id: u32::from_le_bytes(buf[8..12].try_into().unwrap()),
        seq: u32::from_le_bytes(buf[12..16].try_into().unwrap()),
    })
}

/// Open-loop schedule of one publisher: message `seq` is intended at
/// `start + offset + seq / rate`. Times never depend on when earlier messages actually went
/// out, so a stalled sender does not hide the stall (no coordinated omission).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start_ns: u64,
    pub offset_ns: u64,
    /// Messages per second, > 0.
    pub rate: f64,
}

impl Schedule {
    /// Publishers are staggered evenly over one interval so their sends do not all coincide.
    pub fn new(start_ns: u64, rate: f64, index: u64, count: u64) -> Schedule {
        let interval = 1e9 / rate;
        let offset_ns = if count > 0 {
            (interval * (index % count) as f64 / count as f64) as u64
        } else {
            0
        };
        Schedule {
            start_ns,
            offset_ns,
            rate,
        }
    }

    #[inline]
    pub fn intended(&self, seq: u64) -> u64 {
        self.start_ns + self.offset_ns + (seq as f64 * 1e9 / self.rate) as u64
    }

    /// How many messages (seq 0..n) are due by `now`, capped at the ones intended before `end`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn due_count(&self, now: u64, end: u64) -> u64 {
        let t = now.min(end.saturating_sub(1));
        let base = self.start_ns + self.offset_ns;
        if t < base {
            return 0;
        }
        let mut n = ((t - base) as f64 * self.rate / 1e9) as u64 + 1;
        // Correct floating-point edge cases against the exact definition.
        while n > 0 && self.intended(n - 1) > t {
            n -= 1;
        }
        while self.intended(n) <= t {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let mut buf = vec![0xAAu8; 64];
        let h = Header {
            ts_ns: 0x0102_0304_0506_0708,
            pub_id: 77,
            seq: 0xDEAD_BEEF,
        };
        write_header(&mut buf, h);
        assert_eq!(&buf[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(read_header(&buf), Some(h));
        assert_eq!(buf[16], 0xAA, "padding untouched");
        assert_eq!(read_header(&buf[..15]), None);
    }

    #[test]
    fn schedule_intended_times() {
        let s = Schedule::new(1_000, 1000.0, 0, 1);
        assert_eq!(s.intended(0), 1_000);
        assert_eq!(s.intended(1), 1_001_000);
        assert_eq!(s.intended(1000), 1_000_001_000);
        // Stagger: 4 publishers at 1 msg/s are 250 ms apart.
        let s2 = Schedule::new(0, 1.0, 2, 4);
        assert_eq!(s2.offset_ns, 500_000_000);
    }

    #[test]
    fn schedule_due_count() {
        let s = Schedule::new(0, 1000.0, 0, 1);
        let end = 10_000_000_000;
        assert_eq!(s.due_count(0, end), 1); // seq 0 due at t=0
        assert_eq!(s.due_count(999_999, end), 1);
        assert_eq!(s.due_count(1_000_000, end), 2);
        assert_eq!(s.due_count(1_000_000_000, end), 1001);
        // Nothing intended at or after `end` is due: exactly rate * duration messages.
        assert_eq!(s.due_count(u64::MAX / 2, end), 10_000);
        let s3 = Schedule::new(0, 3.0, 0, 1);
        assert_eq!(s3.due_count(u64::MAX / 2, 1_000_000_000), 3);
        let late = Schedule::new(5_000, 1.0, 0, 1);
        assert_eq!(late.due_count(4_999, end), 0);
    }
}
