//! subnet.env on disk: read back for the previous subnet, written atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use twill_core::Subnet;
use twill_core::subnet_env::{SubnetEnv, previous_subnet};

/// The subnet recorded by the previous run, if the file exists and has one.
pub fn read_previous(path: &Path) -> Option<Subnet> {
    let text = fs::read_to_string(path).ok()?;
    previous_subnet(&text)
}

/// Write the file atomically (temporary file in the same directory, fsync, rename), mode 0644.
pub fn write(path: &Path, env: &SubnetEnv) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("create directory {}", dir.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("subnet.env");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(env.render().as_bytes())?;
        f.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("write subnet file {}", path.display()))
}
