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
mod files;
mod plugins;
mod status;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Invoked as `flannel` (from a CNI bin directory): the CNI plugin, which speaks
    // through CNI_* variables, stdin and stdout only.
    if cni::invoked_as_plugin() {
        return cni::main();
    }
    let cli = cli::Cli::parse();
    init_logging();
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
        cli::Command::Run(args) => runtime.block_on(twill_node::run(args.options())),
        cli::Command::Demo(args) => runtime.block_on(demo::run(args)),
        cli::Command::Config(cli::ConfigCommand::Set(args)) => runtime.block_on(config::set(args)),
        cli::Command::Status(args) => runtime.block_on(status::run(args.api_addr)),
        cli::Command::Doctor(args) => {
            let args = doctor::Args {
                api_addr: args.api_addr,
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
        cli::Command::InstallCni(args) => cni::install(&args.bin_dir, args.conf_dir.as_deref()),
        // Synchronous; needs no root, store or network namespace.
        cli::Command::Plugin(command) => return plugins::command(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
