//! A value the signal thread replaces on SIGHUP (TLS settings, ACL rules, users) and the
//! shards read when its generation changes, at their tick: the one lock is taken on a reload
//! and once per shard after it, never on the message path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Published<T> {
    generation: AtomicU64,
    value: Mutex<T>,
}

impl<T: Clone> Published<T> {
    pub fn new(value: T) -> Published<T> {
        Published {
            generation: AtomicU64::new(0),
            value: Mutex::new(value),
        }
    }

    /// Replaces the value (`f` may read the one in use) and starts a new generation.
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.value.lock().unwrap_or_else(|e| e.into_inner()));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every update.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> T {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
