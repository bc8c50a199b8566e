//! `twill plugin list|inspect`: what `twill run` would load from the built-ins and
//! `--plugin-dir`, and why a file would be skipped, from a plugin host that has no
//! kernel access. The rules themselves are `twill_plugin_host::catalog`'s.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use twill_net::Refusing;
use twill_plugin_host::catalog::{Catalog, DirState, FileOutcome, builtin_source};
use twill_plugin_host::{Limits, PluginHost};

use twill_core::Config;
use twill_net::fake::Call;

use crate::cli::{
    PluginCacheArg, PluginCommand, PluginInspectArgs, PluginListArgs, PluginTestArgs,
};
use crate::dry_run;

/// `twill plugin …`: exit 0, or 1 with the error on stderr (or, for `inspect`, when
/// the component cannot be loaded).
pub fn command(command: PluginCommand, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let result = match command {
        PluginCommand::List(args) => list(&args).map(|()| true),
        PluginCommand::Inspect(args) => inspect(&args),
        PluginCommand::Test(args) => runtime.block_on(test(&args)),
        PluginCommand::New(args) => crate::template::new(&args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A plugin host for looking only: its kernel refuses every call (`describe` must
/// not call the host anyway).
fn offline_host(cache: &PluginCacheArg) -> anyhow::Result<PluginHost> {
    PluginHost::with_cache(Arc::new(Refusing), Limits::default(), cache.dir())
        .context("start the plugin host")
}

fn list(args: &PluginListArgs) -> anyhow::Result<()> {
    let host = offline_host(&args.cache)?;
    let catalog = Catalog::scan(&host, twill_builtin::BUILTIN, args.dir.dir());
    let (path, state, reason) = match &catalog.dir {
        DirState::None => (None, "none", None),
        DirState::Missing(dir) => (Some(dir), "missing", None),
        DirState::Unreadable { dir, reason } => (Some(dir), "unreadable", Some(reason)),
        DirState::Untrusted { dir, reason } => (Some(dir), "untrusted", Some(reason)),
        DirState::Read(dir) => (Some(dir), "read", None),
    };
    let dir_line = match &catalog.dir {
        DirState::None => "plugin directory: none (built-in plugins only)".to_owned(),
        DirState::Missing(dir) => format!(
            "plugin directory: {} (does not exist: built-in plugins only)",
            dir.display()
        ),
        DirState::Unreadable { dir, reason } => format!(
            "plugin directory: {} (cannot be read: {reason}; built-in plugins only)",
            dir.display()
        ),
        DirState::Untrusted { dir, reason } => format!(
            "plugin directory: {} (not trusted: {reason}; built-in plugins only)",
            dir.display()
        ),
        DirState::Read(dir) => format!(
            "plugin directory: {} ({} *.wasm file{})",
            dir.display(),
            catalog.files.len(),
            if catalog.files.len() == 1 { "" } else { "s" }
        ),
    };
    let header = row(["NAME", "VERSION", "WIT", "SOURCE", "STATUS"]);
    let mut rows = vec![header.clone()];
    for (dir, _) in catalog.builtins() {
        let Some(loaded) = catalog.load_builtin(&host, dir) else {
            continue;
        };
        rows.push(match loaded {
            Ok(p) => {
                let status = match catalog.overridden_by(dir) {
                    Some(file) => format!("overridden by {}", file.display()),
                    None => "ok".to_owned(),
                };
                row([&p.name, &p.version, &p.wit_version, "built-in", &status])
            }
            Err(e) => row([
                "-",
                "-",
                "-",
                &builtin_source(dir),
                &format!("error: {}", e.reason()),
            ]),
        });
    }
    for file in &catalog.files {
        let path = file.path.display().to_string();
        let wit = file.wit_version.as_deref().unwrap_or("-");
        rows.push(match &file.outcome {
            FileOutcome::Loaded { plugin, overrides } => {
                let status = match overrides {
                    Some(builtin) => format!("ok, overrides built-in {builtin}"),
                    None => "ok".to_owned(),
                };
                row([&plugin.name, &plugin.version, wit, &path, &status])
            }
            FileOutcome::Skipped(e) => {
                row(["-", "-", wit, &path, &format!("skipped: {}", e.reason())])
            }
            FileOutcome::Duplicate {
                name,
                version,
                first,
            } => row([
                name,
                version,
                wit,
                &path,
                &format!("skipped: {} already provides {name}", first.display()),
            ]),
        });
    }
    if args.json {
        let keys: Vec<String> = header.iter().map(|h| h.to_ascii_lowercase()).collect();
        let plugins: Vec<serde_json::Value> = rows[1..]
            .iter()
            .map(|r| {
                keys.iter()
                    .cloned()
                    .zip(r.iter().map(|c| serde_json::Value::from(c.as_str())))
                    .collect::<serde_json::Map<_, _>>()
                    .into()
            })
            .collect();
        let out = serde_json::json!({
            "plugin_dir": {
                "path": path.map(|p| p.display().to_string()),
                "state": state,
                "reason": reason,
            },
            "plugins": plugins,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{dir_line}");
    print!("{}", table(&rows));
    Ok(())
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Columns padded to their widest cell; the last one not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The bytes `twill plugin inspect` looks at: the file, or `built-in:<name>` when no
/// such file exists. (source, bytes).
fn inspected_bytes(file: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let text = file.to_string_lossy();
    if let Some(name) = text.strip_prefix("built-in:")
        && !file.exists()
    {
        let (dir, bytes) = twill_builtin::BUILTIN
            .iter()
            .find(|(dir, _)| *dir == name)
            .with_context(|| {
                let names: Vec<&str> = twill_builtin::BUILTIN.iter().map(|(d, _)| *d).collect();
                format!(
                    "no built-in plugin {name:?} (built-ins: {})",
                    names.join(", ")
                )
            })?;
        return Ok((builtin_source(dir), bytes.to_vec()));
    }
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    Ok((file.display().to_string(), bytes))
}

/// Print what the component is; whether it loads.
fn inspect(args: &PluginInspectArgs) -> anyhow::Result<bool> {
    let (source, bytes) = inspected_bytes(&args.file)?;
    let host = offline_host(&args.cache)?;
    let inspection = host.inspect(&source, &bytes);
    let facts = inspection.facts.as_ref();
    let plugin = inspection.result.as_ref().ok();
    let mut lines: Vec<(&str, String)> = vec![
        ("file", source.clone()),
        ("size", format!("{} bytes", inspection.size)),
        ("sha256", inspection.sha256.clone()),
    ];
    let not_run = || "- (describe() not run)".to_owned();
    lines.push(("name", plugin.map_or_else(not_run, |p| p.name.clone())));
    lines.push((
        "version",
        plugin.map_or_else(not_run, |p| p.version.clone()),
    ));
    lines.push((
        "config example",
        plugin.map_or_else(not_run, |p| {
            if p.config_hint.is_empty() {
                "- (the plugin gives none)".to_owned()
            } else {
                p.config_hint.clone()
            }
        }),
    ));
    lines.push((
        "wit version",
        facts
            .and_then(|f| f.wit_version.clone())
            .map_or_else(|| "-".to_owned(), |v| format!("twill:backend@{v}")),
    ));
    lines.push((
        "capabilities",
        match facts {
            None => "-".to_owned(),
            Some(f) if f.capabilities.is_empty() => "none".to_owned(),
            Some(f) => f.capabilities.join(", "),
        },
    ));
    if let Some(f) = facts {
        let others: Vec<&str> = f
            .imports
            .iter()
            .filter(|i| !i.starts_with("twill:backend/"))
            .map(String::as_str)
            .collect();
        let wasi = others.iter().filter(|i| i.starts_with("wasi:")).count();
        lines.push((
            "other imports",
            if others.is_empty() {
                "none".to_owned()
            } else if wasi == others.len() {
                format!("{wasi} WASI interfaces (linked as traps: nothing granted)")
            } else {
                others.join(", ")
            },
        ));
    }
    lines.push((
        "data path",
        match facts {
            None => "-".to_owned(),
            Some(f) if f.exports_datapath => "yes (exports twill:backend/datapath)".to_owned(),
            Some(_) => "no".to_owned(),
        },
    ));
    if let Some(p) = plugin {
        let how = match (p.from_cache, host.cache_dir()) {
            (true, Some(dir)) => format!("from the cache in {}", dir.display()),
            (false, Some(dir)) => format!("compiled; cached in {}", dir.display()),
            (_, None) => "compiled; no cache".to_owned(),
        };
        lines.push((
            "load time",
            format!("{} ms ({how})", p.load_time.as_millis()),
        ));
    }
    lines.push((
        "loadable",
        match &inspection.result {
            Ok(_) => "yes".to_owned(),
            Err(e) => format!("no: {}", e.reason()),
        },
    ));
    if args.json {
        let out: serde_json::Map<String, serde_json::Value> = lines
            .iter()
            .map(|(k, v)| (k.replace(' ', "_"), serde_json::Value::from(v.as_str())))
            .chain([("loads".to_owned(), inspection.result.is_ok().into())])
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(inspection.result.is_ok());
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in &lines {
        println!("{:<width$} {value}", format!("{key}:"), width = width);
    }
    Ok(inspection.result.is_ok())
}

/// `twill plugin test`: load the component, then run it through a node's life on the
/// recording kernel, printing each step's answer and every kernel change it asked for.
/// Whether every step succeeded.
async fn test(args: &PluginTestArgs) -> anyhow::Result<bool> {
    let (source, bytes) = inspected_bytes(&args.file)?;
    let bench = dry_run::Bench::new()?;
    let plugin = bench
        .host
        .load(&source, &bytes)
        .map_err(|e| anyhow::anyhow!("{}", e.reason()))
        .with_context(|| format!("load {source}"))?;
    let text = match &args.config {
        Some(text) => text.clone(),
        None => format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{}"}}}}"#,
            plugin.name
        ),
    };
    let config = Config::parse(&text).context("--config")?;
    for notice in Config::notices(&text) {
        println!("warning: {notice}");
    }
    let own = twill_core::Subnet::new(
        std::net::Ipv4Addr::from(
            u32::from(config.network.addr()) + (1 << (32 - config.subnet_len)),
        ),
        config.subnet_len,
    )?;
    println!(
        "plugin {} {} ({source}), twill:backend@{}{}",
        plugin.name,
        plugin.version,
        plugin.wit_version,
        if plugin.has_datapath() {
            ", data path"
        } else {
            ""
        }
    );
    println!(
        "node: eth0 {}/24 MTU 1500, network {}, own subnet {own}; a recording kernel: \
         nothing on this machine changes\n",
        dry_run::NODE_IP,
        config.network
    );
    let mut ok = true;
    let mut step = |title: String, answer: Result<String, String>, calls: Vec<Call>| {
        println!("{title}");
        match answer {
            Ok(a) if a.is_empty() => {}
            Ok(a) => println!("  -> {a}"),
            Err(e) => {
                ok = false;
                println!("  -> FAILED: {e}");
            }
        }
        for c in &calls {
            println!("  {}", dry_run::describe_call(c));
        }
        println!();
    };
    let backend = bench.spawn(&plugin, config.network, config.backend.port())?;
    let registration = match bench.init(&backend, &config.backend.json).await {
        Ok(r) => r,
        Err(e) => {
            step(
                format!("init {}", config.backend.json),
                Err(format!("{e:#}")),
                bench.calls(),
            );
            return Ok(false);
        }
    };
    step(
        format!("init {}", config.backend.json),
        Ok(format!(
            "BackendType {:?}, BackendData {}, MTU {}",
            registration.backend_type,
            registration.backend_data.as_deref().unwrap_or("none"),
            registration.mtu
        )),
        bench.calls(),
    );
    let started = backend
        .start(own)
        .await
        .map(|()| String::new())
        .map_err(|e| format!("{e:#}"));
    step(format!("start {own}"), started, bench.calls());
    let peers =
        dry_run::sample_peers(config.network, config.subnet_len, &registration, args.peers)?;
    let outcomes = |outcomes: Result<Vec<twill_plugin_host::PeerOutcome>, _>| match outcomes {
        Err(e) => Err(format!("{e:#}")),
        Ok(list) => {
            let lines: Vec<String> = list
                .iter()
                .map(|o| {
                    let subnet = o.subnet.map_or_else(|| "?".to_owned(), |s| s.to_string());
                    match &o.result {
                        Ok(what) => format!("{subnet}: {what}"),
                        Err(e) => format!("{subnet}: ERROR {e}"),
                    }
                })
                .collect();
            if list.iter().any(|o| o.result.is_err()) {
                Err(lines.join("; "))
            } else {
                Ok(lines.join("; "))
            }
        }
    };
    let title = format!(
        "on-leases: {} peer{} added ({})",
        peers.len(),
        if peers.len() == 1 { "" } else { "s" },
        peers
            .iter()
            .map(|l| format!("{} at {}", l.subnet, l.attrs.public_ip))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let answer = outcomes(backend.on_leases(dry_run::joined(&peers)).await);
    step(title, answer, bench.calls());
    let answer = outcomes(backend.on_leases(dry_run::joined(&peers)).await);
    step(
        "on-leases: the same peers again (must be idempotent)".into(),
        answer,
        bench.calls(),
    );
    if let Some(last) = peers.last() {
        let answer = outcomes(
            backend
                .on_leases(vec![twill_core::lease::LeaseEvent::Removed(last.clone())])
                .await,
        );
        step(
            format!("on-leases: {} removed", last.subnet),
            answer,
            bench.calls(),
        );
    }
    let stopped = backend
        .shutdown()
        .await
        .map(|()| String::new())
        .map_err(|e| format!("{e:#}"));
    step("shutdown".into(), stopped, bench.calls());
    println!(
        "{}",
        if ok {
            "result: every step succeeded"
        } else {
            "result: FAILED (see above)"
        }
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_pads_every_column_but_the_last() {
        let rows = vec![
            row(["NAME", "SOURCE", "STATUS"]),
            row(["vxlan", "built-in", "ok"]),
        ];
        assert_eq!(
            table(&rows),
            "NAME   SOURCE    STATUS\nvxlan  built-in  ok\n"
        );
    }

    #[test]
    fn the_offline_host_loads_every_built_in_without_a_kernel() {
        let cache = PluginCacheArg {
            plugin_cache_dir: Default::default(),
        };
        let host = offline_host(&cache).expect("host");
        let catalog = Catalog::scan(&host, twill_builtin::BUILTIN, None);
        for (dir, _) in twill_builtin::BUILTIN {
            let plugin = catalog.resolve(&host, dir).expect("built-in loads");
            assert_eq!(plugin.name, *dir);
            assert_eq!(plugin.source, format!("built-in:{dir}"));
        }
    }
}
