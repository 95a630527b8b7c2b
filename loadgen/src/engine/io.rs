//! Socket I/O of the loop: readiness events, non-blocking sends that keep only what the kernel
//! did not take, reads into the executor's scratch buffer, and keep-alive pings.

use super::*;

impl Exec {
    /// Waits up to `timeout_ns` for readiness and handles it, then the reads that were cut
    /// short last time (`MAX_READ_ROUNDS`).
    pub(super) fn poll(&mut self, events: &mut [libc::epoll_event], timeout_ns: u64) {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: events buffer is valid for its length; null sigmask.
        let n = unsafe {
            libc::epoll_pwait2(
                self.ep,
                events.as_mut_ptr(),
                events.len() as i32,
                &ts,
                std::ptr::null(),
            )
        };
        let now = now_ns();
        for ev in events.iter().take(n.max(0) as usize) {
            let (flags, i) = (ev.events, ev.u64 as usize);
            self.on_event(i, flags, now);
        }
        if !self.requeue.is_empty() {
            let rq = std::mem::take(&mut self.requeue);
            for &i in &rq {
                self.on_readable(i as usize);
            }
        }
    }

    fn on_event(&mut self, i: usize, flags: u32, now: u64) {
        let st = self.devs[i].st;
        match st {
            St::Closed => {}
            St::TcpConnecting => {
                let errbits = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
                if flags & (libc::EPOLLOUT as u32 | errbits) != 0 {
                    let e = sys::so_error(self.devs[i].fd);
                    if e != 0 || flags & errbits != 0 {
                        let e = if e == 0 { libc::ECONNREFUSED } else { e };
                        self.fail(
                            i,
                            format!("connect to {}: {}", self.cfg.addr, sys::strerror(e)),
                        );
                        return;
                    }
                    self.send_connect(i, now);
                }
            }
            _ => {
                if flags & libc::EPOLLOUT as u32 != 0 && !self.devs[i].tx.is_empty() {
                    self.flush(i);
                }
                if flags
                    & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                    != 0
                {
                    self.on_readable(i);
                }
            }
        }
    }

    /// Sends MQTT bytes: in a WebSocket frame with --ws (kept until the upgrade is done),
    /// then as [`Exec::send_wire`] does.
    pub(super) fn send(&mut self, i: usize, data: &[u8]) {
        let Some(ws) = self.devs[i].ws.as_mut() else {
            return self.send_wire(i, data);
        };
        let mut out = std::mem::take(&mut self.wsout);
        out.clear();
        ws.wrap(data, &mut out);
        self.send_wire(i, &out);
        self.wsout = out;
    }

    /// Sends `data` now if nothing is queued, keeps what the kernel did not take. With TLS,
    /// `data` is encrypted first (and may be empty: what the session has to send goes).
    pub(super) fn send_wire(&mut self, i: usize, data: &[u8]) {
        let d = &mut self.devs[i];
        if d.fd < 0 {
            return;
        }
        if let Some(tls) = d.tls.as_mut() {
            use std::io::Write;
            if !data.is_empty() && tls.writer().write_all(data).is_err() {
                return self.fail(i, "TLS: cannot encrypt".into());
            }
            let mut out = std::mem::take(&mut self.wtls);
            out.clear();
            while tls.wants_write() {
                if tls.write_tls(&mut out).is_err() {
                    break;
                }
            }
            self.send_raw(i, &out);
            self.wtls = out;
            return;
        }
        self.send_raw(i, data);
    }

    /// Gives the TLS session of device `i` what its socket delivered; the plaintext goes to
    /// `rbuf`. Nothing to do without TLS (the bytes are in `rbuf` already).
    fn tls_in(&mut self, i: usize, cipher: &[u8], rbuf: &mut BytesMut) -> Result<(), String> {
        if self.devs[i].ws.is_some() {
            return self.ws_in(i, cipher, rbuf);
        }
        match self.devs[i].tls.as_mut() {
            Some(tls) => tls_decrypt(tls, cipher, rbuf),
            None => Ok(()),
        }
    }

    /// WebSocket: the socket's bytes (decrypted first with TLS) unframed into `rbuf`; the
    /// MQTT bytes kept during the upgrade go once it is done.
    fn ws_in(&mut self, i: usize, wire: &[u8], rbuf: &mut BytesMut) -> Result<(), String> {
        let mut clear = std::mem::take(&mut self.wsin);
        clear.clear();
        let tls = self.devs[i].tls.take();
        let r = match tls {
            Some(mut t) => {
                let r = tls_decrypt(&mut t, wire, &mut clear);
                self.devs[i].tls = Some(t);
                r
            }
            None => {
                clear.extend_from_slice(wire);
                Ok(())
            }
        };
        let mut out = std::mem::take(&mut self.wsout);
        out.clear();
        let r = r.and_then(|()| match self.devs[i].ws.as_mut() {
            Some(ws) => ws.unwrap(&clear, rbuf, &mut out),
            None => Ok(()),
        });
        if r.is_ok() && !out.is_empty() {
            self.send_wire(i, &out);
        }
        self.wsout = out;
        self.wsin = clear;
        r
    }

    fn send_raw(&mut self, i: usize, data: &[u8]) {
        let d = &mut self.devs[i];
        if data.is_empty() {
            return;
        }
        d.last_tx_s = self.now_s;
        if !d.tx.is_empty() {
            d.tx.extend_from_slice(data);
            return;
        }
        match raw_send(d.fd, data) {
            Ok(n) if n == data.len() => {}
            Ok(n) => d.tx.extend_from_slice(&data[n..]),
            Err(e) => self.fail(i, format!("send: {}", sys::strerror(e))),
        }
    }

    pub(super) fn flush(&mut self, i: usize) {
        let d = &mut self.devs[i];
        match raw_send(d.fd, &d.tx) {
            Ok(n) if n == d.tx.len() => {
                d.tx = Vec::new();
                if d.role == Role::Pub && d.role_idx != u32::MAX {
                    let pi = d.role_idx as usize;
                    self.unblock(pi);
                }
            }
            Ok(n) => {
                d.tx.drain(..n);
            }
            Err(e) => self.fail(i, format!("send: {}", sys::strerror(e))),
        }
    }

    pub(super) fn on_readable(&mut self, i: usize) {
        if self.devs[i].fd < 0 {
            return;
        }
        let mut rbuf = std::mem::take(&mut self.rbuf);
        rbuf.clear();
        if !self.devs[i].rx.is_empty() {
            rbuf.extend_from_slice(&self.devs[i].rx);
            self.devs[i].rx = Vec::new();
        }
        let mut rounds = 0;
        let mut failure: Option<String> = None;
        let closing = self.devs[i].st == St::Closing;
        // With TLS or WebSocket the socket's bytes are read apart and unwrapped into `rbuf`.
        let tls = self.devs[i].tls.is_some() || self.devs[i].ws.is_some();
        let mut cbuf = std::mem::take(&mut self.cbuf);
        loop {
            // With TLS the socket's bytes go to the session, and the plaintext to `rbuf`.
            let target: &mut Vec<u8> = &mut cbuf;
            let want;
            let n = if tls {
                target.clear();
                target.reserve(READ_CHUNK);
                want = target.capacity();
                recv_spare(self.devs[i].fd, target.spare_capacity_mut())
            } else {
                rbuf.reserve(READ_CHUNK);
                want = rbuf.spare_capacity_mut().len();
                recv_spare(self.devs[i].fd, rbuf.spare_capacity_mut())
            };
            if n > 0 {
                let n = n as usize;
                if tls {
                    // SAFETY: recv initialized n bytes.
                    unsafe { cbuf.set_len(n) };
                } else {
                    // SAFETY: recv initialized n bytes.
                    unsafe { rbuf.set_len(rbuf.len() + n) };
                }
                if closing {
                    rbuf.clear();
                } else if let Err(e) = self.tls_in(i, &cbuf, &mut rbuf) {
                    failure = Some(e);
                    break;
                } else if let Err(e) = self.process(i, &mut rbuf, now_ns()) {
                    failure = Some(e);
                    break;
                }
                if self.devs[i].fd < 0 {
                    break;
                }
                if n < want {
                    break;
                }
                rounds += 1;
                if rounds >= MAX_READ_ROUNDS {
                    self.requeue.push(i as u32);
                    break;
                }
            } else if n == 0 {
                if closing {
                    // SAFETY: our fd.
                    unsafe { libc::close(self.devs[i].fd) };
                    self.devs[i].fd = -1;
                    self.devs[i].st = St::Closed;
                } else {
                    failure = Some("connection closed by the broker".into());
                }
                break;
            } else {
                let e = sys::errno();
                if e == libc::EINTR {
                    continue;
                }
                if e != libc::EAGAIN {
                    failure = Some(format!("recv: {}", sys::strerror(e)));
                }
                break;
            }
        }
        self.cbuf = cbuf;
        if !self.obuf.is_empty() {
            let ob = std::mem::take(&mut self.obuf);
            self.send(i, &ob);
            self.obuf = ob;
            self.obuf.clear();
        }
        // What the TLS session has to say (handshake, tickets' acknowledgements, alerts).
        if failure.is_none() && self.devs[i].tls.is_some() {
            self.send(i, &[]);
        }
        if let Some(msg) = failure {
            self.fail(i, msg);
        } else if !rbuf.is_empty() && self.devs[i].fd >= 0 {
            self.devs[i].rx = rbuf.to_vec();
        }
        rbuf.clear();
        self.rbuf = rbuf;
    }

    pub(super) fn process(
        &mut self,
        i: usize,
        rbuf: &mut BytesMut,
        now: u64,
    ) -> Result<(), String> {
        loop {
            match decode_packet(rbuf, self.cfg.version, MAX_PACKET) {
                Ok(Some(p)) => self.on_packet(i, p, now)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("decode: {e}")),
            }
            if self.devs[i].fd < 0 {
                return Ok(());
            }
        }
    }

    pub(super) fn pings(&mut self) {
        let ka = self.cfg.keep_alive as u32;
        let idle = (ka * 3 / 4).max(1);
        let ping = std::mem::take(&mut self.ping);
        for i in 0..self.devs.len() {
            let d = &self.devs[i];
            if d.st == St::Ready && self.now_s.saturating_sub(d.last_tx_s) >= idle {
                self.send(i, &ping);
            }
        }
        self.ping = ping;
    }
}

/// Gives a TLS session ciphertext; the plaintext is appended to `plain`.
fn tls_decrypt(
    tls: &mut rustls::ClientConnection,
    mut cipher: &[u8],
    plain: &mut BytesMut,
) -> Result<(), String> {
    use std::io::Read;
    while !cipher.is_empty() {
        tls.read_tls(&mut cipher).map_err(|e| format!("TLS: {e}"))?;
        tls.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
            }
        }
    }
    Ok(())
}

/// One non-blocking `recv` into `spare`: bytes read, 0 at the end, -1 with errno set.
fn recv_spare(fd: i32, spare: &mut [std::mem::MaybeUninit<u8>]) -> isize {
    // SAFETY: recv writes at most `spare.len()` bytes into memory we own.
    unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr() as *mut libc::c_void,
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    }
}

pub(super) fn raw_send(fd: i32, data: &[u8]) -> Result<usize, i32> {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: valid slice.
        let n = unsafe {
            libc::send(
                fd,
                data[off..].as_ptr() as *const libc::c_void,
                data.len() - off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            off += n as usize;
        } else {
            let e = sys::errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                break;
            }
            return Err(e);
        }
    }
    Ok(off)
}
