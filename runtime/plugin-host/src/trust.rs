//! What the host trusts on disk (security review M-3): a plugin file runs as root and a
//! compiled-cache entry is native code, so the plugin directory, the cache directory
//! and the plugin files must be writable only by us (the effective user) or root, and
//! a plugin file may not be a symbolic link out of its directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest plugin file read (a component is a few MiB).
pub const MAX_PLUGIN_FILE: u64 = 64 << 20;

/// This process's effective user id, from `/proc/self/status` (no unsafe here).
fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

/// Why `meta` (of `path`) may be changed by someone other than us or root.
fn writable_by_others(path: &Path, meta: &std::fs::Metadata, parent: bool) -> Option<String> {
    let (uid, mode) = (meta.uid(), meta.permissions().mode());
    let me = euid();
    if uid != me && uid != 0 {
        return Some(format!("{} is owned by uid {uid}", path.display()));
    }
    if mode & 0o022 != 0 {
        // A parent such as /tmp: writable by all, but with the sticky bit and owned by
        // root nobody can rename or replace what is ours inside it.
        if parent && meta.is_dir() && mode & 0o1000 != 0 && uid == 0 {
            return None;
        }
        return Some(format!(
            "{} is writable by {} (mode {:o})",
            path.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    None
}

/// `dir` and every directory above it: owned by us or root and not writable by others
/// (a sticky root-owned parent such as /tmp is fine).
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(why) = writable_by_others(&dir, &meta, false) {
        return Err(why);
    }
    for parent in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        if let Some(why) = writable_by_others(parent, &meta, true) {
            return Err(why);
        }
    }
    Ok(())
}

/// A plugin file in `dir` that may be read: a regular file (or a link to one inside
/// `dir`), owned by us or root, not writable by others, at most [`MAX_PLUGIN_FILE`]
/// bytes. Returns the file to read.
pub fn check_plugin_file(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    let link = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let target = if link.file_type().is_symlink() {
        let target = path
            .canonicalize()
            .map_err(|e| format!("a symbolic link that does not resolve: {e}"))?;
        let dir = dir.canonicalize().map_err(|e| e.to_string())?;
        if target.parent() != Some(dir.as_path()) {
            return Err(format!(
                "a symbolic link out of the plugin directory (to {})",
                target.display()
            ));
        }
        target
    } else {
        path.to_owned()
    };
    let meta = std::fs::metadata(&target).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if let Some(why) = writable_by_others(&target, &meta, false) {
        return Err(why);
    }
    if meta.len() > MAX_PLUGIN_FILE {
        return Err(format!(
            "{} bytes, more than the {} MiB a plugin may have",
            meta.len(),
            MAX_PLUGIN_FILE >> 20
        ));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twill-trust-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn writable_directories_and_files_and_links_out_are_refused() {
        let dir = scratch("rules");
        assert_eq!(check_dir(&dir), Ok(()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(
            check_dir(&dir)
                .expect_err("0777")
                .contains("writable by everyone")
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");

        let file = dir.join("a.wasm");
        fs::write(&file, b"x").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(check_plugin_file(&dir, &file), Ok(file.clone()));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).expect("chmod");
        assert!(
            check_plugin_file(&dir, &file)
                .expect_err("0664")
                .contains("writable by its group")
        );
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");

        let outside = scratch("outside").join("b.wasm");
        fs::write(&outside, b"x").expect("write");
        std::os::unix::fs::symlink(&outside, dir.join("b.wasm")).expect("link");
        assert!(
            check_plugin_file(&dir, &dir.join("b.wasm"))
                .expect_err("out")
                .contains("symbolic link out of the plugin directory")
        );
        std::os::unix::fs::symlink("a.wasm", dir.join("c.wasm")).expect("link");
        assert_eq!(
            check_plugin_file(&dir, &dir.join("c.wasm")),
            Ok(file.canonicalize().expect("c"))
        );
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(outside.parent().expect("parent"));
    }
}
