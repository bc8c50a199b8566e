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

/// Replace `path` with `bytes` atomically: its directory created if missing, a
/// temporary file beside it renamed over it (and removed if that fails).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}
