//! Measures heap bytes per subscription / retained message with a counting allocator, and the
//! time of one publish lookup.
//!
//! `cargo run --release -p ringmq-router --example memory [N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use ringmq_router::{RetainedStore, RouteTable, SubscriptionTree};

/// Counts requested bytes (not malloc's rounding/headers: add ~8-16 B per allocation for glibc).
struct Counting;
static BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Relaxed);
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size(), Relaxed);
        ALLOCS.fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn measure(name: &str, n: usize, build: impl FnOnce() -> Box<dyn std::any::Any>) {
    let (b0, a0) = (BYTES.load(Relaxed), ALLOCS.load(Relaxed));
    let keep = build();
    let (b1, a1) = (BYTES.load(Relaxed), ALLOCS.load(Relaxed));
    println!(
        "{name:<44} {:>7.1} B/item requested, {:>4.2} allocs/item",
        (b1 - b0) as f64 / n as f64,
        (a1 - a0) as f64 / n as f64
    );
    drop(keep);
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "N = {n}; filter text ~ 'devices/{{i}}/cmd' ({} bytes at i=500000)",
        "devices/500000/cmd".len()
    );
    println!(
        "size_of SubscriptionTree<u64,u64> = {}",
        size_of::<SubscriptionTree<u64, u64>>()
    );
    measure("exact, 1 subscriber each (K=u64, V=u64)", n, || {
        let mut t = SubscriptionTree::<u64, u64>::new();
        for i in 0..n {
            t.insert(&format!("devices/{i}/cmd"), i as u64, 0);
        }
        Box::new(t)
    });
    measure(
        "exact, 2 subscribers each (per subscription)",
        2 * n,
        || {
            let mut t = SubscriptionTree::<u64, u64>::new();
            for i in 0..n {
                let f = format!("devices/{i}/cmd");
                t.insert(&f, i as u64, 0);
                t.insert(&f, i as u64 + 1, 0);
            }
            Box::new(t)
        },
    );
    measure("wildcard 'devices/{i}/+', 1 subscriber each", n, || {
        let mut t = SubscriptionTree::<u64, u64>::new();
        for i in 0..n {
            t.insert(&format!("devices/{i}/+"), i as u64, 0);
        }
        Box::new(t)
    });
    measure("route table exact, 1 shard each", n, || {
        let mut r = RouteTable::new();
        for i in 0..n {
            r.add(&format!("devices/{i}/cmd"), (i % 8) as u16);
        }
        Box::new(r)
    });
    measure("retained 'devices/{i}/state' (V=u64)", n, || {
        let mut r = RetainedStore::<u64>::new();
        for i in 0..n {
            r.insert(&format!("devices/{i}/state"), 0);
        }
        Box::new(r)
    });

    let mut t = SubscriptionTree::<u64, u64>::new();
    for i in 0..n {
        t.insert(&format!("devices/{i}/cmd"), i as u64, 0);
    }
    let topics: Vec<String> = (0..4096)
        .map(|i| format!("devices/{}/cmd", i * 131 % n))
        .collect();
    time("publish match, exact only", &t, &topics);
    for i in 0..1000 {
        t.insert(&format!("fleet/{i}/+/status"), i, 0);
    }
    t.insert("devices/+/cmd", 1, 0);
    t.insert("devices/#", 2, 0);
    time("publish match, + 1002 wildcard filters", &t, &topics);
}

fn time(name: &str, t: &SubscriptionTree<u64, u64>, topics: &[String]) {
    let rounds = 250;
    let start = std::time::Instant::now();
    let mut hits = 0u64;
    for _ in 0..rounds {
        for topic in topics {
            t.for_each_match(std::hint::black_box(topic), |k, _| hits += k);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (rounds * topics.len()) as f64;
    println!("{name:<44} {ns:>7.1} ns/publish (checksum {hits})");
}
