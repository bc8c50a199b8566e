//! A real etcd server (Debian's etcd-server) in a namespace of the lab, and etcdctl
//! against it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::spawn;
use crate::{Error, Result};

/// One etcd member, listening on `<ip>:2379` and on loopback in its namespace; its
/// data directory outlives [`EtcdServer::stop`], so [`EtcdServer::start`] again
/// resumes it. `Drop` kills it.
pub struct EtcdServer {
    ns: String,
    ip: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl EtcdServer {
    /// A server in `ns` at `ip`, its data and log in `dir`, started and answering.
    pub fn new(ns: &str, ip: &str, dir: &Path) -> Result<EtcdServer> {
        let mut server = EtcdServer {
            ns: ns.to_owned(),
            ip: ip.to_owned(),
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            child: None,
        };
        server.start()?;
        Ok(server)
    }

    /// The client URL on the underlay.
    pub fn url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// Start (or start again, on its data) and wait up to 20 s until it answers.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let client = self.url();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("open {}", self.log.display()), e))?;
        let child = spawn(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns,
                    "etcd",
                    "--name",
                    "e0",
                    "--data-dir",
                ])
                .arg(&self.data)
                .args([
                    "--listen-client-urls",
                    &format!("{client},http://127.0.0.1:2379"),
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-cluster",
                    "e0=http://127.0.0.1:2380",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            "etcd",
        )?;
        self.child = Some(child);
        let start = Instant::now();
        let after = Duration::from_secs(20);
        while start.elapsed() < after {
            if self
                .etcdctl_output(&["endpoint", "health"])?
                .status
                .success()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(Error::Timeout {
            what: format!("etcd in {} to answer", self.ns),
            after,
        })
    }

    /// Kill the server; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// etcdctl (API v3) in the server's namespace, whatever its status.
    pub fn etcdctl_output(&self, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcdctl"])
            .args(["--endpoints", "http://127.0.0.1:2379"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "etcdctl".into(),
                source,
            })
    }

    /// etcdctl; its stdout, or an error with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = self.etcdctl_output(args)?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("etcdctl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
