//! The one rule of what a revocation covers, shared by the broker's stores
//! (memory and Redis) and the resource servers' verifier (its revocation
//! feed follower), so the three can never disagree.
//!
//! A live entry (`expires_at > now`) revokes a token when it is:
//! - a `jti` entry for the token's `jti`, or for any ancestor's `jti` (the
//!   tokens it was re-exchanged from): whenever the token was issued;
//! - a `subject` entry for its `sub`, any actor in its `act` chain, or
//!   its `client_id` (the workload that presented the exchange: a blocked
//!   agent's kill switch covers every token it holds), a
//!   `task` entry for its `txn`, a `grant` entry for its `grant`: when the
//!   token was issued no later than the revocation (`iat <= revoked_at`),
//!   so a subject revoked now can be issued new tokens later (unless
//!   blocked).

use serde::{Deserialize, Serialize};

/// What a revocation entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// One token, by `jti`.
    Jti,
    /// Every token issued until now whose `sub` or any actor is this identity.
    Subject,
    /// Every token of a task (`txn`).
    Task,
    /// Every token issued under a JIT grant.
    Grant,
}

impl RevocationKind {
    /// Every kind.
    pub const ALL: [RevocationKind; 4] = [Self::Jti, Self::Subject, Self::Task, Self::Grant];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jti => "jti",
            Self::Subject => "subject",
            Self::Task => "task",
            Self::Grant => "grant",
        }
    }

    /// Parses the wire name.
    ///
    /// ```
    /// use tessera::revocation::RevocationKind;
    /// assert_eq!(RevocationKind::parse("task"), Some(RevocationKind::Task));
    /// assert_eq!(RevocationKind::parse("Task"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The times of one revocation entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// When it was (last) recorded.
    pub revoked_at: u64,
    /// When every token it can cover has expired: it is dropped then.
    pub expires_at: u64,
}

/// What of a token revocation entries are matched against.
#[derive(Debug, Clone, Copy)]
pub struct Covered<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// The `jti` of every token this one was re-exchanged from.
    pub ancestors: &'a [String],
    /// `sub`.
    pub sub: &'a str,
    /// Every actor's `sub` in the `act` chain.
    pub actors: &'a [String],
    /// `client_id`: the workload the token was issued to.
    pub client_id: Option<&'a str>,
    /// `txn`.
    pub txn: &'a str,
    /// `grant`.
    pub grant: Option<&'a str>,
    /// `iat` (a token without one is treated as issued at 0: covered).
    pub iat: u64,
}

impl<'a> Covered<'a> {
    /// Every entry that could revoke the token, in a fixed order: the
    /// token's `jti`, its ancestors', `sub`, the actors, `client_id` (when
    /// it is none of those), `txn`, `grant`.
    /// A store fetches these (in one round trip) and hands the answers to
    /// [`Covered::revoked_by`] in the same order.
    pub fn lookups(&self) -> Vec<(RevocationKind, &'a str)> {
        let mut v = Vec::with_capacity(4 + self.ancestors.len() + self.actors.len());
        v.push((RevocationKind::Jti, self.jti));
        v.extend(
            self.ancestors
                .iter()
                .map(|a| (RevocationKind::Jti, a.as_str())),
        );
        v.push((RevocationKind::Subject, self.sub));
        v.extend(
            self.actors
                .iter()
                .map(|a| (RevocationKind::Subject, a.as_str())),
        );
        if let Some(c) = self
            .client_id
            .filter(|c| *c != self.sub && !self.actors.iter().any(|a| a == c))
        {
            v.push((RevocationKind::Subject, c));
        }
        v.push((RevocationKind::Task, self.txn));
        if let Some(g) = self.grant {
            v.push((RevocationKind::Grant, g));
        }
        v
    }

    /// Whether the entries found for [`Covered::lookups`] (same order;
    /// `None` where there is none) revoke the token at `now`.
    pub fn revoked_by(&self, found: impl IntoIterator<Item = Option<Entry>>, now: u64) -> bool {
        self.lookups()
            .into_iter()
            .zip(found)
            .any(|((kind, _), e)| e.is_some_and(|e| self.covered_by(kind, e, now)))
    }

    /// Whether the token is revoked, looking each entry up with `get`.
    pub fn revoked_with(
        &self,
        now: u64,
        get: impl Fn(RevocationKind, &str) -> Option<Entry>,
    ) -> bool {
        self.lookups()
            .into_iter()
            .any(|(kind, value)| get(kind, value).is_some_and(|e| self.covered_by(kind, e, now)))
    }

    /// The rule for one live entry found under one of the token's lookups.
    fn covered_by(&self, kind: RevocationKind, e: Entry, now: u64) -> bool {
        e.expires_at > now && (kind == RevocationKind::Jti || self.iat <= e.revoked_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let ancestors = vec!["parent".to_string()];
        let actors = vec!["agent".to_string()];
        let t = Covered {
            jti: "j",
            ancestors: &ancestors,
            sub: "alice",
            actors: &actors,
            client_id: Some("ci-runner"),
            txn: "t",
            grant: Some("g"),
            iat: 100,
        };
        let entry = |revoked_at| Entry {
            revoked_at,
            expires_at: 1000,
        };
        let only = |k: RevocationKind, v: &'static str, e: Entry| {
            move |kk: RevocationKind, vv: &str| (kk == k && vv == v).then_some(e)
        };
        let now = 500;
        // jti entries cover whatever the iat
        assert!(t.revoked_with(now, only(RevocationKind::Jti, "j", entry(50))));
        assert!(t.revoked_with(now, only(RevocationKind::Jti, "parent", entry(50))));
        // the others only tokens issued before
        for (k, v) in [
            (RevocationKind::Subject, "alice"),
            (RevocationKind::Subject, "agent"),
            (RevocationKind::Subject, "ci-runner"),
            (RevocationKind::Task, "t"),
            (RevocationKind::Grant, "g"),
        ] {
            assert!(t.revoked_with(now, only(k, v, entry(100))), "{k:?} {v}");
            assert!(!t.revoked_with(now, only(k, v, entry(99))), "{k:?} {v}");
        }
        // expired entries cover nothing; unrelated ones neither
        let dead = Entry {
            revoked_at: 900,
            expires_at: 500,
        };
        assert!(!t.revoked_with(now, only(RevocationKind::Jti, "j", dead)));
        assert!(!t.revoked_with(now, only(RevocationKind::Subject, "bob", entry(900))));
        // the batch form agrees with the lookup form
        let found: Vec<Option<Entry>> = t
            .lookups()
            .iter()
            .map(|(k, v)| (*k == RevocationKind::Task && *v == "t").then_some(entry(100)))
            .collect();
        assert!(t.revoked_by(found, now));
        assert_eq!(t.lookups().len(), 7);
        // a client_id that is the subject or an actor is looked up once
        let same = Covered {
            client_id: Some("agent"),
            ..t
        };
        assert_eq!(same.lookups().len(), 6);
    }
}
