//! A transport's sessions by socket descriptor (TLS, WebSocket): descriptors are small, dense
//! integers, so a vector of pointers costs 8 bytes per descriptor, against a hash map's 20 to
//! 40 per session; it stays empty while the shard has no such connection.

use std::os::fd::RawFd;

pub struct FdTable<T>(Vec<Option<Box<T>>>);

impl<T> Default for FdTable<T> {
    fn default() -> FdTable<T> {
        FdTable(Vec::new())
    }
}

impl<T> FdTable<T> {
    pub fn get(&self, fd: RawFd) -> Option<&T> {
        self.0.get(fd as usize)?.as_deref()
    }

    pub fn get_mut(&mut self, fd: RawFd) -> Option<&mut T> {
        self.0.get_mut(fd as usize)?.as_deref_mut()
    }

    pub fn insert(&mut self, fd: RawFd, session: Box<T>) {
        let i = fd as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(session);
    }

    pub fn remove(&mut self, fd: RawFd) -> Option<Box<T>> {
        self.0.get_mut(fd as usize)?.take()
    }
}
