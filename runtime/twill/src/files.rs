//! Small file operations the binary's commands share: reading a file that another
//! process is about to write (subnet.env), and replacing a file atomically.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// The file's text, waiting up to `wait` while it does not exist yet (polling every
/// 200 ms); after that, the `NotFound` error (or any other error at once).
pub fn read_waiting(path: &Path, wait: Duration) -> io::Result<String> {
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

/// Replace `path` with `bytes` atomically, mode 0644 (the daemon's writer: a fresh
/// temporary file created exclusively beside it, then renamed over it).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    twill_node::write_atomically(path, bytes, 0o644)
}
