//! Loading a component: what it is, read from its type without running any of it
//! ([`ComponentFacts`]), whether this host can run it, and if not, why ([`LoadError`]).
//!
//! The checks, in order, each failing with its own [`LoadError`]:
//! 1. the bytes are a WebAssembly component (not a core module, not something else)
//!    that wasmtime compiles (from the compilation cache when the host has one);
//! 2. every `twill:backend/…` name it imports or exports is of this host's major
//!    version (`0.1.x`);
//! 3. every import is a twill:backend capability this host offers, or WASI (linked as
//!    traps: nothing is granted);
//! 4. it exports `twill:backend/backend`;
//! 5. its imports and exports type-check against this host's bindings;
//! 6. `describe()` answers, in a scratch Store.

use std::time::Instant;

use sha2::Digest;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::bindings::{BackendIndices, DatapathIndices, HeadsIndices, OverlayDatapathBackend};
use crate::state::PluginState;
use crate::{CAPABILITIES, LoadError, Plugin, PluginHost, WIT_VERSION};

/// The WIT package's name, without version.
const PACKAGE: &str = "twill:backend";

/// What a component declares, read from its type: nothing of it has run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentFacts {
    /// The `twill:backend` version it targets (the highest one its imports and exports
    /// name, e.g. `0.1.0`); `None` when it names no `twill:backend` interface.
    pub wit_version: Option<String>,
    /// The twill:backend interfaces it imports (its capability request), without
    /// package or version, sorted; `types` is left out (it carries no functions).
    pub capabilities: Vec<String>,
    /// Every import, full names (WASI ones are linked as traps).
    pub imports: Vec<String>,
    /// Every interface it exports, full names.
    pub exports: Vec<String>,
    /// Whether it exports `twill:backend/backend` (of any version).
    pub exports_backend: bool,
    /// Whether it exports `twill:backend/datapath` (of any version): a data-path backend.
    pub exports_datapath: bool,
    /// Whether it also exports `twill:backend/datapath-heads`: the host may hand it
    /// packet heads instead of whole packets.
    pub exports_heads: bool,
}

/// Everything known about one component: its digest, what it declares, and whether
/// this host loads it.
#[derive(Debug)]
pub struct Inspection {
    /// Where it came from (a file path, `built-in:<dir>`).
    pub source: String,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: usize,
    /// What it declares; `None` when the bytes are not a component wasmtime compiles.
    pub facts: Option<ComponentFacts>,
    /// The loaded plugin, or why this host cannot load it.
    pub result: Result<Plugin, LoadError>,
}

/// A `twill:backend/<iface>@<version>` name split up; `None` for other packages.
fn parse_name(name: &str) -> Option<(&str, Option<&str>)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    Some(match rest.split_once('@') {
        Some((iface, version)) => (iface, Some(version)),
        None => (rest, None),
    })
}

/// The part of a version that must match for compatibility: `0.2` for `0.2.1` (in 0.x
/// the minor version is the breaking one), `1` for `1.4.0`.
pub(crate) fn major_label(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_owned(),
        (None, _) => version.to_owned(),
    }
}

/// Whether `version` is this host's major version (`0.1`, `0.1.x`).
fn speaks(version: &str) -> bool {
    major_label(version) == major_label(WIT_VERSION)
}

/// Compare versions by their numeric components (`0.1.10` > `0.1.9`).
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(['.', '-', '+'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why the bytes cannot be a component, judged from the preamble alone.
fn preamble_problem(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Some("not a WebAssembly file (no \\0asm header)");
    }
    // Bytes 4..8: version 1 and layer 0 for a core module; layer 1 for a component.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Some(
            "a core WebAssembly module, not a component (build the plugin for \
             wasm32-wasip2, which links a component)",
        );
    }
    None
}

impl PluginHost {
    /// Compile `bytes` (or fetch them from the cache), read what the component declares
    /// and try to load it: every check of [`PluginHost::load`], keeping what was
    /// learned on the way.
    pub fn inspect(&self, source: &str, bytes: &[u8]) -> Inspection {
        let started = Instant::now();
        let sha256 = hex_sha256(bytes);
        let not_compiled = |message: String| Inspection {
            source: source.to_owned(),
            sha256: sha256.clone(),
            size: bytes.len(),
            facts: None,
            result: Err(LoadError::Compile {
                source_name: source.to_owned(),
                message,
            }),
        };
        if let Some(problem) = preamble_problem(bytes) {
            return not_compiled(problem.to_owned());
        }
        let hits_before = self.cache_hits();
        let component = match Component::new(&self.engine, bytes) {
            Ok(c) => c,
            Err(e) => return not_compiled(format!("{e:#}")),
        };
        let from_cache = self.cache_hits() > hits_before;
        let facts = self.facts(&component);
        let result = self
            .check(source, &facts)
            .and_then(|()| self.finish(source, &component, &facts))
            .map(|(info, pre, backend, datapath)| Plugin {
                name: info.name,
                version: info.version,
                config_hint: info.config_hint,
                source: source.to_owned(),
                capabilities: facts.capabilities.clone(),
                wit_version: facts.wit_version.clone().unwrap_or_default(),
                sha256: sha256.clone(),
                load_time: started.elapsed(),
                from_cache,
                pre,
                backend,
                datapath,
            });
        Inspection {
            source: source.to_owned(),
            sha256,
            size: bytes.len(),
            facts: Some(facts),
            result,
        }
    }

    /// What the component imports and exports.
    fn facts(&self, component: &Component) -> ComponentFacts {
        let ty = component.component_type();
        let mut facts = ComponentFacts::default();
        let mut versions = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            if let Some((iface, version)) = parse_name(name) {
                versions.extend(version.map(str::to_owned));
                if iface != "types" && !facts.capabilities.iter().any(|c| c == iface) {
                    facts.capabilities.push(iface.to_owned());
                }
            }
            facts.imports.push(name.to_owned());
        }
        for (name, _) in ty.exports(&self.engine) {
            if let Some((iface, version)) = parse_name(name) {
                versions.extend(version.map(str::to_owned));
                facts.exports_backend |= iface == "backend";
                facts.exports_datapath |= iface == "datapath";
                facts.exports_heads |= iface == "datapath-heads";
            }
            facts.exports.push(name.to_owned());
        }
        facts.capabilities.sort();
        facts.wit_version = versions.into_iter().max_by_key(|v| version_key(v));
        facts
    }

    /// The checks that need only the component's type: its WIT version, its imports,
    /// its `backend` export.
    fn check(&self, source: &str, facts: &ComponentFacts) -> Result<(), LoadError> {
        // A twill:backend name of another major version, or without a version: the
        // component was built against another contract.
        for name in facts.imports.iter().chain(&facts.exports) {
            if let Some((_, version)) = parse_name(name)
                && !version.is_some_and(speaks)
            {
                return Err(LoadError::WitVersion {
                    source_name: source.to_owned(),
                    found: version.map(major_label),
                });
            }
        }
        for name in &facts.imports {
            match parse_name(name) {
                Some((iface, _)) if iface == "types" || CAPABILITIES.contains(&iface) => {}
                Some(_) => {
                    return Err(LoadError::UnknownCapability {
                        source_name: source.to_owned(),
                        import: name.clone(),
                    });
                }
                None if name.starts_with("wasi:") => {}
                None => {
                    return Err(LoadError::UnknownImport {
                        source_name: source.to_owned(),
                        import: name.clone(),
                    });
                }
            }
        }
        if !facts.exports_backend {
            return Err(LoadError::NoBackend {
                source_name: source.to_owned(),
                exports: facts.exports.clone(),
            });
        }
        Ok(())
    }

    /// Link, type-check and ask the component who it is.
    #[allow(
        clippy::type_complexity,
        reason = "what linking yields, used once by the caller: info, pre-instance, export indices"
    )]
    fn finish(
        &self,
        source: &str,
        component: &Component,
        facts: &ComponentFacts,
    ) -> Result<
        (
            crate::bindings::Info,
            wasmtime::component::InstancePre<PluginState>,
            BackendIndices,
            Option<(DatapathIndices, Option<HeadsIndices>)>,
        ),
        LoadError,
    > {
        let mut linker = Linker::<PluginState>::new(&self.engine);
        OverlayDatapathBackend::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| LoadError::engine("link the host interfaces", e))?;
        // Rust's std on wasm32-wasip2 imports WASI interfaces it never calls in a
        // backend; none is granted: each traps if called.
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(|e| LoadError::engine("define the unknown imports as traps", e))?;
        let incompatible = |e: wasmtime::Error| LoadError::Incompatible {
            source_name: source.to_owned(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(component).map_err(incompatible)?;
        let backend = BackendIndices::new(&pre).map_err(incompatible)?;
        // A component that exports `datapath` is a data-path backend (udp); one whose
        // `datapath` does not fit the bindings is refused rather than run without it.
        let datapath = if facts.exports_datapath {
            let heads = if facts.exports_heads {
                Some(HeadsIndices::new(&pre).map_err(incompatible)?)
            } else {
                None
            };
            Some((DatapathIndices::new(&pre).map_err(incompatible)?, heads))
        } else {
            None
        };
        let info = self
            .describe(&pre, &backend)
            .map_err(|message| LoadError::Describe {
                source_name: source.to_owned(),
                message,
            })?;
        Ok((info, pre, backend, datapath))
    }

    /// Compilation cache hits so far (0 without a cache).
    fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, wasmtime::Cache::cache_hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_their_breaking_part() {
        assert_eq!(major_label("0.1.0"), "0.1");
        assert_eq!(major_label("0.2.3"), "0.2");
        assert_eq!(major_label("1.4.0"), "1");
        assert!(speaks("0.1.0") && speaks("0.1.7") && speaks("0.1"));
        assert!(!speaks("0.2.0") && !speaks("1.0.0") && !speaks("0.10.0"));
    }

    #[test]
    fn names_of_the_package_are_split() {
        assert_eq!(
            parse_name("twill:backend/links@0.1.0"),
            Some(("links", Some("0.1.0")))
        );
        assert_eq!(parse_name("twill:backend/links"), Some(("links", None)));
        assert_eq!(parse_name("twill:backends/links@0.1.0"), None);
        assert_eq!(parse_name("wasi:cli/stdin@0.2.6"), None);
    }

    #[test]
    fn the_preamble_tells_junk_and_core_modules_apart() {
        assert!(preamble_problem(b"hello").is_some_and(|p| p.contains("not a WebAssembly")));
        assert!(preamble_problem(b"\0asm\x01\0\0\0").is_some_and(|p| p.contains("core")));
        assert_eq!(preamble_problem(b"\0asm\x0d\0\x01\0"), None);
    }
}
