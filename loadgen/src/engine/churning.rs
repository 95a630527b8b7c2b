//! session-churn: persistent-session subscribers that go offline with a clean DISCONNECT and come
//! back with their session, on the schedule `ChurnPlan` gives each device.

use super::*;

impl Exec {
    pub(super) fn init_churn(&mut self) {
        if self.cfg.churn.is_none() {
            return;
        }
        for i in 0..self.devs.len() {
            if self.devs[i].role == Role::Sub {
                self.churn_heap.push(Reverse((self.t_start, i as u32)));
            }
        }
    }

    /// Takes every device whose time has come offline or back online.
    pub(super) fn churn_step(&mut self, now: u64) {
        let Some(ch) = self.cfg.churn else { return };
        while let Some(&Reverse((t, i))) = self.churn_heap.peek() {
            if t > now {
                break;
            }
            self.churn_heap.pop();
            let i = i as usize;
            let global = self.specs[i].global as u64;
            let (want_on, next_rel) =
                ch.plan
                    .state_at(now - self.t_start, global, ch.devices as u64);
            let mut next = self.t_start + next_rel;
            if want_on && !self.churn[i].online {
                self.churn_online(i, now);
            } else if !want_on && self.churn[i].online {
                if self.devs[i].st == St::Ready {
                    self.churn_offline(i);
                } else if self.devs[i].st == St::Closed {
                    // Lost its connection (counted as an error); back at the next online time.
                    self.churn[i].online = false;
                } else {
                    // Still (re)connecting: try again shortly.
                    next = now + 10_000_000;
                }
            }
            self.churn_heap.push(Reverse((next, i as u32)));
        }
    }

    /// A clean DISCONNECT; the broker keeps the session and queues for the device.
    pub(super) fn churn_offline(&mut self, i: usize) {
        self.churn[i].online = false;
        let disc = std::mem::take(&mut self.disc);
        self.send(i, &disc);
        self.disc = disc;
        let d = &mut self.devs[i];
        if d.fd < 0 {
            return;
        }
        if !d.tx.is_empty() {
            let _ = raw_send(d.fd, &d.tx);
        }
        // SAFETY: our fd.
        unsafe { libc::shutdown(d.fd, libc::SHUT_WR) };
        d.st = St::Closing;
        d.tx = Vec::new();
        d.rx = Vec::new();
        self.up -= 1;
        if d.role == Role::Sub {
            self.subs_up -= 1;
        }
    }

    /// Reconnects with the session kept (clean session 0 / clean start 0).
    pub(super) fn churn_online(&mut self, i: usize, now: u64) {
        self.churn[i].online = true;
        let d = &mut self.devs[i];
        if d.st == St::Closing {
            // The broker did not close yet: the DISCONNECT went out, so this is still clean.
            if d.fd >= 0 {
                // SAFETY: our fd.
                unsafe { libc::close(d.fd) };
            }
            d.fd = -1;
            d.st = St::Closed;
        }
        if d.st != St::Closed {
            return;
        }
        match self.open_socket(i) {
            Ok(fd) => {
                let d = &mut self.devs[i];
                d.fd = fd;
                d.st = St::TcpConnecting;
                d.t_connect_ns = now;
                d.last_tx_s = self.now_s;
                self.churn[i].reconnecting = true;
            }
            Err(e) => self.error(format!("reconnect to {}: {e}", self.cfg.addr)),
        }
    }

    /// End of the window: every device comes back (and stays) online, so the broker can
    /// deliver what it queued during the drain.
    pub(super) fn churn_all_online(&mut self, now: u64) {
        if self.cfg.churn.is_none() {
            return;
        }
        self.churn_heap.clear();
        for i in 0..self.devs.len() {
            if self.devs[i].role == Role::Sub && !self.churn[i].online {
                self.churn_online(i, now);
            }
        }
    }
}
