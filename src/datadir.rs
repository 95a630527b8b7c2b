//! One broker per data directory. Two processes on one directory would share the port
//! (SO_REUSEPORT) and write over each other's journal, so the broker holds an exclusive
//! `flock` on `<data-dir>/ringmq.lock` for as long as it runs. The kernel drops the lock when
//! the process ends however it ends (kill -9 included), so a stale file never blocks a start;
//! the file only carries the holder's PID for the message a refused start prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "ringmq.lock";

/// Held while the broker runs; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; its PID as it wrote it, if it did.
    Held { dir: PathBuf, pid: Option<u32> },
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { dir, pid } => {
                let holder = pid.map_or("another process".to_string(), |p| format!("PID {p}"));
                write!(
                    f,
                    "data directory {} is in use by {holder}: one broker per data directory \
                     (stop it first, or choose another --data-dir)",
                    dir.display()
                )
            }
            LockError::Io { path, error } => write!(f, "cannot lock {}: {error}", path.display()),
        }
    }
}

/// Takes the directory's lock and records this process's PID in it.
pub fn lock(dir: &Path) -> Result<DataDirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |error| LockError::Io {
        path: path.clone(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringmq-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = temp_dir("second");
        let first = lock(&dir).expect("a free directory locks");
        match lock(&dir) {
            Err(LockError::Held { dir: d, pid }) => {
                assert_eq!(d, dir);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let _again = lock(&dir).expect("released by the drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_file_from_a_dead_holder_does_not_block() {
        let dir = temp_dir("stale");
        std::fs::write(dir.join(LOCK_FILE), "999999999\nleftover").unwrap();
        let _l = lock(&dir).expect("no process holds the flock");
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_message_names_the_directory_and_the_holder() {
        let e = LockError::Held {
            dir: PathBuf::from("/var/lib/ringmq"),
            pid: Some(4242),
        };
        let text = e.to_string();
        assert!(
            text.contains("/var/lib/ringmq") && text.contains("PID 4242"),
            "{text}"
        );
    }
}
