//! Per-shard metrics. Each shard owns its own `Counters` and updates them without atomics or
//! locks; an exporter merges the shards' copies when it is asked, never on the message path.

/// Plain counters, one set per shard. Names carry units last where they have one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_closed: u64,
    pub connections_rejected: u64,
    pub connects: u64,
    pub handoffs: u64,
    pub takeovers: u64,
    pub wills: u64,
    pub protocol_errors: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// PUBLISH received, by QoS.
    pub msgs_in: [u64; 3],
    /// PUBLISH sent to subscribers, by QoS.
    pub msgs_out: [u64; 3],
    pub cross_shard_out: u64,
    pub cross_shard_in: u64,
    pub queued: u64,
    pub dropped_no_subscriber: u64,
    pub dropped_queue_full: u64,
    pub dropped_too_large: u64,
    pub dropped_slow_consumer: u64,
    pub dropped_offline_qos0: u64,
    pub dropped_expired: u64,
    /// QoS 0 publishes not sent to a peer shard that is too far behind.
    pub dropped_mesh_backlog: u64,
    pub mesh_backpressure: u64,
    pub mesh_send_failed: u64,
}

impl Counters {
    /// Adds another shard's counters into these.
    pub fn merge(&mut self, o: &Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            connections_accepted,
            connections_refused,
            connections_closed,
            connections_rejected,
            connects,
            handoffs,
            takeovers,
            wills,
            protocol_errors,
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            cross_shard_out,
            cross_shard_in,
            queued,
            dropped_no_subscriber,
            dropped_queue_full,
            dropped_too_large,
            dropped_slow_consumer,
            dropped_offline_qos0,
            dropped_expired,
            dropped_mesh_backlog,
            mesh_backpressure,
            mesh_send_failed
        );
        for i in 0..3 {
            self.msgs_in[i] += o.msgs_in[i];
            self.msgs_out[i] += o.msgs_out[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_every_field() {
        let mut a = Counters {
            bytes_in: 3,
            msgs_in: [1, 2, 3],
            ..Default::default()
        };
        let b = Counters {
            bytes_in: 4,
            msgs_in: [1, 1, 1],
            wills: 2,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(a.bytes_in, 7);
        assert_eq!(a.msgs_in, [2, 3, 4]);
        assert_eq!(a.wills, 2);
    }
}
