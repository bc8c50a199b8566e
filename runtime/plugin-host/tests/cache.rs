//! The compilation cache: a second host on the same cache directory reads the compiled
//! built-in back instead of compiling it again; a directory that cannot be used is no
//! failure (the host compiles without a cache); other bytes and a corrupt entry are
//! compiled again.

use std::path::PathBuf;
use std::sync::Arc;

use twill_net::fake::FakeKernel;
use twill_plugin_host::{Limits, PluginHost};

fn vxlan() -> &'static [u8] {
    twill_builtin::BUILTIN
        .iter()
        .find(|(d, _)| *d == "vxlan")
        .map(|(_, b)| *b)
        .expect("built-in vxlan")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "twill-cache-test-{name}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Remove a scratch directory. wasmtime's cache worker writes its statistics files on a
/// thread of its own after a load returns, so a removal can meet a file written
/// meanwhile ("directory not empty"): try again for a while before failing.
fn clean_up(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("clean up {}: {e}; again", dir.display());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("clean up {}: {e}", dir.display()),
        }
    }
}

fn host(cache: Option<&std::path::Path>) -> PluginHost {
    PluginHost::with_cache(Arc::new(FakeKernel::new()), Limits::default(), cache).expect("engine")
}

#[test]
fn a_second_host_reads_the_compiled_plugin_from_the_cache() {
    let dir = scratch("hit");
    let cache = dir.join("cache");
    let first = host(Some(&cache));
    assert_eq!(
        first.cache_dir(),
        Some(cache.canonicalize().expect("created").as_path())
    );
    let compiled = first.load("built-in:vxlan", vxlan()).expect("loads");
    assert!(!compiled.from_cache, "nothing cached yet");
    drop(first);

    let second = host(Some(&cache));
    let cached = second.load("built-in:vxlan", vxlan()).expect("loads");
    assert!(cached.from_cache, "compiled code read back from the cache");
    assert_eq!(cached.name, "vxlan");
    assert_eq!(cached.sha256, compiled.sha256);

    let uncached = host(None).load("built-in:vxlan", vxlan()).expect("loads");
    assert!(!uncached.from_cache);
    clean_up(&dir);
}

#[test]
fn an_unusable_cache_directory_is_no_failure() {
    let dir = scratch("unusable");
    let file = dir.join("a-file");
    std::fs::write(&file, b"").expect("write");
    // A directory below a regular file can be neither created nor written, even by root.
    let host = host(Some(&file.join("cache")));
    assert_eq!(host.cache_dir(), None);
    let plugin = host.load("built-in:vxlan", vxlan()).expect("loads");
    assert!(!plugin.from_cache);
    clean_up(&dir);
}

/// Every regular file below `dir`.
fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read cache dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Other bytes (a custom section appended), so another cache key: the cached code of
/// the first is not used for it.
#[test]
fn changed_bytes_are_compiled_again_not_read_from_the_cache() {
    let dir = scratch("invalidate");
    let cache = dir.join("cache");
    host(Some(&cache))
        .load("built-in:vxlan", vxlan())
        .expect("loads");
    let mut changed = vxlan().to_vec();
    let name = b"twill-cache-test";
    changed.extend_from_slice(&[0, (1 + name.len() + 2) as u8, name.len() as u8]);
    changed.extend_from_slice(name);
    changed.extend_from_slice(b"v2");
    let second = host(Some(&cache));
    let plugin = second.load("file:vxlan.wasm", &changed).expect("loads");
    assert!(
        !plugin.from_cache,
        "other bytes were compiled, not read from the cache"
    );
    let again = second.load("built-in:vxlan", vxlan()).expect("loads");
    assert!(again.from_cache, "the original is still cached");
    assert_ne!(plugin.sha256, again.sha256);
    clean_up(&dir);
}

/// A cache entry overwritten with junk is not run: the plugin is compiled again (and
/// loads, and works), and the entry is written afresh for the next host.
#[test]
fn a_corrupt_cache_entry_is_compiled_again() {
    let dir = scratch("corrupt");
    let cache = dir.join("cache");
    host(Some(&cache))
        .load("built-in:vxlan", vxlan())
        .expect("loads");
    let entries = files(&cache);
    assert!(!entries.is_empty(), "the first host wrote an entry");
    for entry in &entries {
        std::fs::write(entry, b"not a compiled module").expect("corrupt the entry");
    }
    let plugin = host(Some(&cache))
        .load("built-in:vxlan", vxlan())
        .expect("a corrupt entry is no failure");
    assert!(!plugin.from_cache, "the corrupt entry was not used");
    assert_eq!(plugin.name, "vxlan");
    let next = host(Some(&cache))
        .load("built-in:vxlan", vxlan())
        .expect("loads");
    assert!(next.from_cache, "the entry was written again");
    clean_up(&dir);
}
