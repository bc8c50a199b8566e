//! Traffic between pods: one ping, a ping in the background, the reachability matrix
//! of a set of pods, an iperf3 run.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd::{spawn, succeeds};
use crate::interrupt::Interrupt;
use crate::netns;
use crate::process::wait_or_kill;
use crate::{Error, Result};

/// Whether one ping from namespace `ns` to `dst` is answered within a second.
pub fn ping(ns: &str, dst: &str) -> bool {
    succeeds(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
}

/// Reachability from row to column: `None` on the diagonal.
pub type Matrix = Vec<Vec<Option<bool>>>;

/// How many pairs of a [`Matrix`] reach each other.
pub fn reachable(m: &Matrix) -> usize {
    m.iter().flatten().filter(|r| **r == Some(true)).count()
}

/// Ping every ordered pair of `pods` (`(namespace, address)`) until all reach each
/// other or `timeout` passes; pairs that answered are not pinged again. `progress` is
/// told the count whenever it changes; `between` runs before each sweep and may end
/// the wait with an error (a node that died). Returns the last matrix.
pub fn converge<E: From<Error>>(
    pods: &[(String, String)],
    timeout: Duration,
    interrupt: &Interrupt,
    mut progress: impl FnMut(usize, usize),
    mut between: impl FnMut() -> Result<(), E>,
) -> Result<Matrix, E> {
    let n = pods.len();
    let total = n * n.saturating_sub(1);
    let start = Instant::now();
    let mut reach = vec![vec![None; n]; n];
    let mut reported = usize::MAX;
    loop {
        between()?;
        for (from, row) in reach.iter_mut().enumerate() {
            for (to, cell) in row.iter_mut().enumerate() {
                if from != to && *cell != Some(true) {
                    *cell = Some(ping(&pods[from].0, &pods[to].1));
                }
            }
        }
        let ok = reachable(&reach);
        if ok != reported {
            progress(ok, total);
            reported = ok;
        }
        if ok == total || start.elapsed() > timeout {
            return Ok(reach);
        }
        interrupt.pause(Duration::from_millis(300))?;
    }
}

/// A ping running in the background, 10 per second.
pub struct PingRun {
    child: Child,
}

/// What a finished [`PingRun`] counted.
#[derive(Clone, Debug)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    /// ping's "… packets transmitted, … received …" line.
    pub line: String,
}

impl PingRun {
    /// Whether ping is still sending (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Start `count` pings from namespace `ns` to `dst`, one every 0.1 s.
    pub fn start(ns: &str, dst: &str, count: u32) -> Result<PingRun> {
        let child = spawn(
            Command::new("ip")
                .args(["netns", "exec", ns, "ping", "-i", "0.1", "-c"])
                .arg(count.to_string())
                .args(["-W", "1", dst])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            "ping",
        )?;
        Ok(PingRun { child })
    }

    /// Wait for the ping to end and read its summary.
    pub fn finish(self) -> Result<PingSummary> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| Error::io("wait for ping", e))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .ok_or_else(|| Error::PingSummary(text.clone()))?
            .to_owned();
        let numbers: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        match numbers[..] {
            [transmitted, received, ..] => Ok(PingSummary {
                transmitted,
                received,
                line,
            }),
            _ => Err(Error::PingSummary(text)),
        }
    }
}

/// What iperf3's receiving side counted.
#[derive(Clone, Copy, Debug)]
pub struct Iperf {
    pub bits_per_second: f64,
    pub bytes: f64,
    pub seconds: f64,
}

/// iperf3 for `seconds` with `streams` parallel streams from namespace `client_ns` to
/// a server in `server_ns` at `dst`. The client retries for 10 s while the
/// server is not up yet; whatever happens, no iperf3 stays behind in either namespace.
pub fn iperf3(
    server_ns: &str,
    client_ns: &str,
    dst: &str,
    seconds: u32,
    streams: u32,
) -> Result<Iperf> {
    let (secs, par) = (seconds.to_string(), streams.to_string());
    let client = [
        "-c",
        dst,
        "-t",
        &secs,
        "-P",
        &par,
        "-J",
        "--connect-timeout",
        "2000",
    ];
    let result = iperf3_run(server_ns, client_ns, &client, seconds);
    netns::kill_all(server_ns, Some("iperf3"));
    netns::kill_all(client_ns, Some("iperf3"));
    result
}

fn spawn_iperf(ns: &str, args: &[&str], stdout: Stdio) -> Result<Child> {
    spawn(
        Command::new("ip")
            .args(["netns", "exec", ns, "iperf3"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null()),
        "iperf3",
    )
}

/// A server in `server_ns`, then the client with `client_args` until it gets
/// through (10 s) or fails.
fn iperf3_run(
    server_ns: &str,
    client_ns: &str,
    client_args: &[&str],
    seconds: u32,
) -> Result<Iperf> {
    // A server that serves every attempt: a one-off server (`-1`) would be used up by
    // a client that connected and then failed, and every retry would fail.
    let mut srv = spawn_iperf(server_ns, &["-s"], Stdio::null())?;
    let start = Instant::now();
    let result = loop {
        let mut cl = spawn_iperf(client_ns, client_args, Stdio::piped())?;
        // Read its JSON on a thread, so a full pipe never stalls it.
        let reader = cl.stdout.take().map(|mut out| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                text
            })
        });
        let deadline = Duration::from_secs(u64::from(seconds) + 30);
        let Some(status) = wait_or_kill(&mut cl, deadline) else {
            break Err(Error::Iperf(format!(
                "the client did not end within {deadline:?}"
            )));
        };
        let text = reader.and_then(|r| r.join().ok()).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(err) = v["error"].as_str() {
            let retry = err.contains("unable to connect") || err.contains("refused");
            if retry && start.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            break Err(Error::Iperf(err.to_owned()));
        }
        if !status.success() {
            break Err(Error::Iperf(format!("the client failed ({status})")));
        }
        let sum = &v["end"]["sum_received"];
        match (
            sum["bits_per_second"].as_f64(),
            sum["bytes"].as_f64(),
            sum["seconds"].as_f64(),
        ) {
            (Some(bits_per_second), Some(bytes), Some(seconds)) => {
                break Ok(Iperf {
                    bits_per_second,
                    bytes,
                    seconds,
                });
            }
            _ => break Err(Error::Iperf("JSON without end.sum_received".into())),
        }
    };
    let _ = srv.kill();
    let _ = srv.wait();
    result
}
