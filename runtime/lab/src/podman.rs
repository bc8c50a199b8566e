//! Real podman (4.3, CNI backend) in a namespace of the lab, with its state under the
//! lab's directory and containers from a busybox root filesystem (no registry is
//! reachable). See `../shared/reference/containers.md` for the flags. `Drop` removes
//! the containers and unmounts what podman left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{Error, Result};

/// Link Debian's CNI plugins that a flannel-style network delegates to (`bridge`,
/// `host-local`, `portmap`, `loopback` from containernetworking-plugins) into `bin`.
pub fn link_cni_plugins(bin: &Path) -> Result<()> {
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        let link = bin.join(plugin);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("/usr/lib/cni/{plugin}"), &link)
                .map_err(|e| Error::io(format!("link {}", link.display()), e))?;
        }
    }
    Ok(())
}

/// podman for one node namespace.
pub struct Podman {
    ns: String,
    dir: PathBuf,
    /// The root filesystem containers run from.
    pub rootfs: PathBuf,
}

impl Podman {
    /// podman in `ns` with its state under `dir`, CNI plugins from `cni_bin`, networks
    /// (conflists) from `dir/cni`.
    pub fn new(ns: &str, dir: &Path, cni_bin: &Path) -> Result<Podman> {
        crate::require(
            "a test with podman",
            &[
                ("podman", "podman"),
                ("runc", "runc"),
                ("nsenter", "util-linux"),
                ("busybox", "busybox-static"),
            ],
        )?;
        let mkdir = |p: &Path| {
            fs::create_dir_all(p).map_err(|e| Error::io(format!("create {}", p.display()), e))
        };
        for sub in ["cni", "tmp"] {
            mkdir(&dir.join(sub))?;
        }
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
             network_config_dir = \"{}\"\n[engine]\ntmp_dir = \"{}\"\n",
            cni_bin.display(),
            dir.join("cni").display(),
            dir.join("tmp").display()
        );
        let conf_path = dir.join("containers.conf");
        fs::write(&conf_path, conf)
            .map_err(|e| Error::io(format!("write {}", conf_path.display()), e))?;
        let rootfs = dir.join("rootfs");
        crate::rootfs::busybox(&rootfs)?;
        Ok(Podman {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            rootfs,
        })
    }

    /// Where network conflists go (`<name>.conflist`).
    pub fn network_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// `podman ARGS` in the namespace, whatever its status.
    pub fn podman_output(&self, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--network-config-dir")
            .arg(self.dir.join("cni"))
            .args([
                "--events-backend",
                "none",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "podman".into(),
                source,
            })
    }

    /// `podman ARGS`; its stdout, or an error with its stderr.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let out = self.podman_output(args)?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("podman {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `podman run -d` arguments for container `name` on `network` running `cmd`.
    pub fn run_args<'a>(
        &'a self,
        name: &'a str,
        network: &'a str,
        cmd: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            self.rootfs.to_str().unwrap_or_default(),
        ];
        args.extend(cmd);
        args
    }

    /// Run container `name` on `network`; its IPv4 address on eth0.
    pub fn run(&self, name: &str, network: &str, cmd: &[&str]) -> Result<String> {
        self.podman(&self.run_args(name, network, cmd))?;
        let addr = self.podman(&["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"])?;
        addr.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .map(str::to_owned)
            .ok_or_else(|| Error::Setup(format!("no IPv4 address on {name}'s eth0: {addr}")))
    }

    /// Remove every container (podman calls the CNI DEL) and unmount what is left.
    pub fn clean(&self) {
        let _ = self.podman_output(&["rm", "-a", "-f", "-t", "0"]);
        crate::cmd::unmount_all_under(&self.dir);
        // podman's CNI library caches results under /var/lib/cni; once our containers
        // are gone the directories are empty unless someone else uses them (then
        // remove_dir fails and they stay).
        let _ = fs::remove_dir("/var/lib/cni/results");
        let _ = fs::remove_dir("/var/lib/cni");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.clean();
    }
}
