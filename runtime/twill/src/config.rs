//! `twill config set|get|check`. `set` writes the network config into the embedded
//! store, the way `etcdctl put <prefix>/config` does for etcd (validated first, so a
//! node never waits on a config it would refuse); `get` prints the store's; `check`
//! tells whether a config would work before it reaches any node.

use anyhow::Context;
use twill_core::lease::Lease;
use twill_core::{Config, Subnet};
use twill_store::{EmbeddedStore, EtcdOptions, EtcdStore, LeaseStore};

use crate::cli::{ConfigCheckArgs, ConfigGetArgs, ConfigSetArgs, StoreArgs, StoreKind};

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

/// The store a command reads or writes: `twill run`'s store flags, one connection.
pub enum Store {
    Etcd(Box<EtcdStore>),
    Embedded(EmbeddedStore),
}

/// `$store.$method(args)` on whichever store it is.
macro_rules! on_store {
    ($store:expr, $method:ident ( $($arg:expr),* )) => {
        match $store {
            Store::Etcd(s) => s.$method($($arg),*).await,
            Store::Embedded(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Connect (etcd) or open an existing file (embedded): no retries, a command
    /// reports at once what it cannot reach.
    pub async fn open(args: &StoreArgs) -> anyhow::Result<Store> {
        match args.kind {
            StoreKind::Etcd => {
                let opts = EtcdOptions {
                    endpoints: args.etcd_endpoints.clone(),
                    prefix: args.etcd_prefix.clone(),
                    ca_file: args.etcd_cafile.clone(),
                    cert_file: args.etcd_certfile.clone(),
                    key_file: args.etcd_keyfile.clone(),
                    user: args.etcd_user(),
                };
                Ok(Store::Etcd(Box::new(
                    EtcdStore::connect(opts).await.with_context(|| {
                        format!("connect to etcd at {}", args.etcd_endpoints.join(","))
                    })?,
                )))
            }
            StoreKind::Embedded => {
                let (path, prefix) = (args.store_path.clone(), args.etcd_prefix.clone());
                let store =
                    tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, &prefix))
                        .await?
                        .with_context(|| {
                            format!("open the embedded store {}", args.store_path.display())
                        })?;
                Ok(Store::Embedded(store))
            }
        }
    }

    /// Where the store is, for messages.
    pub fn describe(&self, args: &StoreArgs) -> String {
        match self {
            Store::Etcd(_) => format!(
                "etcd at {} under {}",
                args.etcd_endpoints.join(","),
                args.etcd_prefix
            ),
            Store::Embedded(_) => format!(
                "the embedded store {} under {}",
                args.store_path.display(),
                args.etcd_prefix
            ),
        }
    }

    pub async fn get_config(&self) -> anyhow::Result<Option<String>> {
        Ok(on_store!(self, get_config())?)
    }

    pub async fn list_leases(&self) -> anyhow::Result<Vec<Lease>> {
        Ok(on_store!(self, list_leases())?.0)
    }

    pub async fn delete_lease(&self, subnet: Subnet) -> anyhow::Result<()> {
        Ok(on_store!(self, delete_lease(subnet))?)
    }
}

/// The store's config text, or an error naming where it was looked for.
async fn stored_config(store: &Store, args: &StoreArgs) -> anyhow::Result<String> {
    store
        .get_config()
        .await
        .with_context(|| format!("read the network config from {}", store.describe(args)))?
        .with_context(|| {
            format!(
                "no network config at {}/config in {}",
                args.etcd_prefix,
                store.describe(args)
            )
        })
}

/// The config as a node runs on it: every default filled in.
fn effective(config: &Config) -> serde_json::Value {
    let backend: serde_json::Value =
        serde_json::from_str(&config.backend.json).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "Network": config.network.to_string(),
        "SubnetLen": config.subnet_len,
        "SubnetMin": config.subnet_min.to_string(),
        "SubnetMax": config.subnet_max.to_string(),
        "Backend": backend,
    })
}

/// `twill config get`: the stored text as it is, or with `--json` the config a node
/// would run on (defaults filled in); an invalid config is an error then.
pub async fn get(args: ConfigGetArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.store).await?;
    let text = stored_config(&store, &args.store).await?;
    if args.json {
        let config = Config::parse(&text).context("the stored network config is invalid")?;
        println!("{}", serde_json::to_string_pretty(&effective(&config))?);
    } else {
        println!("{}", text.trim_end());
    }
    Ok(())
}

/// One line of `twill config check`.
enum Verdict {
    Ok(String),
    Warn(String),
    Fail(String),
}

/// `twill config check`: the config given (or the store's) as a node would take it:
/// the JSON and its fields, keys twill ignores, the backend found (built-in or in the
/// plugin directory), the backend's own keys (its `init`, on a recording kernel), and
/// for the store's config, the leases it holds that would not fit. Whether it passes.
pub async fn check(args: ConfigCheckArgs) -> anyhow::Result<bool> {
    let mut verdicts = Vec::new();
    let (text, leases) = match &args.json {
        Some(arg) => {
            let text = if arg == "-" {
                std::io::read_to_string(std::io::stdin()).context("read the config from stdin")?
            } else {
                arg.clone()
            };
            (text, None)
        }
        None => {
            let store = Store::open(&args.store).await?;
            let text = stored_config(&store, &args.store).await?;
            println!("checking the config in {}", store.describe(&args.store));
            let leases = store.list_leases().await.context("list the leases")?;
            (text, Some(leases))
        }
    };
    let config = match Config::parse(&text) {
        Ok(config) => config,
        Err(e) => {
            verdicts.push(Verdict::Fail(format!("invalid network config: {e}")));
            return Ok(report(&verdicts));
        }
    };
    let count = 1u64
        + (u64::from(u32::from(config.subnet_max)) - u64::from(u32::from(config.subnet_min)))
            / (1u64 << (32 - u32::from(config.subnet_len)));
    verdicts.push(Verdict::Ok(format!(
        "Network {}, SubnetLen {}, SubnetMin {}, SubnetMax {}: {count} node subnets",
        config.network, config.subnet_len, config.subnet_min, config.subnet_max
    )));
    verdicts.extend(Config::notices(&text).into_iter().map(Verdict::Warn));
    if let Some(leases) = leases {
        let misfits: Vec<String> = leases
            .iter()
            .filter(|l| !config.fits(&l.subnet))
            .map(|l| format!("{} ({})", l.subnet, l.attrs.public_ip))
            .collect();
        verdicts.push(if misfits.is_empty() {
            Verdict::Ok(format!("{} leases in the store, all fit", leases.len()))
        } else {
            Verdict::Warn(format!(
                "{} of {} leases do not fit this config (nodes skip them; their holders \
                 acquire new subnets at restart): {}",
                misfits.len(),
                leases.len(),
                misfits.join(", ")
            ))
        });
    }
    verdicts.push(backend_verdict(&args, &config).await);
    Ok(report(&verdicts))
}

/// Whether the backend exists on this machine and accepts its keys.
async fn backend_verdict(args: &ConfigCheckArgs, config: &Config) -> Verdict {
    let kind = &config.backend.kind;
    let bench = match crate::dry_run::Bench::new() {
        Ok(b) => b,
        Err(e) => return Verdict::Fail(format!("backend {kind}: {e:#}")),
    };
    let catalog = twill_plugin_host::catalog::Catalog::scan(
        &bench.host,
        twill_builtin::BUILTIN,
        args.dir.dir(),
    );
    let plugin = match catalog.resolve(&bench.host, kind) {
        Ok(p) => p,
        Err(e) => {
            return Verdict::Fail(format!(
                "backend {kind}: {e:#} (every node needs it in its --plugin-dir)"
            ));
        }
    };
    let init = async {
        let backend = bench.spawn(&plugin, config.network, config.backend.port())?;
        bench.init(&backend, &config.backend.json).await
    };
    match init.await {
        Ok(r) => Verdict::Ok(format!(
            "backend {kind} ({}, version {}) accepts {}: BackendType {}, MTU {} on a \
             1500-byte interface",
            plugin.source, plugin.version, config.backend.json, r.backend_type, r.mtu
        )),
        Err(e) => Verdict::Fail(format!(
            "backend {kind} ({}) refuses {}: {e:#}",
            plugin.source, config.backend.json
        )),
    }
}

/// Print the verdicts; whether none failed.
fn report(verdicts: &[Verdict]) -> bool {
    let mut failed = false;
    for v in verdicts {
        match v {
            Verdict::Ok(m) => println!("ok    {m}"),
            Verdict::Warn(m) => println!("warn  {m}"),
            Verdict::Fail(m) => {
                failed = true;
                println!("FAIL  {m}");
            }
        }
    }
    !failed
}
