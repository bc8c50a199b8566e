//! The etcd store and lease acquisition against a real etcd server (`/usr/bin/etcd`).

mod common;

use std::net::Ipv4Addr;
use std::pin::pin;
use std::time::Duration;

use common::{Etcd, attrs, next, secs_from_now, subnet};
use etcd_client::{Client, GetOptions, PutOptions};
use twill_core::acquire::Exhausted;
use twill_core::config::Config;
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_core::subnet::Subnet;
use twill_store::{
    AcquireError, Created, EtcdOptions, EtcdStore, LEASE_TTL, LeaseStore, WatchEvent, acquire,
};

const PREFIX: &str = "/coreos.com/network";

async fn store(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::plain(vec![etcd.endpoint()], PREFIX))
        .await
        .expect("connect")
}

async fn raw(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw client")
}

fn key(s: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet(s).key())
}

/// The raw value and etcd lease id of a key.
async fn read_raw(client: &mut Client, key: &str) -> Option<(String, i64)> {
    let resp = client.get(key, None).await.expect("get");
    resp.kvs().first().map(|kv| {
        (
            String::from_utf8(kv.value().to_vec()).expect("utf8"),
            kv.lease(),
        )
    })
}

fn snapshot(event: WatchEvent) -> Vec<Lease> {
    match event {
        WatchEvent::Snapshot(mut leases) => {
            leases.sort_by_key(|l| l.subnet);
            leases
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

fn events(event: WatchEvent) -> Vec<LeaseEvent> {
    match event {
        WatchEvent::Events(events) => events,
        other => panic!("expected events, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_create_loses_and_leaks_no_lease() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let s = subnet("10.244.3.0/24");
    let mine = attrs([192, 168, 0, 1]);
    let won = store
        .create_lease(s, &mine, Duration::from_secs(600))
        .await
        .expect("create");
    let Created::Won(expires) = won else {
        panic!("first create lost")
    };
    let left = secs_from_now(expires);
    assert!((590.0..=601.0).contains(&left), "expires in {left} s");

    let (value, lease) = read_raw(&mut client, &key("10.244.3.0/24"))
        .await
        .expect("key written");
    assert_eq!(
        value,
        r#"{"PublicIP":"192.168.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
    );
    assert_eq!(value, mine.to_json());
    assert_ne!(lease, 0, "a created lease has a TTL");

    let lost = store
        .create_lease(s, &attrs([192, 168, 0, 2]), Duration::from_secs(600))
        .await
        .expect("create");
    assert_eq!(lost, Created::Lost);
    let (value, _) = read_raw(&mut client, &key("10.244.3.0/24"))
        .await
        .expect("key kept");
    assert_eq!(value, mine.to_json(), "the loser wrote nothing");
    let leases = client.leases().await.expect("leases");
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, vec![lease], "the loser's etcd lease was revoked");
}

#[tokio::test]
async fn renew_extends_and_revokes_the_old_lease() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let s = subnet("10.244.4.0/24");
    let mine = attrs([192, 168, 0, 4]);
    store
        .create_lease(s, &mine, Duration::from_secs(60))
        .await
        .expect("create");
    let (_, old) = read_raw(&mut client, &key("10.244.4.0/24"))
        .await
        .expect("key");

    let expires = store
        .renew_lease(s, &mine, LEASE_TTL)
        .await
        .expect("renew")
        .expect("a lease with a TTL stays one");
    let left = secs_from_now(expires);
    assert!(left > 86_000.0, "renewed for {left} s");
    let (value, new) = read_raw(&mut client, &key("10.244.4.0/24"))
        .await
        .expect("key");
    assert_eq!(value, mine.to_json());
    assert_ne!(new, 0);
    assert_ne!(new, old, "renewal puts the key under a fresh etcd lease");
    let ttl = client
        .lease_time_to_live(old, None)
        .await
        .expect("time to live");
    assert_eq!(ttl.ttl(), -1, "the old etcd lease was revoked");
    let leases = client.leases().await.expect("leases");
    assert_eq!(leases.leases().len(), 1);

    let (listed, _) = store.list_leases().await.expect("list");
    assert_eq!(listed.len(), 1);
    let left = secs_from_now(listed[0].expires.at().expect("expiry"));
    assert!(left > 86_000.0, "listed expiry {left} s away");

    // Renewing a lease that vanished writes it again.
    store.delete_lease(s).await.expect("delete");
    assert!(
        store
            .renew_lease(s, &mine, LEASE_TTL)
            .await
            .expect("renew")
            .is_some()
    );
    assert!(read_raw(&mut client, &key("10.244.4.0/24")).await.is_some());
}

#[tokio::test]
async fn a_reservation_survives_renewal_without_a_ttl() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let s = subnet("10.244.5.0/24");
    // As Documentation/reservations.md: put without --lease.
    client
        .put(key("10.244.5.0/24"), r#"{"PublicIP":"192.168.0.5"}"#, None)
        .await
        .expect("put reservation");
    let (listed, _) = store.list_leases().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].expires,
        Expiry::Never,
        "a reservation has no expiry"
    );

    let mine = attrs([192, 168, 0, 5]);
    assert_eq!(
        store.renew_lease(s, &mine, LEASE_TTL).await.expect("renew"),
        None
    );
    let (value, lease) = read_raw(&mut client, &key("10.244.5.0/24"))
        .await
        .expect("reservation kept");
    assert_eq!(
        lease, 0,
        "the reservation did not get a TTL (flannel #1329)"
    );
    assert_eq!(value, mine.to_json());
    assert!(client.leases().await.expect("leases").leases().is_empty());

    // And acquire keeps it a reservation too.
    let config = Config::parse(r#"{"Network":"10.244.0.0/16"}"#).expect("config");
    let got = acquire(&store, &config, &mine, None)
        .await
        .expect("acquire");
    assert_eq!(got.lease.subnet, s);
    assert_eq!(got.lease.expires, Expiry::Never);
    let (_, lease) = read_raw(&mut client, &key("10.244.5.0/24"))
        .await
        .expect("reservation kept");
    assert_eq!(lease, 0);
}

#[tokio::test]
async fn listing_skips_garbage_keys_and_values() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let good = attrs([192, 168, 0, 6]);
    store
        .create_lease(subnet("10.244.6.0/24"), &good, Duration::from_secs(600))
        .await
        .expect("create");
    for (k, v) in [
        (key("10.244.7.0/24"), "this is not json".to_owned()),
        (
            key("10.244.8.0/24"),
            r#"{"PublicIP":"300.0.0.1"}"#.to_owned(),
        ),
        (format!("{PREFIX}/subnets/not-a-subnet"), good.to_json()),
        (format!("{PREFIX}/subnets/10.244.9.7-24"), good.to_json()),
    ] {
        client.put(k, v, None).await.expect("put garbage");
    }
    let (leases, revision) = store.list_leases().await.expect("garbage is no error");
    assert!(revision > 0);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].subnet, subnet("10.244.6.0/24"));
    assert_eq!(leases[0].attrs, good);

    // A watch skips them too.
    let mut watch = pin!(store.watch_leases());
    assert_eq!(snapshot(next(&mut watch).await).len(), 1);
    client
        .put(key("10.244.10.0/24"), "garbage", None)
        .await
        .expect("put");
    store
        .create_lease(subnet("10.244.11.0/24"), &good, Duration::from_secs(600))
        .await
        .expect("create");
    // Garbage under a valid key reads as "whatever that key held is gone".
    let mut got = events(next(&mut watch).await);
    if got.len() < 2 {
        got.extend(events(next(&mut watch).await));
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[0], LeaseEvent::Removed(l) if l.subnet == subnet("10.244.10.0/24")),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], LeaseEvent::Added(l) if l.subnet == subnet("10.244.11.0/24")),
        "{got:?}"
    );
}

#[tokio::test]
async fn watch_recovers_from_compaction_with_a_fresh_snapshot() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let a = attrs([192, 168, 3, 1]);
    store
        .create_lease(subnet("10.244.20.0/24"), &a, Duration::from_secs(600))
        .await
        .expect("create");

    // The snapshot is taken at revision R; the etcd watch opens from R+1 only on the
    // next poll. History past R is compacted away before that.
    let mut watch = pin!(store.watch_leases());
    assert_eq!(snapshot(next(&mut watch).await).len(), 1);
    store
        .delete_lease(subnet("10.244.20.0/24"))
        .await
        .expect("delete");
    for i in 21..25 {
        store
            .create_lease(
                subnet(&format!("10.244.{i}.0/24")),
                &a,
                Duration::from_secs(600),
            )
            .await
            .expect("create");
    }
    let rev = client
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    client.compact(rev, None).await.expect("compact");

    let snap = snapshot(next(&mut watch).await);
    let subnets: Vec<Subnet> = snap.iter().map(|l| l.subnet).collect();
    assert_eq!(
        subnets,
        (21..25)
            .map(|i| subnet(&format!("10.244.{i}.0/24")))
            .collect::<Vec<_>>()
    );

    // It goes on watching from the new revision.
    store
        .delete_lease(subnet("10.244.21.0/24"))
        .await
        .expect("delete");
    match events(next(&mut watch).await).as_slice() {
        [LeaseEvent::Removed(l)] => {
            assert_eq!(l.subnet, subnet("10.244.21.0/24"));
        }
        other => panic!("expected one Removed, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_reconnects_after_etcd_restarts() {
    let mut etcd = Etcd::start();
    let store = store(&etcd).await;
    let a = attrs([192, 168, 4, 1]);
    let mut watch = pin!(store.watch_leases());
    assert!(snapshot(next(&mut watch).await).is_empty());
    store
        .create_lease(subnet("10.244.30.0/24"), &a, Duration::from_secs(600))
        .await
        .expect("create");
    assert_eq!(events(next(&mut watch).await).len(), 1);

    etcd.restart();
    // The first request on the old connection may fail (broken pipe): callers retry.
    let mut tries = 0;
    while let Err(e) = store
        .create_lease(subnet("10.244.31.0/24"), &a, Duration::from_secs(600))
        .await
    {
        tries += 1;
        assert!(tries < 50, "create after restart: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match events(next(&mut watch).await).as_slice() {
        [LeaseEvent::Added(l)] => assert_eq!(l.subnet, subnet("10.244.31.0/24")),
        other => panic!("expected one Added, got {other:?}"),
    }
}

#[tokio::test]
async fn racing_acquires_for_the_last_subnet_one_wins_one_is_exhausted() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    // /28s in 10.5.0.0/26: .0 is skipped, .16 and .48 are taken, .32 is the last.
    let config = Config::parse(r#"{"Network":"10.5.0.0/26"}"#).expect("config");
    for (s, ip) in [
        ("10.5.0.16/28", [1, 1, 1, 1]),
        ("10.5.0.48/28", [1, 1, 1, 2]),
    ] {
        store
            .create_lease(subnet(s), &attrs(ip), Duration::from_secs(600))
            .await
            .expect("create");
    }
    let other = store.clone();
    let x = attrs([192, 168, 5, 1]);
    let y = attrs([192, 168, 5, 2]);
    let (rx, ry) = tokio::join!(
        acquire(&store, &config, &x, None),
        acquire(&other, &config, &y, None)
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
    let mut client = raw(&etcd).await;
    let (value, _) = read_raw(&mut client, &key("10.5.0.32/28"))
        .await
        .expect("written");
    assert_eq!(value, won.lease.attrs.to_json());
    let all = client
        .get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert_eq!(all.kvs().len(), 3);
}

#[tokio::test]
async fn acquire_reuses_the_lease_with_our_public_ip() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let config = Config::parse(r#"{"Network":"10.244.0.0/16"}"#).expect("config");
    let ours = subnet("10.244.40.0/24");
    // Written by an older run with other backend data.
    store
        .create_lease(
            ours,
            &LeaseAttrs::new(Ipv4Addr::new(192, 168, 6, 1), "vxlan", None).expect("attrs"),
            Duration::from_secs(60),
        )
        .await
        .expect("create");
    store
        .create_lease(
            subnet("10.244.41.0/24"),
            &attrs([192, 168, 6, 2]),
            Duration::from_secs(60),
        )
        .await
        .expect("create");
    let me = attrs([192, 168, 6, 1]);
    let got = acquire(&store, &config, &me, Some(subnet("10.244.99.0/24")))
        .await
        .expect("acquire");
    assert_eq!(got.lease.subnet, ours);
    assert_eq!(got.lease.attrs, me);
    assert!(secs_from_now(got.lease.expires.at().expect("ttl")) > 86_000.0);
    let (value, lease) = read_raw(&mut client, &key("10.244.40.0/24"))
        .await
        .expect("key");
    assert_eq!(value, me.to_json());
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert!(ttl.granted_ttl() == 86_400, "granted {}", ttl.granted_ttl());
    assert!(
        read_raw(&mut client, &key("10.244.99.0/24"))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn acquire_prefers_the_previous_subnet_and_drops_stale_leases() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut client = raw(&etcd).await;
    let me = attrs([192, 168, 7, 1]);
    // Our lease from an older config with SubnetLen 25 no longer fits.
    client
        .put(
            format!("{PREFIX}/subnets/10.244.50.0-25"),
            me.to_json(),
            Some(PutOptions::new()),
        )
        .await
        .expect("put");
    let config = Config::parse(r#"{"Network":"10.244.0.0/16"}"#).expect("config");
    let prev = subnet("10.244.77.0/24");
    let got = acquire(&store, &config, &me, Some(prev))
        .await
        .expect("acquire");
    assert_eq!(got.lease.subnet, prev);
    let (value, lease) = read_raw(&mut client, &key("10.244.77.0/24"))
        .await
        .expect("key");
    assert_eq!(value, me.to_json());
    assert_ne!(lease, 0);
    assert!(
        read_raw(&mut client, &format!("{PREFIX}/subnets/10.244.50.0-25"))
            .await
            .is_none(),
        "the stale lease was deleted"
    );

    // A previous subnet someone else holds is not taken.
    let other = attrs([192, 168, 7, 2]);
    let got = acquire(&store, &config, &other, Some(prev))
        .await
        .expect("acquire");
    assert_ne!(got.lease.subnet, prev);
    assert!(config.fits(&got.lease.subnet));
}

/// How many `LeaseTimeToLive` requests etcd has answered, from its own `/metrics`.
fn time_to_live_requests(etcd: &Etcd) -> u64 {
    use std::io::{Read, Write};
    let addr = etcd.endpoint().trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect to etcd's /metrics");
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("ask for /metrics");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains(r#"grpc_method="LeaseTimeToLive""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Put a lease on `s` for `ip` under a fresh one-hour etcd lease, as another node would.
async fn put_with_ttl(client: &mut Client, s: &str, ip: u8) {
    let granted = client.lease_grant(3600, None).await.expect("grant");
    client
        .put(
            key(s),
            attrs([192, 168, 0, ip]).to_json(),
            Some(PutOptions::new().with_lease(granted.id())),
        )
        .await
        .expect("put");
}

/// A lease's expiry is fixed when its etcd lease is granted (flanneld and twill grant a
/// new one at every renewal), so the store asks etcd for it once per etcd lease, counted
/// by etcd itself. Choosing a subnet asks nothing; the watch delivers every lease at
/// once, unread, and the expiries after, in an order that never names a lease the
/// deliveries so far have removed; a lease added later is asked once; one this store
/// granted is not asked at all; a full listing asks only what it does not know.
#[tokio::test]
async fn each_etcd_lease_is_asked_its_expiry_once_and_after_it_is_delivered() {
    let etcd = Etcd::start();
    let mut client = raw(&etcd).await;
    for i in 1..=20 {
        put_with_ttl(&mut client, &format!("10.244.{i}.0/24"), i).await;
    }
    let store = store(&etcd).await;
    let before = time_to_live_requests(&etcd);
    let asked = || time_to_live_requests(&etcd) - before;

    let (holders, _) = store.list_holders().await.expect("list holders");
    assert_eq!(holders.len(), 20);
    assert!(holders.iter().all(|l| l.expires == Expiry::Unread));
    assert_eq!(asked(), 0, "choosing a subnet needs no expiry");

    let mut watch = pin!(store.watch_leases());
    let mut model: std::collections::BTreeMap<Subnet, Expiry> = snapshot(next(&mut watch).await)
        .into_iter()
        .map(|l| (l.subnet, l.expires))
        .collect();
    assert_eq!(model.len(), 20);
    assert!(model.values().all(|e| *e == Expiry::Unread), "{model:?}");
    assert_eq!(
        asked(),
        0,
        "the snapshot is delivered before any expiry is asked"
    );

    // Changes while the expiries are unread: one lease goes, another comes.
    client
        .delete(key("10.244.1.0/24"), None)
        .await
        .expect("delete");
    put_with_ttl(&mut client, "10.244.99.0/24", 99).await;
    let (gone, new) = (subnet("10.244.1.0/24"), subnet("10.244.99.0/24"));
    let mut saw = (false, false);
    while !(saw.0 && saw.1) || model.values().any(|e| *e == Expiry::Unread) {
        match next(&mut watch).await {
            WatchEvent::Events(events) => {
                for e in events {
                    match e {
                        LeaseEvent::Added(l) => {
                            saw.1 |= l.subnet == new;
                            model.insert(l.subnet, l.expires);
                        }
                        LeaseEvent::Removed(l) => {
                            saw.0 |= l.subnet == gone;
                            model.remove(&l.subnet);
                        }
                    }
                }
            }
            WatchEvent::Expiries(read) => {
                for (s, t) in read {
                    let slot = model.get_mut(&s).unwrap_or_else(|| {
                        panic!("an expiry for {s}, which the deliveries removed")
                    });
                    assert_eq!(*slot, Expiry::Unread, "{s} was not unread");
                    let left = secs_from_now(t);
                    assert!((3590.0..=3600.0).contains(&left), "{s}: {left} s left");
                    *slot = Expiry::At(t);
                }
            }
            WatchEvent::Snapshot(l) => panic!("no second snapshot expected: {l:?}"),
        }
    }
    assert_eq!(model.len(), 20);
    // The 19 still there and the new one, once each; the removed one too if its read
    // began before its removal came.
    assert!((20..=21).contains(&asked()), "{} asked", asked());
    let after_watch = asked();

    // A full listing now knows every expiry, the same as the watch delivered.
    let (listed, _) = store.list_leases().await.expect("list");
    let listed: std::collections::BTreeMap<Subnet, Expiry> =
        listed.into_iter().map(|l| (l.subnet, l.expires)).collect();
    assert_eq!(listed, model, "the listing and the watch agree");
    assert_eq!(asked(), after_watch, "nothing asked again");

    // Our own lease, granted by this store: its expiry is known without asking.
    store
        .create_lease(
            subnet("10.244.100.0/24"),
            &attrs([192, 168, 0, 100]),
            Duration::from_secs(600),
        )
        .await
        .expect("create");
    match events(next(&mut watch).await).as_slice() {
        [LeaseEvent::Added(l)] => assert!(matches!(l.expires, Expiry::At(_)), "{l:?}"),
        other => panic!("expected one Added, got {other:?}"),
    }
    assert_eq!(asked(), after_watch);

    // Another client asks each lease once for a full listing, then no more.
    let other = self::store(&etcd).await;
    other.list_leases().await.expect("list");
    assert_eq!(asked(), after_watch + 21, "one per lease");
    other.list_leases().await.expect("list again");
    assert_eq!(asked(), after_watch + 21, "nothing asked again");
}
