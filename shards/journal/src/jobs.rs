//! Work that may block for long: creating segments and making data durable. Each job owns
//! everything it touches (`Send + 'static`) so the reactor can hand it to a blocking thread
//! (glommio's `spawn_blocking`) and keep appending meanwhile.

use crate::format::{segment_file_name, write_header, HEADER_BYTES};
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Makes every record appended before the job was taken durable.
#[must_use = "a sync job does nothing until run"]
pub struct SyncJob {
    pub(crate) files: Vec<Arc<File>>,
    pub(crate) seq: u64,
}

impl SyncJob {
    /// The seq that is durable once `run` returns `Ok`.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Blocks: `fdatasync` of each segment file with unsynced records. On Linux, syncing a file
    /// writes back the dirty pages of its shared mappings too, so no `msync` (and no pointer
    /// into the mapping) is needed here. Pass the returned seq to `Journal::sync_done`.
    pub fn run(self) -> io::Result<u64> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(self.seq)
    }
}

/// Creates the next segment ahead of need.
#[must_use = "a prepare job does nothing until run"]
pub struct PrepareJob {
    pub(crate) dir: PathBuf,
    pub(crate) index: u64,
    pub(crate) segment_bytes: u64,
    /// Stale spares (superseded while their job was in flight) to delete on the way.
    pub(crate) discard: Vec<PathBuf>,
}

impl PrepareJob {
    /// Blocks: see [`create_segment`]. Pass the result to `Journal::install_prepared`.
    pub fn run(self) -> io::Result<PreparedSegment> {
        for p in &self.discard {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        create_segment(&self.dir, self.index, self.segment_bytes)
    }
}

/// A created, allocated, prefaulted and durable segment, not yet holding records.
pub struct PreparedSegment {
    pub(crate) index: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) map: MmapMut,
}

impl PreparedSegment {
    pub fn index(&self) -> u64 {
        self.index
    }
}

impl std::fmt::Debug for PreparedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSegment")
            .field("index", &self.index)
            .field("path", &self.path)
            .finish()
    }
}

/// Creates segment `index`: allocate the blocks up front (so appends never hit ENOSPC or block
/// allocation through a page fault), write the header with first seq 0 (assigned when the
/// segment becomes active), make file and directory entry durable, then write-touch every
/// page so that the page cache and page tables are populated before the reactor writes to it.
pub fn create_segment(dir: &Path, index: u64, segment_bytes: u64) -> io::Result<PreparedSegment> {
    let path = dir.join(segment_file_name(index));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.set_len(segment_bytes)?;
    allocate(&file, segment_bytes)?;
    let len = usize::try_from(segment_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: the file is ours (created above, exclusive by name) and is never truncated while
    // mapped; the journal is the only writer.
    let mut map = unsafe { MmapOptions::new().len(len).map_mut(&file)? };
    write_header(&mut map[..HEADER_BYTES], index, 0, segment_bytes);
    map.flush()?;
    file.sync_all()?;
    sync_dir(dir)?;
    prefault(&mut map);
    Ok(PreparedSegment {
        index,
        path,
        file: Arc::new(file),
        map,
    })
}

/// `posix_fallocate`, tolerating filesystems that cannot (the blocks are then allocated on
/// first write-back instead).
fn allocate(file: &File, len: u64) -> io::Result<()> {
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "segment too large",
        ));
    };
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Rewrites one byte of every page with the value it holds. A write (not a read) faults each
/// page in writable, so the page cache and page tables are filled on this blocking thread
/// rather than by the first appends on the reactor.
fn prefault(map: &mut MmapMut) {
    let page = page_size();
    let base = map.as_mut_ptr();
    let mut off = 0;
    while off < map.len() {
        // SAFETY: `off < map.len()`; volatile so the store of an unchanged value is not elided.
        unsafe {
            let p = base.add(off);
            std::ptr::write_volatile(p, std::ptr::read_volatile(p));
        }
        off += page;
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// Makes creations, renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
