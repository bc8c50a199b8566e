//! Namespaces by name: their processes, and the one place of the workspace that enters
//! one (`setns` on a fresh thread, never on a thread anybody else uses).

use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::cmd::{output, run};

/// The pids of the processes in namespace `ns` (none if it cannot be read).
pub fn pids(ns: &str) -> Vec<String> {
    output(&["ip", "netns", "pids", ns])
        .map(|o| o.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// SIGKILL every process in `ns` (only those whose `comm` is `comm`, if given) and wait
/// until they are gone, 5 s at most.
pub fn kill_all(ns: &str, comm: Option<&str>) {
    let matching = || -> Vec<String> {
        pids(ns)
            .into_iter()
            .filter(|pid| {
                comm.is_none_or(|want| {
                    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == want)
                })
            })
            .collect()
    };
    let start = Instant::now();
    loop {
        let pids = matching();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
            return;
        }
        for pid in &pids {
            let _ = run(&["kill", "-KILL", pid]);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Run `f` on a fresh thread inside network namespace `ns` (`None`: this process's
/// own), so no other thread ever changes namespace; a socket keeps the namespace it was
/// made in, so the result can be used from any thread.
pub fn in_netns<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = ns.map(|n| Path::new("/run/netns").join(n));
    thread::spawn(move || {
        if let Some(path) = path {
            let file = fs::File::open(&path)?;
            #[allow(
                clippy::disallowed_methods,
                reason = "the workspace's one setns: on this fresh thread, which ends with f"
            )]
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// A TCP proxy: listens in one namespace, connects in another (loopback addresses
/// only, in the lab's users). [`Proxy::stop`] (or drop) ends it and its connections.
pub struct Proxy {
    /// Where it listens.
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(
        listen_ns: Option<&str>,
        listen: SocketAddr,
        connect_ns: Option<&str>,
        target: SocketAddr,
    ) -> io::Result<Proxy> {
        let listener = in_netns(listen_ns, move || {
            let l = TcpListener::bind(listen)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let connect_ns = connect_ns.map(str::to_owned);
        let (s, c) = (stop.clone(), conns.clone());
        let thread = thread::spawn(move || accept_loop(&listener, &s, &c, connect_ns, target));
        Ok(Proxy {
            local,
            stop,
            conns,
            thread: Some(thread),
        })
    }

    /// Stop accepting and cut every open connection.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    conns: &Arc<Mutex<Vec<TcpStream>>>,
    connect_ns: Option<String>,
    target: SocketAddr,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let (conns, ns) = (conns.clone(), connect_ns.clone());
                thread::spawn(move || {
                    if let Err(e) = forward(client, ns.as_deref(), target, &conns) {
                        tracing::debug!("lab proxy to {target}: {e}");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::debug!("lab proxy accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn forward(
    client: TcpStream,
    ns: Option<&str>,
    target: SocketAddr,
    conns: &Mutex<Vec<TcpStream>>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = in_netns(ns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2))
    })?;
    {
        let mut list = conns.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|c| c.peer_addr().is_ok());
        list.push(client.try_clone()?);
        list.push(upstream.try_clone()?);
    }
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    c_write.flush()
}
