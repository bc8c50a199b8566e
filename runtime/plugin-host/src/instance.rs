//! One backend instance: a dedicated OS thread that owns the Store and the bindings,
//! and an async handle that sends it calls. A trap poisons the Store (wasmtime's
//! design), so after one the instance refuses further calls with [`CallError::Trap`].

use std::fmt;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

/// From how many lease events on a batch the route table may be listed once for the
/// call instead of looked up route by route: when the batch also holds at least an
/// eighth of the peers (a listing costs about what eight lookups cost per route).
const BULK_ROUTES: usize = 64;

use tokio::sync::oneshot;
use twill_core::Subnet;
use twill_core::lease::LeaseEvent;
use wasmtime::Store;

use crate::bindings::{self as wit, BackendGuest};
use crate::convert::{event_to_wit, node_to_wit, subnet_from_wit, subnet_to_wit};
use crate::state::{Held, PluginState, PluginStats};
use crate::{Grant, Plugin, PluginHost};

/// What the node tells a backend at `init`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The config's `Backend` object as JSON text.
    pub config: String,
    /// The `BackendData` of this node's previous lease, if it had one of this type.
    pub previous_data: Option<String>,
}

impl NodeInfo {
    /// For a node without a previous lease of this backend.
    pub fn fresh(config: &str) -> Self {
        NodeInfo {
            config: config.to_owned(),
            previous_data: None,
        }
    }
}

/// What a backend registers with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `BackendType` to publish.
    pub backend_type: String,
    /// `BackendData` to publish (JSON text), if any.
    pub backend_data: Option<String>,
    /// The MTU for subnet.env.
    pub mtu: u32,
}

/// The case of a backend's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The host refused a request.
    Denied,
    /// An object did not exist.
    NotFound,
    /// An object conflicted.
    Exists,
    /// Bad input or config.
    Invalid,
    /// The kernel refused.
    Kernel,
    /// Not supported.
    Unsupported,
}

/// An error a backend returned (not a trap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// Which case.
    pub kind: ErrorKind,
    /// The backend's message.
    pub message: String,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Denied => "denied",
            ErrorKind::NotFound => "not found",
            ErrorKind::Exists => "exists",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Kernel => "kernel",
            ErrorKind::Unsupported => "unsupported",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl From<wit::Error> for BackendError {
    fn from(e: wit::Error) -> Self {
        let (kind, message) = match e {
            wit::Error::Denied(m) => (ErrorKind::Denied, m),
            wit::Error::NotFound(m) => (ErrorKind::NotFound, m),
            wit::Error::Exists(m) => (ErrorKind::Exists, m),
            wit::Error::Invalid(m) => (ErrorKind::Invalid, m),
            wit::Error::Kernel(m) => (ErrorKind::Kernel, m),
            wit::Error::Unsupported(m) => (ErrorKind::Unsupported, m),
        };
        // The plugin's text reaches the log and the API: cut and escaped as its log
        // lines are.
        Self {
            kind,
            message: crate::imports::log::clean(&message),
        }
    }
}

/// What a backend did for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOutcome {
    /// The peer's subnet (as the backend reported it; `None` if it sent an invalid one).
    pub subnet: Option<Subnet>,
    /// What is programmed for the peer, or this peer's error.
    pub result: Result<String, BackendError>,
}

impl PeerOutcome {
    fn from_wit(o: wit::PeerOutcome) -> Self {
        Self {
            subnet: subnet_from_wit(o.subnet),
            result: o
                .outcome
                .map(|programmed| crate::imports::log::clean(&programmed))
                .map_err(BackendError::from),
        }
    }
}

/// A call into a backend that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The backend returned an error.
    #[error("backend {plugin}: {function} failed: {error}")]
    Backend {
        /// The plugin's name.
        plugin: String,
        /// The exported function.
        function: &'static str,
        /// Its error.
        error: BackendError,
    },
    /// The backend trapped (panic, deadline, memory limit, host bug); the instance is
    /// unusable from now on.
    #[error("backend {plugin}: {function} trapped: {message}")]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// The exported function.
        function: &'static str,
        /// The trap with its cause chain.
        message: String,
    },
    /// The instance's thread is gone.
    #[error("backend {plugin} is not running")]
    Gone {
        /// The plugin's name.
        plugin: String,
    },
}

type Reply<T> = oneshot::Sender<Result<T, CallError>>;

enum Command {
    Init(NodeInfo, Reply<Registration>),
    Start(Subnet, Reply<()>),
    OnLeases(Vec<LeaseEvent>, Reply<Vec<PeerOutcome>>),
    Shutdown(Reply<()>),
    /// What the instance holds (read from its Store, no guest code: also after a trap).
    Held(oneshot::Sender<Held>),
}

/// A running backend instance.
pub struct Backend {
    plugin: String,
    tx: mpsc::Sender<Command>,
    thread: Option<thread::JoinHandle<()>>,
    stats: Arc<PluginStats>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

pub(crate) fn spawn(
    host: &PluginHost,
    plugin: &Plugin,
    grant: Grant,
) -> Result<Backend, CallError> {
    let stats = Arc::new(PluginStats::default());
    let node = node_to_wit(&grant);
    let mut store = host.store(&plugin.name, grant, stats.clone());
    let trap = |function, e: wasmtime::Error| CallError::Trap {
        plugin: plugin.name.clone(),
        function,
        message: format!("{e:#}"),
    };
    let instance = plugin
        .pre
        .instantiate(&mut store)
        .map_err(|e| trap("instantiate", e))?;
    let bindings = plugin
        .backend
        .load(&mut store, &instance)
        .map_err(|e| trap("instantiate", e))?;
    let (tx, rx) = mpsc::channel();
    let mut worker = Worker {
        guest: Guarded::new(&plugin.name, store, bindings, host.deadline_ticks()),
        node,
    };
    let thread = thread::Builder::new()
        .name(format!("plugin-{}", plugin.name))
        .spawn(move || worker.run(rx))
        .map_err(|_| CallError::Gone {
            plugin: plugin.name.clone(),
        })?;
    Ok(Backend {
        plugin: plugin.name.clone(),
        tx,
        thread: Some(thread),
        stats,
    })
}

impl Backend {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Counters for this instance.
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.stats
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CallError> {
        let (reply, answer) = oneshot::channel();
        let gone = || CallError::Gone {
            plugin: self.plugin.clone(),
        };
        self.tx.send(make(reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// `init`: read the config, prepare devices, say what to publish.
    pub async fn init(&self, info: NodeInfo) -> Result<Registration, CallError> {
        self.call(|r| Command::Init(info, r)).await
    }

    /// `start`: the node holds `own`; the grant now knows the node's own subnet.
    pub async fn start(&self, own: Subnet) -> Result<(), CallError> {
        self.call(|r| Command::Start(own, r)).await
    }

    /// `on-leases`: apply a batch of peer changes; one outcome per event.
    pub async fn on_leases(&self, events: Vec<LeaseEvent>) -> Result<Vec<PeerOutcome>, CallError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|r| Command::OnLeases(events, r)).await
    }

    /// The kernel entries the instance holds (routes, FDB entries, neighbours); works
    /// after a trap too. Empty if its thread is gone.
    pub async fn held(&self) -> Held {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Held(tx)).is_err() {
            return Held::default();
        }
        rx.await.unwrap_or_default()
    }

    /// `shutdown`, then stop the instance's thread.
    pub async fn shutdown(mut self) -> Result<(), CallError> {
        let result = self.call(Command::Shutdown).await;
        if let Some(thread) = self.thread.take() {
            // The worker exits once the channel closes; joining must not block a worker.
            drop(self.tx.clone());
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

struct Worker {
    guest: Guarded<BackendGuest>,
    node: wit::Node,
}

/// A Store and the exports loaded from its instance, entered only through
/// [`Guarded::call`]: a fresh epoch deadline per call, counted, and poisoned for good
/// by a trap.
pub(crate) struct Guarded<G> {
    plugin: String,
    store: Store<PluginState>,
    guest: G,
    deadline: u64,
    poisoned: Option<String>,
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        while let Ok(command) = rx.recv() {
            match command {
                Command::Init(info, reply) => {
                    let node = self.node.clone();
                    let result = self.guest.call("init", |b, s| {
                        b.call_init(s, &info.config, &node, info.previous_data.as_deref())
                    });
                    let _ = reply.send(result.map(|r| Registration {
                        backend_type: r.backend_type,
                        backend_data: Some(r.backend_data).filter(|d| !d.is_empty()),
                        mtu: r.mtu,
                    }));
                }
                Command::Start(own, reply) => {
                    self.guest.store.data_mut().grant.own_subnet = Some(own);
                    let result = self
                        .guest
                        .call("start", |b, s| b.call_start(s, subnet_to_wit(own)));
                    let _ = reply.send(result);
                }
                Command::OnLeases(events, reply) => {
                    // The next hops the plugin may program: every peer this batch
                    // names, during the call (a removal must be undone, also by a fresh
                    // instance that never saw the addition); afterwards only those still
                    // present.
                    let peers = &mut self.guest.store.data_mut().peers;
                    // Subnets whose last event in the batch is a removal.
                    let mut removed_last = std::collections::BTreeMap::new();
                    for e in &events {
                        let l = e.lease();
                        peers.insert(l.subnet, l.attrs.public_ip);
                        removed_last.insert(l.subnet, matches!(e, LeaseEvent::Removed(_)));
                    }
                    let events: Vec<wit::LeaseEvent> = events.iter().map(event_to_wit).collect();
                    // A batch that is big next to the peers there are reads the route
                    // table once; a small one asks the kernel per route.
                    let state = self.guest.store.data_mut();
                    state.bulk_routes = events.len() >= BULK_ROUTES
                        && events.len().saturating_mul(8) >= state.peers.len();
                    let result = self
                        .guest
                        .call("on-leases", |b, s| b.call_on_leases(s, &events).map(Ok));
                    self.guest.store.data_mut().bulk_routes = false;
                    let peers = &mut self.guest.store.data_mut().peers;
                    for (subnet, removed) in removed_last {
                        if removed {
                            peers.remove(&subnet);
                        }
                    }
                    let _ =
                        reply.send(result.map(|outcomes| {
                            outcomes.into_iter().map(PeerOutcome::from_wit).collect()
                        }));
                }
                Command::Held(reply) => {
                    let _ = reply.send(self.guest.store.data().held.clone());
                }
                Command::Shutdown(reply) => {
                    let result = self
                        .guest
                        .call("shutdown", |b, s| b.call_shutdown(s).map(Ok));
                    let _ = reply.send(result);
                    return;
                }
            }
        }
    }
}

impl<G> Guarded<G> {
    pub(crate) fn new(plugin: &str, store: Store<PluginState>, guest: G, deadline: u64) -> Self {
        Self {
            plugin: plugin.to_owned(),
            store,
            guest,
            deadline,
            poisoned: None,
        }
    }

    /// The guest's export handles.
    pub(crate) fn guest(&self) -> &G {
        &self.guest
    }

    /// The guest's export handles, to drop one the plugin declined.
    pub(crate) fn guest_mut(&mut self) -> &mut G {
        &mut self.guest
    }

    /// Call an export with a fresh epoch deadline; sort its outcome into ok, the
    /// backend's error, or a trap that poisons the instance.
    pub(crate) fn call<T>(
        &mut self,
        function: &'static str,
        f: impl FnOnce(&G, &mut Store<PluginState>) -> wasmtime::Result<Result<T, wit::Error>>,
    ) -> Result<T, CallError> {
        if let Some(message) = &self.poisoned {
            return Err(CallError::Trap {
                plugin: self.plugin.clone(),
                function,
                message: format!("the instance trapped earlier ({message}) and cannot be entered"),
            });
        }
        self.store.data().stats.count_call(function);
        // The routes as they stand are read again in every call.
        self.store.data_mut().route_table = None;
        self.store.data_mut().devices_checked.get_mut().clear();
        self.store.set_epoch_deadline(self.deadline);
        match f(&self.guest, &mut self.store) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Backend {
                plugin: self.plugin.clone(),
                function,
                error: e.into(),
            }),
            Err(trap) => {
                let message = format!("{trap:#}");
                tracing::error!(plugin = %self.plugin, function, "plugin trapped: {message}");
                self.poisoned = Some(message.clone());
                Err(CallError::Trap {
                    plugin: self.plugin.clone(),
                    function,
                    message,
                })
            }
        }
    }
}
