//! The built-in backend plugins, embedded in the binary: one operator-deployable file.
//! `build.rs` builds every crate under `plugins/` (except the SDK) for
//! `wasm32-wasip2`; this crate only holds the bytes.
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
