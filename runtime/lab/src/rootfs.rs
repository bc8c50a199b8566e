//! The root filesystem of the lab's containers: Debian's static busybox and a link per
//! applet the tests use (no image registry is reachable here).

use std::fs;
use std::path::Path;

use crate::{Error, Result};

/// The busybox applets linked in `bin/`.
const APPLETS: [&str; 8] = ["sh", "ping", "sleep", "ip", "cat", "hostname", "wget", "nc"];

/// Make `root` a busybox root filesystem (`bin/busybox` and its applets); idempotent.
pub fn busybox(root: &Path) -> Result<()> {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).map_err(|e| Error::io(format!("create {}", bin.display()), e))?;
    fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| Error::io("copy /bin/busybox (Debian package busybox-static)", e))?;
    for applet in APPLETS {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(|e| Error::io(format!("link {}", link.display()), e))?;
        }
    }
    Ok(())
}
