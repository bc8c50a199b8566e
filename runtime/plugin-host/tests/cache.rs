//! The compilation cache: a second host on the same cache directory reads the compiled
//! built-in back instead of compiling it again; a directory that cannot be used is no
//! failure (the host compiles without a cache).

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
    std::fs::remove_dir_all(&dir).expect("clean up");
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
    std::fs::remove_dir_all(&dir).expect("clean up");
}
