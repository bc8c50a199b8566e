//! A throwaway etcd server for the store tests: the real `etcd` binary on loopback,
//! random free ports, a private data directory; killed and removed on drop (also when
//! the test panics). And the small helpers both test files use.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A running etcd that is stopped and deleted on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

/// The etcd binary: `$TWILL_ETCD`, else `etcd` on PATH, else `/usr/bin/etcd`.
fn etcd_binary() -> PathBuf {
    let path = match std::env::var_os("TWILL_ETCD") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
    };
    assert!(
        path.is_file(),
        "etcd not found: apt-get install etcd-server (or set TWILL_ETCD to the etcd binary; tried {})",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A fresh directory under the system temp dir, unique per process and call, named
/// `twill-store-<tag>-…`; the caller removes it.
pub fn private_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "twill-store-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create test directory");
    dir
}

impl Etcd {
    /// Start etcd and wait until it is healthy (it has a leader).
    pub fn start() -> Etcd {
        let binary = etcd_binary();
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut etcd = Etcd {
                child: None,
                dir: private_dir("etcd"),
                client_port: free_port(),
                peer_port: free_port(),
            };
            match etcd.spawn(&binary) {
                Ok(()) => return etcd,
                // Most likely a port taken between probing and binding: try others.
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start; its log:\n{last_log}");
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Stop etcd (SIGKILL) and start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let binary = etcd_binary();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn(&binary) {
                Ok(()) => return,
                Err(log) if Instant::now() > deadline => {
                    panic!("etcd did not restart; its log:\n{log}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open etcd log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot open etcd log: {e}"))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(binary)
            .arg("--name=twill-test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=twill-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .env_remove("ETCD_UNSUPPORTED_ARCH")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(format!("etcd exited with {status}\n{log}"));
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        Err(format!("etcd was not healthy after 30 s\n{log}"))
    }

    /// `GET /health` answers `"health":"true"` once there is a leader.
    fn healthy(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client_port
        );
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A subnet from its text.
pub fn subnet(text: &str) -> twill_core::Subnet {
    text.parse().expect("subnet")
}

/// A vxlan lease's attributes for the node at `ip`.
pub fn attrs(ip: [u8; 4]) -> twill_core::lease::LeaseAttrs {
    twill_core::lease::LeaseAttrs::new(
        std::net::Ipv4Addr::from(ip),
        "vxlan",
        Some(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#),
    )
    .expect("attrs")
}

/// Seconds from now until `t` (0 if past).
pub fn secs_from_now(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::now())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The next event of a watch, failing after 20 s.
pub async fn next(
    stream: &mut (impl futures::Stream<Item = twill_store::WatchEvent> + Unpin),
) -> twill_store::WatchEvent {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("watch delivered nothing within 20 s")
        .expect("watch stream ended")
}
