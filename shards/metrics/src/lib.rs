//! Per-shard metrics.
