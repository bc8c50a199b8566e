//! The `twill` binary: command line, wiring, signals. `twill run` is the node daemon:
//! it reads the network config from etcd, loads the configured backend plugin, holds a
//! lease on a subnet, writes subnet.env, and keeps the backend told about every peer.
#![forbid(unsafe_code)]

mod cli;
mod cni;
mod config;
mod containers;
mod demo;
mod docker_opts;
mod doctor;
mod dry_run;
mod files;
mod leave;
mod plugins;
mod status;
mod template;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Invoked as `flannel` (from a CNI bin directory): the CNI plugin, which speaks
    // through CNI_* variables, stdin and stdout only.
    if cni::invoked_as_plugin() {
        return cni::main();
    }
    let cli = cli::Cli::parse_flannel_style();
    init_logging(cli.log_level.as_deref(), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        cli::Command::Run(args) => {
            for name in unknown_flanneld_env(std::env::vars().map(|(k, _)| k)) {
                tracing::warn!(
                    "{name} is set, but twill has no such setting: ignored (see `twill run \
                     --help` for the FLANNELD_* variables it reads)"
                );
            }
            // The exit status tells the kinds of fatal error apart
            // (docs/operations.md, "Exit status").
            return match runtime.block_on(twill_node::run(args.options())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    twill_node::Failure::of(&e).map_or(ExitCode::FAILURE, |f| f.exit_code().into())
                }
            };
        }
        cli::Command::Demo(args) => runtime.block_on(demo::run(args)),
        cli::Command::Config(cli::ConfigCommand::Set(args)) => runtime.block_on(config::set(args)),
        cli::Command::Config(cli::ConfigCommand::Get(args)) => runtime.block_on(config::get(args)),
        cli::Command::Config(cli::ConfigCommand::Check(args)) => {
            return match runtime.block_on(config::check(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(twill_node::Failure::Config.exit_code()),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        cli::Command::Status(args) => {
            return match runtime.block_on(status::run(args.api.api_addr, args.json)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(status::NOT_READY),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        cli::Command::Doctor(args) => {
            let args = doctor::Args {
                api_addr: args.api.api_addr,
                subnet_file: args.subnet_file,
                json: args.json,
            };
            return match runtime.block_on(doctor::run(args)) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        cli::Command::DockerOpts(args) => docker_opts::run(&args),
        cli::Command::Leave(args) => runtime.block_on(leave::run(args)),
        cli::Command::InstallCni(args) => cni::install(&args.bin_dir, args.conf_dir.as_deref()),
        // Synchronous; needs no root, store or network namespace.
        cli::Command::Plugin(command) => return plugins::command(command, &runtime),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging to standard error: `--log-level` (already validated) if given, else
/// `TWILL_LOG`; text or JSON lines (`--log-format`).
fn init_logging(level: Option<&str>, format: cli::LogFormat) {
    let (directives, problem) = match level {
        Some(level) => (format!("warn,twill={level}"), None),
        None => log_directives(std::env::var("TWILL_LOG").ok().as_deref()),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// The `FLANNELD_*` variables among `names` that `twill run` does not read: a migrated
/// flanneld environment file would otherwise lose them in silence.
fn unknown_flanneld_env(names: impl Iterator<Item = String>) -> Vec<String> {
    use clap::CommandFactory;
    let command = cli::Cli::command();
    let known: std::collections::BTreeSet<String> = command
        .find_subcommand("run")
        .into_iter()
        .flat_map(|run| run.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let mut unknown: Vec<String> = names
        .filter(|n| n.starts_with("FLANNELD_") && !known.contains(n))
        .collect();
    unknown.sort();
    unknown
}

/// What twill logs unless TWILL_LOG says otherwise.
const DEFAULT_LOG: &str = "info";

/// The filter for `TWILL_LOG`, and what was wrong with it if anything. A bare level
/// (`debug`, also Go's `warning`) is twill's level, with its libraries kept at `warn`
/// (wasmtime's compiler alone prints tens of thousands of debug lines); anything else
/// is tracing's filter syntax (`info,twill_node=debug`), with `warning` read as `warn`.
/// A value that does not parse gives the default and a warning, never silence.
fn log_directives(value: Option<&str>) -> (String, Option<String>) {
    let Some(raw) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (DEFAULT_LOG.to_owned(), None);
    };
    let level = |word: &str| cli::parse_log_level(word).ok();
    if let Some(level) = level(raw) {
        return (format!("warn,twill={level}"), None);
    }
    let directives = raw
        .split(',')
        .map(|d| match d.rsplit_once('=') {
            Some((target, word)) => {
                level(word).map_or_else(|| d.to_owned(), |l| format!("{target}={l}"))
            }
            None => level(d).unwrap_or_else(|| d.to_owned()),
        })
        .collect::<Vec<_>>()
        .join(",");
    match tracing_subscriber::EnvFilter::try_new(&directives) {
        Ok(_) => (directives, None),
        Err(e) => (
            DEFAULT_LOG.to_owned(),
            Some(format!(
                "TWILL_LOG={raw:?} is not a log filter ({e}); logging at {DEFAULT_LOG}. \
                 Use a level (error, warn, info, debug, trace) or tracing's syntax \
                 (info,twill_node=debug)"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{log_directives, unknown_flanneld_env};

    #[test]
    fn flanneld_variables_twill_does_not_read_are_named() {
        let names = [
            "FLANNELD_ETCD_ENDPOINTS",
            "FLANNELD_IP_MASQ",
            "FLANNELD_KUBE_SUBNET_MGR",
            "PATH",
            "FLANNELD_IFACE",
        ]
        .map(String::from);
        assert_eq!(
            unknown_flanneld_env(names.into_iter()),
            vec!["FLANNELD_KUBE_SUBNET_MGR".to_owned()]
        );
    }

    #[test]
    fn twill_log_reads_levels_as_operators_type_them() {
        assert_eq!(log_directives(None), ("info".into(), None));
        assert_eq!(log_directives(Some("")), ("info".into(), None));
        // Go's spelling, and a bare level: twill's level, libraries at warn.
        assert_eq!(log_directives(Some("warning")).0, "warn,twill=warn");
        assert_eq!(log_directives(Some("DEBUG")).0, "warn,twill=debug");
        // tracing's syntax passes, with `warning` read as `warn`.
        assert_eq!(
            log_directives(Some("info,twill_node=warning")).0,
            "info,twill_node=warn"
        );
        // Nonsense: the default, and a warning naming the value.
        let (d, problem) = log_directives(Some("twill=loud=1"));
        assert_eq!(d, "info");
        assert!(problem.expect("a warning").contains("twill=loud=1"));
    }
}
