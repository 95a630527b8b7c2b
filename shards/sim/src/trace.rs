//! A bounded ring of the last events of a run, printed when a check fails.

use std::collections::VecDeque;
use std::fmt::Write;

pub struct Trace {
    cap: usize,
    lines: VecDeque<String>,
    /// Events recorded since the start (the ring keeps the last `cap`).
    pub total: u64,
    /// A running hash of every event, to compare two replays of a seed.
    pub digest: u64,
}

impl Trace {
    pub fn new(cap: usize) -> Trace {
        Trace {
            cap,
            lines: VecDeque::with_capacity(cap.min(4096)),
            total: 0,
            digest: 0xcbf2_9ce4_8422_2325,
        }
    }

    pub fn push(&mut self, step: u64, now_ms: u64, line: String) {
        for b in line.bytes() {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
        self.total += 1;
        if self.cap == 0 {
            return;
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        let mut s = String::with_capacity(line.len() + 24);
        let _ = write!(
            s,
            "#{step:<6} {:>6}.{:03}s  {line}",
            now_ms / 1000,
            now_ms % 1000
        );
        self.lines.push_back(s);
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        let skipped = self.total.saturating_sub(self.lines.len() as u64);
        if skipped > 0 {
            let _ = writeln!(s, "  ... {skipped} earlier events not kept");
        }
        for l in &self.lines {
            let _ = writeln!(s, "  {l}");
        }
        s
    }
}
