//! One revocation-feed poller per process, fanned out to every live
//! `/revocations` stream.
//!
//! The poller starts with the first stream and stops (within one poll
//! interval) after the last one ends. It reads entries made on any replica
//! once, every [`FEED_POLL`], or at once when this process records a
//! revocation or the store signals that the feed changed (Redis: the block
//! cache's tracking connection, [`super::block_cache`]), and broadcasts
//! them. Store reads therefore grow with the
//! number of processes, not with the number of followers.
//!
//! A [`FeedSubscription`] first catches up from the store from its own
//! cursor, then follows the broadcast, dropping entries at or before its
//! cursor: no gaps, no duplicates, feed order. The broadcast holds at most
//! [`FEED_BACKLOG`] batches; a subscriber that falls further behind is never
//! waited for: it notices the lag and catches up from the store again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{Revocation, RevocationStore};
use crate::clock::Clock;

/// Most entries one store read returns (poller and catch-up alike).
pub const FEED_PAGE: usize = 1000;
/// How often the poller reads the store for entries made by other replicas.
pub const FEED_POLL: Duration = Duration::from_millis(200);
/// Batches (of at most [`FEED_PAGE`] entries) the broadcast keeps for slow
/// subscribers before they must catch up from the store.
pub const FEED_BACKLOG: usize = 16;

/// What the poller broadcasts.
#[derive(Clone, Debug)]
enum Item {
    /// New entries, in feed order.
    Entries(Arc<Vec<(String, Revocation)>>),
    /// The store could not be read (the cause).
    Unavailable(Arc<str>),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// One entry and its cursor.
    Entry(String, Revocation),
    /// The store could not be read; the subscription keeps its cursor and
    /// resumes by itself. Carries the cause.
    Unavailable(String),
}

/// The per-process fan-out of the revocation feed.
pub struct FeedHub {
    store: Arc<dyn RevocationStore>,
    events: watch::Sender<u64>,
    backlog: usize,
    /// The poller's interval when nothing wakes it.
    poll: Duration,
    /// The running poller's sender; `None` when no poller runs.
    live: tokio::sync::Mutex<Option<broadcast::Sender<Item>>>,
    polls: AtomicU64,
    pollers_started: AtomicU64,
    resyncs: AtomicU64,
}

impl std::fmt::Debug for FeedHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedHub")
            .field("polls", &self.polls())
            .field("pollers_started", &self.pollers_started())
            .finish()
    }
}

impl FeedHub {
    /// A hub over `store`, woken at once by every bump of `events` (the
    /// process's own revocations).
    pub fn new(store: Arc<dyn RevocationStore>, events: watch::Sender<u64>) -> Self {
        Self::with_backlog(store, events, FEED_BACKLOG)
    }

    /// [`FeedHub::new`] keeping `backlog` batches (at least 1).
    pub fn with_backlog(
        store: Arc<dyn RevocationStore>,
        events: watch::Sender<u64>,
        backlog: usize,
    ) -> Self {
        Self {
            store,
            events,
            backlog: backlog.max(1),
            poll: FEED_POLL,
            live: tokio::sync::Mutex::new(None),
            polls: AtomicU64::new(0),
            pollers_started: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        }
    }

    /// The hub with its poller reading the store every `poll` when nothing
    /// wakes it (at most [`FEED_POLL`] unless the store signals changes:
    /// a longer interval would delay other replicas' revocations).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Store reads made by the poller so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Pollers started so far (one per period with at least one subscriber).
    pub fn pollers_started(&self) -> u64 {
        self.pollers_started.load(Ordering::Relaxed)
    }

    /// Times a subscriber fell behind the broadcast and caught up from the
    /// store instead.
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// A subscription resuming after `cursor` (exclusive; `None`: every
    /// live entry). Cheap: the store is read on the first
    /// [`FeedSubscription::next`].
    pub fn subscribe(
        self: &Arc<Self>,
        cursor: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> FeedSubscription {
        FeedSubscription {
            hub: self.clone(),
            clock,
            rx: None,
            cursor,
            catching_up: true,
            pending: VecDeque::new(),
        }
    }

    /// A receiver of the live broadcast, starting the poller if none runs.
    /// The poller starts at the feed's current end, read before the receiver
    /// is returned, so that a subscriber catching up from the store after
    /// this call cannot miss an entry.
    async fn receiver(
        self: &Arc<Self>,
        clock: &Arc<dyn Clock>,
    ) -> Result<broadcast::Receiver<Item>, super::StoreError> {
        let mut live = self.live.lock().await;
        if let Some(tx) = live.as_ref() {
            return Ok(tx.subscribe());
        }
        self.polls.fetch_add(1, Ordering::Relaxed);
        let (_, head) = self.store.list_since(None, 0, clock.now()).await?;
        let (tx, rx) = broadcast::channel(self.backlog);
        *live = Some(tx.clone());
        self.pollers_started.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(poll_loop(self.clone(), tx, head, clock.clone()));
        Ok(rx)
    }
}

/// The poller: reads new entries once and broadcasts them until no
/// subscriber is left.
async fn poll_loop(
    hub: Arc<FeedHub>,
    tx: broadcast::Sender<Item>,
    mut cursor: String,
    clock: Arc<dyn Clock>,
) {
    let mut events = hub.events.subscribe();
    let mut remote = hub.store.feed_changes();
    loop {
        tokio::select! {
            () = tokio::time::sleep(hub.poll) => {}
            _ = events.changed() => {}
            changed = async {
                match remote.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    // The store dropped its signal: poll from now on.
                    remote = None;
                }
            }
        }
        if tx.receiver_count() == 0 {
            // Subscribing happens under the same lock: nobody can join
            // between this check and the poller's removal.
            let mut live = hub.live.lock().await;
            if tx.receiver_count() == 0 {
                *live = None;
                return;
            }
        }
        loop {
            hub.polls.fetch_add(1, Ordering::Relaxed);
            match hub
                .store
                .list_since(Some(&cursor), FEED_PAGE, clock.now())
                .await
            {
                Ok((entries, next)) => {
                    let full = entries.len() >= FEED_PAGE;
                    cursor = next;
                    if !entries.is_empty() {
                        // Never blocks: a lagging receiver loses the oldest
                        // batches and learns it on its next receive.
                        let _ = tx.send(Item::Entries(Arc::new(entries)));
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation feed poller: store unavailable");
                    let _ = tx.send(Item::Unavailable(e.to_string().into()));
                    break;
                }
            }
        }
    }
}

/// One follower's view of the feed: catch-up from the store, then the live
/// broadcast. Holds at most one page of entries.
pub struct FeedSubscription {
    hub: Arc<FeedHub>,
    clock: Arc<dyn Clock>,
    rx: Option<broadcast::Receiver<Item>>,
    /// Every entry at or before it was delivered (or had expired).
    cursor: Option<String>,
    catching_up: bool,
    pending: VecDeque<(String, Revocation)>,
}

impl FeedSubscription {
    /// The cursor after the last entry delivered (or skipped as expired).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The next entry, waiting for one as long as it takes (callers bound
    /// the wait). A store failure is returned as
    /// [`FeedEvent::Unavailable`] after a pause of one poll interval; the
    /// next call resumes where this one stopped.
    pub async fn next(&mut self) -> FeedEvent {
        loop {
            if let Some((c, r)) = self.pending.pop_front() {
                return FeedEvent::Entry(c, r);
            }
            // Join the broadcast before reading the store: whatever the
            // poller sends from now on is received, whatever it sent before
            // is already in the store.
            if self.rx.is_none() {
                match self.hub.receiver(&self.clock).await {
                    Ok(rx) => {
                        self.rx = Some(rx);
                        self.catching_up = true;
                    }
                    Err(e) => return self.unavailable(e.to_string()).await,
                }
            }
            if self.catching_up {
                let before = self.cursor.clone();
                match self
                    .hub
                    .store
                    .list_since(before.as_deref(), FEED_PAGE, self.clock.now())
                    .await
                {
                    Ok((entries, next)) => {
                        if entries.is_empty() && before.as_deref() == Some(next.as_str()) {
                            self.catching_up = false;
                        }
                        self.pending.extend(entries);
                        self.cursor = Some(next);
                        continue;
                    }
                    Err(e) => return self.unavailable(e.to_string()).await,
                }
            }
            let Some(rx) = self.rx.as_mut() else {
                continue;
            };
            match rx.recv().await {
                Ok(Item::Entries(batch)) => {
                    for (c, r) in batch.iter() {
                        if self.cursor.as_ref().is_none_or(|cur| c > cur) {
                            self.pending.push_back((c.clone(), r.clone()));
                            self.cursor = Some(c.clone());
                        }
                    }
                }
                Ok(Item::Unavailable(cause)) => return FeedEvent::Unavailable(cause.to_string()),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.hub.resyncs.fetch_add(1, Ordering::Relaxed);
                    self.catching_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The poller is gone (it only stops without receivers,
                    // so this is a failure): join a new one and catch up.
                    self.rx = None;
                }
            }
        }
    }

    async fn unavailable(&mut self, cause: String) -> FeedEvent {
        tracing::warn!(error = %cause, "revocation stream: store unavailable");
        tokio::time::sleep(FEED_POLL).await;
        FeedEvent::Unavailable(cause)
    }
}

#[cfg(test)]
mod tests;
