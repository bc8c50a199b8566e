//! The `LeaseStore` contract, run against both stores: `etcd::*` on a real etcd server
//! (`/usr/bin/etcd`, see `common`), `embedded::*` on a SQLite file in a private
//! temporary directory. Each case is one generic async fn over a [`Harness`]; the
//! `contract!` macro instantiates it once per store. Cases only the embedded store has
//! (several handles on one file, the file's layout, a trimmed change log) follow.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Etcd, attrs, next, secs_from_now, subnet};
use etcd_client::Client;
use futures::Stream;
use twill_core::acquire::Exhausted;
use twill_core::config::Config;
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_core::peers::{PeerSet, Skip};
use twill_core::subnet::Subnet;
use twill_store::{
    AcquireError, Created, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, LEASE_TTL,
    LeaseStore, StoreError, WatchEvent, acquire,
};

const PREFIX: &str = "/coreos.com/network";

/// One store under test, with what the trait does not offer.
trait Harness: Sized {
    type Store: LeaseStore + std::fmt::Debug;

    /// A fresh, empty store.
    async fn start() -> Self;

    /// A new handle on the store: etcd, a new client; embedded, the file opened again
    /// (a connection of its own, as another process has).
    async fn open(&self) -> Self::Store;

    /// Stop the store and start it again on the same data (etcd: kill and restart the
    /// server; embedded: nothing runs, the file stays, handles are dropped by the test).
    fn restart(&mut self);

    /// Write `<prefix>/config`.
    async fn put_config(&self, text: &str);

    /// Write a lease without a TTL (flannel's reservations).
    async fn reserve(&self, subnet: Subnet, attrs: &LeaseAttrs);

    /// Write any text to `<prefix>/<key>`, unchecked, as `etcdctl put` would.
    async fn put_raw(&self, key: &str, value: &str);
}

struct EtcdHarness {
    etcd: Etcd,
}

impl EtcdHarness {
    async fn raw(&self) -> Client {
        Client::connect([self.etcd.endpoint()], None)
            .await
            .expect("raw etcd client")
    }
}

impl Harness for EtcdHarness {
    type Store = EtcdStore;

    async fn start() -> Self {
        EtcdHarness {
            etcd: Etcd::start(),
        }
    }

    async fn open(&self) -> EtcdStore {
        EtcdStore::connect(EtcdOptions::plain(vec![self.etcd.endpoint()], PREFIX))
            .await
            .expect("connect")
    }

    fn restart(&mut self) {
        self.etcd.restart();
    }

    async fn put_config(&self, text: &str) {
        self.raw()
            .await
            .put(format!("{PREFIX}/config"), text, None)
            .await
            .expect("put config");
    }

    async fn reserve(&self, subnet: Subnet, attrs: &LeaseAttrs) {
        // As Documentation/reservations.md: put without --lease.
        self.raw()
            .await
            .put(
                format!("{PREFIX}/subnets/{}", subnet.key()),
                attrs.to_json(),
                None,
            )
            .await
            .expect("put reservation");
    }

    async fn put_raw(&self, key: &str, value: &str) {
        self.raw()
            .await
            .put(format!("{PREFIX}/{key}"), value, None)
            .await
            .expect("put");
    }
}

/// A private directory, removed on drop (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(common::private_dir("embedded"))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct EmbeddedHarness {
    dir: TempDir,
}

impl EmbeddedHarness {
    fn file(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }
}

impl Harness for EmbeddedHarness {
    type Store = EmbeddedStore;

    async fn start() -> Self {
        EmbeddedHarness {
            dir: TempDir::new(),
        }
    }

    async fn open(&self) -> EmbeddedStore {
        EmbeddedStore::open(&self.file(), PREFIX).expect("open the store file")
    }

    fn restart(&mut self) {}

    async fn put_config(&self, text: &str) {
        self.open()
            .await
            .put_config(text)
            .await
            .expect("put config");
    }

    async fn reserve(&self, subnet: Subnet, attrs: &LeaseAttrs) {
        self.open()
            .await
            .put_reservation(subnet, attrs)
            .await
            .expect("put reservation");
    }

    async fn put_raw(&self, key: &str, value: &str) {
        self.open().await.put_key(key, value).await.expect("put");
    }
}

async fn list(store: &impl LeaseStore) -> Vec<Lease> {
    let (mut leases, _) = store.list_leases().await.expect("list leases");
    leases.sort_by_key(|l| l.subnet);
    leases
}

async fn snapshot(stream: &mut (impl Stream<Item = WatchEvent> + Unpin)) -> Vec<Lease> {
    match next(stream).await {
        WatchEvent::Snapshot(mut leases) => {
            leases.sort_by_key(|l| l.subnet);
            leases
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// The next `n` events, over as many deliveries as they come in (a store may batch).
async fn events(
    stream: &mut (impl Stream<Item = WatchEvent> + Unpin),
    n: usize,
) -> Vec<LeaseEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(stream).await {
            WatchEvent::Events(events) => got.extend(events),
            other => panic!("expected events, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(got.len(), n, "more events than expected: {got:?}");
    got
}

async fn one_event(stream: &mut (impl Stream<Item = WatchEvent> + Unpin)) -> LeaseEvent {
    events(stream, 1).await.remove(0)
}

fn network(text: &str) -> Config {
    Config::parse(&format!(r#"{{"Network":"{text}"}}"#)).expect("config")
}

// ---- the contract ----

async fn config_is_read_or_missing<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    assert_eq!(store.get_config().await.expect("get"), None);
    let text = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    h.put_config(text).await;
    assert_eq!(
        store.get_config().await.expect("get"),
        Some(text.to_owned())
    );
}

async fn acquire_creates_then_reuses<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let config = network("10.244.0.0/16");
    let me = attrs([192, 168, 10, 1]);
    let got = acquire(&store, &config, &me, None).await.expect("acquire");
    assert!(config.fits(&got.lease.subnet), "{:?}", got.lease.subnet);
    assert_eq!(got.lease.attrs, me);
    let left = secs_from_now(got.lease.expires.at().expect("a new lease has a TTL"));
    assert!((86_000.0..=86_401.0).contains(&left), "expires in {left} s");

    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].subnet, got.lease.subnet);
    assert_eq!(listed[0].attrs, me);
    assert!(secs_from_now(listed[0].expires.at().expect("ttl")) > 86_000.0);

    // The same public IP gets the same subnet, with fresh attributes.
    let again = LeaseAttrs::new(Ipv4Addr::new(192, 168, 10, 1), "vxlan", None).expect("attrs");
    let reused = acquire(&store, &config, &again, Some(subnet("10.244.99.0/24")))
        .await
        .expect("acquire");
    assert_eq!(reused.lease.subnet, got.lease.subnet);
    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attrs, again);

    // Another node gets its previous subnet if it is free.
    let other = attrs([192, 168, 10, 2]);
    let prev = if got.lease.subnet == subnet("10.244.77.0/24") {
        subnet("10.244.78.0/24")
    } else {
        subnet("10.244.77.0/24")
    };
    let theirs = acquire(&store, &config, &other, Some(prev))
        .await
        .expect("acquire");
    assert_eq!(theirs.lease.subnet, prev);
    assert_eq!(list(&store).await.len(), 2);
}

async fn a_conflicting_create_loses<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let s = subnet("10.244.3.0/24");
    let mine = attrs([192, 168, 0, 1]);
    let Created::Won(expires) = store
        .create_lease(s, &mine, Duration::from_secs(600))
        .await
        .expect("create")
    else {
        panic!("the first create lost")
    };
    let left = secs_from_now(expires);
    assert!((590.0..=601.0).contains(&left), "expires in {left} s");

    // From the same handle and from another one.
    let other = h.open().await;
    for store in [&store, &other] {
        let lost = store
            .create_lease(s, &attrs([192, 168, 0, 2]), Duration::from_secs(600))
            .await
            .expect("create");
        assert_eq!(lost, Created::Lost);
    }
    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attrs, mine, "the losers wrote nothing");

    // A reservation blocks a create too.
    let r = subnet("10.244.4.0/24");
    h.reserve(r, &attrs([192, 168, 0, 3])).await;
    assert_eq!(
        store
            .create_lease(r, &mine, Duration::from_secs(600))
            .await
            .expect("create"),
        Created::Lost
    );
}

async fn renew_extends_the_expiry<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let s = subnet("10.244.4.0/24");
    let mine = attrs([192, 168, 0, 4]);
    store
        .create_lease(s, &mine, Duration::from_secs(60))
        .await
        .expect("create");
    assert!(secs_from_now(list(&store).await[0].expires.at().expect("ttl")) <= 61.0);

    let changed = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 4), "vxlan", None).expect("attrs");
    let expires = store
        .renew_lease(s, &changed, LEASE_TTL)
        .await
        .expect("renew")
        .expect("a lease with a TTL keeps one");
    let left = secs_from_now(expires);
    assert!(left > 86_000.0, "renewed for {left} s");
    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attrs, changed);
    let left = secs_from_now(listed[0].expires.at().expect("expiry"));
    assert!(left > 86_000.0, "listed expiry {left} s away");

    // Renewing a lease that vanished writes it again.
    store.delete_lease(s).await.expect("delete");
    assert!(list(&store).await.is_empty());
    assert!(
        store
            .renew_lease(s, &mine, LEASE_TTL)
            .await
            .expect("renew")
            .is_some()
    );
    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attrs, mine);
}

async fn an_expired_lease_disappears<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let mut watch = pin!(store.watch_leases());
    assert!(snapshot(&mut watch).await.is_empty());
    let s = subnet("10.244.12.0/24");
    let short = attrs([192, 168, 2, 1]);
    let created = store
        .create_lease(s, &short, Duration::from_secs(2))
        .await
        .expect("create");
    let Created::Won(expires) = created else {
        panic!("create lost")
    };
    assert!(secs_from_now(expires) <= 2.5);
    match one_event(&mut watch).await {
        LeaseEvent::Added(l) => {
            assert_eq!(l.subnet, s);
            assert!(secs_from_now(l.expires.at().expect("ttl")) <= 2.5);
        }
        other => panic!("expected Added, got {other:?}"),
    }
    // Nobody writes: the expiry alone must show up (by subnet: the peer set knows the
    // lease's attributes; etcd's watch does not send them).
    match one_event(&mut watch).await {
        LeaseEvent::Removed(l) => {
            assert_eq!(l.subnet, s);
        }
        other => panic!("expected the expiry as Removed, got {other:?}"),
    }
    let now = SystemTime::now();
    assert!(
        now + Duration::from_millis(100) >= expires,
        "removed before it expired"
    );
    let late = now.duration_since(expires).unwrap_or_default();
    eprintln!(
        "{}: an expired lease's removal seen {late:.2?} after its expiry",
        std::any::type_name::<H>()
    );
    assert!(
        late < Duration::from_millis(1500),
        "the removal came {late:?} after the expiry"
    );
    assert!(list(&store).await.is_empty());
    // Also for another handle, and the subnet is free again.
    let other = h.open().await;
    assert!(list(&other).await.is_empty());
    assert!(matches!(
        other
            .create_lease(s, &attrs([192, 168, 2, 2]), Duration::from_secs(600))
            .await
            .expect("create"),
        Created::Won(_)
    ));
}

async fn delete_removes_and_tolerates_absence<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let a = subnet("10.244.13.0/24");
    let b = subnet("10.244.14.0/24");
    for s in [a, b] {
        store
            .create_lease(s, &attrs([192, 168, 3, 1]), Duration::from_secs(600))
            .await
            .expect("create");
    }
    store.delete_lease(a).await.expect("delete");
    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].subnet, b);
    store
        .delete_lease(a)
        .await
        .expect("deleting an absent lease");
    // A deleted subnet can be created again.
    assert!(matches!(
        store
            .create_lease(a, &attrs([192, 168, 3, 2]), Duration::from_secs(600))
            .await
            .expect("create"),
        Created::Won(_)
    ));
}

async fn watch_delivers_snapshot_then_adds_and_removes<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let a = attrs([192, 168, 1, 1]);
    let b = attrs([192, 168, 1, 2]);
    let r = attrs([192, 168, 1, 9]);
    store
        .create_lease(subnet("10.244.1.0/24"), &a, Duration::from_secs(600))
        .await
        .expect("create a");
    h.reserve(subnet("10.244.9.0/24"), &r).await;

    let mut watch = pin!(store.watch_leases());
    let snap = snapshot(&mut watch).await;
    assert_eq!(snap.len(), 2, "{snap:?}");
    assert_eq!(snap[0].subnet, subnet("10.244.1.0/24"));
    assert_eq!(snap[0].attrs, a);
    assert!(secs_from_now(snap[0].expires.at().expect("ttl")) > 500.0);
    assert_eq!(snap[1].subnet, subnet("10.244.9.0/24"));
    assert_eq!(snap[1].attrs, r);
    assert_eq!(snap[1].expires, Expiry::Never);

    store
        .create_lease(subnet("10.244.2.0/24"), &b, Duration::from_secs(600))
        .await
        .expect("create b");
    match one_event(&mut watch).await {
        LeaseEvent::Added(l) => {
            assert_eq!(l.subnet, subnet("10.244.2.0/24"));
            assert_eq!(l.attrs, b);
            assert!(secs_from_now(l.expires.at().expect("ttl")) > 500.0);
        }
        other => panic!("expected Added, got {other:?}"),
    }

    store
        .delete_lease(subnet("10.244.1.0/24"))
        .await
        .expect("delete a");
    match one_event(&mut watch).await {
        LeaseEvent::Removed(l) => {
            assert_eq!(l.subnet, subnet("10.244.1.0/24"));
        }
        other => panic!("expected Removed, got {other:?}"),
    }

    // Renewing is a put: Added with the fresh expiry; a reservation's has none. Two
    // changes in a row arrive in store order.
    store
        .renew_lease(subnet("10.244.9.0/24"), &a, LEASE_TTL)
        .await
        .expect("renew reservation");
    store
        .renew_lease(subnet("10.244.2.0/24"), &b, LEASE_TTL)
        .await
        .expect("renew b");
    match events(&mut watch, 2).await.as_slice() {
        [LeaseEvent::Added(r), LeaseEvent::Added(l)] => {
            assert_eq!(r.subnet, subnet("10.244.9.0/24"));
            assert_eq!(r.attrs, a);
            assert_eq!(r.expires, Expiry::Never);
            assert_eq!(l.subnet, subnet("10.244.2.0/24"));
            assert!(secs_from_now(l.expires.at().expect("ttl")) > 86_000.0);
        }
        other => panic!("expected two Added, got {other:?}"),
    }

    // A second watch starts from the present.
    let mut second = pin!(store.watch_leases());
    let subnets: Vec<Subnet> = snapshot(&mut second)
        .await
        .iter()
        .map(|l| l.subnet)
        .collect();
    assert_eq!(
        subnets,
        vec![subnet("10.244.2.0/24"), subnet("10.244.9.0/24")]
    );
}

async fn a_new_watch_resumes_after_a_restart<H: Harness>() {
    let mut h = H::start().await;
    let a = attrs([192, 168, 4, 1]);
    let r = attrs([192, 168, 4, 9]);
    let before = {
        let store = h.open().await;
        store
            .create_lease(subnet("10.244.30.0/24"), &a, Duration::from_secs(600))
            .await
            .expect("create");
        h.reserve(subnet("10.244.39.0/24"), &r).await;
        store.list_leases().await.expect("list").1
    };
    h.restart();

    let store = h.open().await;
    let (leases, revision) = store.list_leases().await.expect("list after restart");
    assert_eq!(leases.len(), 2);
    assert!(
        revision >= before,
        "revision went back: {revision} < {before}"
    );
    let mut watch = pin!(store.watch_leases());
    let snap = snapshot(&mut watch).await;
    assert_eq!(snap.len(), 2, "{snap:?}");
    assert_eq!(snap[0].subnet, subnet("10.244.30.0/24"));
    assert_eq!(snap[0].attrs, a);
    let left = secs_from_now(snap[0].expires.at().expect("the TTL survived"));
    assert!((500.0..=601.0).contains(&left), "expires in {left} s");
    assert_eq!(snap[1].subnet, subnet("10.244.39.0/24"));
    assert_eq!(snap[1].expires, Expiry::Never);

    // And it goes on watching.
    store
        .create_lease(subnet("10.244.31.0/24"), &a, Duration::from_secs(600))
        .await
        .expect("create after restart");
    match one_event(&mut watch).await {
        LeaseEvent::Added(l) => assert_eq!(l.subnet, subnet("10.244.31.0/24")),
        other => panic!("expected Added, got {other:?}"),
    }
}

async fn a_reservation_survives_renewal<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let s = subnet("10.244.5.0/24");
    h.reserve(s, &attrs([192, 168, 0, 5])).await;
    let listed = list(&store).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].expires,
        Expiry::Never,
        "a reservation has no expiry"
    );

    let mine = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 5), "vxlan", None).expect("attrs");
    assert_eq!(
        store.renew_lease(s, &mine, LEASE_TTL).await.expect("renew"),
        None
    );
    let listed = list(&store).await;
    assert_eq!(
        listed[0].expires,
        Expiry::Never,
        "no TTL after renewal (flannel #1329)"
    );
    assert_eq!(listed[0].attrs, mine);

    // acquire keeps it a reservation too.
    let got = acquire(&store, &network("10.244.0.0/16"), &mine, None)
        .await
        .expect("acquire");
    assert_eq!(got.lease.subnet, s);
    assert_eq!(got.lease.expires, Expiry::Never);
    assert_eq!(list(&store).await[0].expires, Expiry::Never);
}

async fn racing_acquires_for_the_last_subnet<H: Harness>() {
    let h = H::start().await;
    let (one, two) = (h.open().await, h.open().await);
    // /28s in 10.5.0.0/26: .0 is skipped, .16 and .48 are taken, .32 is the last.
    let config = network("10.5.0.0/26");
    for (s, ip) in [
        ("10.5.0.16/28", [1, 1, 1, 1]),
        ("10.5.0.48/28", [1, 1, 1, 2]),
    ] {
        one.create_lease(subnet(s), &attrs(ip), Duration::from_secs(600))
            .await
            .expect("create");
    }
    let x = attrs([192, 168, 5, 1]);
    let y = attrs([192, 168, 5, 2]);
    let (rx, ry) = tokio::join!(
        acquire(&one, &config, &x, None),
        acquire(&two, &config, &y, None)
    );
    let (won, lost) = match (rx, ry) {
        (Ok(w), Err(l)) => (w, l),
        (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one winner and one loser, got {other:?}"),
    };
    assert_eq!(won.lease.subnet, subnet("10.5.0.32/28"));
    assert!(
        matches!(lost, AcquireError::Exhausted(Exhausted { .. })),
        "{lost:?}"
    );
    let listed = list(&two).await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[1].subnet, subnet("10.5.0.32/28"));
    assert_eq!(listed[1].attrs, won.lease.attrs);
}

/// What a hostile or careless writer can leave under `subnets/`: both stores list
/// the same entries (a value that does not parse is skipped; a key that parses is
/// listed whatever its size), the one validation ([`PeerSet::check`]) refuses each
/// with the same reason, a watch delivers them alike, and none blocks allocation.
async fn hostile_entries_are_listed_alike_refused_alike_and_never_block_allocation<H: Harness>() {
    let h = H::start().await;
    let store = h.open().await;
    let config = network("10.244.0.0/20");
    let big = format!(r#"{{"VNI":1,"Pad":"{}"}}"#, "x".repeat(8 << 10));
    let entries = [
        // The whole network as one "lease": it used to make every join exit.
        (
            "10.244.0.0-16",
            r#"{"PublicIP":"192.168.0.10","BackendType":"vxlan"}"#,
        ),
        ("10.244.1.0-24", "not json"),
        (
            "10.244.2.0-24",
            r#"{"PublicIP":"127.0.0.1","BackendType":"vxlan"}"#,
        ),
        (
            "10.244.3.0-24",
            &format!(r#"{{"PublicIP":"192.168.0.13","BackendType":"vxlan","BackendData":{big}}}"#),
        ),
        (
            "garbage",
            r#"{"PublicIP":"192.168.0.14","BackendType":"vxlan"}"#,
        ),
    ];
    let mut watch = pin!(store.watch_leases());
    assert!(snapshot(&mut watch).await.is_empty());
    for (key, value) in &entries {
        h.put_raw(&format!("subnets/{key}"), value).await;
    }
    let listed = list(&store).await;
    let keys: Vec<String> = listed.iter().map(|l| l.subnet.to_string()).collect();
    assert_eq!(
        keys,
        ["10.244.0.0/16", "10.244.2.0/24", "10.244.3.0/24"],
        "what parses is listed, in key order"
    );
    let own_ip = Ipv4Addr::new(192, 168, 0, 99);
    let peers = PeerSet::new(subnet("10.244.9.0/24"), config.network, 24, own_ip);
    let verdicts: Vec<Result<(), Skip>> = listed.iter().map(|l| peers.check(l)).collect();
    assert_eq!(
        verdicts,
        [
            Err(Skip::NotALease),
            Err(Skip::PublicIp),
            Err(Skip::BackendDataTooLarge)
        ]
    );
    // The watch delivers the same three additions; the unparsable value can only be
    // a removal of whatever its key held before (nothing here).
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let WatchEvent::Events(batch) = next(&mut watch).await else {
            panic!("expected events");
        };
        for e in batch {
            match e {
                LeaseEvent::Added(l) => seen.push(l.subnet.to_string()),
                LeaseEvent::Removed(l) => assert_eq!(l.subnet, subnet("10.244.1.0/24")),
            }
        }
    }
    assert_eq!(seen, keys);
    // Allocation goes on around them, even for a node whose subnet.env names the
    // subnet whose key holds the unparsable value (its create loses; the next try
    // must not pick it again, which used to end in "lost the race 10 times").
    let mut got = Vec::new();
    for (n, previous) in [(1u8, Some(subnet("10.244.1.0/24"))), (2, None), (3, None)] {
        let lease = acquire(&store, &config, &attrs([192, 168, 1, n]), previous)
            .await
            .expect("hostile entries do not block allocation")
            .lease;
        got.push(lease.subnet);
    }
    for s in &got {
        assert!(
            s.is_lease_of(&config.network, 24) && s.addr().octets()[2] >= 4,
            "{s} is a free /24 (not .0, which flannel skips, nor a hostile entry's)"
        );
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case::<super::EtcdHarness>().await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case::<super::EmbeddedHarness>().await;
                }
            )*
        }
    };
}

contract!(
    config_is_read_or_missing,
    acquire_creates_then_reuses,
    a_conflicting_create_loses,
    renew_extends_the_expiry,
    an_expired_lease_disappears,
    delete_removes_and_tolerates_absence,
    watch_delivers_snapshot_then_adds_and_removes,
    a_new_watch_resumes_after_a_restart,
    a_reservation_survives_renewal,
    racing_acquires_for_the_last_subnet,
    hostile_entries_are_listed_alike_refused_alike_and_never_block_allocation,
);

// ---- the embedded store only ----

/// Four handles on one file, each on its own thread and runtime (as separate
/// processes would be), race for the one free subnet: exactly one wins.
#[test]
fn embedded_handles_on_one_file_race_for_the_last_subnet() {
    let dir = TempDir::new();
    let file = dir.path().join("store.db");
    let config = network("10.5.0.0/26");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = EmbeddedStore::open(&file, PREFIX).expect("open");
        for (s, ip) in [
            ("10.5.0.16/28", [1, 1, 1, 1]),
            ("10.5.0.48/28", [1, 1, 1, 2]),
        ] {
            store
                .create_lease(subnet(s), &attrs(ip), Duration::from_secs(600))
                .await
                .expect("create");
        }
    });
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let racers: Vec<_> = (1..=4u8)
        .map(|i| {
            let (file, config, barrier) = (file.clone(), config.clone(), barrier.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let store = EmbeddedStore::open(&file, PREFIX).expect("open");
                    barrier.wait();
                    acquire(&store, &config, &attrs([192, 168, 8, i]), None).await
                })
            })
        })
        .collect();
    let results: Vec<_> = racers
        .into_iter()
        .map(|t| t.join().expect("racer panicked"))
        .collect();
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert_eq!(won[0].lease.subnet, subnet("10.5.0.32/28"));
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, AcquireError::Exhausted(_)), "{e:?}");
        }
    }
    let leases =
        rt.block_on(async { list(&EmbeddedStore::open(&file, PREFIX).expect("open")).await });
    assert_eq!(leases.len(), 3);
    assert_eq!(leases[1].attrs, won[0].lease.attrs);
}

#[tokio::test]
async fn embedded_a_watch_sees_writes_of_another_handle() {
    let dir = TempDir::new();
    let file = dir.path().join("store.db");
    let watcher = EmbeddedStore::open(&file, PREFIX).expect("open");
    let writer = EmbeddedStore::open(&file, PREFIX).expect("open");
    let mut watch = pin!(watcher.watch_leases());
    assert!(snapshot(&mut watch).await.is_empty());

    let a = attrs([192, 168, 9, 1]);
    let s = subnet("10.244.60.0/24");
    writer
        .create_lease(s, &a, Duration::from_secs(600))
        .await
        .expect("create");
    match one_event(&mut watch).await {
        LeaseEvent::Added(l) => {
            assert_eq!(l.subnet, s);
            assert_eq!(l.attrs, a);
        }
        other => panic!("expected Added, got {other:?}"),
    }
    // The config is no lease: not reported.
    writer
        .put_config(r#"{"Network":"10.244.0.0/16"}"#)
        .await
        .expect("config");
    assert_eq!(
        watcher.get_config().await.expect("config"),
        Some(r#"{"Network":"10.244.0.0/16"}"#.to_owned())
    );
    // An expiry noticed by the writer (its next write sweeps it) and a delete.
    let t = subnet("10.244.61.0/24");
    writer
        .create_lease(t, &a, Duration::from_millis(300))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(400)).await;
    writer.delete_lease(s).await.expect("delete");
    let got = events(&mut watch, 3).await;
    assert!(
        matches!(&got[0], LeaseEvent::Added(l) if l.subnet == t),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], LeaseEvent::Removed(l) if l.subnet == t),
        "{got:?}"
    );
    assert!(
        matches!(&got[2], LeaseEvent::Removed(l) if l.subnet == s),
        "{got:?}"
    );
}

#[tokio::test]
async fn embedded_file_holds_flannels_keys_and_values() {
    let dir = TempDir::new();
    let file = dir.path().join("store.db");
    let store = EmbeddedStore::open(&file, "/coreos.com/network/").expect("open");
    let s = subnet("10.244.1.0/24");
    let mine = attrs([192, 168, 64, 3]);
    assert_eq!(
        store.lease_key(s),
        "/coreos.com/network/subnets/10.244.1.0-24"
    );
    assert_eq!(store.config_key(), "/coreos.com/network/config");
    store
        .create_lease(s, &mine, Duration::from_secs(600))
        .await
        .expect("create");
    store
        .put_config(r#"{"Network":"10.244.0.0/16"}"#)
        .await
        .expect("config");

    let conn = rusqlite::Connection::open(&file).expect("open raw");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
    let (value, expires_ms): (String, Option<i64>) = conn
        .query_row(
            "SELECT value, expires_ms FROM kv WHERE key = ?1",
            ["/coreos.com/network/subnets/10.244.1.0-24"],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("lease row");
    assert_eq!(
        value,
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let left = expires_ms.expect("a TTL") as f64 - now_ms as f64;
    assert!((590_000.0..=600_001.0).contains(&left), "{left} ms");
    let config: Option<i64> = conn
        .query_row(
            "SELECT expires_ms FROM kv WHERE key = '/coreos.com/network/config'",
            [],
            |r| r.get(0),
        )
        .expect("config row");
    assert_eq!(config, None);
    let (revision, logged): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT value FROM meta WHERE name = 'revision'),
                    (SELECT count(*) FROM changes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("meta");
    assert_eq!((revision, logged), (2, 2));
}

#[tokio::test]
async fn embedded_watch_lists_again_after_the_log_was_trimmed() {
    let dir = TempDir::new();
    let file = dir.path().join("store.db");
    let options = EmbeddedOptions {
        change_log_limit: 4,
        poll_interval: Duration::from_millis(50),
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&file, PREFIX, options).expect("open");
    let a = attrs([192, 168, 3, 1]);
    store
        .create_lease(subnet("10.244.20.0/24"), &a, Duration::from_secs(600))
        .await
        .expect("create");
    // The watch does nothing until polled: the snapshot is at revision R, and more
    // than the log keeps happens before the next poll.
    let mut watch = pin!(store.watch_leases());
    assert_eq!(snapshot(&mut watch).await.len(), 1);
    store
        .delete_lease(subnet("10.244.20.0/24"))
        .await
        .expect("delete");
    for i in 21..27 {
        store
            .create_lease(
                subnet(&format!("10.244.{i}.0/24")),
                &a,
                Duration::from_secs(600),
            )
            .await
            .expect("create");
    }
    let subnets: Vec<Subnet> = snapshot(&mut watch)
        .await
        .iter()
        .map(|l| l.subnet)
        .collect();
    assert_eq!(
        subnets,
        (21..27)
            .map(|i| subnet(&format!("10.244.{i}.0/24")))
            .collect::<Vec<_>>()
    );
    // It goes on watching from the new revision.
    store
        .delete_lease(subnet("10.244.21.0/24"))
        .await
        .expect("delete");
    match one_event(&mut watch).await {
        LeaseEvent::Removed(l) => {
            assert_eq!(l.subnet, subnet("10.244.21.0/24"));
            assert_eq!(l.attrs, a);
        }
        other => panic!("expected Removed, got {other:?}"),
    }
}

#[tokio::test]
async fn embedded_open_fails_with_the_path() {
    let dir = TempDir::new();
    let missing = dir.path().join("no-such-dir").join("store.db");
    match EmbeddedStore::open(&missing, PREFIX) {
        Err(e @ StoreError::EmbeddedOpen { .. }) => {
            assert!(e.to_string().contains("no-such-dir"), "{e}");
        }
        other => panic!("expected EmbeddedOpen, got {other:?}"),
    }
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 4096]).expect("write");
    assert!(matches!(
        EmbeddedStore::open(&garbage, PREFIX),
        Err(StoreError::EmbeddedOpen { .. })
    ));
}
