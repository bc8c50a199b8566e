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
#![forbid(unsafe_code)]

mod bindings;
pub mod catalog;
mod confine;
mod convert;
mod datapath;
mod imports;
mod instance;
mod loading;
mod state;
pub mod trust;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use twill_net::Kernel;
use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store, StoreLimitsBuilder};

use crate::bindings::{BackendIndices, DatapathIndices, HeadsIndices};
use crate::state::PluginState;

pub use crate::confine::Confinement;
pub use crate::datapath::{
    Action, BatchOut, Datapath, Drops, Endpoint, Fate, Head, HeadsOut, OutPacket, Packet, no_drops,
};
pub use crate::instance::{
    Backend, BackendError, CallError, ErrorKind, NodeInfo, PeerOutcome, Registration,
};
pub use crate::loading::{ComponentFacts, Inspection};
pub use crate::state::{
    DatapathResources, DatapathSlots, DeviceRegistry, ExternalIface, Grant, Held, PluginStats,
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

/// Why a plugin could not be loaded. Each names the plugin's source; its text is
/// `<source>: <reason>` ([`LoadError::reason`] alone).
#[derive(Debug)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component wasmtime can compile.
    Compile {
        /// Where the plugin came from.
        source_name: String,
        /// What they are instead, or the compiler's message.
        message: String,
    },
    /// The component targets another major version of `twill:backend` (or names it
    /// without a version).
    WitVersion {
        /// Where the plugin came from.
        source_name: String,
        /// The version it targets, as far as it breaks compatibility (`0.2`, `1`).
        found: Option<String>,
    },
    /// The component imports a `twill:backend` interface this host does not offer.
    UnknownCapability {
        /// Where the plugin came from.
        source_name: String,
        /// The import's name.
        import: String,
    },
    /// The component imports something outside `twill:backend` that is not WASI.
    UnknownImport {
        /// Where the plugin came from.
        source_name: String,
        /// The import's name.
        import: String,
    },
    /// The component does not export `twill:backend/backend`: it is no backend.
    NoBackend {
        /// Where the plugin came from.
        source_name: String,
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// The component's imports or exports do not type-check against this host's
    /// `twill:backend@0.1` bindings.
    Incompatible {
        /// Where the plugin came from.
        source_name: String,
        /// The linker's message.
        message: String,
    },
    /// `describe` failed.
    Describe {
        /// Where the plugin came from.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// The engine (or the linker) could not be set up.
    Engine {
        /// What was being set up.
        what: &'static str,
        /// Why not.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What is wrong with a plugin's name, if anything. The name is what the config's
/// `Backend.Type` selects, and flannel (and twill) read that lower-cased, so a name
/// with capitals could never be selected; it also names the plugin in metrics labels,
/// log lines and the API. Rule: 1 to 32 of `a-z`, `0-9`, `-`, starting with a letter.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let first = name.chars().next();
    if name.is_empty() || name.len() > 32 {
        Some("a plugin name is 1 to 32 characters")
    } else if !first.is_some_and(|c| c.is_ascii_lowercase()) {
        Some("a plugin name starts with a lowercase letter (Backend.Type is read lower-cased)")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some(
            "a plugin name is lowercase letters, digits and '-' only (Backend.Type is read \
             lower-cased, so any other name could never be selected)",
        )
    } else {
        None
    }
}

impl LoadError {
    fn engine(what: &'static str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LoadError::Engine {
            what,
            source: e.into(),
        }
    }

    /// Where the plugin came from (empty for [`LoadError::Engine`]).
    pub fn source_name(&self) -> &str {
        match self {
            LoadError::Compile { source_name, .. }
            | LoadError::WitVersion { source_name, .. }
            | LoadError::UnknownCapability { source_name, .. }
            | LoadError::UnknownImport { source_name, .. }
            | LoadError::NoBackend { source_name, .. }
            | LoadError::Incompatible { source_name, .. }
            | LoadError::Describe { source_name, .. } => source_name,
            LoadError::Engine { .. } => "",
        }
    }

    /// Why, without the source.
    pub fn reason(&self) -> String {
        let speaks = loading::major_label(WIT_VERSION);
        match self {
            LoadError::Compile { message, .. } => {
                format!("not a loadable WebAssembly component: {message}")
            }
            LoadError::WitVersion {
                found: Some(found), ..
            } => format!("targets twill:backend {found}; this host speaks {speaks}"),
            LoadError::WitVersion { found: None, .. } => {
                format!("targets twill:backend without a version; this host speaks {speaks}")
            }
            LoadError::UnknownCapability { import, .. } => format!(
                "imports {import}, a capability this host does not offer (it offers {})",
                CAPABILITIES
                    .iter()
                    .filter(|c| **c != "types")
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            LoadError::UnknownImport { import, .. } => {
                format!("imports {import}, which this host does not offer")
            }
            LoadError::NoBackend { exports, .. } => format!(
                "does not export twill:backend/backend@{speaks}.x, so it is no twill backend \
                 (it exports {})",
                if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                }
            ),
            LoadError::Incompatible { message, .. } => {
                format!("does not implement {WIT_PACKAGE}: {message}")
            }
            LoadError::Describe { message, .. } => format!("describe() failed: {message}"),
            LoadError::Engine { what, .. } => {
                format!("cannot set up the WebAssembly engine ({what})")
            }
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Engine { .. } => f.write_str(&self.reason()),
            _ => write!(f, "{}: {}", self.source_name(), self.reason()),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Engine { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// A compiled, type-checked backend component, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    /// The backend type it implements (`describe().name`).
    pub name: String,
    /// Its own version.
    pub version: String,
    /// An example `Backend` config object for it (`describe().config-hint`); may be
    /// empty.
    pub config_hint: String,
    /// Where it came from (`built-in`, a file path).
    pub source: String,
    /// The capabilities (WIT interfaces of twill:backend) it imports.
    pub capabilities: Vec<String>,
    /// The version of `twill:backend` it was built against (e.g. `0.1.0`).
    pub wit_version: String,
    /// SHA-256 of the component's bytes, lower-case hex.
    pub sha256: String,
    /// How long loading took: compiling (or fetching from the cache), checking,
    /// linking and `describe`.
    pub load_time: Duration,
    /// Whether the compiled code came from the compilation cache.
    pub from_cache: bool,
    pre: InstancePre<PluginState>,
    backend: BackendIndices,
    /// The data path's exports: `datapath`, and `datapath-heads` when there.
    datapath: Option<(DatapathIndices, Option<HeadsIndices>)>,
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
    cache: Option<wasmtime::Cache>,
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
    /// An engine with epoch interruption, and its ticker thread; no compilation cache.
    pub fn new(kernel: Arc<dyn Kernel>, limits: Limits) -> Result<Self, LoadError> {
        Self::with_cache(kernel, limits, None)
    }

    /// [`PluginHost::new`] with wasmtime's compilation cache in `cache_dir` (`None`: no
    /// cache): a component compiled once is read back from there by every later host,
    /// keyed by its bytes and the engine (wasmtime's version and compiler settings).
    /// A directory that cannot be created or written is a warning, and the host
    /// compiles without a cache.
    pub fn with_cache(
        kernel: Arc<dyn Kernel>,
        limits: Limits,
        cache_dir: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let cache = cache_dir.and_then(|dir| match open_cache(dir) {
            Ok(cache) => Some(cache),
            Err(reason) => {
                tracing::warn!(
                    cache_dir = %dir.display(),
                    "plugin cache directory {} is not usable ({reason}); compiling plugins \
                     without a cache",
                    dir.display()
                );
                None
            }
        });
        config.cache(cache.clone());
        let engine = Engine::new(&config).map_err(|e| LoadError::engine("create the engine", e))?;
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
            .map_err(|e| LoadError::engine("spawn the epoch ticker", e))?;
        Ok(Self {
            engine,
            kernel,
            devices: DeviceRegistry::default(),
            datapath: DatapathSlots::default(),
            limits,
            ticker_stop,
            cache,
        })
    }

    /// The compilation cache's directory, if the host has one.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(|c| c.directory().as_path())
    }

    /// Compile and type-check a component, check its imports, and ask it who it is
    /// (see [`PluginHost::inspect`] for what is checked).
    pub fn load(&self, source: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        self.inspect(source, bytes).result
    }

    fn describe(
        &self,
        pre: &InstancePre<PluginState>,
        indices: &BackendIndices,
    ) -> Result<bindings::Info, String> {
        // No kernel, fresh registries (no claim or slot outlives this Store), and the
        // flag that refuses what does not go through the kernel: describe() answers
        // who the plugin is and must not touch the machine (security review H-1).
        let mut store = self.store("describe", placeholder_grant(), Arc::default());
        let state = store.data_mut();
        state.kernel = Arc::new(twill_net::Refusing);
        state.devices = DeviceRegistry::default();
        state.datapath = DatapathSlots::default();
        state.describing = true;
        // describe() returns a name and a version: [`DESCRIBE_TIMEOUT`], not the call
        // timeout, so a file that spins cannot hold a scan (or a reload) for long
        // (security review L-8).
        let ticks = DESCRIBE_TIMEOUT.as_millis() / EPOCH_TICK.as_millis();
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
        let instance = pre.instantiate(&mut store).map_err(|e| format!("{e:#}"))?;
        let guest = indices
            .load(&mut store, &instance)
            .map_err(|e| format!("{e:#}"))?;
        let info = guest
            .call_describe(&mut store)
            .map_err(|e| format!("{e:#}"))?;
        match name_problem(&info.name) {
            None => Ok(info),
            Some(problem) => Err(format!("describe() names it {:?}: {problem}", info.name)),
        }
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
        let limits = StoreLimitsBuilder::new()
            // Per linear memory, so one memory in all keeps the total to the limit, and
            // tables are bounded too: a table's elements are host memory (security
            // review H-2). The built-ins use one memory and a few hundred table elements.
            .memory_size(self.limits.memory_bytes)
            .memories(1)
            .table_elements(TABLE_ELEMENTS)
            .instances(16)
            .tables(16)
            .trap_on_grow_failure(true)
            .build();
        let state = PluginState::new(
            plugin,
            self.kernel.clone(),
            grant,
            self.devices.clone(),
            self.datapath.clone(),
            limits,
            stats,
        );
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

/// The most elements one table of a plugin may hold (8 bytes of host memory each).
pub const TABLE_ELEMENTS: usize = 10_000;

/// wasmtime's cache in `dir` (made absolute; created if missing), after checking that a
/// file can be written there.
fn open_cache(dir: &Path) -> Result<wasmtime::Cache, String> {
    let dir: PathBuf = std::path::absolute(dir).map_err(|e| e.to_string())?;
    // Created for us alone; an existing one must be ours (its entries are native code).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    trust::check_dir(&dir).map_err(|why| format!("not trusted: {why}"))?;
    let probe = dir.join(format!(".twill-write-test-{:016x}", rand::random::<u64>()));
    // Created exclusively: never through a symbolic link planted there (L-7).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("cannot write to it: {e}"))?;
    let _ = std::fs::remove_file(&probe);
    let mut config = wasmtime::CacheConfig::new();
    config.with_directory(dir);
    wasmtime::Cache::new(config).map_err(|e| format!("{e:#}"))
}

/// Remove what `old` (the entries of an instance that was replaced: it trapped, or a
/// reload swapped it) held and `new` (its successor's, after the leases were replayed)
/// does not: routes only while they are still twill's (protocol 167), FDB entries and
/// neighbours as they were made. Each removal that fails (already gone, device gone)
/// is skipped. Returns how many were removed.
pub fn remove_leftovers(kernel: &dyn Kernel, old: &Held, new: &Held) -> usize {
    let mut removed = 0;
    let gone: Vec<&twill_core::Subnet> = old.routes.difference(&new.routes).collect();
    // The route table is listed only when a route is to go: after a join it holds one
    // route per peer (a 4.9 MB listing at 20,000 peers) and usually none goes.
    let listed = if gone.is_empty() {
        Ok(Vec::new())
    } else {
        kernel.table_routes()
    };
    let twills: std::collections::BTreeSet<twill_core::Subnet> = match listed {
        Ok(table) => table
            .into_iter()
            .filter(twill_net::TableRoute::is_twills)
            .map(|t| t.route.dst)
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list routes to remove a replaced instance's: {e}");
            Default::default()
        }
    };
    for dst in gone {
        let route = twill_net::Route {
            dst: *dst,
            gateway: None,
            oif: None,
            onlink: false,
        };
        if twills.contains(dst) && kernel.del_route(&route).is_ok() {
            removed += 1;
        }
    }
    for (&(dev, mac), &dst) in &old.fdb {
        if !new.fdb.contains_key(&(dev, mac))
            && kernel.del_fdb(dev, twill_core::MacAddr(mac), dst).is_ok()
        {
            removed += 1;
        }
    }
    for &(dev, ip) in old.neighbours.difference(&new.neighbours) {
        if kernel.del_neighbour(dev, ip).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// What an earlier run of twill (or flanneld) may have left for peers that are gone:
/// twill's routes (protocol [`twill_net::ROUTE_PROTOCOL`]) into `network` outside the
/// node's own subnet, and the FDB entries and permanent neighbours on flannel's vxlan
/// devices (`flannel*`; nothing else writes there). Handed to [`remove_leftovers`]
/// after the first full replay, it removes what the fresh instance did not make again:
/// the objects of peers that left while the daemon was stopped, and of the backend it
/// ran before when that one used the same device. A listing that fails leaves that
/// kind out (and is logged): nothing is removed on a guess.
pub fn left_by_an_earlier_run(
    kernel: &dyn Kernel,
    network: twill_core::Subnet,
    own: twill_core::Subnet,
) -> Held {
    let mut held = Held::default();
    match kernel.table_routes() {
        Ok(table) => held.routes.extend(
            table
                .into_iter()
                .filter(twill_net::TableRoute::is_twills)
                .map(|t| t.route.dst)
                .filter(|dst| network.contains_subnet(dst) && !dst.overlaps(&own)),
        ),
        Err(e) => tracing::warn!("cannot list routes to find an earlier run's: {e}"),
    }
    let vteps: std::collections::BTreeSet<u32> = match kernel.links() {
        Ok(links) => links
            .into_iter()
            .filter(|l| l.name.starts_with("flannel") && l.kind.as_deref() == Some("vxlan"))
            .map(|l| l.index)
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list links to find an earlier run's entries: {e}");
            return held;
        }
    };
    match kernel.remote_fdb() {
        Ok(fdb) => held.fdb.extend(
            fdb.into_iter()
                .filter(|f| vteps.contains(&f.index))
                .map(|f| ((f.index, f.mac.0), f.dst)),
        ),
        Err(e) => tracing::warn!("cannot list FDB entries to find an earlier run's: {e}"),
    }
    match kernel.permanent_neighbours() {
        Ok(neighbours) => held.neighbours.extend(
            neighbours
                .into_iter()
                .filter(|n| vteps.contains(&n.index))
                .map(|n| (n.index, n.ip)),
        ),
        Err(e) => tracing::warn!("cannot list neighbours to find an earlier run's: {e}"),
    }
    held
}

/// How long a plugin's `describe()` may run (instantiation included).
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The UDP ports a plugin may use when the config names none: flannel's vxlan port
/// (the kernel's default), the IANA vxlan port, flannel's udp port.
pub const DEFAULT_PORTS: [u16; 3] = [8472, 4789, 8285];

/// A grant that allows nothing useful, for `describe` (which must not call the host).
pub(crate) fn placeholder_grant() -> Grant {
    let nowhere = std::net::Ipv4Addr::UNSPECIFIED;
    Grant {
        network: twill_core::Subnet::host(nowhere),
        own_subnet: None,
        external: ExternalIface {
            name: String::new(),
            // No interface has it: no check comparing against it can pass.
            index: u32::MAX,
            mtu: 0,
            addr: nowhere,
        },
        public_ip: nowhere,
        ports: Vec::new(),
    }
}

#[cfg(test)]
mod name_tests {
    use super::name_problem;

    #[test]
    fn only_names_a_lowercased_backend_type_can_select_are_loaded() {
        for good in [
            "vxlan",
            "host-gw",
            "udp-open",
            "a",
            "ipip6",
            &"x".repeat(32),
        ] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "Gateway",
            "VXLAN",
            "host_gw",
            "6to4",
            "-x",
            "gw ",
            &"x".repeat(33),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}

/// Security review H-2: the limits of every plugin Store hold in wasmtime itself, tried
/// with core modules assembled by hand (Rust cannot write a second memory or a
/// `table.grow`), instantiated in a Store made exactly as a plugin's.
#[cfg(test)]
mod limit_tests {
    use super::*;
    use std::net::Ipv4Addr;
    use twill_net::fake::FakeKernel;

    const HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

    /// `(module (memory 1) (memory 1))`.
    fn two_memories() -> Vec<u8> {
        let mut m = HEADER.to_vec();
        m.extend([0x05, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01]);
        m
    }

    /// `(module (table 0 funcref) (func (export "grow") (param i32) (result i32)
    ///   (table.grow (ref.null func) (local.get 0))))`.
    fn growing_table() -> Vec<u8> {
        let mut m = HEADER.to_vec();
        m.extend([0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f]); // type (i32) -> i32
        m.extend([0x03, 0x02, 0x01, 0x00]); // one function of type 0
        m.extend([0x04, 0x04, 0x01, 0x70, 0x00, 0x00]); // table 0 funcref
        m.extend([0x07, 0x08, 0x01, 0x04, b'g', b'r', b'o', b'w', 0x00, 0x00]);
        m.extend([
            0x0a, 0x0b, 0x01, 0x09, 0x00, // one body, no locals
            0xd0, 0x70, // ref.null func
            0x20, 0x00, // local.get 0
            0xfc, 0x0f, 0x00, // table.grow 0
            0x0b, // end
        ]);
        m
    }

    fn plugin_store(host: &PluginHost) -> Store<PluginState> {
        let kernel = FakeKernel::new().with_link("eth0", 1500, Ipv4Addr::new(192, 168, 0, 1), 24);
        let eth0 = kernel.link_by_name("eth0").expect("fake").expect("eth0");
        let grant = Grant {
            network: "10.244.0.0/16".parse().expect("subnet"),
            own_subnet: None,
            external: ExternalIface::of(&eth0, Ipv4Addr::new(192, 168, 0, 1)),
            public_ip: Ipv4Addr::new(192, 168, 0, 1),
            ports: DEFAULT_PORTS.to_vec(),
        };
        host.store("limits", grant, Arc::new(PluginStats::default()))
    }

    #[test]
    fn a_second_linear_memory_is_refused() {
        let host = PluginHost::new(Arc::new(FakeKernel::new()), Limits::default()).expect("engine");
        let module = wasmtime::Module::new(&host.engine, two_memories()).expect("valid module");
        let mut store = plugin_store(&host);
        let err = wasmtime::Instance::new(&mut store, &module, &[])
            .expect_err("two memories exceed the limit of one");
        assert!(format!("{err:#}").contains("memor"), "{err:#}");
    }

    #[test]
    fn a_table_grows_only_to_its_element_limit() {
        let host = PluginHost::new(Arc::new(FakeKernel::new()), Limits::default()).expect("engine");
        let module = wasmtime::Module::new(&host.engine, growing_table()).expect("valid module");
        let mut store = plugin_store(&host);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow")
            .expect("grow");
        // Within the limit: the old size comes back.
        assert_eq!(grow.call(&mut store, 5_000).expect("within the limit"), 0);
        assert_eq!(
            grow.call(
                &mut store,
                i32::try_from(TABLE_ELEMENTS).expect("fits") - 5_000
            )
            .expect("up to the limit exactly"),
            5_000
        );
        // One more element: a trap (trap_on_grow_failure), not a -1 the guest ignores.
        let trap = grow
            .call(&mut store, 1)
            .expect_err("past the limit the grow traps");
        assert!(format!("{trap:#}").contains("table"), "{trap:#}");
    }
}
