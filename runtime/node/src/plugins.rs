//! The backend's plugin as the daemon finds it: the catalog `Backend.Type` is resolved
//! in (the built-ins and `--plugin-dir`, with a log line per file), and the plugin
//! directory's fingerprint that triggers a hot reload. The rules themselves are
//! `twill_plugin_host::catalog`'s.

use std::path::Path;

use twill_plugin_host::catalog::{Catalog, DirState, FileOutcome, builtin_source};
use twill_plugin_host::{Plugin, PluginHost};

/// The plugin implementing `kind`: read the plugin directory (logging what became of
/// it and of each file), then take the directory's plugin of that name, else the
/// built-in.
pub fn resolve(host: &PluginHost, dir: Option<&Path>, kind: &str) -> anyhow::Result<Plugin> {
    let catalog = Catalog::scan(host, twill_builtin::BUILTIN, dir);
    log_catalog(&catalog);
    Ok(catalog.resolve(host, kind)?)
}

/// The plugin a reload swaps in for `running`, resolved as [`resolve`] does, except
/// that a running plugin's file that is still there but no longer provides `kind`
/// (it is broken, built for another WIT version, or names another backend) is an
/// error: the reload then keeps the running plugin instead of falling back to the
/// built-in. A file that was removed does fall back.
pub fn resolve_replacement(
    host: &PluginHost,
    dir: Option<&Path>,
    kind: &str,
    running: &Plugin,
) -> anyhow::Result<Plugin> {
    let catalog = Catalog::scan(host, twill_builtin::BUILTIN, dir);
    log_catalog(&catalog);
    let running_file = catalog
        .files
        .iter()
        .find(|f| f.path.display().to_string() == running.source);
    if let Some(file) = running_file {
        match &file.outcome {
            FileOutcome::Loaded { plugin, .. } if plugin.name == kind => {}
            FileOutcome::Loaded { plugin, .. } => anyhow::bail!(
                "{} now provides backend {}, not {kind}",
                file.path.display(),
                plugin.name
            ),
            FileOutcome::Skipped(_) | FileOutcome::Duplicate { .. } => {
                anyhow::bail!("{}", file.describe())
            }
        }
    }
    Ok(catalog.resolve(host, kind)?)
}

/// What a plugin file looked like: path, size, modification time.
pub type FileStamp = (std::path::PathBuf, u64, Option<std::time::SystemTime>);

/// The `*.wasm` files of the plugin directory as they are now, sorted; empty without
/// a directory. A change (a file replaced, added or removed) triggers a reload.
pub fn dir_fingerprint(dir: Option<&Path>) -> Vec<FileStamp> {
    let Some(dir) = dir else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stamps: Vec<FileStamp> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect();
    stamps.sort();
    stamps
}

/// One log line for the directory and one per file.
fn log_catalog(catalog: &Catalog) {
    match &catalog.dir {
        DirState::None => tracing::info!("no plugin directory; using the built-in plugins only"),
        DirState::Missing(dir) => tracing::info!(
            "plugin directory {} does not exist; using the built-in plugins only",
            dir.display()
        ),
        DirState::Unreadable { dir, reason } => tracing::warn!(
            "cannot read plugin directory {}: {reason}; using the built-in plugins only",
            dir.display()
        ),
        DirState::Untrusted { dir, reason } => tracing::warn!(
            "plugin directory {} is not trusted ({reason}): it could run code as root; \
             not reading it, using the built-in plugins only",
            dir.display()
        ),
        DirState::Read(dir) => tracing::info!(
            files = catalog.files.len(),
            "read plugin directory {}",
            dir.display()
        ),
    }
    for file in &catalog.files {
        match &file.outcome {
            FileOutcome::Loaded {
                plugin,
                overrides: Some(builtin),
            } => tracing::info!(
                file = %file.path.display(), name = %plugin.name,
                replaces = %builtin_source(builtin), "{}", file.describe()
            ),
            FileOutcome::Loaded { plugin, .. } => tracing::info!(
                file = %file.path.display(), name = %plugin.name, "{}", file.describe()
            ),
            FileOutcome::Skipped(_) | FileOutcome::Duplicate { .. } => {
                tracing::warn!("{}", file.describe())
            }
        }
    }
}
