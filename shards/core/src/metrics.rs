pub use ringmq_metrics::{
    record_us, render, resident_bytes, Counters, Gauges, Histograms, Process, ShardMetrics,
};
