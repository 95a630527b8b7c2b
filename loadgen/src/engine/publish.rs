//! Publishing: the closed loop (keep each window full) and the open loop (every message at its
//! intended time, from one timer heap), writing many PUBLISHes of a device in one send.

use super::*;

impl Exec {
    pub(super) fn init_schedules(&mut self) {
        if self.cfg.rate > 0.0 {
            for (pi, p) in self.pubs.iter_mut().enumerate() {
                let s = Schedule::new(
                    self.t_start,
                    self.cfg.rate,
                    p.id as u64,
                    self.cfg.total_pubs,
                );
                p.sched = Some(s);
                p.queued = true;
                self.heap.push(Reverse((s.intended(0), pi as u32)));
            }
        }
    }

    /// Open loop: a publisher that was blocked (unsent bytes, full window) can send again.
    pub(super) fn unblock(&mut self, pi: usize) {
        let p = &mut self.pubs[pi];
        if let Some(s) = p.sched {
            if !p.queued && self.phase >= Phase::Measure {
                let t = s.intended(p.seq as u64);
                if t < self.t_end {
                    p.queued = true;
                    self.heap.push(Reverse((t, pi as u32)));
                }
            }
        }
    }

    /// Closed loop: one pass over the publishers. Returns true if one made progress (so the
    /// loop polls again without sleeping).
    pub(super) fn publish_closed(&mut self, now: u64) -> bool {
        if now >= self.t_end {
            return false;
        }
        let mut progress = false;
        let mut wbuf = std::mem::take(&mut self.wbuf);
        let w = if self.cfg.qos == QoS::AtMostOnce {
            self.cfg.window.max(1) as u64
        } else {
            MAX_BATCH
        };
        for pi in 0..self.pubs.len() {
            let di = self.pubs[pi].dev as usize;
            if !self.can_write(di) {
                continue;
            }
            let w = if self.cfg.end_to_end {
                self.e2e_room(pi, now)
            } else {
                w
            };
            wbuf.clear();
            let p = &mut self.pubs[pi];
            let mut n = 0u64;
            while n < w && p.inflight < p.max_inflight {
                append_publish(&mut wbuf, p, &self.topic_hdrs, &self.payload_tpl, now);
                n += 1;
            }
            if n > 0 {
                self.sent_n(di, n, &wbuf);
                progress = true;
            }
        }
        self.wbuf = wbuf;
        progress
    }

    /// End-to-end window: how many more messages publisher `pi` may send now. A window that
    /// stays full for 1 s without a receipt is released (its messages were dropped at its end).
    fn e2e_room(&mut self, pi: usize, now: u64) -> u64 {
        let p = &mut self.pubs[pi];
        let seen = self
            .shared
            .seen
            .get(p.id as usize)
            .map_or(p.seq, |s| s.load(Relaxed));
        let out = outstanding(p.seq, seen, p.e2e_floor);
        let window = self.cfg.window.max(1);
        if out < window {
            p.e2e_full_since = 0;
            return u64::from(window - out);
        }
        if p.e2e_full_since == 0 {
            p.e2e_full_since = now;
        } else if now.saturating_sub(p.e2e_full_since) >= 1_000_000_000 {
            p.e2e_floor = p.seq;
            p.e2e_full_since = 0;
            return u64::from(window);
        }
        0
    }

    /// Ready, and the kernel took everything written before: more would only pile up in `tx`.
    fn can_write(&self, di: usize) -> bool {
        let d = &self.devs[di];
        d.st == St::Ready && d.tx.is_empty()
    }

    pub(super) fn sent_n(&mut self, di: usize, n: u64, data: &[u8]) {
        if self.cfg.qos != QoS::AtMostOnce {
            self.inflight_total += n;
        }
        self.c.sent += n;
        self.send(di, data);
    }

    /// Open loop: sends every message intended by `now` (each stamped with its intended time),
    /// publisher by publisher from the timer heap. Returns when the next one is due.
    pub(super) fn publish_open(&mut self, now: u64) -> Option<u64> {
        let mut wbuf = std::mem::take(&mut self.wbuf);
        let end = self.t_end;
        let mut budget = 64 * 1024u64;
        while let Some(&Reverse((t, pi))) = self.heap.peek() {
            if t > now || budget == 0 {
                break;
            }
            self.heap.pop();
            let pi = pi as usize;
            self.pubs[pi].queued = false;
            let di = self.pubs[pi].dev as usize;
            if !self.can_write(di) {
                // Re-queued by `unblock` once its bytes are out.
                continue;
            }
            wbuf.clear();
            let p = &mut self.pubs[pi];
            let s = p.sched.expect("open loop");
            let mut n = 0u64;
            let mut next = s.intended(p.seq as u64);
            while n < MAX_BATCH && p.inflight < p.max_inflight && next <= now && next < end {
                append_publish(&mut wbuf, p, &self.topic_hdrs, &self.payload_tpl, next);
                n += 1;
                next = s.intended(p.seq as u64);
            }
            let window_open = p.inflight < p.max_inflight;
            if n > 0 {
                budget = budget.saturating_sub(n);
                self.sent_n(di, n, &wbuf);
            }
            if next < end && window_open && self.devs[di].tx.is_empty() && self.devs[di].fd >= 0 {
                self.pubs[pi].queued = true;
                self.heap.push(Reverse((next, pi as u32)));
            }
        }
        self.wbuf = wbuf;
        self.heap.peek().map(|r| r.0 .0)
    }
}

/// Appends the next PUBLISH of `p`: to its own topic, or with `topic_hdrs` (session-churn) to
/// the device topic `churn::target` picks.
#[inline]
/// Messages of a publisher at sequence `seq` (the next to send) not yet done: done are those
/// below `seen` (one past the highest received) or below `floor` (released), whichever is
/// later; sequence numbers wrap.
fn outstanding(seq: u32, seen: u32, floor: u32) -> u32 {
    seq.wrapping_sub(seen).min(seq.wrapping_sub(floor))
}

pub(super) fn append_publish(
    wbuf: &mut Vec<u8>,
    p: &mut PubSt,
    topic_hdrs: &[(Vec<u8>, Option<usize>)],
    tpl: &[u8],
    ts: u64,
) {
    let start = wbuf.len();
    let (hdr, pid_off) = if topic_hdrs.is_empty() {
        (&p.hdr[..], p.pid_off)
    } else {
        let (h, o) = &topic_hdrs[churn::target(p.id, p.seq, topic_hdrs.len() as u32) as usize];
        (&h[..], *o)
    };
    wbuf.extend_from_slice(hdr);
    if let Some(off) = pid_off {
        let pid = (p.seq % 65535) as u16 + 1;
        wbuf[start + off..start + off + 2].copy_from_slice(&pid.to_be_bytes());
        p.inflight += 1;
        p.unacked.push_back((pid, ts));
    }
    let ps = wbuf.len();
    wbuf.extend_from_slice(tpl);
    write_header(
        &mut wbuf[ps..ps + HEADER_LEN],
        Header {
            ts_ns: ts,
            pub_id: p.id,
            seq: p.seq,
        },
    );
    p.seq = p.seq.wrapping_add(1);
}

/// The PUBLISH fixed + variable header for `topic` (encoded once per publisher by the codec)
/// and where its packet id sits, found by encoding with two different ids.
pub fn publish_header(
    topic: &str,
    qos: QoS,
    v: ProtocolVersion,
    payload_len: usize,
) -> (Vec<u8>, Option<usize>) {
    let payload = Bytes::from(vec![0u8; payload_len]);
    let mk = |pid: u16| Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: if qos_u8(qos) > 0 {
            NonZeroU16::new(pid)
        } else {
            None
        },
        payload: payload.clone(),
        properties: None,
    };
    let mut a = BytesMut::new();
    encode_publish_header(&mk(0x0101), v, &mut a).expect("encode PUBLISH header");
    if qos == QoS::AtMostOnce {
        return (a.to_vec(), None);
    }
    let mut b = BytesMut::new();
    encode_publish_header(&mk(0x0202), v, &mut b).expect("encode PUBLISH header");
    let off = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .expect("packet id position");
    (a.to_vec(), Some(off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_codec::decode_packet;

    #[test]
    fn end_to_end_outstanding_counts_from_the_later_of_receipt_and_release() {
        assert_eq!(outstanding(0, 0, 0), 0);
        assert_eq!(outstanding(16, 0, 0), 16, "nothing received yet");
        assert_eq!(outstanding(16, 10, 0), 6, "received through seq 9");
        assert_eq!(
            outstanding(40, 10, 32),
            8,
            "released at 32, later than the receipts"
        );
        assert_eq!(outstanding(40, 35, 32), 5, "receipts past the release");
        // Wrapping sequence numbers.
        assert_eq!(outstanding(3, u32::MAX - 4, u32::MAX - 10), 8);
        assert_eq!(outstanding(3, u32::MAX - 4, u32::MAX), 4);
    }

    #[test]
    fn publish_header_patch_decodes() {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let tpl = vec![7u8; 64];
                let (hdr, pid_off) = publish_header("bench/fanin/42", qos, v, tpl.len());
                let mut p = PubSt {
                    dev: 0,
                    id: 42,
                    seq: 65534,
                    inflight: 0,
                    max_inflight: 10,
                    sched: None,
                    queued: false,
                    hdr,
                    pid_off,
                    unacked: VecDeque::new(),
                    e2e_floor: 0,
                    e2e_full_since: 0,
                };
                let mut w = Vec::new();
                append_publish(&mut w, &mut p, &[], &tpl, 123_456_789);
                append_publish(&mut w, &mut p, &[], &tpl, 123_456_790);
                if qos == QoS::AtMostOnce {
                    assert!(p.unacked.is_empty());
                } else {
                    let v: Vec<_> = p.unacked.iter().copied().collect();
                    assert_eq!(v, vec![(65535, 123_456_789), (1, 123_456_790)]);
                }
                let mut buf = BytesMut::from(&w[..]);
                for (k, expect_pid) in [(0u32, 65535u16), (1, 1)] {
                    let Packet::Publish(pb) = decode_packet(&mut buf, v, 1 << 20).unwrap().unwrap()
                    else {
                        panic!("not a publish")
                    };
                    assert_eq!(pb.topic.as_str(), "bench/fanin/42");
                    assert_eq!(pb.qos, qos);
                    assert_eq!(pb.payload.len(), 64);
                    if qos != QoS::AtMostOnce {
                        assert_eq!(pb.packet_id.unwrap().get(), expect_pid);
                    }
                    let h = crate::payload::read_header(&pb.payload).unwrap();
                    assert_eq!(h.pub_id, 42);
                    assert_eq!(h.seq, 65534 + k);
                    assert_eq!(h.ts_ns, 123_456_789 + k as u64);
                }
                assert!(buf.is_empty());
            }
        }
    }
}
