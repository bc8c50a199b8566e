//! The backends a node can run: the built-in components embedded in the binary, and
//! the components in a plugin directory (`twill run --plugin-dir`).
//!
//! Rules:
//! - Every `*.wasm` file directly in the directory (sorted by file name) is loaded
//!   ([`PluginHost::load`]); one that loads is registered under the name its
//!   `describe()` declares.
//! - A directory plugin named like a built-in overrides it.
//! - A file that does not load is skipped with its [`LoadError`]; a second file that
//!   declares a name an earlier file already registered is skipped too. Neither stops
//!   anything: only [`Catalog::resolve`] of a type nobody provides fails.
//! - A missing directory is no error: the built-ins only.
//!
//! A built-in is known by the name of its directory under `plugins/`, which is the
//! name it declares; built-ins are compiled only when asked for.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{LoadError, Plugin, PluginHost};

/// The built-in components: (directory name = backend name, component bytes).
pub type Builtins = &'static [(&'static str, &'static [u8])];

/// What became of the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// None was configured.
    None,
    /// It does not exist: built-ins only.
    Missing(PathBuf),
    /// It exists but could not be listed: built-ins only.
    Unreadable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// It may be changed by others than us or root: not read, built-ins only.
    Untrusted {
        /// The directory.
        dir: PathBuf,
        /// Who could change what.
        reason: String,
    },
    /// It was read.
    Read(PathBuf),
}

/// What became of one file of the plugin directory.
#[derive(Debug)]
pub enum FileOutcome {
    /// It loaded and is registered under `plugin.name`.
    Loaded {
        /// The plugin.
        plugin: Box<Plugin>,
        /// The built-in it overrides (its name), if it is named like one.
        overrides: Option<String>,
    },
    /// It cannot be loaded.
    Skipped(LoadError),
    /// It loaded, but an earlier file already registered its name.
    Duplicate {
        /// The name both declare.
        name: String,
        /// Its version.
        version: String,
        /// The file that registered it first.
        first: PathBuf,
    },
}

/// One file of the plugin directory.
#[derive(Debug)]
pub struct FileEntry {
    /// The file.
    pub path: PathBuf,
    /// The `twill:backend` version it targets, when that could be read.
    pub wit_version: Option<String>,
    /// What became of it.
    pub outcome: FileOutcome,
}

impl FileEntry {
    /// One line saying what became of the file, as the daemon logs it.
    pub fn describe(&self) -> String {
        let file = self.path.display();
        match &self.outcome {
            FileOutcome::Loaded {
                plugin,
                overrides: Some(builtin),
            } => format!(
                "plugin file {file} ({} {}) overrides the built-in {builtin}",
                plugin.name, plugin.version
            ),
            FileOutcome::Loaded { plugin, .. } => format!(
                "plugin file {file} provides backend {} {}",
                plugin.name, plugin.version
            ),
            FileOutcome::Skipped(e) => format!("skipping plugin file {file}: {}", e.reason()),
            FileOutcome::Duplicate { name, first, .. } => format!(
                "skipping plugin file {file}: it declares the name {name}, which {} \
                 (earlier in file name order) already provides",
                first.display()
            ),
        }
    }
}

/// Why [`Catalog::resolve`] found no plugin.
#[derive(Debug)]
pub enum ResolveError {
    /// Nothing implements the type; `available` lists what does exist.
    Unknown {
        /// The configured `Backend.Type`.
        kind: String,
        /// The names of every plugin available, sorted.
        available: Vec<String>,
    },
    /// A built-in failed to load (a build defect).
    Builtin(LoadError),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Unknown { kind, available } => write!(
                f,
                "unknown backend type {kind:?} in Backend.Type (available: {})",
                available.join(", ")
            ),
            // A built-in's error names its source; it is chained, not repeated.
            ResolveError::Builtin(_) => f.write_str("load a built-in plugin"),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Builtin(e) => Some(e),
            ResolveError::Unknown { .. } => None,
        }
    }
}

/// The built-ins and what the plugin directory holds.
#[derive(Debug)]
pub struct Catalog {
    /// What became of the directory.
    pub dir: DirState,
    /// Its `*.wasm` files, in file name order.
    pub files: Vec<FileEntry>,
    builtins: Builtins,
}

/// The source string of a built-in, as plugins and the API show it.
pub fn builtin_source(dir: &str) -> String {
    format!("built-in:{dir}")
}

impl Catalog {
    /// Read `dir` (if given) and load every `*.wasm` file in it with `host`.
    pub fn scan(host: &PluginHost, builtins: Builtins, dir: Option<&Path>) -> Catalog {
        let mut catalog = Catalog {
            dir: DirState::None,
            files: Vec::new(),
            builtins,
        };
        let Some(dir) = dir else {
            return catalog;
        };
        if dir.exists()
            && let Err(reason) = crate::trust::check_dir(dir)
        {
            catalog.dir = DirState::Untrusted {
                dir: dir.to_owned(),
                reason,
            };
            return catalog;
        }
        let paths = match list_wasm_files(dir) {
            Ok(paths) => paths,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                catalog.dir = DirState::Missing(dir.to_owned());
                return catalog;
            }
            Err(e) => {
                catalog.dir = DirState::Unreadable {
                    dir: dir.to_owned(),
                    reason: e.to_string(),
                };
                return catalog;
            }
        };
        catalog.dir = DirState::Read(dir.to_owned());
        for path in paths {
            let entry = catalog.load_file(host, path);
            catalog.files.push(entry);
        }
        catalog
    }

    fn load_file(&self, host: &PluginHost, path: PathBuf) -> FileEntry {
        let source = path.display().to_string();
        let dir = path.parent().unwrap_or(Path::new("."));
        let readable = crate::trust::check_plugin_file(dir, &path).map_err(|why| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("not trusted: {why}"),
            )
        });
        let bytes = match readable.and_then(std::fs::read) {
            Ok(bytes) => bytes,
            Err(e) => {
                return FileEntry {
                    path,
                    wit_version: None,
                    outcome: FileOutcome::Skipped(LoadError::Compile {
                        source_name: source,
                        message: format!("cannot read it: {e}"),
                    }),
                };
            }
        };
        let inspection = host.inspect(&source, &bytes);
        let wit_version = inspection.facts.and_then(|f| f.wit_version);
        let outcome = match inspection.result {
            Err(e) => FileOutcome::Skipped(e),
            Ok(plugin) => match self.directory_entry(&plugin.name) {
                Some(first) => FileOutcome::Duplicate {
                    name: plugin.name,
                    version: plugin.version,
                    first: first.path.clone(),
                },
                None => FileOutcome::Loaded {
                    overrides: self
                        .builtins
                        .iter()
                        .any(|(dir, _)| *dir == plugin.name)
                        .then(|| plugin.name.clone()),
                    plugin: Box::new(plugin),
                },
            },
        };
        FileEntry {
            path,
            wit_version,
            outcome,
        }
    }

    /// The directory file that registered `name`.
    fn directory_entry(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(
            |f| matches!(&f.outcome, FileOutcome::Loaded { plugin, .. } if plugin.name == name),
        )
    }

    /// The directory plugin registered under `name`.
    pub fn directory_plugin(&self, name: &str) -> Option<&Plugin> {
        self.directory_plugins().find(|p| p.name == name)
    }

    /// Every plugin the directory registered, in file name order.
    pub fn directory_plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.files.iter().filter_map(|f| match &f.outcome {
            FileOutcome::Loaded { plugin, .. } => Some(plugin.as_ref()),
            _ => None,
        })
    }

    /// The built-ins.
    pub fn builtins(&self) -> Builtins {
        self.builtins
    }

    /// The directory file that overrides built-in `name`, if any.
    pub fn overridden_by(&self, name: &str) -> Option<&Path> {
        self.directory_entry(name).map(|f| f.path.as_path())
    }

    /// Compile built-in `dir` with `host`.
    pub fn load_builtin(&self, host: &PluginHost, dir: &str) -> Option<Result<Plugin, LoadError>> {
        let (dir, bytes) = self.builtins.iter().find(|(d, _)| *d == dir)?;
        Some(host.load(&builtin_source(dir), bytes))
    }

    /// The plugin implementing `kind`: the directory's, else the built-in. When nothing
    /// implements it, every built-in is loaded to name it in the error.
    pub fn resolve(&self, host: &PluginHost, kind: &str) -> Result<Plugin, ResolveError> {
        if let Some(plugin) = self.directory_plugin(kind) {
            return Ok(plugin.clone());
        }
        if let Some(loaded) = self.load_builtin(host, kind) {
            let plugin = loaded.map_err(ResolveError::Builtin)?;
            if plugin.name == kind {
                return Ok(plugin);
            }
        }
        let mut available: Vec<String> = self.directory_plugins().map(|p| p.name.clone()).collect();
        for (dir, bytes) in self.builtins {
            let plugin = host
                .load(&builtin_source(dir), bytes)
                .map_err(ResolveError::Builtin)?;
            if plugin.name == kind {
                return Ok(plugin);
            }
            available.push(plugin.name);
        }
        available.sort();
        available.dedup();
        Err(ResolveError::Unknown {
            kind: kind.to_owned(),
            available,
        })
    }
}

/// The `*.wasm` entries directly in `dir` (files and symbolic links; each is checked
/// when it is read), sorted.
fn list_wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let is_wasm = path.extension().is_some_and(|e| e == "wasm");
        let kind = entry.file_type()?;
        if is_wasm && (kind.is_file() || kind.is_symlink()) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}
