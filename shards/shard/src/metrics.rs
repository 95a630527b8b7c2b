pub use ringmq_metrics::{record_us, render, Counters, Gauges, Histograms, ShardMetrics};
