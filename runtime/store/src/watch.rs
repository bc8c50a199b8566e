//! One lease-watch loop for every store. A store supplies a [`WatchSource`] — a full
//! listing, and "what changed since revision N" — and the loop makes the stream
//! `LeaseStore::watch_leases` promises: a snapshot first (and again whenever the
//! store's history no longer reaches back to what was delivered), then batches of
//! events in store order, with store failures retried forever with backoff and a log
//! line each.

use std::time::{Duration, SystemTime};

use futures::Stream;
use tracing::warn;
use twill_core::lease::{Lease, LeaseEvent};
use twill_core::subnet::Subnet;

use crate::{LeaseWatch, Revision, StoreError, WatchEvent};
use twill_core::error_chain;

/// The first wait after a failure; doubled per failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between tries.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What one look at a store's changes found.
pub(crate) enum Polled {
    /// Events (possibly none, e.g. a progress notification); `next` is the first
    /// revision not yet seen.
    Changes {
        events: Vec<LeaseEvent>,
        next: Revision,
    },
    /// The history no longer reaches back to the revision asked for: `what` says so in
    /// the store's words, `revision` is where it starts now (0 if unknown).
    Compacted {
        what: &'static str,
        revision: Revision,
    },
    /// The expiries of leases delivered as unread (see [`WatchEvent::Expiries`]).
    Expiries(Vec<(Subnet, SystemTime)>),
    /// The look failed; it is retried after a backoff.
    Failed(String),
}

/// A store as the watch loop sees it.
pub(crate) trait WatchSource: Send + 'static {
    /// Every lease that parses, and the revision of the listing.
    fn list(&mut self) -> impl Future<Output = Result<(Vec<Lease>, Revision), StoreError>> + Send;

    /// Wait for the changes from revision `since` on (a source may wait a while for
    /// them, and should not return empty-handed at once, or the loop spins).
    fn poll(&mut self, since: Revision) -> impl Future<Output = Polled> + Send;
}

/// The stream of [`WatchEvent`]s of `source`. It does nothing until polled: the
/// listing is taken on the first poll.
pub(crate) fn watch(source: impl WatchSource) -> impl Stream<Item = WatchEvent> + Send + 'static {
    stream(Loop {
        source,
        since: 0,
        resync: true,
        backoff: BACKOFF_MIN,
    })
}

/// A listing of `source` taken now (its failure returned, not retried), and the
/// stream of what changes after it: [`watch`] without its first snapshot.
pub(crate) async fn listed(
    mut source: impl WatchSource,
) -> Result<(Vec<Lease>, LeaseWatch), StoreError> {
    let (leases, revision) = source.list().await?;
    let rest = stream(Loop {
        source,
        since: revision + 1,
        resync: false,
        backoff: BACKOFF_MIN,
    });
    Ok((leases, Box::pin(rest)))
}

fn stream<W: WatchSource>(state: Loop<W>) -> impl Stream<Item = WatchEvent> + Send + 'static {
    futures::stream::unfold(state, |mut w| async move {
        let event = w.next().await;
        Some((event, w))
    })
}

struct Loop<W> {
    source: W,
    /// The first revision not yet delivered.
    since: Revision,
    /// A fresh listing is due (first poll, or the history was compacted past `since`).
    resync: bool,
    backoff: Duration,
}

impl<W: WatchSource> Loop<W> {
    /// The next delivery; retries store failures forever with backoff.
    async fn next(&mut self) -> WatchEvent {
        loop {
            if self.resync {
                match self.source.list().await {
                    Ok((leases, revision)) => {
                        self.resync = false;
                        self.since = revision + 1;
                        self.backoff = BACKOFF_MIN;
                        return WatchEvent::Snapshot(leases);
                    }
                    Err(e) => {
                        self.fail(&format!("listing leases failed: {}", error_chain(&e)))
                            .await;
                        continue;
                    }
                }
            }
            match self.source.poll(self.since).await {
                Polled::Changes { events, next } => {
                    self.backoff = BACKOFF_MIN;
                    self.since = self.since.max(next);
                    if !events.is_empty() {
                        return WatchEvent::Events(events);
                    }
                }
                Polled::Expiries(expiries) => {
                    self.backoff = BACKOFF_MIN;
                    if !expiries.is_empty() {
                        return WatchEvent::Expiries(expiries);
                    }
                }
                Polled::Compacted { what, revision } => {
                    warn!(
                        since = self.since,
                        compacted = revision,
                        "{what}; listing leases again"
                    );
                    self.resync = true;
                }
                Polled::Failed(why) => self.fail(&why).await,
            }
        }
    }

    async fn fail(&mut self, why: &str) {
        warn!(retry_in = ?self.backoff, since = self.since, "{why}");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}
