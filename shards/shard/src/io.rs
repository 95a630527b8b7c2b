//! The few socket system calls the shard makes itself: vectored `sendmsg` of queued chunks, and
//! `recv` into the shard's scratch buffer where the network ring is not used (the drain of a
//! taken-over connection).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// Reads what the socket has, up to the buffer's spare capacity (after reserving `want`).
/// Returns Ok(0) at end of stream; WouldBlock when nothing is there.
pub fn recv_into(fd: RawFd, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into memory we own; set_len covers only
    // what it reported written.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Chunks gathered into one `sendmsg`; IOV_MAX is 1024, and a few dozen already fill a
/// socket buffer with small messages.
const IOV_BATCH: usize = 64;

/// Writes as much of `out` as the socket takes now, dropping written chunks. Returns the bytes
/// written; WouldBlock only when nothing could be written.
pub fn send_chunks(fd: RawFd, out: &mut VecDeque<Bytes>) -> io::Result<usize> {
    let mut total = 0;
    while !out.is_empty() {
        let mut iov: [libc::iovec; IOV_BATCH] = unsafe { std::mem::zeroed() };
        let mut cnt = 0;
        let mut batch_len = 0;
        for chunk in out.iter().take(IOV_BATCH) {
            iov[cnt] = libc::iovec {
                iov_base: chunk.as_ptr() as *mut libc::c_void,
                iov_len: chunk.len(),
            };
            batch_len += chunk.len();
            cnt += 1;
        }
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = cnt as _;
        // SAFETY: the iovecs point into chunks that `out` keeps alive for the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock && total > 0 {
                return Ok(total);
            }
            return Err(e);
        }
        let n = n as usize;
        total += n;
        consume(out, n);
        if n < batch_len {
            // The socket buffer is full; the caller waits for writability.
            break;
        }
    }
    Ok(total)
}

/// Writes as much of `buf` as the socket takes now. WouldBlock when it takes nothing.
pub fn send_bytes(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads at most `buf.len()` bytes of `buf`.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Drops `n` written bytes from the front of the queue.
pub fn consume(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let front = out.front_mut().expect("wrote more than was queued");
        if front.len() <= n {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// A second descriptor for the socket, so that the shard handing a connection over can drop its
/// stream (closing its descriptor) while the home shard adopts the duplicate.
pub fn dup_fd(fd: RawFd) -> io::Result<RawFd> {
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(d)
    }
}

pub fn close_fd(fd: RawFd) {
    unsafe {
        libc::close(fd);
    }
}

/// A listening socket every shard can bind (SO_REUSEPORT: the kernel spreads connections
/// over the shards), with a deep accept queue for connect storms.
pub fn listen_socket(addr: std::net::SocketAddr, backlog: i32) -> io::Result<RawFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::IntoRawFd;
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into_raw_fd())
}

/// Sends FIN after what was written: the peer reads everything, then end of stream.
pub fn shutdown_write(fd: RawFd) {
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Stops a listening socket from taking connections at once, before the process exits: a
/// closed descriptor can outlive the process inside io_uring's teardown and keep its place in
/// the SO_REUSEPORT group, where new connections would be reset.
pub fn shutdown_listener(fd: RawFd) {
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// Grows the process's descriptor table to hold `n` descriptors now, while the process is
/// starting, rather than in the middle of a connection burst.
///
/// The kernel grows the table by doubling when a descriptor past its end is allocated, and in
/// a process with several threads each growth waits for an RCU grace period
/// (`expand_fdtable` → `synchronize_rcu`): the accept that crossed 1,024, 2,048, 4,096, ...
/// descriptors stalled its shard for 10-30 ms on the test VM, and every message of that shard
/// waited with it. The table never shrinks, so one growth at start removes every later one;
/// it costs the kernel 8 bytes per descriptor (8 MB for a million).
pub fn reserve_descriptors(n: u64) -> io::Result<()> {
    if n < 2 {
        return Ok(());
    }
    // SAFETY: plain descriptor calls on descriptors this function opens and closes.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, (n - 1) as libc::c_int);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if high < 0 {
            return Err(err);
        }
        libc::close(high);
    }
    Ok(())
}

/// Adds one to an eventfd's counter, waking whoever waits on it.
pub fn signal_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: an 8-byte write of a u64 to a descriptor the caller owns.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// What became of a connection's output after a try at sending it.
pub(crate) enum Sent {
    All,
    Blocked,
    Failed,
}

/// Sends `bytes` after whatever `unsent` still holds (TLS records, WebSocket frames); what the
/// socket does not take stays in `unsent`.
pub(crate) fn send(fd: RawFd, unsent: &mut crate::tls::Held, bytes: &[u8]) -> Sent {
    if !unsent.is_empty() {
        unsent.vec().extend_from_slice(bytes);
        return Sent::Blocked;
    }
    if bytes.is_empty() {
        return Sent::All;
    }
    match send_bytes(fd, bytes) {
        Ok(n) if n == bytes.len() => Sent::All,
        Ok(n) => {
            unsent.vec().extend_from_slice(&bytes[n..]);
            Sent::Blocked
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            unsent.vec().extend_from_slice(bytes);
            Sent::Blocked
        }
        Err(_) => Sent::Failed,
    }
}

/// Sends what the socket did not take before.
pub(crate) fn flush(fd: RawFd, unsent: &mut crate::tls::Held) -> Sent {
    if unsent.is_empty() {
        return Sent::All;
    }
    match send_bytes(fd, unsent.as_slice()) {
        Ok(n) if n == unsent.len() => {
            unsent.consume(n);
            Sent::All
        }
        Ok(n) => {
            unsent.consume(n);
            Sent::Blocked
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::Blocked,
        Err(_) => Sent::Failed,
    }
}

/// Moves up to `limit` bytes of queued output into `into` (emptied first), for a transport
/// that copies it anyway (encrypts it, frames it): what is taken leaves the queue.
pub(crate) fn gather(chunks: &mut VecDeque<Bytes>, into: &mut Vec<u8>, limit: usize) {
    into.clear();
    while let Some(front) = chunks.front_mut() {
        let take = front.len().min(limit - into.len());
        into.extend_from_slice(&front[..take]);
        if take == front.len() {
            chunks.pop_front();
        } else {
            front.advance(take);
        }
        if into.len() >= limit {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn send_chunks_and_recv_into_move_bytes_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut out: VecDeque<Bytes> = (0..200)
            .map(|i| Bytes::from(format!("chunk{i};")))
            .collect();
        let expected: Vec<u8> = out.iter().flat_map(|c| c.to_vec()).collect();
        let n = send_chunks(a.as_raw_fd(), &mut out).unwrap();
        assert_eq!(n, expected.len());
        assert!(out.is_empty());
        let mut got = vec![0u8; expected.len()];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, expected);

        let mut buf = BytesMut::new();
        assert_eq!(
            recv_into(b.as_raw_fd(), &mut buf, 64).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        assert_eq!(recv_into(b.as_raw_fd(), &mut buf, 64).unwrap(), 0);
    }

    /// The kernel's descriptor table (`FDSize` in /proc/self/status) covers the reservation
    /// at once, and the descriptor used for it is given back.
    #[test]
    fn reserve_descriptors_grows_the_table_now() {
        let fd_size = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("FDSize:")
                        .map(|v| v.trim().parse::<u64>().unwrap())
                })
                .unwrap()
        };
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let want = (lim.rlim_cur as u64).min(4096);
        reserve_descriptors(want).unwrap();
        assert!(fd_size() >= want, "FDSize {} < {want}", fd_size());
        // The highest descriptor, used for the growth, is closed again. (Not a count of open
        // descriptors: tests on other threads open and close their own meanwhile.)
        assert!(unsafe { libc::fcntl((want - 1) as libc::c_int, libc::F_GETFD) } < 0);
    }

    #[test]
    fn consume_splits_a_chunk() {
        let mut out: VecDeque<Bytes> =
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")].into();
        consume(&mut out, 4);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..], b"ef");
    }
}
