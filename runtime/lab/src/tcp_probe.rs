//! A long-lived TCP connection between two namespaces that notices every stall and
//! reset: the client sends an 8-byte counter every [`INTERVAL`], the server echoes it,
//! and the client records the longest wait for an echo and any error. Used to show
//! that nothing twill does to a running node breaks a pod's connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::in_netns;

/// How often the client sends.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// What the client saw since the last [`TcpProbe::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Round trips completed.
    pub echoes: u64,
    /// The longest time between two echoes.
    pub longest_gap: Duration,
    /// The first error (a reset, a wrong echo), if any; the probe stops at it.
    pub error: Option<String>,
}

/// One connection from `client_ns` to `server_ns`.
pub struct TcpProbe {
    stats: Arc<Mutex<ProbeStats>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpProbe {
    /// Listen on `server_ip:port` in `server_ns`, connect from `client_ns`, start.
    pub fn start(
        client_ns: &str,
        server_ns: &str,
        server_ip: &str,
        port: u16,
    ) -> io::Result<TcpProbe> {
        let addr: SocketAddr = format!("{server_ip}:{port}")
            .parse()
            .map_err(|e| io::Error::other(format!("{server_ip}:{port}: {e}")))?;
        let listener = in_netns(Some(server_ns), move || TcpListener::bind(addr))?;
        let stop = Arc::new(AtomicBool::new(false));
        let server_stop = stop.clone();
        let server = thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 8];
            while !server_stop.load(Ordering::Relaxed) {
                match conn.read_exact(&mut buf) {
                    Ok(()) => {
                        if conn.write_all(&buf).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        let client = in_netns(Some(client_ns), move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })?;
        client.set_nodelay(true)?;
        client.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stats = Arc::new(Mutex::new(ProbeStats::default()));
        let (client_stats, client_stop) = (stats.clone(), stop.clone());
        let client_thread = thread::spawn(move || {
            run_client(client, &client_stats, &client_stop);
        });
        Ok(TcpProbe {
            stats,
            stop,
            threads: vec![server, client_thread],
        })
    }

    /// What was seen since the last call (the error, once set, stays).
    pub fn take(&self) -> ProbeStats {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let out = s.clone();
        s.echoes = 0;
        s.longest_gap = Duration::ZERO;
        out
    }
}

fn run_client(mut conn: TcpStream, stats: &Mutex<ProbeStats>, stop: &AtomicBool) {
    let mut last = Instant::now();
    let mut counter: u64 = 0;
    let fail = |e: String| {
        stats.lock().unwrap_or_else(PoisonError::into_inner).error = Some(e);
    };
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        if let Err(e) = conn.write_all(&counter.to_be_bytes()) {
            return fail(format!("send: {e}"));
        }
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match conn.read(&mut buf[got..]) {
                Ok(0) => return fail("the server closed the connection".into()),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Still waiting: the gap grows.
                    let gap = last.elapsed();
                    let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
                    s.longest_gap = s.longest_gap.max(gap);
                }
                Err(e) => return fail(format!("receive: {e}")),
            }
        }
        if u64::from_be_bytes(buf) != counter {
            return fail(format!("echo {} for {counter}", u64::from_be_bytes(buf)));
        }
        let now = Instant::now();
        {
            let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
            s.echoes += 1;
            s.longest_gap = s.longest_gap.max(now - last);
        }
        last = now;
        thread::sleep(INTERVAL);
    }
}

impl Drop for TcpProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
