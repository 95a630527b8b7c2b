//! Decoding a 3.1.x QoS 0 PUBLISH allocates nothing: the topic and payload are slices of the
//! read buffer and `properties` is `None`. A counting global allocator checks it (this file is
//! its own test binary, so the allocator only affects it).

use bytes::{BufMut, BytesMut};
use ringmq_codec::{decode_packet, Packet, ProtocolVersion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

// Per thread: the test harness runs tests on parallel threads, and a shared counter would
// count the other tests' allocations. Const-initialised and without a destructor, so using it
// inside the allocator neither allocates nor recurses.
thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn v3_qos0_publish_decode_does_not_allocate() {
    let frame = [0x30u8, 9, 0, 3, b'a', b'/', b'b', b'h', b'e', b'l', b'l'];
    let mut buf = BytesMut::with_capacity(4096);
    for _ in 0..100 {
        buf.put_slice(&frame);
    }
    for v in [ProtocolVersion::V31, ProtocolVersion::V311] {
        // The first split turns the buffer into a shared one (one allocation inside `bytes`).
        let first = decode_packet(&mut buf, v, 1 << 20).unwrap().unwrap();
        drop(first);
        let before = allocs();
        for _ in 0..10 {
            let p = decode_packet(&mut buf, v, 1 << 20).unwrap().unwrap();
            let Packet::Publish(p) = p else { panic!() };
            assert_eq!(&p.payload[..], b"hell");
            assert!(p.properties.is_none());
        }
        assert_eq!(allocs(), before, "{v:?}");
    }
}

#[test]
fn v5_qos1_publish_without_properties_does_not_allocate() {
    let frame = [0x32u8, 9, 0, 1, b't', 0, 7, 0, b'a', b'b', b'c'];
    let mut buf = BytesMut::with_capacity(4096);
    for _ in 0..20 {
        buf.put_slice(&frame);
    }
    drop(decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20).unwrap());
    let before = allocs();
    for _ in 0..10 {
        let p = decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Publish(_)));
    }
    assert_eq!(allocs(), before);
}
