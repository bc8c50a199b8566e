//! A real dockerd (Debian's docker.io: dockerd, containerd, runc) in a namespace of the
//! lab, with state of its own under the lab's directory, and a busybox image built
//! from `busybox-static` (no registry is reachable). See
//! `../shared/reference/containers.md` for why it is started this way. `Drop` removes
//! the containers, stops dockerd and containerd, and unmounts what they left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{output, spawn};
use crate::process;
use crate::{Error, Result};

/// One containerd + dockerd pair in a namespace.
pub struct Dockerd {
    dir: PathBuf,
    containerd: Option<Child>,
    dockerd: Option<Child>,
}

impl Dockerd {
    /// Start containerd and dockerd in namespace `ns` with their state under `dir`,
    /// dockerd with `options` (e.g. `--bip=… --mtu=…`), and wait up to 30 s until
    /// it answers.
    pub fn start(ns: &str, dir: &Path, options: &[String]) -> Result<Dockerd> {
        crate::require(
            "a test with dockerd",
            &[
                ("dockerd", "docker.io"),
                ("containerd", "containerd"),
                ("runc", "runc"),
                ("nsenter", "util-linux"),
                ("busybox", "busybox-static"),
            ],
        )?;
        let cd = dir.join("containerd");
        fs::create_dir_all(&cd).map_err(|e| Error::io(format!("create {}", cd.display()), e))?;
        let log = |name: &str| {
            let path = dir.join(name);
            fs::File::create(&path).map_err(|e| Error::io(format!("create {}", path.display()), e))
        };
        let netns = format!("--net=/run/netns/{ns}");
        let mut me = Dockerd {
            dir: dir.to_owned(),
            containerd: None,
            dockerd: None,
        };
        me.containerd = Some(spawn(
            Command::new("nsenter")
                .arg(&netns)
                .arg("containerd")
                .arg("--root")
                .arg(cd.join("root"))
                .arg("--state")
                .arg(cd.join("state"))
                .arg("--address")
                .arg(cd.join("sock"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log("containerd.log")?),
            "containerd",
        )?);
        wait_until(Duration::from_secs(15), "containerd's socket", || {
            cd.join("sock").exists()
        })?;
        me.dockerd = Some(spawn(
            Command::new("nsenter")
                .arg(&netns)
                .arg("dockerd")
                .arg("--data-root")
                .arg(dir.join("root"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"))
                .arg("-H")
                .arg(format!("unix://{}", dir.join("docker.sock").display()))
                .arg("--containerd")
                .arg(cd.join("sock"))
                .args(options)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log("dockerd.log")?),
            "dockerd",
        )?);
        wait_until(Duration::from_secs(30), "dockerd to answer", || {
            me.docker(&["info"]).is_ok()
        })
        .map_err(|e| {
            Error::Setup(format!(
                "{e}; dockerd.log:\n{}",
                process::log_tail(&dir.join("dockerd.log"), 20)
            ))
        })?;
        Ok(me)
    }

    /// `docker ARGS` against this daemon; its stdout.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let host = format!("unix://{}", self.dir.join("docker.sock").display());
        let mut cmd = vec!["/usr/bin/docker", "-H", &host];
        cmd.extend(args);
        output(&cmd)
    }

    /// Import a busybox image tagged `tag` from `/bin/busybox` (busybox-static).
    pub fn import_busybox(&self, tag: &str) -> Result<()> {
        let root = self.dir.join("rootfs");
        crate::rootfs::busybox(&root)?;
        let tar = self.dir.join("rootfs.tar");
        output(&[
            "tar",
            "-C",
            root.to_str().unwrap_or_default(),
            "-cf",
            tar.to_str().unwrap_or_default(),
            ".",
        ])?;
        self.docker(&["import", tar.to_str().unwrap_or_default(), tag])
            .map(drop)
    }

    /// `docker run -d` a container `name` of `image` running `cmd`; its address on
    /// docker0.
    pub fn run(&self, name: &str, image: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=1024:1024",
            image,
        ];
        args.extend(cmd);
        self.docker(&args)?;
        Ok(self
            .docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])?
            .trim()
            .to_owned())
    }

    /// Stop everything; idempotent.
    pub fn stop(&mut self) {
        if self.dockerd.is_some()
            && let Ok(ids) = self.docker(&["ps", "-aq"])
        {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        for child in [self.dockerd.take(), self.containerd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = process::stop(&mut child, Duration::from_secs(10));
        }
        // Mounts dockerd and containerd left under the state directory, deepest first.
        crate::cmd::unmount_all_under(&self.dir);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until(after: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < after {
        if ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
    Err(Error::Timeout {
        what: what.to_owned(),
        after,
    })
}
