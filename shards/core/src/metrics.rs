pub use ringmq_metrics::{
    record_us, render, resident_bytes, Backlogs, Counters, Gauges, Histograms, Process,
    ShardMetrics,
};
