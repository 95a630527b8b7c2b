//! Password checks, off the shard threads.
//!
//! A password hash is slow on purpose (`$7$` PBKDF2, `$argon2id$`), so a shard never computes
//! one: the core parks the CONNECT and emits a [`CredentialCheck`]; the shard hands it to a
//! small pool of verifier threads shared by every shard, at most [`IN_FLIGHT`] per shard at a
//! time (the rest wait in the shard's queue, in order), and the answers come back through a
//! mailbox whose eventfd wakes the shard's login task. The verifier threads run under
//! `SCHED_IDLE`: they use CPU the shards leave idle, and a shard that wakes takes its core back
//! at once, so a login storm delays logins, not the traffic of connected clients.
//!
//! The password file is read at start and again on SIGHUP; a file that does not load keeps
//! the users in use, and the error is logged naming the file and line.

use crate::published::Published;
use crossbeam_channel::{Receiver, Sender};
use ringmq_core::state::CredentialCheck;
use ringmq_passwd::PasswordFile;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Checks one shard has at the verifier threads at once: enough to keep them busy, few enough
/// that one shard's storm does not queue ahead of every other shard's logins.
pub const IN_FLIGHT: usize = 16;

/// One answer: the connection, the check's token, whether the password is right.
pub type Answer = (usize, u64, bool);

/// Where a shard's answers arrive.
pub struct Mailbox {
    answers: Mutex<Vec<Answer>>,
    eventfd: RawFd,
}

impl Mailbox {
    fn new() -> std::io::Result<Mailbox> {
        // SAFETY: eventfd creates a new descriptor; checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mailbox {
            answers: Mutex::new(Vec::new()),
            eventfd: fd,
        })
    }

    fn post(&self, a: Answer) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a);
        crate::io::signal_eventfd(self.eventfd);
    }

    /// The answers that arrived, emptying the mailbox.
    pub fn take(&self) -> Vec<Answer> {
        std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The descriptor the login task waits on.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd
    }
}

struct Job {
    check: CredentialCheck,
    reply: Arc<Mailbox>,
}

/// The password file and the verifier threads, shared by every shard.
pub struct Verifier {
    path: PathBuf,
    file: Published<Arc<PasswordFile>>,
    jobs: Sender<Job>,
}

impl Verifier {
    /// Loads the password file (the error names the file and line) and starts `threads`
    /// verifier threads.
    pub fn start(path: PathBuf, threads: usize) -> Result<Arc<Verifier>, String> {
        let file = PasswordFile::load(&path)?;
        tracing::info!(file = %path.display(), users = file.len(), "password file loaded");
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let v = Arc::new(Verifier {
            path,
            file: Published::new(Arc::new(file)),
            jobs: tx,
        });
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let v = Arc::downgrade(&v);
            std::thread::Builder::new()
                .name(format!("ringmq-passwd-{i}"))
                .spawn(move || verify_loop(rx, v))
                .map_err(|e| format!("cannot start a password verifier thread: {e}"))?;
        }
        Ok(v)
    }

    /// SIGHUP: reads the file again; a file that does not load keeps the users in use.
    pub fn reload(&self) {
        match PasswordFile::load(&self.path) {
            Ok(f) => {
                tracing::info!(file = %self.path.display(), users = f.len(), "password file reloaded");
                self.file.update(|file| *file = Arc::new(f));
            }
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the password file did not load; the users in use stay"
            ),
        }
    }

    fn current(&self) -> Arc<PasswordFile> {
        self.file.current()
    }
}

fn verify_loop(rx: Receiver<Job>, v: std::sync::Weak<Verifier>) {
    idle_priority();
    while let Ok(job) = rx.recv() {
        let Some(v) = v.upgrade() else { return };
        let file = v.current();
        let c = &job.check;
        let ok = file.verify(&c.username, c.password.as_deref().unwrap_or_default())
            && c.password.is_some();
        job.reply.post((c.key, c.token, ok));
    }
}

/// `SCHED_IDLE` for the calling thread: it runs only on CPU nothing else wants.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the scheduling policy of the calling thread (pid 0) with a valid parameter.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "password verifier thread keeps the normal priority"
        );
    }
}

/// One shard's side: its mailbox, and the checks waiting for a place at the verifiers.
pub struct Logins {
    verifier: Arc<Verifier>,
    mailbox: Arc<Mailbox>,
    in_flight: usize,
    waiting: VecDeque<CredentialCheck>,
}

impl Logins {
    pub fn new(verifier: Arc<Verifier>) -> std::io::Result<Logins> {
        Ok(Logins {
            verifier,
            mailbox: Arc::new(Mailbox::new()?),
            in_flight: 0,
            waiting: VecDeque::new(),
        })
    }

    pub fn mailbox(&self) -> Arc<Mailbox> {
        self.mailbox.clone()
    }

    /// Queues a check; it goes to the verifiers as soon as this shard has a place there.
    pub fn ask(&mut self, check: CredentialCheck) {
        self.waiting.push_back(check);
        self.fill();
    }

    /// Answers arrived: their places go to the checks waiting.
    pub fn answered(&mut self, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(n);
        self.fill();
    }

    fn fill(&mut self) {
        while self.in_flight < IN_FLIGHT {
            let Some(check) = self.waiting.pop_front() else {
                return;
            };
            let job = Job {
                check,
                reply: self.mailbox.clone(),
            };
            if self.verifier.jobs.send(job).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    /// Checks waiting for a place (metrics, tests).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}
