//! The plugin catalog (`twill run --plugin-dir`) with real components: the built-ins,
//! a copy of the built-in vxlan in the directory (it overrides the built-in), and one
//! file of each kind the loader refuses — junk, a core module, a component built
//! against `twill:backend@0.2.0` (`tests/plugins/wit-v2`, built here with cargo), one
//! that exports no backend, one importing a capability this host does not offer and
//! one importing a non-WASI interface — each skipped with its reason, none stopping
//! the rest.
//!
//! Needs cargo and the `wasm32-wasip2` target (for the 0.2 plugin); no root, no
//! kernel state.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use twill_e2e::{build_plugin_crate, test_plugin_dir};
use twill_net::fake::FakeKernel;
use twill_plugin_host::catalog::{Catalog, DirState, FileOutcome, ResolveError};
use twill_plugin_host::{Limits, LoadError, PluginHost};
use wasm_encoder::{
    Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType, Module,
};

fn builtin(dir: &str) -> &'static [u8] {
    twill_builtin::component(dir).unwrap_or_else(|| panic!("no built-in {dir}"))
}

/// The `twill:backend@0.2.0` test plugin, built once per test process.
fn wit_v2_component() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_plugin_crate(&test_plugin_dir("wit-v2")))
}

/// A component importing one (empty) instance named `import`, exporting nothing.
fn component_importing(import: &str) -> Vec<u8> {
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    let mut imports = ComponentImportSection::new();
    imports.import(import, ComponentTypeRef::Instance(0));
    let mut component = Component::new();
    component.section(&types).section(&imports);
    component.finish()
}

/// A fresh scratch directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "twill-catalog-{name}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    ));
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn host() -> PluginHost {
    PluginHost::new(Arc::new(FakeKernel::new()), Limits::default()).expect("engine")
}

/// The skip reason the catalog recorded for `file`.
fn skipped<'a>(catalog: &'a Catalog, file: &str) -> &'a LoadError {
    let entry = catalog
        .files
        .iter()
        .find(|f| f.path.file_name().is_some_and(|n| n == file))
        .unwrap_or_else(|| panic!("{file} not in the catalog"));
    match &entry.outcome {
        FileOutcome::Skipped(e) => e,
        other => panic!("{file} was not skipped: {other:?}"),
    }
}

#[test]
fn a_plugin_directory_overrides_a_built_in_and_skips_every_bad_file_with_its_reason() {
    let dir = scratch("mixed");
    fs::write(dir.join("vxlan.wasm"), builtin("vxlan")).expect("write");
    fs::write(dir.join("zz-vxlan-again.wasm"), builtin("vxlan")).expect("write");
    fs::write(dir.join("junk.wasm"), b"this is not WebAssembly").expect("write");
    fs::write(dir.join("core.wasm"), Module::new().finish()).expect("write");
    fs::copy(wit_v2_component(), dir.join("v2.wasm")).expect("copy");
    fs::write(dir.join("empty.wasm"), Component::new().finish()).expect("write");
    fs::write(
        dir.join("teleport.wasm"),
        component_importing("twill:backend/teleport@0.1.0"),
    )
    .expect("write");
    fs::write(
        dir.join("spy.wasm"),
        component_importing("acme:spy/keylogger@1.0.0"),
    )
    .expect("write");
    fs::write(dir.join("README.txt"), "not a plugin: ignored").expect("write");

    let host = host();
    let catalog = Catalog::scan(&host, twill_builtin::BUILTIN, Some(&dir));
    assert_eq!(catalog.dir, DirState::Read(dir.clone()));
    let names: Vec<String> = catalog
        .files
        .iter()
        .map(|f| f.path.file_name().expect("name").to_string_lossy().into())
        .collect();
    assert_eq!(
        names,
        [
            "core.wasm",
            "empty.wasm",
            "junk.wasm",
            "spy.wasm",
            "teleport.wasm",
            "v2.wasm",
            "vxlan.wasm",
            "zz-vxlan-again.wasm"
        ],
        "every *.wasm file, in name order, and nothing else"
    );

    // The override.
    let vxlan_path = dir.join("vxlan.wasm");
    let entry = catalog
        .files
        .iter()
        .find(|f| f.path == vxlan_path)
        .expect("vxlan.wasm");
    match &entry.outcome {
        FileOutcome::Loaded { plugin, overrides } => {
            assert_eq!(plugin.name, "vxlan");
            assert_eq!(overrides.as_deref(), Some("vxlan"));
        }
        other => panic!("vxlan.wasm did not load: {other:?}"),
    }
    assert_eq!(
        entry.describe(),
        format!(
            "plugin file {} (vxlan 0.1.0) overrides the built-in vxlan",
            vxlan_path.display()
        )
    );
    assert_eq!(catalog.overridden_by("vxlan"), Some(vxlan_path.as_path()));
    let plugin = catalog.resolve(&host, "vxlan").expect("vxlan resolves");
    assert_eq!(plugin.source, vxlan_path.display().to_string());
    assert_eq!(plugin.wit_version, "0.1.0");
    let host_gw = catalog.resolve(&host, "host-gw").expect("host-gw resolves");
    assert_eq!(
        host_gw.source, "built-in:host-gw",
        "not overridden: the built-in"
    );

    // A second file with the same name: the first in name order wins.
    let again = catalog
        .files
        .iter()
        .find(|f| f.path.ends_with("zz-vxlan-again.wasm"))
        .expect("zz-vxlan-again.wasm");
    assert!(
        matches!(&again.outcome, FileOutcome::Duplicate { name, first, .. }
            if name == "vxlan" && *first == vxlan_path),
        "{:?}",
        again.outcome
    );

    // Each refusal, with its reason.
    let junk = skipped(&catalog, "junk.wasm");
    assert!(matches!(junk, LoadError::Compile { .. }), "{junk:?}");
    assert_eq!(
        junk.to_string(),
        format!(
            "{}: not a loadable WebAssembly component: not a WebAssembly file (no \\0asm header)",
            dir.join("junk.wasm").display()
        )
    );
    let core = skipped(&catalog, "core.wasm");
    assert!(
        core.reason()
            .contains("a core WebAssembly module, not a component"),
        "{core}"
    );
    let v2 = skipped(&catalog, "v2.wasm");
    assert!(matches!(v2, LoadError::WitVersion { .. }), "{v2:?}");
    assert_eq!(
        v2.to_string(),
        format!(
            "{}: targets twill:backend 0.2; this host speaks 0.1",
            dir.join("v2.wasm").display()
        )
    );
    let v2_entry = catalog
        .files
        .iter()
        .find(|f| f.path.ends_with("v2.wasm"))
        .expect("v2");
    assert_eq!(v2_entry.wit_version.as_deref(), Some("0.2.0"));
    let empty = skipped(&catalog, "empty.wasm");
    assert!(matches!(empty, LoadError::NoBackend { .. }), "{empty:?}");
    assert!(
        empty
            .reason()
            .starts_with("does not export twill:backend/backend@0.1.x"),
        "{empty}"
    );
    let teleport = skipped(&catalog, "teleport.wasm");
    assert!(
        matches!(teleport, LoadError::UnknownCapability { .. }),
        "{teleport:?}"
    );
    assert!(
        teleport.reason().starts_with(
            "imports twill:backend/teleport@0.1.0, a capability this host does not offer"
        ),
        "{teleport}"
    );
    let spy = skipped(&catalog, "spy.wasm");
    assert_eq!(
        spy.reason(),
        "imports acme:spy/keylogger@1.0.0, which this host does not offer"
    );

    // Only a type nobody provides fails, naming what there is.
    let err = catalog.resolve(&host, "nope").expect_err("unknown");
    assert!(matches!(err, ResolveError::Unknown { .. }));
    let mut expected: Vec<&str> = twill_builtin::BUILTIN.iter().map(|(d, _)| *d).collect();
    expected.sort();
    assert_eq!(
        err.to_string(),
        format!(
            "unknown backend type \"nope\" in Backend.Type (available: {})",
            expected.join(", ")
        )
    );
    fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_missing_plugin_directory_means_the_built_ins_only() {
    let scratch_dir = scratch("missing");
    let dir = scratch_dir.join("not-there");
    let host = host();
    let catalog = Catalog::scan(&host, twill_builtin::BUILTIN, Some(&dir));
    // Removed before the checks, so a failure leaves nothing behind either.
    let _ = fs::remove_dir_all(&scratch_dir);
    assert_eq!(catalog.dir, DirState::Missing(dir));
    assert!(catalog.files.is_empty());
    let plugin = catalog.resolve(&host, "vxlan").expect("built-in vxlan");
    assert_eq!(plugin.source, "built-in:vxlan");
}

#[test]
fn the_wit_v2_component_is_refused_by_load_with_its_version() {
    let bytes = fs::read(wit_v2_component()).expect("read");
    let host = host();
    let inspection = host.inspect("v2.wasm", &bytes);
    let facts = inspection.facts.expect("a component");
    assert_eq!(facts.wit_version.as_deref(), Some("0.2.0"));
    assert!(facts.exports_backend && !facts.exports_datapath);
    let err = inspection.result.expect_err("0.2 is not loadable");
    assert_eq!(
        err.to_string(),
        "v2.wasm: targets twill:backend 0.2; this host speaks 0.1"
    );
}

/// Security review M-3: what could be changed by another user is not loaded — a plugin
/// directory writable by everyone, a plugin file writable by its group, a symbolic link
/// to a file outside the directory — and a cache directory writable by others is not
/// used (its entries would run as native code).
#[test]
fn files_and_directories_others_could_change_are_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
    let dir = scratch("trust");
    mode(&dir, 0o755);
    fs::write(dir.join("good.wasm"), builtin("vxlan")).expect("write");
    mode(&dir.join("good.wasm"), 0o644);
    fs::write(dir.join("group.wasm"), builtin("host-gw")).expect("write");
    mode(&dir.join("group.wasm"), 0o664);
    let elsewhere = scratch("trust-elsewhere");
    fs::write(elsewhere.join("x.wasm"), builtin("udp")).expect("write");
    std::os::unix::fs::symlink(elsewhere.join("x.wasm"), dir.join("link.wasm")).expect("link");

    let catalog = Catalog::scan(&host(), twill_builtin::BUILTIN, Some(&dir));
    assert!(
        matches!(catalog.dir, DirState::Read(_)),
        "{:?}",
        catalog.dir
    );
    assert!(
        skipped(&catalog, "group.wasm")
            .to_string()
            .contains("writable by its group")
    );
    assert!(
        skipped(&catalog, "link.wasm")
            .to_string()
            .contains("symbolic link out of the plugin directory")
    );
    assert!(matches!(
        catalog
            .files
            .iter()
            .find(|f| f.path.ends_with("good.wasm"))
            .map(|f| &f.outcome),
        Some(FileOutcome::Loaded { .. })
    ));

    mode(&dir, 0o777);
    let catalog = Catalog::scan(&host(), twill_builtin::BUILTIN, Some(&dir));
    match &catalog.dir {
        DirState::Untrusted { reason, .. } => {
            assert!(reason.contains("writable by everyone"), "{reason}")
        }
        other => panic!("a 0777 directory was read: {other:?}"),
    }
    assert!(catalog.files.is_empty());

    // A cache directory others can write is not used: nothing is read from it or
    // written to it.
    let cache = scratch("trust-cache");
    mode(&cache, 0o777);
    let host = PluginHost::with_cache(Arc::new(FakeKernel::new()), Limits::default(), Some(&cache))
        .expect("engine");
    assert_eq!(host.cache_dir(), None, "the cache is off");
    let plugin = host.load("built-in:vxlan", builtin("vxlan")).expect("load");
    assert!(!plugin.from_cache);
    assert_eq!(
        fs::read_dir(&cache).expect("cache dir").count(),
        0,
        "nothing written"
    );
    for d in [dir, elsewhere, cache] {
        let _ = fs::remove_dir_all(d);
    }
}
