//! What each packet from the broker means for a device: deliveries counted and acknowledged,
//! acknowledgements of the device's own PUBLISHes timed and its window reopened.

use super::*;

impl Exec {
    pub(super) fn on_packet(&mut self, i: usize, p: Packet, now: u64) -> Result<(), String> {
        let v = self.cfg.version;
        match p {
            Packet::Publish(p) => {
                self.on_delivery(i, &p, now);
                if let Some(id) = p.packet_id {
                    let ack = match p.qos {
                        QoS::ExactlyOnce => Packet::PubRec(PubResp::new(id)),
                        _ => Packet::PubAck(PubResp::new(id)),
                    };
                    encode(&ack, v, &mut self.obuf).map_err(|e| e.to_string())?;
                }
            }
            Packet::PubAck(r) => {
                self.ack_latency(i, r.packet_id.get(), now, r.reason.is_error());
                self.acked(i)
            }
            Packet::PubComp(_) => self.acked(i),
            Packet::PubRec(r) => {
                self.ack_latency(i, r.packet_id.get(), now, r.reason.is_error());
                if r.reason.is_error() {
                    self.acked(i);
                } else {
                    encode(
                        &Packet::PubRel(PubResp::new(r.packet_id)),
                        v,
                        &mut self.obuf,
                    )
                    .map_err(|e| e.to_string())?;
                }
            }
            Packet::PubRel(r) => {
                encode(
                    &Packet::PubComp(PubResp::new(r.packet_id)),
                    v,
                    &mut self.obuf,
                )
                .map_err(|e| e.to_string())?;
            }
            Packet::ConnAck(a) => self.on_connack(i, &a, now),
            Packet::SubAck(a) => {
                if self.devs[i].st != St::WaitSubAck {
                    return Err("unexpected SUBACK".into());
                }
                if let Some(rc) = a.reason_codes.iter().find(|r| r.is_error()) {
                    return Err(format!("SUBSCRIBE refused: {rc:?}"));
                }
                self.ready(i, now);
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                return Err(format!("DISCONNECT from the broker: {:?}", d.reason));
            }
            other => return Err(format!("unexpected packet type {}", other.packet_type())),
        }
        Ok(())
    }

    /// Subscriber side: counts a delivery (stale ones left over from an earlier run apart),
    /// its latency from the time stamped into the payload, and whether it is new or a
    /// duplicate of its publisher's sequence.
    fn on_delivery(&mut self, i: usize, p: &Publish, now: u64) {
        let d = &self.devs[i];
        if d.role != Role::Sub || d.role_idx == u32::MAX {
            return;
        }
        let h = crate::payload::read_header(&p.payload);
        if h.is_some_and(|h| h.ts_ns < self.ramp_start_ns) {
            // Sent before this run started: left over from an earlier run.
            self.c.stale += 1;
            return;
        }
        self.c.received += 1;
        if self.phase == Phase::Measure && now < self.t_end {
            self.c.received_in_window += 1;
        }
        let Some(h) = h else { return };
        let us = now.saturating_sub(h.ts_ns) / 1000;
        match self.churn.get(i) {
            Some(c) if h.ts_ns < c.t_online_ns => {
                self.c.queued += 1;
                self.queued.saturating_record(us);
            }
            _ => self.lat.saturating_record(us),
        }
        if self.cfg.end_to_end {
            if let Some(seen) = self.shared.seen.get(h.pub_id as usize) {
                seen.fetch_max(h.seq.wrapping_add(1), Relaxed);
            }
        }
        let sub = &mut self.subs[d.role_idx as usize];
        match sub.track.record(h.pub_id, h.seq) {
            Seen::New => self.c.unique += 1,
            Seen::Duplicate => self.c.duplicates += 1,
            Seen::Foreign => {}
        }
    }

    /// Publisher side: records PUBLISH-to-PUBACK (QoS 1) / PUBLISH-to-PUBREC (QoS 2) latency
    /// from the time stamped into the PUBLISH (the intended send time in open loop); a
    /// refusal is only counted.
    pub(super) fn ack_latency(&mut self, i: usize, pid: u16, now: u64, refused: bool) {
        let d = &self.devs[i];
        if d.role != Role::Pub || d.role_idx == u32::MAX {
            return;
        }
        let p = &mut self.pubs[d.role_idx as usize];
        if let Some(ts) = take_unacked(&mut p.unacked, pid) {
            if refused {
                self.c.refused += 1;
                return;
            }
            self.puback
                .saturating_record((now.saturating_sub(ts) / 1000).max(1));
            self.c.acked += 1;
            if self.phase == Phase::Measure && now < self.t_end {
                self.c.acked_in_window += 1;
            }
        }
    }

    pub(super) fn acked(&mut self, i: usize) {
        let d = &self.devs[i];
        if d.role == Role::Pub && d.role_idx != u32::MAX {
            let pi = d.role_idx as usize;
            let p = &mut self.pubs[pi];
            if p.inflight > 0 {
                let was_full = p.inflight >= p.max_inflight;
                p.inflight -= 1;
                self.inflight_total -= 1;
                if was_full {
                    self.unblock(pi);
                }
            }
        }
    }
}

/// Removes packet id `pid` from the unacknowledged PUBLISHes and returns its send time.
/// Brokers acknowledge in order, so this is nearly always the front entry.
#[inline]
pub(super) fn take_unacked(q: &mut VecDeque<(u16, u64)>, pid: u16) -> Option<u64> {
    if q.front().map(|e| e.0) == Some(pid) {
        return q.pop_front().map(|e| e.1);
    }
    let k = q.iter().position(|e| e.0 == pid)?;
    q.remove(k).map(|e| e.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_in_and_out_of_order() {
        let mut q: VecDeque<(u16, u64)> = [(1, 10), (2, 20), (3, 30)].into_iter().collect();
        assert_eq!(take_unacked(&mut q, 1), Some(10));
        assert_eq!(take_unacked(&mut q, 3), Some(30));
        assert_eq!(take_unacked(&mut q, 3), None, "acknowledged once");
        assert_eq!(take_unacked(&mut q, 9), None, "unknown id");
        assert_eq!(take_unacked(&mut q, 2), Some(20));
        assert!(q.is_empty());
    }
}
