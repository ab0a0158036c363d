//! The store's data epoch (SECURITY.md R6): how a broker notices that the
//! shared store lost its data, and refuses to serve until an operator
//! restores what must not be lost.
//!
//! Revocations and kill-switch blocks only take authority away, so a store
//! that silently forgets them hands authority back: revoked tokens answer
//! `active: true`, re-exchange, a blocked agent mints again. A Redis that
//! restarts without persistence, a `FLUSHALL`, or a failover that promotes
//! an empty replica all do that, and Redis answers normally afterwards.
//!
//! # How it is caught
//! - The store holds one key, `P:{rev}:epoch`, with no TTL: `ID AT ORIGIN`
//!   (a random id, when it was written, and `new` or `recovered`). It has
//!   the revocations' hash tag, so in a cluster it lives on the master
//!   holding what it vouches for, and is lost with it.
//! - Every broker reads it at start (writing a `new` one if there is none:
//!   `SET NX`, so the first broker of a deployment creates it) and then
//!   every [`CHECK_EVERY`], and remembers the value it saw.
//! - When the key is gone, or holds another epoch, the data it vouched for
//!   may be gone: the broker marks the store **lost**. Every store call then
//!   fails at once with [`StoreError::Unavailable`] naming the cause, so
//!   `/token`, `/introspect`, the admin changes and the feed answer 503 and
//!   `/readyz` fails; the broker writes a `store_epoch_lost` audit record
//!   (to its file sink: the store's stream is refused too) and sets
//!   `tessera_store_epoch_lost` to 1.
//! - `tessera store recover --from-audit FILE` re-applies every revocation
//!   and block the audit trail says can still matter, then writes a
//!   `recovered` epoch; `--accept-loss` writes one without restoring
//!   anything (audited as such). A lost broker adopts a `recovered` epoch
//!   it finds; a `new` one (a broker started against the empty store) does
//!   not clear it: only an operator's recovery does.
//!
//! # What it does not catch
//! A loss while **no** broker runs: every broker started afterwards sees no
//! key and writes a `new` epoch. Persist Redis (AOF), and keep at least one
//! broker running while Redis is restarted (README: failure modes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::StoreError;

/// How often a broker reads the epoch.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Set around an operator's recovery: its store calls pass while the
    /// store is marked lost (everything else still fails closed).
    pub static RECOVERING: ();
}

/// Runs `f` with the store's lost-data check lifted for its calls only.
pub async fn recovering<F: std::future::Future>(f: F) -> F::Output {
    RECOVERING.scope((), f).await
}

/// Whether the current task is an operator's recovery.
pub fn in_recovery() -> bool {
    RECOVERING.try_with(|_| ()).is_ok()
}

/// Where an epoch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written by a broker that found no epoch.
    New,
    /// Written by an operator's recovery.
    Recovered,
}

/// One epoch value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// Random id.
    pub id: String,
    /// Unix seconds it was written.
    pub at: u64,
    /// Who wrote it.
    pub origin: Origin,
}

impl Epoch {
    /// A fresh epoch.
    pub fn fresh(origin: Origin, now: u64) -> Epoch {
        Epoch {
            id: uuid::Uuid::new_v4().simple().to_string(),
            at: now,
            origin,
        }
    }

    /// The stored form, `ID AT ORIGIN`.
    pub fn encode(&self) -> String {
        let o = match self.origin {
            Origin::New => "new",
            Origin::Recovered => "recovered",
        };
        format!("{} {} {o}", self.id, self.at)
    }

    /// Parses the stored form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Epoch> {
        let mut it = s.split(' ');
        let (id, at, o) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || id.is_empty() || id.len() > 64 {
            return None;
        }
        let origin = match o {
            "new" => Origin::New,
            "recovered" => Origin::Recovered,
            _ => return None,
        };
        Some(Epoch {
            id: id.to_string(),
            at: at.parse().ok()?,
            origin,
        })
    }
}

/// What one check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same epoch as before (or the first one seen): nothing to do.
    Same,
    /// The data is gone: the epoch vanished or changed.
    Lost(String),
    /// A lost store was recovered by an operator (on this or another broker).
    Recovered,
}

/// A broker's view of its store's epoch.
#[derive(Debug)]
pub struct EpochState {
    known: Mutex<Option<Epoch>>,
    /// Whether `known` is set (read on every revocation and block lookup,
    /// without the lock or a copy).
    armed: AtomicBool,
    lost: AtomicBool,
    changes: tokio::sync::watch::Sender<bool>,
}

impl Default for EpochState {
    fn default() -> Self {
        EpochState {
            known: Mutex::new(None),
            armed: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            changes: tokio::sync::watch::channel(false).0,
        }
    }
}

impl EpochState {
    /// Whether the store is marked lost (and this task is no recovery).
    pub fn refuses(&self) -> bool {
        self.lost.load(Ordering::Acquire) && !in_recovery()
    }

    /// Whether the store is marked lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// `true` while lost; changes when it is marked lost or recovered.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.changes.subscribe()
    }

    /// Whether this broker holds an epoch yet (a store opened without the
    /// watcher never does: nothing is vouched for).
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// The epoch this broker holds.
    pub fn known(&self) -> Option<Epoch> {
        self.known.lock().ok().and_then(|g| g.clone())
    }

    fn set_lost(&self, lost: bool) {
        self.lost.store(lost, Ordering::Release);
        crate::telemetry::metrics()
            .store_epoch_lost
            .set(i64::from(lost));
        self.changes.send_replace(lost);
    }

    /// Folds in what the store holds now (`None`: no epoch key).
    pub fn observe(&self, found: Option<Epoch>) -> Verdict {
        let Ok(mut known) = self.known.lock() else {
            return Verdict::Same;
        };
        let lost = self.lost.load(Ordering::Acquire);
        match (&*known, found) {
            (None, Some(f)) => {
                *known = Some(f);
                self.armed.store(true, Ordering::Release);
                Verdict::Same
            }
            (None, None) => Verdict::Same,
            (Some(k), Some(f)) if *k == f => Verdict::Same,
            (Some(_), Some(f)) if lost && f.origin == Origin::Recovered => {
                *known = Some(f);
                drop(known);
                self.set_lost(false);
                Verdict::Recovered
            }
            (Some(_), _) if lost => Verdict::Same,
            (Some(k), None) => {
                let why = format!(
                    "the store's data epoch {} (written {}) is gone: the store lost its data \
                     (a restart without persistence, a FLUSHALL, a failover to an empty \
                     replica); revocations and blocks may be undone, so nothing is served until \
                     an operator runs `tessera store recover`",
                    k.id, k.at
                );
                drop(known);
                self.set_lost(true);
                Verdict::Lost(why)
            }
            (Some(k), Some(f)) => {
                let why = format!(
                    "the store's data epoch changed from {} to {} ({}): the store was emptied \
                     and written again; nothing is served until an operator runs `tessera store \
                     recover`",
                    k.id,
                    f.id,
                    match f.origin {
                        Origin::New => "written by a broker that found no epoch",
                        Origin::Recovered => "a recovery",
                    }
                );
                drop(known);
                self.set_lost(true);
                Verdict::Lost(why)
            }
        }
    }

    /// After this broker wrote `e` in a recovery: it is the epoch now.
    pub fn rearmed(&self, e: Epoch) {
        if let Ok(mut k) = self.known.lock() {
            *k = Some(e);
            self.armed.store(true, Ordering::Release);
        }
        self.set_lost(false);
    }

    /// The error every store call answers while lost.
    pub fn refusal(&self, op: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "redis {op}: the store lost its data (data epoch gone or changed); refused until \
             an operator runs `tessera store recover`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(origin: Origin) -> Epoch {
        Epoch::fresh(origin, 1_700_000_000)
    }

    #[test]
    fn encode_parse_round_trip() {
        for o in [Origin::New, Origin::Recovered] {
            let x = e(o);
            assert_eq!(Epoch::parse(&x.encode()), Some(x));
        }
        for bad in ["", "a", "a 1", "a 1 old", "a x new", "a 1 new extra"] {
            assert_eq!(Epoch::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn lost_until_a_recovered_epoch_appears() {
        let s = EpochState::default();
        let first = e(Origin::New);
        assert_eq!(s.observe(Some(first.clone())), Verdict::Same);
        assert_eq!(s.observe(Some(first.clone())), Verdict::Same);
        assert!(!s.refuses());
        // FLUSHALL: the key is gone
        assert!(matches!(s.observe(None), Verdict::Lost(_)));
        assert!(s.refuses() && s.is_lost());
        // another broker starts on the empty store and writes a new epoch:
        // still lost
        assert_eq!(s.observe(Some(e(Origin::New))), Verdict::Same);
        assert!(s.refuses());
        // a recovery's calls pass
        assert!(recovering(async { !s.refuses() }).await);
        // an operator's recovery elsewhere: adopted
        let r = e(Origin::Recovered);
        assert_eq!(s.observe(Some(r.clone())), Verdict::Recovered);
        assert!(!s.refuses());
        assert_eq!(s.known(), Some(r));
        // a different epoch while not lost: lost
        assert!(matches!(s.observe(Some(e(Origin::New))), Verdict::Lost(_)));
    }
}
