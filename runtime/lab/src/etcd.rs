//! A real etcd server (Debian's etcd-server) in a namespace of the lab — plain, with
//! TLS and client certificates, with authentication, or one member of a cluster — and
//! etcdctl against it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::spawn;
use crate::{Error, Result};

/// How an etcd member serves its clients.
#[derive(Debug, Clone, Default)]
pub struct EtcdSetup {
    /// The member's name (`e0` when empty).
    pub name: String,
    /// TLS on the underlay listener: server certificate, key and the CA whose client
    /// certificates it requires. Loopback in its namespace stays plain http, for the
    /// lab's own etcdctl.
    pub tls: Option<ServerTls>,
    /// The other members, `name=http://ip:2380` each including this one, for a cluster;
    /// empty for a single member.
    pub initial_cluster: Vec<String>,
    /// etcd's `--auth-token-ttl` (seconds), once auth is enabled.
    pub auth_token_ttl: Option<u32>,
}

/// A member's TLS files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the client certificates it accepts (`--client-cert-auth`).
    pub client_ca: PathBuf,
}

/// One etcd member, listening on `<ip>:2379` and on loopback in its namespace; its
/// data directory outlives [`EtcdServer::stop`], so [`EtcdServer::start`] again
/// resumes it. `Drop` kills it.
pub struct EtcdServer {
    ns: String,
    ip: String,
    setup: EtcdSetup,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// root's password once [`EtcdServer::enable_auth`] ran; the lab's etcdctl uses it.
    root_password: Option<String>,
}

impl EtcdServer {
    /// A plain single member in `ns` at `ip`, its data and log in `dir`, started and
    /// answering.
    pub fn new(ns: &str, ip: &str, dir: &Path) -> Result<EtcdServer> {
        Self::with(ns, ip, dir, EtcdSetup::default())
    }

    /// A member set up as `setup` says, started and (a single member) answering; the
    /// members of a cluster answer once a quorum runs (see [`EtcdServer::wait_healthy`]).
    pub fn with(ns: &str, ip: &str, dir: &Path, mut setup: EtcdSetup) -> Result<EtcdServer> {
        if setup.name.is_empty() {
            setup.name = "e0".into();
        }
        let mut server = EtcdServer {
            ns: ns.to_owned(),
            ip: ip.to_owned(),
            data: dir.join(format!("etcd-data-{}", setup.name)),
            log: dir.join(format!("etcd-{}.log", setup.name)),
            setup,
            child: None,
            root_password: None,
        };
        server.spawn()?;
        if server.setup.initial_cluster.is_empty() {
            server.wait_healthy(Duration::from_secs(20))?;
        }
        Ok(server)
    }

    /// The client URL on the underlay (https with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.setup.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:2379", self.ip)
    }

    /// Whether the process runs (it was started and not stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.setup.name
    }

    /// Start (or start again, on its data) and wait up to 20 s until it answers.
    pub fn start(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(20))
    }

    /// Start the process (nothing if it runs).
    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let client = self.url();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("open {}", self.log.display()), e))?;
        let peer = if self.setup.initial_cluster.is_empty() {
            "http://127.0.0.1:2380".to_owned()
        } else {
            format!("http://{}:2380", self.ip)
        };
        let cluster = if self.setup.initial_cluster.is_empty() {
            format!("{}={peer}", self.setup.name)
        } else {
            self.setup.initial_cluster.join(",")
        };
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "etcd",
            "--name",
            &self.setup.name,
        ])
        .arg("--data-dir")
        .arg(&self.data)
        .args([
            "--listen-client-urls",
            &format!("{client},http://127.0.0.1:2379"),
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
        ]);
        if let Some(tls) = &self.setup.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        if let Some(ttl) = self.setup.auth_token_ttl {
            cmd.arg("--auth-token-ttl").arg(ttl.to_string());
        }
        let child = spawn(
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log),
            "etcd",
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Wait until this member answers a health check.
    pub fn wait_healthy(&self, after: Duration) -> Result<()> {
        let start = Instant::now();
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
            what: format!("etcd {} in {} to answer", self.setup.name, self.ns),
            after,
        })
    }

    /// Turn on etcd's authentication: user `root` (password `root_password`) with the
    /// root role, then `auth enable`. The lab's etcdctl authenticates as root from now.
    pub fn enable_auth(&mut self, root_password: &str) -> Result<()> {
        self.etcdctl(&["user", "add", &format!("root:{root_password}")])?;
        self.etcdctl(&["user", "grant-role", "root", "root"])?;
        self.etcdctl(&["auth", "enable"])?;
        self.root_password = Some(root_password.to_owned());
        Ok(())
    }

    /// Stop, and start again with `--auth-token-ttl secs` (tokens that expire soon).
    pub fn restart_with_auth_token_ttl(&mut self, secs: u32) -> Result<()> {
        self.stop();
        self.setup.auth_token_ttl = Some(secs);
        self.start()
    }

    /// A user with a role of the same name granting `permission` (`read`, `write`,
    /// `readwrite`) on every key under `prefix`.
    pub fn add_user(
        &self,
        user: &str,
        password: &str,
        permission: &str,
        prefix: &str,
    ) -> Result<()> {
        self.etcdctl(&["user", "add", &format!("{user}:{password}")])?;
        self.etcdctl(&["role", "add", user])?;
        self.etcdctl(&[
            "role",
            "grant-permission",
            user,
            "--prefix=true",
            permission,
            prefix,
        ])?;
        self.etcdctl(&["user", "grant-role", user, user])?;
        Ok(())
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
            .args(
                self.root_password
                    .iter()
                    .map(|pw| format!("--user=root:{pw}")),
            )
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
