//! The global invariants of SECURITY.md §3, checked after a fault scenario.
//!
//! A test records every `/token` answer it got in a [`Ledger`] (with the
//! phase it was made in), then calls [`Ledger::check`] with the audit records
//! written since the ledger was opened and what it expects:
//!
//! * **I1**: no minted token has `exp − iat` above the cap, or `exp` past
//!   the end of its basis (`Expect::not_after`).
//! * **I2**: no grant produced more tokens than it had uses.
//! * **I3**: no token was minted in a phase where the revocation/grant check
//!   could not run ([`Phase::StoreDown`]).
//! * **I4**: every minted token has exactly one `issued` audit record (same
//!   `jti` and token SHA-256), and `issued` records = tokens returned (or
//!   fewer delivered tokens than records only when the test says answers
//!   may have been lost, as with SIGKILL).
//! * **I5**: every 200 carries a token, and no other status does.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;

/// When an answer was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The store could answer.
    Normal,
    /// The store could not answer (down, paused, refusing writes): no token
    /// may be minted in this phase (I3).
    StoreDown,
}

/// Every `/token` answer of a scenario.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    phase: Option<Phase>,
    answers: Vec<(Phase, u16, Value)>,
}

/// What the scenario allows.
#[derive(Debug, Clone)]
pub struct Expect {
    /// `[tokens] max_ttl`, seconds (I1).
    pub cap_secs: u64,
    /// Latest `exp` any token may have (the basis' end: certificate
    /// `notAfter`, subject token `exp`), Unix seconds (I1).
    pub not_after: Option<u64>,
    /// Uses of each grant id (I2).
    pub grant_uses: HashMap<String, u64>,
    /// Tokens may have been minted whose answer never arrived (a broker
    /// killed mid-request): then records ≥ delivered tokens, and every
    /// delivered token still has its record (I4).
    pub answers_may_be_lost: bool,
}

impl Default for Expect {
    fn default() -> Self {
        Self {
            cap_secs: 3600,
            not_after: None,
            grant_uses: HashMap::new(),
            answers_may_be_lost: false,
        }
    }
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Answers recorded.
    pub answers: usize,
    /// Tokens delivered.
    pub tokens: usize,
    /// Answers by status.
    pub by_status: HashMap<u16, usize>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// The phase the next answers are received in.
    pub fn phase(&self, p: Phase) {
        self.inner.lock().unwrap().phase = Some(p);
    }

    /// Records one `/token` answer (status and JSON body).
    pub fn record(&self, status: u16, body: &Value) {
        let mut g = self.inner.lock().unwrap();
        let p = g.phase.unwrap_or(Phase::Normal);
        g.answers.push((p, status, body.clone()));
    }

    /// The tokens delivered so far.
    pub fn tokens(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        g.answers
            .iter()
            .filter_map(|(_, _, v)| v["access_token"].as_str().map(str::to_owned))
            .collect()
    }

    /// Checks I1–I5 against `records`: the audit records written since the
    /// ledger was opened (other events are ignored). Panics naming the
    /// invariant broken.
    pub fn check(&self, records: &[Value], e: &Expect) -> Summary {
        let g = self.inner.lock().unwrap();
        let mut s = Summary {
            answers: g.answers.len(),
            ..Default::default()
        };
        let mut jtis = HashSet::new();
        let mut per_grant: HashMap<String, u64> = HashMap::new();
        let mut delivered: Vec<(String, String)> = Vec::new();
        for (phase, status, body) in &g.answers {
            *s.by_status.entry(*status).or_default() += 1;
            let token = body.get("access_token").and_then(Value::as_str);
            // I5
            assert_eq!(
                *status == 200,
                token.is_some(),
                "I5: status {status} with body {body}"
            );
            let Some(token) = token else { continue };
            s.tokens += 1;
            // I3
            assert_eq!(
                *phase,
                Phase::Normal,
                "I3: a token was minted while the store could not answer"
            );
            let (_, c) = super::decode(token);
            let iat = c["iat"].as_u64().expect("iat");
            let exp = c["exp"].as_u64().expect("exp");
            // I1
            assert!(
                exp > iat && exp - iat <= e.cap_secs,
                "I1: exp - iat = {} above the cap {}",
                exp.saturating_sub(iat),
                e.cap_secs
            );
            if let Some(na) = e.not_after {
                assert!(exp <= na, "I1: exp {exp} past the basis' end {na}");
            }
            let jti = c["jti"].as_str().expect("jti").to_string();
            assert!(jtis.insert(jti.clone()), "jti {jti} delivered twice");
            // I2
            if let Some(gid) = c["grant"].as_str() {
                let n = per_grant.entry(gid.to_string()).or_default();
                *n += 1;
                let uses = e.grant_uses.get(gid).copied().unwrap_or(u64::MAX);
                assert!(*n <= uses, "I2: grant {gid} produced {n} tokens of {uses}");
            }
            delivered.push((jti, tessera::audit::sha256_hex(token.as_bytes())));
        }
        // I4, with withdrawals: an `issued` record of a token withheld after
        // all (its write failed on some sink, or came too late) is followed
        // by an `unavailable` / `audit_unavailable` record naming its jti;
        // issued minus withdrawn counts the tokens.
        let withdrawn: HashSet<&str> = records
            .iter()
            .filter(|r| r["event"] == "unavailable" && r["reason"] == "audit_unavailable")
            .filter_map(|r| r["jti"].as_str())
            .collect();
        let issued: Vec<&Value> = records
            .iter()
            .filter(|r| r["event"] == "issued")
            .filter(|r| !r["jti"].as_str().is_some_and(|j| withdrawn.contains(j)))
            .collect();
        let mut by_jti: HashMap<&str, Vec<&Value>> = HashMap::new();
        for r in &issued {
            by_jti
                .entry(r["jti"].as_str().unwrap_or(""))
                .or_default()
                .push(r);
        }
        for (jti, sha) in &delivered {
            let recs = by_jti.get(jti.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(
                recs.len(),
                1,
                "I4: token {jti} has {} issued records",
                recs.len()
            );
            assert_eq!(
                recs[0]["token_sha256"].as_str(),
                Some(sha.as_str()),
                "I4: the record of {jti} names another token"
            );
        }
        if e.answers_may_be_lost {
            assert!(
                issued.len() >= delivered.len(),
                "I4: {} records for {} tokens",
                issued.len(),
                delivered.len()
            );
        } else {
            assert_eq!(
                issued.len(),
                delivered.len(),
                "I4: issued records = tokens returned"
            );
        }
        s
    }
}
