//! The built-in backend plugins, embedded in the binary: one operator-deployable file.
//! `build.rs` builds every crate under `plugins/` (except the SDK) for
//! `wasm32-wasip2`; this crate only holds the bytes.
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The component of the built-in plugin in `plugins/<dir>`, if there is one.
pub fn component(dir: &str) -> Option<&'static [u8]> {
    BUILTIN
        .iter()
        .find(|(d, _)| *d == dir)
        .map(|(_, bytes)| *bytes)
}
