//! The ACL file (`--acl-file`): read at start, again on SIGHUP; each shard takes the rules in
//! force at its next tick. A file that does not load keeps the rules in use, and the error is
//! logged naming the file and line.

use crate::published::Published;
use ringmq_core::acl::Acl;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct AclFile {
    path: PathBuf,
    rules: Published<Arc<Acl>>,
}

/// Reads and parses an ACL file; the error names the file (and the line).
pub fn load(path: &Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read ACL file {}: {e}", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("ACL file {} {e}", path.display()))
}

impl AclFile {
    pub fn open(path: PathBuf) -> Result<Arc<AclFile>, String> {
        let acl = load(&path)?;
        tracing::info!(file = %path.display(), rules = acl.rules(), "ACL file loaded");
        Ok(Arc::new(AclFile {
            path,
            rules: Published::new(Arc::new(acl)),
        }))
    }

    /// SIGHUP: reads the file again; a file that does not load keeps the rules in use.
    pub fn reload(&self) {
        match load(&self.path) {
            Ok(acl) => {
                tracing::info!(file = %self.path.display(), rules = acl.rules(), "ACL file reloaded");
                self.rules.update(|rules| *rules = Arc::new(acl));
            }
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the ACL file did not load; the rules in use stay"
            ),
        }
    }

    /// Changes with every reload that loaded.
    pub fn generation(&self) -> u64 {
        self.rules.generation()
    }

    pub fn current(&self) -> Arc<Acl> {
        self.rules.current()
    }
}
