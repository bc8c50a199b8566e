//! twill-datapath: the host half of a backend that exports `twill:backend/datapath`
//! (udp). A [`Pump`] is two OS threads, each with its own instance of the plugin:
//!
//! - out ([`out`]): read from the TUN device (a `virtio_net_hdr` before each packet;
//!   TCP super-packets of up to 64 KiB when the device does TSO) until 256 packets or
//!   512 KiB; super-packets are cut into the MSS-sized packets the wire carries
//!   ([`offload::segment`]); one `encap` call; runs of datagrams to one peer leave as
//!   UDP GSO messages ([`gso`]), all in one `sendmmsg`; ICMP replies go back into the
//!   TUN device.
//! - in ([`inbound`]): `recvmmsg` with UDP GRO (a message may hold many datagrams of
//!   one sender), packed back to back; one `decap` call; runs of one TCP flow are
//!   merged into one GSO super-packet ([`offload::Coalescer`]) and written with one
//!   `writev` ([`tun_write`]).
//!
//! The pump takes the TUN device and socket the plugin had the host open in its
//! `init` from the plugin host itself. Whatever the plugin answers, the host's
//! [`twill_plugin_host::Confinement`] decides what may leave or enter. Lease changes
//! reach both instances through a channel, drained between batches. Buffers are
//! allocated once per thread. A trap in either instance stops the pump and is reported
//! through [`Pump::failure`]; the daemon restarts the backend and the pump with backoff.
//!
//! It counts through [`Counters`] and knows nothing of the API or the daemon. The
//! unsafe system calls are `twill-net`'s; this crate has none.
#![forbid(unsafe_code)]

pub mod counters;
mod gso;
mod heads;
mod inbound;
pub mod offload;
mod out;
mod tun_write;

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use twill_core::lease::LeaseEvent;
use twill_core::{Subnet, error_chain};
use twill_net::datapath::Tun;
use twill_plugin_host::{CallError, Datapath, Grant, Plugin, PluginHost, PluginStats};

pub use counters::{Counters, Direction, DropReason};
pub(crate) use heads::Answer;
pub use heads::HEAD_BYTES;

/// Packets per batch (and per plugin call), before segmentation.
pub const BATCH: usize = 64;
/// How long a thread waits for traffic before it looks at its channel again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Why the pump did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error(
        "backend {plugin} exports a data path but opened no TUN device (datapath-host.open-tun)"
    )]
    NoTun { plugin: String },
    #[error(
        "backend {plugin} exports a data path but bound no UDP socket (datapath-host.bind-udp)"
    )]
    NoSocket { plugin: String },
    #[error("start the data path of {plugin}")]
    Instance {
        plugin: String,
        #[source]
        source: CallError,
    },
    #[error("spawn the {thread} thread")]
    Spawn {
        thread: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread panicked")]
    Panicked,
}

/// What the pump needs from the daemon to start.
pub struct Setup<'a> {
    pub host: &'a PluginHost,
    pub plugin: &'a Plugin,
    pub grant: Grant,
    pub stats: Arc<PluginStats>,
    /// The `Backend` object of the network config, as the plugin's `attach` gets it.
    pub config: &'a str,
    pub own: Subnet,
    pub counters: Arc<dyn Counters>,
}

/// The running data path.
pub struct Pump {
    updates: Vec<mpsc::Sender<Vec<LeaseEvent>>>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Pump {
    /// Start both threads on the TUN device and socket the plugin had the host open;
    /// both instances know `peers` before the first packet.
    pub fn start(setup: Setup<'_>, peers: &[LeaseEvent]) -> Result<Pump, PumpError> {
        let plugin = &setup.plugin.name;
        let resources = setup.host.datapath_resources(plugin).unwrap_or_default();
        let tun = resources
            .tun
            .and_then(|t| t.tun)
            .ok_or_else(|| PumpError::NoTun {
                plugin: plugin.clone(),
            })?;
        let socket = resources
            .udp
            .and_then(|(_, s)| s)
            .ok_or_else(|| PumpError::NoSocket {
                plugin: plugin.clone(),
            })?;
        let instance = || -> Result<Datapath, PumpError> {
            let mut dp = setup
                .host
                .datapath(
                    setup.plugin,
                    setup.grant.clone(),
                    setup.stats.clone(),
                    setup.config,
                    setup.own,
                )
                .map_err(|source| PumpError::Instance {
                    plugin: plugin.clone(),
                    source,
                })?;
            dp.update(peers)?;
            Ok(dp)
        };
        let (out_dp, in_dp) = (instance()?, instance()?);
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let (out_tx, out_rx) = mpsc::channel();
        let (in_tx, in_rx) = mpsc::channel();
        let gso = twill_net::datapath::udp_gso_supported(&socket);
        let shared = Shared {
            tun,
            socket,
            counters: setup.counters.clone(),
            stop: stop.clone(),
            failed: failed.clone(),
            plugin: plugin.clone(),
            gso: Arc::new(AtomicBool::new(gso)),
        };
        let out = shared.spawn("udp-out", "out", move |s| s.run_out(out_dp, out_rx))?;
        let inbound = match shared.spawn("udp-in", "in", move |s| s.run_in(in_dp, in_rx)) {
            Ok(t) => t,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = out.join();
                return Err(e);
            }
        };
        tracing::info!(
            plugin = %plugin, batch = BATCH, tso = shared.tun.tso(), gso,
            "udp data path running"
        );
        Ok(Pump {
            updates: vec![out_tx, in_tx],
            stop,
            failed,
            threads: vec![out, inbound],
        })
    }

    /// Hand lease changes to both instances.
    pub fn update(&self, events: &[LeaseEvent]) {
        if events.is_empty() {
            return;
        }
        for tx in &self.updates {
            let _ = tx.send(events.to_vec());
        }
    }

    /// Why the pump stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        failed.or_else(|| {
            self.threads
                .iter()
                .any(|t| t.is_finished())
                .then(|| "a udp data-path thread ended".to_owned())
        })
    }

    /// Stop both threads and wait for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What both threads share.
#[derive(Clone)]
struct Shared {
    tun: Arc<Tun>,
    socket: Arc<UdpSocket>,
    counters: Arc<dyn Counters>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    plugin: String,
    /// Whether UDP GSO sends work (probed at start, turned off if the kernel refuses).
    gso: Arc<AtomicBool>,
}

impl Shared {
    /// A thread named `name` running `body`; an error or panic is logged and recorded
    /// as the pump's failure.
    fn spawn(
        &self,
        name: &'static str,
        direction: &'static str,
        body: impl FnOnce(&Shared) -> Result<(), PumpError> + Send + 'static,
    ) -> Result<thread::JoinHandle<()>, PumpError> {
        let shared = self.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&shared)))
                        .unwrap_or(Err(PumpError::Panicked));
                if let Err(e) = result {
                    shared.fail(direction, &e);
                }
            })
            .map_err(|source| PumpError::Spawn {
                thread: name,
                source,
            })
    }

    fn fail(&self, direction: &str, e: &PumpError) {
        let message = format!("udp data path ({direction}) stopped: {}", error_chain(e));
        tracing::error!("{message}");
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(message);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Hand queued lease changes to the instance (and its confinement).
    fn drain_updates(
        &self,
        dp: &mut Datapath,
        rx: &mpsc::Receiver<Vec<LeaseEvent>>,
    ) -> Result<(), PumpError> {
        while let Ok(events) = rx.try_recv() {
            dp.update(&events)?;
        }
        Ok(())
    }

    /// Count a batch's packets the host refused to act on, and say so once.
    fn denied(&self, n: u64, what: &str, warned: &mut bool) {
        if n == 0 {
            return;
        }
        self.counters.dropped(DropReason::Denied, n);
        if !*warned {
            *warned = true;
            tracing::warn!(
                plugin = %self.plugin,
                "denied: the data path asked to {what}; dropped (counted as reason=denied)"
            );
        }
    }
}

/// An I/O error naming what failed.
fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PumpError {
    let what = what.into();
    move |source| PumpError::Io { what, source }
}
