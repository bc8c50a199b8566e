//! `twill docker-opts`: flannel's `dist/mk-docker-opts.sh`, reading subnet.env and
//! writing Docker daemon options for a systemd `EnvironmentFile`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use twill_core::subnet_env::SubnetEnv;

use crate::cli::DockerOptsArgs;

/// The file's lines for `env`, as mk-docker-opts.sh writes them: the individual
/// variables (with `-i`, or when neither `-i` nor `-c` is given), then the combined one
/// (with `-c`, or neither).
pub fn render(env: &SubnetEnv, args: &DockerOptsArgs) -> String {
    let names = ["DOCKER_OPT_BIP", "DOCKER_OPT_IPMASQ", "DOCKER_OPT_MTU"];
    let vars: Vec<(&str, String)> = names
        .into_iter()
        .zip(options(env))
        .filter(|(name, _)| !(args.no_ip_masq && *name == "DOCKER_OPT_IPMASQ"))
        .collect();
    let both = !args.individual && !args.combined;
    let mut out = String::new();
    if args.individual || both {
        for (name, value) in &vars {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
    }
    if args.combined || both {
        let combined: Vec<&str> = vars.iter().map(|(_, v)| v.as_str()).collect();
        out.push_str(&format!(
            "{}=\" {}\"\n",
            args.combined_key,
            combined.join(" ")
        ));
    }
    out
}

/// dockerd's options for `env`, as separate arguments (`--bip=…`, `--ip-masq=…`,
/// `--mtu=…`, in that order).
pub fn options(env: &SubnetEnv) -> Vec<String> {
    vec![
        format!("--bip={}/{}", env.subnet.first_host(), env.subnet.prefix()),
        // dockerd masquerades only when twill does not.
        format!("--ip-masq={}", !env.ip_masq),
        format!("--mtu={}", env.mtu),
    ]
}

/// Read subnet.env (waiting up to `--wait`), write the options.
pub fn run(args: &DockerOptsArgs) -> anyhow::Result<()> {
    if args.combined_key.is_empty()
        || !args
            .combined_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("-k {:?}: not a shell variable name", args.combined_key);
    }
    let text = read_waiting(&args.subnet_file, Duration::from_secs(args.wait))?;
    let env = SubnetEnv::parse(&text)
        .with_context(|| format!("{}: not a usable subnet.env", args.subnet_file.display()))?;
    let out = render(&env, args);
    if args.docker_env_file.as_os_str() == "-" {
        print!("{out}");
        return Ok(());
    }
    crate::files::write_atomically(&args.docker_env_file, out.as_bytes())
        .with_context(|| format!("write {}", args.docker_env_file.display()))
}

/// The file's text, waiting up to `wait` for it to appear.
fn read_waiting(path: &Path, wait: Duration) -> anyhow::Result<String> {
    match crate::files::read_waiting(path, wait) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist{}: is twill running on this node (twill run writes it once it holds its lease)?",
            path.display(),
            if wait.is_zero() {
                String::new()
            } else {
                format!(" after {}s", wait.as_secs())
            }
        ),
        result => result.with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &[&str]) -> DockerOptsArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: DockerOptsArgs,
        }
        let mut argv = vec!["docker-opts"];
        argv.extend(flags);
        Wrap::parse_from(argv).args
    }

    fn env(ip_masq: bool) -> SubnetEnv {
        SubnetEnv {
            network: "10.20.0.0/16".parse().expect("network"),
            subnet: "10.20.2.0/24".parse().expect("subnet"),
            mtu: 1450,
            ip_masq,
        }
    }

    #[test]
    fn writes_what_mk_docker_opts_writes() {
        assert_eq!(
            render(&env(false), &args(&[])),
            "DOCKER_OPT_BIP=\"--bip=10.20.2.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
             DOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.20.2.1/24 --ip-masq=true --mtu=1450\"\n"
        );
        assert_eq!(
            render(&env(true), &args(&["-c", "-k", "DOCKER_NETWORK_OPTIONS"])),
            "DOCKER_NETWORK_OPTIONS=\" --bip=10.20.2.1/24 --ip-masq=false --mtu=1450\"\n"
        );
        assert_eq!(
            render(&env(true), &args(&["-i", "-m"])),
            "DOCKER_OPT_BIP=\"--bip=10.20.2.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
        );
    }
}
