//! Replays every input of the cargo-fuzz corpus kept in the repository
//! (`fuzz/corpus/journal_open/`, minimized with `cargo fuzz cmin`) through the fuzz target's
//! body, `ringmq_journal::fuzzing::fuzz_open`, so a stable `cargo test` runs what the fuzzer
//! found interesting. A missing or empty corpus fails: a replay of nothing must not pass.

use ringmq_journal::fuzzing::fuzz_open;
use std::path::{Path, PathBuf};

#[test]
fn replay_fuzz_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/journal_open");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| fuzz_open(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} corpus inputs panicked (reproduce with `cargo +nightly fuzz run journal_open <file>`): {failed:#?}",
        failed.len(),
        files.len()
    );
}
