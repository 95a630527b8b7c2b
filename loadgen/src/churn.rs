//! Pure logic of the session-churn scenario: when each device is online or offline, and which
//! device a publisher's message goes to.

/// Online/offline cycle of one device: `online_ns` connected, then `offline_ns` disconnected,
/// repeating. Device `index` of `count` is shifted by `index / count` of a period, so with equal
/// online and offline times about half of the devices are offline at any moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChurnPlan {
    pub online_ns: u64,
    pub offline_ns: u64,
}

impl ChurnPlan {
    pub fn period(&self) -> u64 {
        (self.online_ns + self.offline_ns).max(1)
    }

    fn phase(&self, t_rel: u64, index: u64, count: u64) -> u64 {
        let p = self.period();
        let off = if count > 0 {
            ((p as u128 * (index % count) as u128) / count as u128) as u64
        } else {
            0
        };
        (t_rel + off) % p
    }

    /// Whether the device should be online `t_rel` ns after the churn started, and when
    /// (relative, > `t_rel`) that changes next.
    pub fn state_at(&self, t_rel: u64, index: u64, count: u64) -> (bool, u64) {
        let x = self.phase(t_rel, index, count);
        if x < self.online_ns {
            (true, t_rel + (self.online_ns - x))
        } else {
            (false, t_rel + (self.period() - x))
        }
    }
}

/// The device (of `devices`) that message `seq` of publisher `pub_id` goes to: uniform,
/// deterministic (splitmix64 of both).
#[inline]
pub fn target(pub_id: u32, seq: u32, devices: u32) -> u32 {
    let mut z = ((pub_id as u64) << 32 | seq as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % devices.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn single_device_cycle() {
        let p = ChurnPlan {
            online_ns: S,
            offline_ns: 2 * S,
        };
        assert_eq!(p.state_at(0, 0, 1), (true, S));
        assert_eq!(p.state_at(S - 1, 0, 1), (true, S));
        assert_eq!(p.state_at(S, 0, 1), (false, 3 * S));
        assert_eq!(p.state_at(3 * S, 0, 1), (true, 4 * S));
        // Following the transitions alternates the state.
        let mut t = 0;
        let mut expect = true;
        for _ in 0..10 {
            let (on, next) = p.state_at(t, 0, 1);
            assert_eq!(on, expect);
            assert!(next > t);
            t = next;
            expect = !expect;
        }
    }

    #[test]
    fn about_half_offline_at_any_time() {
        let p = ChurnPlan {
            online_ns: S,
            offline_ns: S,
        };
        let n = 1000u64;
        for t in [0, S / 3, S, 7 * S / 4, 10 * S + 12345] {
            let online = (0..n).filter(|&i| p.state_at(t, i, n).0).count();
            assert!((490..=510).contains(&online), "t={t}: {online} online");
        }
    }

    #[test]
    fn targets_uniform_and_in_range() {
        let n = 100u32;
        let mut hits = vec![0u32; n as usize];
        for pub_id in 0..10 {
            for seq in 0..10_000 {
                let d = target(pub_id, seq, n);
                assert!(d < n);
                hits[d as usize] += 1;
            }
        }
        // 1000 per device expected.
        assert!(hits.iter().all(|&h| (850..=1150).contains(&h)), "{hits:?}");
        assert_eq!(target(3, 4, n), target(3, 4, n));
        assert_eq!(target(1, 2, 1), 0);
    }
}
