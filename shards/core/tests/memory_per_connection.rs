//! What an idle device costs the core, counted by the allocator: a connection, its session and
//! one subscription of its own, as the `idle` benchmark holds them. Issue 11 asks for at most
//! 512 bytes per idle connection in all (the process's RSS, which adds the allocator's rounding
//! and the maps' spare capacity); this test prints the breakdown and keeps it from growing.

use ringmq_core::env::{ManualClock, SplitMix64};
use ringmq_core::{Config, Effects, ShardState, SocketId};
use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn with_header(kind: u8, body: Vec<u8>) -> Vec<u8> {
    assert!(body.len() < 128, "one-byte remaining length");
    let mut p = vec![kind, body.len() as u8];
    p.extend(body);
    p
}

/// MQTT 3.1.1 CONNECT, Clean Session, keep-alive 60 s.
fn connect(client_id: &str) -> Vec<u8> {
    let mut b = Vec::new();
    mqtt_str(&mut b, "MQTT");
    b.extend_from_slice(&[4, 0x02, 0, 60]);
    mqtt_str(&mut b, client_id);
    with_header(0x10, b)
}

fn subscribe(filter: &str) -> Vec<u8> {
    let mut b = vec![0, 1];
    mqtt_str(&mut b, filter);
    b.push(0);
    with_header(0x82, b)
}

fn feed(st: &mut ShardState, key: usize, bytes: &[u8]) {
    let mut buf = st.read_buffer(key);
    let room = buf.capacity() - buf.len();
    buf.extend_from_slice(bytes);
    st.on_read(key, buf, bytes.len(), room, false);
}

/// Throws away what the core answered (CONNACK, SUBACK): a real driver writes it out.
fn drop_output(st: &mut ShardState, fx: &mut Effects) {
    st.swap_effects(fx);
    for &key in &fx.writes {
        if let Some(c) = st.conns.get_mut(key) {
            let n: usize = c.out.take().iter().map(|b| b.len()).sum();
            st.wrote(key, n);
        }
    }
    fx.clear();
}

#[test]
fn an_idle_device_costs_the_core_a_bounded_number_of_bytes() {
    let cfg = Rc::new(Config {
        shards: 1,
        ..Config::default()
    });
    let clock = Rc::new(ManualClock::new(
        std::time::Instant::now(),
        1_700_000_000_000,
    ));
    let mut st = ShardState::new(0, 1, cfg, Box::new(clock), Box::new(SplitMix64(7)));
    let mut fx = Effects::new(1);
    let n = 20_000;
    let packets: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                connect(&format!("device-{i:06}")),
                subscribe(&format!("bench/idle/{i}")),
            )
        })
        .collect();
    let t0 = live();
    let keys: Vec<usize> = (0..n).map(|i| st.add_conn(SocketId(i as i32), 0)).collect();
    let t1 = live();
    for (key, (c, _)) in keys.iter().zip(&packets) {
        feed(&mut st, *key, c);
        drop_output(&mut st, &mut fx);
    }
    let t2 = live();
    for (key, (_, s)) in keys.iter().zip(&packets) {
        feed(&mut st, *key, s);
        drop_output(&mut st, &mut fx);
    }
    let t3 = live();
    assert_eq!(st.conns.len(), n, "every device is connected");
    let per = |a: isize, b: isize| (b - a) as f64 / n as f64;
    let (conn, session, sub, all) = (per(t0, t1), per(t1, t2), per(t2, t3), per(t0, t3));
    println!(
        "bytes per idle device: connection {conn:.0}, CONNECT (session, maps, client id) \
         {session:.0}, SUBSCRIBE {sub:.0}, all {all:.0}"
    );
    // 2026-12-03: 1,005 in all, 861 once a session's first subscription stopped reserving
    // room for four (connection 257 with the slab's spare capacity, CONNECT 421, SUBSCRIBE
    // 183). 2026-12-04: 507 (connection 139: 64 bytes, output and partial frame behind
    // pointers; CONNECT 208: session 120 bytes, queues and QoS 2 map allocated on use, the
    // client-id index holding session ids; SUBSCRIBE 159: no shared-bytes headers), then 462
    // with client ids and the session's filters inline up to 24 bytes (these are 13 to 16),
    // 444 with the first subscription inline in the session and the router's exact filters
    // inline. The target is 512 with everything else the process adds.
    assert!(all <= 460.0, "an idle device grew to {all:.0} bytes");
}
