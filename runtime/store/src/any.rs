//! [`AnyStore`]: the store `twill run` was told to use (`--store etcd|embedded`), as one
//! type, so the daemon is written once. [`LeaseStore`] is not object-safe (its methods
//! return `impl Future`), so this is an enum that forwards each call; the watch streams
//! differ in type and are boxed.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use twill_core::lease::{Lease, LeaseAttrs};
use twill_core::subnet::Subnet;

use crate::{Created, EmbeddedStore, EtcdStore, LeaseStore, Revision, StoreError, WatchEvent};

/// Either store.
#[derive(Clone)]
pub enum AnyStore {
    /// etcd (flannel's layout), the store for real clusters. (Boxed: its client is
    /// kilobytes, the embedded store a pointer.)
    Etcd(Box<EtcdStore>),
    /// One SQLite file shared by the twill processes of one host.
    Embedded(EmbeddedStore),
}

impl From<EtcdStore> for AnyStore {
    fn from(store: EtcdStore) -> Self {
        Self::Etcd(Box::new(store))
    }
}

impl From<EmbeddedStore> for AnyStore {
    fn from(store: EmbeddedStore) -> Self {
        Self::Embedded(store)
    }
}

impl LeaseStore for AnyStore {
    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        match self {
            Self::Etcd(s) => s.get_config().await,
            Self::Embedded(s) => s.get_config().await,
        }
    }

    async fn list_leases(&self) -> Result<(Vec<Lease>, Revision), StoreError> {
        match self {
            Self::Etcd(s) => s.list_leases().await,
            Self::Embedded(s) => s.list_leases().await,
        }
    }

    async fn create_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Created, StoreError> {
        match self {
            Self::Etcd(s) => s.create_lease(subnet, attrs, ttl).await,
            Self::Embedded(s) => s.create_lease(subnet, attrs, ttl).await,
        }
    }

    async fn renew_lease(
        &self,
        subnet: Subnet,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<SystemTime>, StoreError> {
        match self {
            Self::Etcd(s) => s.renew_lease(subnet, attrs, ttl).await,
            Self::Embedded(s) => s.renew_lease(subnet, attrs, ttl).await,
        }
    }

    async fn delete_lease(&self, subnet: Subnet) -> Result<(), StoreError> {
        match self {
            Self::Etcd(s) => s.delete_lease(subnet).await,
            Self::Embedded(s) => s.delete_lease(subnet).await,
        }
    }

    fn watch_connects(&self) -> u64 {
        match self {
            Self::Etcd(s) => s.watch_connects(),
            Self::Embedded(s) => s.watch_connects(),
        }
    }

    fn watch_leases(&self) -> impl Stream<Item = WatchEvent> + Send + 'static {
        let stream: Pin<Box<dyn Stream<Item = WatchEvent> + Send>> = match self {
            Self::Etcd(s) => s.watch_leases().boxed(),
            Self::Embedded(s) => s.watch_leases().boxed(),
        };
        stream
    }
}
