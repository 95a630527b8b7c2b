pub use ringmq_metrics::Counters;
