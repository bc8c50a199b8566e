use std::net::Ipv4Addr;
use std::pin::pin;

use futures::StreamExt;

use super::*;

/// A store file in a private directory, removed on drop.
struct Scratch {
    dir: PathBuf,
    store: EmbeddedStore,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "twill-store-unit-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).expect("create test directory");
        let store =
            EmbeddedStore::open(&dir.join("store.db"), "/coreos.com/network").expect("open");
        Scratch { dir, store }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_send_static<T: Send + 'static>(_: &T) {}

#[tokio::test]
async fn garbage_is_skipped_by_listings_and_read_as_removal_by_watches() {
    let scratch = Scratch::new("garbage");
    let store = &scratch.store;
    let good = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 6), "vxlan", None).expect("attrs");
    let subnet = |s: &str| s.parse::<Subnet>().expect("subnet");
    store
        .create_lease(subnet("10.244.6.0/24"), &good, Duration::from_secs(600))
        .await
        .expect("create");
    let garbage = [
        (
            "/coreos.com/network/subnets/10.244.7.0-24",
            "this is not json",
        ),
        (
            "/coreos.com/network/subnets/10.244.8.0-24",
            r#"{"PublicIP":"300.0.0.1"}"#,
        ),
        (
            "/coreos.com/network/subnets/not-a-subnet",
            r#"{"PublicIP":"1.1.1.1"}"#,
        ),
        (
            "/coreos.com/network/subnets/10.244.9.7-24",
            r#"{"PublicIP":"1.1.1.1"}"#,
        ),
        (
            "/elsewhere/subnets/10.244.9.0-24",
            r#"{"PublicIP":"1.1.1.1"}"#,
        ),
    ];
    store
        .write("put garbage", move |w| {
            garbage
                .iter()
                .try_for_each(|(key, value)| w.put(key, value, None))
        })
        .await
        .expect("put garbage");
    let (leases, revision) = store.list_leases().await.expect("garbage is no error");
    assert_eq!(revision, 6);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].attrs, good);

    let watch = store.watch_leases();
    assert_send_static(&watch);
    let mut watch = pin!(watch);
    let Some(WatchEvent::Snapshot(snap)) = watch.next().await else {
        panic!("expected a snapshot")
    };
    assert_eq!(snap.len(), 1);
    store
        .write("put garbage", |w| {
            w.put(
                "/coreos.com/network/subnets/10.244.10.0-24",
                "garbage",
                None,
            )
        })
        .await
        .expect("put");
    store
        .create_lease(subnet("10.244.11.0/24"), &good, Duration::from_secs(600))
        .await
        .expect("create");
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(WatchEvent::Events(events))) => got.extend(events),
            other => panic!("expected events, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            LeaseEvent::Removed(Lease {
                subnet: subnet("10.244.10.0/24"),
                attrs: placeholder_attrs(),
                expires: twill_core::lease::Expiry::Never,
            }),
            LeaseEvent::Added(leases_of(store).await.remove(1)),
        ]
    );
}

async fn leases_of(store: &EmbeddedStore) -> Vec<Lease> {
    let (mut leases, _) = store.list_leases().await.expect("list");
    leases.sort_by_key(|l| l.subnet);
    leases
}

#[tokio::test]
async fn expired_keys_read_as_absent_are_swept_and_the_log_trimmed() {
    let scratch = Scratch::new("sweep");
    let store = &scratch.store;
    let a = LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 7), "", None).expect("attrs");
    let subnet = |s: &str| s.parse::<Subnet>().expect("subnet");
    store
        .create_lease(subnet("10.244.1.0/24"), &a, Duration::from_millis(1))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Expired, but no one has deleted it yet: the row is still in the table.
    let present = store
        .blocking("count", |_, conn| {
            conn.query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))
        })
        .await
        .expect("count");
    assert_eq!(present, 1);
    // A read does not return it (and sweeps it, a delete in the change log).
    assert!(
        leases_of(store).await.is_empty(),
        "an expired lease reads as absent"
    );
    let before = SystemTime::now();
    let created = store
        .create_lease(subnet("10.244.1.0/24"), &a, Duration::from_secs(60))
        .await
        .expect("create over an expired lease");
    let after = SystemTime::now();
    // Won, running out 60 s from the write (the store keeps milliseconds), and the
    // time given back is the one stored.
    let Created::Won(expires) = created else {
        panic!("the expired lease's key was taken over: {created:?}")
    };
    let ms = Duration::from_millis(1);
    assert!(
        expires + ms >= before + Duration::from_secs(60)
            && expires <= after + Duration::from_secs(60) + ms,
        "expires {expires:?}, written between {before:?} and {after:?}"
    );
    assert_eq!(
        created,
        Created::Won(to_time(
            store
                .blocking("expiry", |_, conn| conn.query_row(
                    "SELECT expires_ms FROM kv",
                    [],
                    |r| r.get::<_, i64>(0)
                ))
                .await
                .expect("expiry")
        ))
    );
    // put, delete (the sweep), put.
    let kinds = store
        .blocking("log", |_, conn| {
            let mut stmt = conn.prepare("SELECT kind FROM changes ORDER BY revision")?;
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
        .expect("log");
    assert_eq!(kinds, ["put", "delete", "put"]);

    // The log keeps the last CHANGE_LOG_LIMIT changes.
    store
        .write("many", |w| {
            (0..CHANGE_LOG_LIMIT).try_for_each(|_| w.put("/coreos.com/network/x", "y", None))
        })
        .await
        .expect("many writes");
    let (oldest, count, compacted) = store
        .blocking("log", |_, conn| {
            conn.query_row(
                "SELECT min(revision), count(*),
                    (SELECT value FROM meta WHERE name = 'compacted') FROM changes",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
        })
        .await
        .expect("log");
    let limit = i64::try_from(CHANGE_LOG_LIMIT).expect("limit");
    assert_eq!((oldest, count, compacted), (4, limit, 3));
}

#[test]
fn a_new_store_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("twill-perm-{}", std::process::id()));
    let path = dir.join("state").join("leases.db");
    let store = EmbeddedStore::open_creating(&path, "/coreos.com/network").expect("open");
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir.join("state")), 0o700, "the directory");
    assert_eq!(mode(&path), 0o600, "the database file");
    assert_eq!(
        mode(&dir.join("state/leases.db-wal")),
        0o600,
        "its WAL file"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_file_others_may_write_or_a_symlink_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("twill-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("leases.db");
    std::fs::write(&path, b"").expect("planted file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let err = EmbeddedStore::open_creating(&path, "/coreos.com/network")
        .expect_err("a world-writable file is refused");
    assert!(err.to_string().contains("lets others write it"), "{err}");
    std::fs::remove_file(&path).expect("rm");
    std::os::unix::fs::symlink(dir.join("elsewhere.db"), &path).expect("symlink");
    let err = EmbeddedStore::open_creating(&path, "/coreos.com/network")
        .expect_err("a symbolic link is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
