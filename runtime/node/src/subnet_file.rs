//! subnet.env on disk: read back for the previous subnet, written atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use twill_core::Subnet;
use twill_core::subnet_env::{SubnetEnv, previous_subnet};

/// The subnet recorded by the previous run, if the file exists and has one.
pub fn read_previous(path: &Path) -> Option<Subnet> {
    let text = fs::read_to_string(path).ok()?;
    previous_subnet(&text)
}

/// Write the file atomically, mode 0644 (see [`write_atomically`]).
pub fn write(path: &Path, env: &SubnetEnv) -> anyhow::Result<()> {
    write_atomically(path, env.render().as_bytes(), 0o644)
        .with_context(|| format!("write subnet file {}", path.display()))
}

/// Replace `path` with `bytes` atomically: its directory created if missing, a new
/// temporary file beside it (a random name, created exclusively with `mode`: never an
/// existing file or a symbolic link someone planted, security review L-7), written,
/// synced and renamed over `path` (and removed if any step fails).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test's own under the system's temporary directory.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "twill-subnet-file-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed_and_nothing_is_left_behind() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        fs::write(&victim, "precious").expect("victim");
        let path = dir.join("subnet.env");
        std::os::unix::fs::symlink(&victim, &path).expect("plant a symlink");
        write_atomically(&path, b"FLANNEL_MTU=1450\n", 0o644).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious");
        assert!(
            !fs::symlink_metadata(&path)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_to_string(&path).expect("written"),
            "FLANNEL_MTU=1450\n"
        );
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let left: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
