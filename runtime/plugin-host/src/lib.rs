//! twill's WebAssembly plugin host. It owns the wasmtime engine and the one `bindgen!`
//! for `twill:backend@0.1.0`; it compiles and type-checks each backend component once,
//! and runs each backend instance on its own OS thread with its own Store, an epoch
//! deadline on every call and a memory limit. Every host import a plugin calls is
//! checked against its [`Grant`]: devices it created, route destinations inside the
//! cluster network, never the node's own subnet or the host's own routes and devices.
//! A denied call is logged, counted and returned to the guest as `error::denied`.
//!
//! Plugin calls never run on a tokio worker: [`Backend`]'s async methods send the call
//! to the instance's thread and await the answer.

mod bindings;
mod convert;
mod datapath;
mod imports;
mod instance;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use sha2::Digest;
use twill_net::Kernel;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder};

use crate::bindings::{BackendIndices, DatapathIndices, OverlayDatapathBackend};
use crate::state::PluginState;

pub use crate::datapath::{Action, BatchOut, Datapath, Drops, Endpoint, OutPacket, Packet};
pub use crate::instance::{
    Backend, BackendError, CallError, ErrorKind, NodeInfo, PeerOutcome, Registration,
};
pub use crate::state::{
    DatapathResources, DatapathSlots, DeviceRegistry, ExternalIface, Grant, PluginStats,
};

/// The WIT package plugins are built against.
pub const WIT_PACKAGE: &str = "twill:backend@0.1.0";
/// Its version.
pub const WIT_VERSION: &str = "0.1.0";

/// How often the epoch ticker advances the engine's epoch.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Resource limits for each plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Maximum wall time of one call into the plugin (host calls it makes included).
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a plugin could not be loaded. Each names the plugin's source.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("{source_name}: not a loadable WebAssembly component: {message}")]
    Compile {
        /// Where the plugin came from.
        source_name: String,
        /// The compiler's message.
        message: String,
    },
    /// The component imports something this host does not offer.
    #[error("{source_name}: imports {import}, which this host does not offer")]
    UnknownImport {
        /// Where the plugin came from.
        source_name: String,
        /// The import's name.
        import: String,
    },
    /// The component does not fit the `twill:backend@0.1` world.
    #[error("{source_name}: does not implement {WIT_PACKAGE}: {message}")]
    Incompatible {
        /// Where the plugin came from.
        source_name: String,
        /// The linker's message.
        message: String,
    },
    /// `describe` failed.
    #[error("{source_name}: describe() failed: {message}")]
    Describe {
        /// Where the plugin came from.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// A compiled, type-checked backend component, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    /// The backend type it implements (`describe().name`).
    pub name: String,
    /// Its own version.
    pub version: String,
    /// Where it came from (`built-in`, a file path).
    pub source: String,
    /// The capabilities (WIT interfaces of twill:backend) it imports.
    pub capabilities: Vec<String>,
    /// SHA-256 of the component's bytes, lower-case hex.
    pub sha256: String,
    pre: InstancePre<PluginState>,
    backend: BackendIndices,
    datapath: Option<DatapathIndices>,
}

impl Plugin {
    /// Whether the component exports the batch data path (`twill:backend/datapath`).
    pub fn has_datapath(&self) -> bool {
        self.datapath.is_some()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("source", &self.source)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// The wasmtime engine and what every plugin instance shares.
pub struct PluginHost {
    engine: Engine,
    kernel: Arc<dyn Kernel>,
    devices: DeviceRegistry,
    datapath: DatapathSlots,
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The interfaces of twill:backend a plugin may import, without version.
const CAPABILITIES: &[&str] = &[
    "types",
    "links",
    "addresses",
    "routes",
    "neighbours",
    "fdb",
    "route-lookup",
    "log",
    "datapath-host",
];

impl PluginHost {
    /// An engine with epoch interruption, and its ticker thread.
    pub fn new(kernel: Arc<dyn Kernel>, limits: Limits) -> Result<Self, LoadError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak_engine, stop) = (engine.weak(), ticker_stop.clone());
        thread::Builder::new()
            .name("twill-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    match weak_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Engine(format!("spawn epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            kernel,
            devices: DeviceRegistry::default(),
            datapath: DatapathSlots::default(),
            limits,
            ticker_stop,
        })
    }

    /// Compile and type-check a component, check its imports, and ask it who it is.
    pub fn load(&self, source: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            source_name: source.to_owned(),
            message: format!("{e:#}"),
        })?;
        let capabilities = self.check_imports(source, &component)?;
        let mut linker = Linker::<PluginState>::new(&self.engine);
        OverlayDatapathBackend::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| LoadError::Engine(format!("link twill:backend: {e:#}")))?;
        // Rust's std on wasm32-wasip2 imports WASI interfaces it never calls in a
        // backend; none is granted: each traps if called.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let incompatible = |e: wasmtime::Error| LoadError::Incompatible {
            source_name: source.to_owned(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
        let backend = BackendIndices::new(&pre).map_err(incompatible)?;
        // A component that exports `datapath` is a data-path backend (udp).
        let datapath = DatapathIndices::new(&pre).ok();
        let info = self
            .describe(&pre, &backend)
            .map_err(|message| LoadError::Describe {
                source_name: source.to_owned(),
                message,
            })?;
        let sha256 = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Plugin {
            name: info.name,
            version: info.version,
            source: source.to_owned(),
            capabilities,
            sha256,
            pre,
            backend,
            datapath,
        })
    }

    /// The twill:backend capabilities a component imports; anything else it imports
    /// must be WASI (trapped) or the load fails.
    fn check_imports(&self, source: &str, component: &Component) -> Result<Vec<String>, LoadError> {
        let mut caps = Vec::new();
        for (name, _) in component.component_type().imports(&self.engine) {
            let known = name
                .strip_prefix("twill:backend/")
                .and_then(|rest| rest.split_once('@'))
                .filter(|(iface, version)| {
                    CAPABILITIES.contains(iface)
                        && (version.starts_with("0.1.") || *version == "0.1")
                });
            match known {
                Some((iface, _)) => {
                    if iface != "types" {
                        caps.push(iface.to_owned());
                    }
                }
                _ if name.starts_with("wasi:") => {}
                _ => {
                    return Err(LoadError::UnknownImport {
                        source_name: source.to_owned(),
                        import: name.to_owned(),
                    });
                }
            }
        }
        caps.sort();
        Ok(caps)
    }

    fn describe(
        &self,
        pre: &InstancePre<PluginState>,
        indices: &BackendIndices,
    ) -> Result<bindings::Info, String> {
        let mut store = self.store("describe", placeholder_grant(), Arc::default());
        let instance = pre.instantiate(&mut store).map_err(|e| format!("{e:#}"))?;
        let guest = indices
            .load(&mut store, &instance)
            .map_err(|e| format!("{e:#}"))?;
        guest
            .call_describe(&mut store)
            .map_err(|e| format!("{e:#}"))
    }

    /// The data-path descriptors `plugin` asked for (after its `init`), if any.
    pub fn datapath_resources(&self, plugin: &str) -> Option<DatapathResources> {
        self.datapath.get(plugin)
    }

    pub(crate) fn store(
        &self,
        plugin: &str,
        grant: Grant,
        stats: Arc<PluginStats>,
    ) -> Store<PluginState> {
        let state = PluginState {
            plugin: plugin.to_owned(),
            kernel: self.kernel.clone(),
            grant,
            devices: self.devices.clone(),
            datapath: self.datapath.clone(),
            owned: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(16)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            stats,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        store
    }

    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Start an instance of `plugin` on its own thread with this grant.
    pub fn spawn(&self, plugin: &Plugin, grant: Grant) -> Result<Backend, CallError> {
        instance::spawn(self, plugin, grant)
    }
}

/// A grant that allows nothing useful, for `describe` (which must not call the host).
pub(crate) fn placeholder_grant() -> Grant {
    let nowhere = std::net::Ipv4Addr::UNSPECIFIED;
    Grant {
        network: twill_core::Subnet::host(nowhere),
        own_subnet: None,
        external: ExternalIface {
            name: String::new(),
            index: 0,
            mtu: 0,
            addr: nowhere,
        },
        public_ip: nowhere,
    }
}
