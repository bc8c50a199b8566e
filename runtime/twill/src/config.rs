//! `twill config set`: write the network config into the embedded store, the way
//! `etcdctl put <prefix>/config` does for etcd. The text is validated first, so a node
//! never waits on a config it would refuse.

use anyhow::Context;
use twill_core::Config;
use twill_store::EmbeddedStore;

use crate::cli::ConfigSetArgs;

pub async fn set(args: ConfigSetArgs) -> anyhow::Result<()> {
    let config = Config::parse(&args.json).context("invalid network config")?;
    for notice in Config::notices(&args.json) {
        eprintln!("warning: {notice}");
    }
    let kind = &config.backend.kind;
    if !twill_builtin::BUILTIN.iter().any(|(name, _)| name == kind) {
        eprintln!(
            "warning: backend type {kind:?} is not built in: every node needs a plugin of \
             that name in its --plugin-dir (`twill plugin list` shows what a node has)"
        );
    }
    put_embedded(&args.store_path, &args.etcd_prefix, &args.json).await?;
    println!(
        "wrote {}/config to {}",
        args.etcd_prefix,
        args.store_path.display()
    );
    Ok(())
}

/// Write `json` as the config of the embedded store at `path` (creating its directory
/// and file).
pub async fn put_embedded(path: &std::path::Path, prefix: &str, json: &str) -> anyhow::Result<()> {
    let (p, pre) = (path.to_owned(), prefix.to_owned());
    let store =
        tokio::task::spawn_blocking(move || EmbeddedStore::open_creating(&p, &pre)).await??;
    store
        .put_config(json)
        .await
        .with_context(|| format!("write the config to {}", path.display()))
}
