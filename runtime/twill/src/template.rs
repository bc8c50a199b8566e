//! `twill plugin new NAME`: a backend crate that builds without twill's repository.
//! The SDK and the WIT it targets travel inside this binary (the very files twill was
//! built with), so the plugin targets exactly the interface this twill loads:
//!
//! ```text
//! NAME/Cargo.toml          its own workspace root; depends on ./sdk by path
//! NAME/src/lib.rs          a working backend (a route per peer via its public IP)
//! NAME/README.md           build, test (`twill plugin test`), install
//! NAME/sdk/                twill-plugin-sdk, with wit/backend.wit beside it
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::PluginNewArgs;

/// The SDK's source, as built into this twill.
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_DATAPATH: &str = include_str!("../../../plugins/sdk/src/datapath.rs");
/// The WIT package this twill's host implements.
pub const WIT: &str = include_str!("../../../wit/backend.wit");
/// The wit-bindgen the SDK is built with here (checked against the workspace's by a
/// unit test).
const WIT_BINDGEN: &str =
    r#"{ version = "0.63", default-features = false, features = ["macros", "realloc"] }"#;

/// The files of a new plugin `name`, as (relative path, contents).
pub fn files(name: &str) -> Vec<(PathBuf, String)> {
    let krate = format!("twill-plugin-{name}");
    let wasm = format!("{}.wasm", krate.replace('-', "_"));
    let version = env!("CARGO_PKG_VERSION");
    let cargo = format!(
        r#"# A twill backend plugin, made by `twill plugin new {name}` (twill {version}).
#
#     cargo build --target wasm32-wasip2 --release
#
# gives target/wasm32-wasip2/release/{wasm}, the component.

[package]
name = "{krate}"
version = "0.1.0"
edition = "2024"
publish = false

# Its own workspace root, wherever it is put.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
twill-plugin-sdk = {{ path = "sdk" }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#
    );
    let sdk_cargo = format!(
        r#"# twill's plugin SDK as twill {version} carries it (`twill plugin new`); its WIT
# is wit/backend.wit, the interface that twill's host implements.
[package]
name = "twill-plugin-sdk"
version = "{version}"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = {WIT_BINDGEN}
serde_json = "1"

[features]
datapath = []
"#
    );
    let lib = PLUGIN_LIB.replace("NAME", name);
    let readme = README
        .replace("WASM", &wasm)
        .replace("NAME", name)
        .replace("VERSION", version);
    vec![
        ("Cargo.toml".into(), cargo),
        ("src/lib.rs".into(), lib),
        ("README.md".into(), readme),
        (".gitignore".into(), "/target\n".into()),
        ("sdk/Cargo.toml".into(), sdk_cargo),
        (
            "sdk/src/lib.rs".into(),
            SDK_LIB.replace(r#"path: "../../wit""#, r#"path: "wit""#),
        ),
        ("sdk/src/datapath.rs".into(), SDK_DATAPATH.to_owned()),
        ("sdk/wit/backend.wit".into(), WIT.to_owned()),
    ]
}

/// Write the plugin crate into `--dir` (default `./NAME`), which must not exist yet
/// or be empty.
pub fn new(args: &PluginNewArgs) -> anyhow::Result<()> {
    if let Some(problem) = twill_plugin_host::name_problem(&args.name) {
        bail!("{:?} cannot name a plugin: {problem}", args.name);
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    for (path, text) in files(&args.name) {
        write(&dir.join(&path), &text)?;
    }
    println!(
        "wrote the plugin {name} to {dir}\n\nnext:\n  cd {dir}\n  cargo build --target \
         wasm32-wasip2 --release      (once: rustup target add wasm32-wasip2)\n  twill plugin \
         test target/wasm32-wasip2/release/twill_plugin_{under}.wasm\n\nsee {dir}/README.md",
        name = args.name,
        dir = dir.display(),
        under = args.name.replace('-', "_"),
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

const PLUGIN_LIB: &str = r##"//! The twill backend `NAME`: each peer's subnet is routed via the peer's public IP
//! on the node's external interface (flannel's host-gw, without its checks). Change
//! what `on_lease` does to make it yours; `twill plugin test` shows every kernel
//! change it asks for.

use twill_plugin_sdk::host::{log, routes};
use twill_plugin_sdk::{
    Backend, Error, Info, Lease, LeaseEvent, Node, Registration, Subnet, config_field,
    export_backend, ip,
};

struct Plugin {
    /// The node's external interface: the device of every route.
    external: u32,
}

/// The `Backend` object's optional "MTU" key, else the interface's (a pure function:
/// `cargo test` runs it natively, where host calls are not available).
fn mtu(config: &str, iface_mtu: u32) -> Result<u32, Error> {
    let obj: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| Error::Invalid(format!("the Backend config is no JSON: {e}")))?;
    match config_field(&obj, "MTU") {
        None => Ok(iface_mtu),
        Some(v) => v
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| (576..=iface_mtu).contains(m))
            .ok_or_else(|| Error::Invalid(format!("MTU {v} is not between 576 and {iface_mtu}"))),
    }
}

impl Plugin {
    fn route(&self, peer: &Lease) -> routes::Route {
        routes::Route {
            dst: peer.subnet,
            gateway: Some(peer.public_ip),
            dev: self.external,
            onlink: false,
        }
    }
}

impl Backend for Plugin {
    fn describe() -> Info {
        Info {
            // The config's `Backend.Type` selects the plugin by this name.
            name: "NAME".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint: r#"{"Type":"NAME","MTU":1500}"#.into(),
        }
    }

    fn init(config: &str, node: &Node, _previous: Option<&str>) -> Result<(Self, Registration), Error> {
        let mtu = mtu(config, node.iface.mtu)?;
        log::write(log::Level::Info, &format!("NAME on {} (MTU {mtu})", node.iface.name));
        let registration = Registration {
            backend_type: "NAME".into(), // `BackendType` in this node's lease
            backend_data: String::new(), // no `BackendData`
            mtu,                         // `FLANNEL_MTU` in subnet.env
        };
        Ok((Plugin { external: node.iface.index }, registration))
    }

    fn start(&mut self, _own: Subnet) -> Result<(), Error> {
        Ok(())
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        match event {
            LeaseEvent::Added(peer) => {
                routes::replace(self.route(peer))?; // idempotent, like `ip route replace`
                Ok(format!("route via {}", ip(peer.public_ip)))
            }
            LeaseEvent::Removed(peer) => {
                routes::delete(self.route(peer))?; // a route already gone is no error
                Ok("removed".into())
            }
        }
    }
}

export_backend!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtu_key_is_read_and_checked() {
        assert_eq!(mtu(r#"{"Type":"NAME"}"#, 1500).ok(), Some(1500));
        assert_eq!(mtu(r#"{"Type":"NAME","mtu":1400}"#, 1500).ok(), Some(1400));
        assert!(mtu(r#"{"Type":"NAME","MTU":9000}"#, 1500).is_err());
    }
}
"##;

const README: &str = r#"# NAME: a twill backend plugin

Made by `twill plugin new NAME` (twill VERSION). `sdk/` is twill's plugin SDK and
`sdk/wit/backend.wit` the interface (`twill:backend`) that twill VERSION implements;
the SDK's own documentation (`cargo doc --open -p twill-plugin-sdk`) explains the
lifecycle, the capabilities and their limits.

## Build

    rustup target add wasm32-wasip2      # once
    cargo build --target wasm32-wasip2 --release

The component is `target/wasm32-wasip2/release/WASM`.

## Test

    cargo test                                            # the pure functions, natively
    twill plugin test target/wasm32-wasip2/release/WASM   # the component, in twill's host

`twill plugin test` loads the component as a node would (every check of the loader),
then runs `init`, `start`, peers joining, the same peers again, a peer leaving and
`shutdown` against a recording in-memory kernel, and prints every kernel change the
plugin asks for. Nothing on the machine changes. It exits 1 if a step fails.
`--config '{"Network":"10.244.0.0/16","Backend":{"Type":"NAME","MTU":1400}}'` tries a
config.

## Install

    install -m 0644 target/wasm32-wasip2/release/WASM /etc/twill/plugins/NAME.wasm
    twill plugin list          # shows it, or why it is skipped

and select it in the network config: `"Backend": {"Type": "NAME"}`. A running node
reloads a changed plugin file by itself; a node that runs another backend switches at
its next start.

## Rules

- The name (`describe().name`) is what `Backend.Type` selects: lowercase letters,
  digits and `-`, starting with a letter, at most 32 characters. twill refuses to load
  any other name.
- The plugin may import only the interfaces of `twill:backend` with the major version
  of the host's (0.1 here); see twill's docs/plugins.md, "Versioning".
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_uses_the_workspace_wit_bindgen_and_a_valid_name() {
        let workspace = include_str!("../../../Cargo.toml");
        assert!(
            workspace.contains(&format!("wit-bindgen = {WIT_BINDGEN}")),
            "the template's wit-bindgen is the workspace's"
        );
        let files = files("my-gw");
        let lib = &files
            .iter()
            .find(|(p, _)| p == Path::new("src/lib.rs"))
            .expect("lib.rs")
            .1;
        assert!(lib.contains(r#"name: "my-gw".into()"#));
        assert!(!lib.contains("NAME"));
        let sdk = &files
            .iter()
            .find(|(p, _)| p == Path::new("sdk/src/lib.rs"))
            .expect("sdk")
            .1;
        assert!(sdk.contains(r#"path: "wit""#) && !sdk.contains("../../wit"));
    }
}
