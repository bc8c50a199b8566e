//! Real containers for `twill demo --runtime docker|podman`: one dockerd (started with
//! `twill docker-opts`' options) or one podman (with twill as flannel's CNI plugin and
//! kube-flannel's conflist) per node, each running one busybox container.

use std::path::Path;

use anyhow::Context;
use twill_core::subnet_env::SubnetEnv;
use twill_lab::NodeNet;
use twill_lab::docker::Dockerd;
use twill_lab::podman::Podman;

use crate::cli::Runtime;

/// The runtime serving one node, held for its `Drop`, which removes its containers.
pub enum Host {
    Docker(#[expect(dead_code, reason = "held for its Drop")] Box<Dockerd>),
    Podman(#[expect(dead_code, reason = "held for its Drop")] Box<Podman>),
}

/// The command every container runs.
const SLEEP: [&str; 2] = ["/bin/sleep", "1000000"];

/// Start `runtime` on `node` with its state in `dir`, and container `name` in it:
/// the runtime, the container's PID (for its network namespace) and its address.
pub fn start(
    runtime: Runtime,
    node: &NodeNet,
    subnet_file: &Path,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Host, u32, String)> {
    let text = std::fs::read_to_string(subnet_file)
        .with_context(|| format!("read {}", subnet_file.display()))?;
    let env = SubnetEnv::parse(&text)?;
    match runtime {
        Runtime::None => anyhow::bail!("no container runtime asked for"),
        Runtime::Docker => {
            let d = Dockerd::start(&node.ns, dir, &crate::docker_opts::options(&env))?;
            d.import_busybox("twill-demo:1")?;
            let ip = d.run(name, "twill-demo:1", &SLEEP)?;
            let pid = d.docker(&["inspect", "-f", "{{.State.Pid}}", name])?;
            Ok((Host::Docker(Box::new(d)), parse_pid(&pid)?, ip))
        }
        Runtime::Podman => {
            let bin = dir.join("cni-bin");
            crate::cni::install_plugin(&bin)?;
            twill_lab::podman::link_cni_plugins(&bin)?;
            let p = Podman::new(&node.ns, dir, &bin)?;
            let network = format!("{name}-net");
            let mut conf: serde_json::Value =
                serde_json::from_str(crate::cni::KUBE_FLANNEL_CONFLIST)?;
            conf["name"] = network.clone().into();
            let flannel = &mut conf["plugins"][0];
            flannel["subnetFile"] = subnet_file.display().to_string().into();
            flannel["dataDir"] = dir.join("flannel").display().to_string().into();
            flannel["ipam"] =
                serde_json::json!({"dataDir": dir.join("ipam").display().to_string()});
            std::fs::write(
                p.network_dir().join(format!("{network}.conflist")),
                conf.to_string(),
            )?;
            let ip = p.run(name, &network, &SLEEP)?;
            let pid = p.podman(&["inspect", "-f", "{{.State.Pid}}", name])?;
            Ok((Host::Podman(Box::new(p)), parse_pid(&pid)?, ip))
        }
    }
}

fn parse_pid(text: &str) -> anyhow::Result<u32> {
    text.trim()
        .parse()
        .with_context(|| format!("container PID {text:?}"))
}
