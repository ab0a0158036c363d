//! The delegation rule (RFC 8693 §4.1, §4.4), in one place: the first
//! exchange, every re-exchange of a delegated token and `tessera policy
//! explain` all call [`PolicySet::delegate`].
//!
//! Every actor of the chain — the new one and each prior one — is checked
//! against the current policies: it is not the subject, it is the party the
//! subject's `may_act` names (when there is one), it has a policy of its own
//! allowing the audience and every scope that lists the original subject's
//! issuer in `may_act_for`, and the chain from it down fits that policy's
//! `max_depth`. A reload that withdraws any of this stops the chain at its
//! next hop.

use serde_json::{Map, Value};

use crate::mint::claims::{MayAct, MayActMalformed};
use crate::policy::scope::ScopeSet;
use crate::policy::{CompiledPolicy, Denial, PolicySet, Subject};

/// One actor of a delegation chain.
#[derive(Debug, Clone, Copy)]
pub struct ChainActor<'a> {
    /// Its issuer name, or [`crate::policy::MTLS_ISSUER`].
    pub issuer: &'a str,
    /// The `iss` its credential carried (`None` for a client certificate).
    pub iss: Option<&'a str>,
    /// Its subject.
    pub sub: &'a str,
    /// Its token's claims, when it was authenticated by this request
    /// (prior actors of a chain have none: claim conditions then never match).
    pub claims: Option<&'a Map<String, Value>>,
}

/// What a delegation is about.
#[derive(Debug, Clone, Copy)]
pub struct Delegation<'a> {
    /// The original subject's issuer name.
    pub subject_issuer: &'a str,
    /// The subject.
    pub subject: &'a str,
    /// The original subject token's `may_act`, when it had one.
    pub may_act: Option<&'a MayAct>,
    /// The audience asked for.
    pub audience: &'a str,
    /// The scopes asked for.
    pub scopes: &'a ScopeSet,
}

/// Why a delegation is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegationDenial {
    /// An actor is the subject itself.
    ActorIsSubject,
    /// The subject's `may_act` names another party.
    NotInMayAct {
        /// The actor refused.
        actor: String,
    },
    /// The actor's policies refuse the request.
    Policy {
        /// The actor refused.
        actor: String,
        /// What its policies said.
        denial: Denial,
    },
    /// The actor's policy does not list the subject's issuer in `may_act_for`.
    MayActForMissing {
        /// The actor's policy.
        policy: String,
        /// The subject's issuer it does not list.
        issuer: String,
    },
    /// The chain from the actor down is longer than its policy's `max_depth`.
    ChainTooDeep {
        /// The actor's policy.
        policy: String,
        /// The chain's depth from that actor down.
        depth: usize,
        /// The policy's `max_depth`.
        max_depth: u32,
    },
}

impl DelegationDenial {
    /// Stable reason code (audit records, `policy explain`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ActorIsSubject => "actor_is_subject",
            Self::NotInMayAct { .. } => "actor_not_in_may_act",
            Self::Policy {
                denial: Denial::NoMatchingPolicy,
                ..
            } => "actor_no_policy",
            Self::Policy {
                denial: Denial::AudienceNotAllowed,
                ..
            } => "target_not_allowed",
            Self::Policy {
                denial: Denial::ScopeNotAllowed { .. },
                ..
            } => "scope_not_allowed",
            Self::MayActForMissing { .. } => "may_act_for_missing",
            Self::ChainTooDeep { .. } => "act_chain_too_deep",
        }
    }
}

impl std::fmt::Display for DelegationDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ActorIsSubject => write!(f, "the actor is the subject"),
            Self::NotInMayAct { actor } => write!(
                f,
                "the subject's may_act claim does not name actor `{actor}`"
            ),
            Self::Policy { actor, denial } => write!(f, "actor `{actor}`: {denial}"),
            Self::MayActForMissing { policy, issuer } => write!(
                f,
                "the actor's policy {policy:?} does not list the subject's issuer `{issuer}` in may_act_for"
            ),
            Self::ChainTooDeep {
                policy,
                depth,
                max_depth,
            } => write!(
                f,
                "the act chain holds {depth} actors, more than the actor's policy {policy:?} allows (max_depth {max_depth})"
            ),
        }
    }
}

/// The subject token's `may_act`, parsed: `Ok(None)` without one, `Err`
/// when it is there but not an object with a string `sub` (and, optionally,
/// a string `iss`).
pub fn may_act_of(claims: Option<&Map<String, Value>>) -> Result<Option<MayAct>, MayActMalformed> {
    claims
        .and_then(|c| c.get("may_act"))
        .map(MayAct::from_claim)
        .transpose()
}

impl PolicySet {
    /// The delegation rule for a whole chain, newest actor first (the new
    /// actor of this request, then the prior actors of the subject token's
    /// `act`, outermost first). Returns the policy of the first actor.
    pub fn delegate<'p>(
        &'p self,
        d: &Delegation<'_>,
        chain: &[ChainActor<'_>],
    ) -> Result<Option<&'p CompiledPolicy>, DelegationDenial> {
        let mut first = None;
        for (i, a) in chain.iter().enumerate() {
            if a.sub == d.subject {
                return Err(DelegationDenial::ActorIsSubject);
            }
            if d.may_act.is_some_and(|m| !m.admits(a.sub, a.iss)) {
                return Err(DelegationDenial::NotInMayAct {
                    actor: a.sub.to_string(),
                });
            }
            let who = Subject {
                issuer: a.issuer,
                subject: a.sub,
                claims: a.claims,
            };
            let pa = self.decide(&who, d.audience, d.scopes).map_err(|denial| {
                DelegationDenial::Policy {
                    actor: a.sub.to_string(),
                    denial,
                }
            })?;
            if !pa.may_act_for().iter().any(|i| i == d.subject_issuer) {
                return Err(DelegationDenial::MayActForMissing {
                    policy: pa.name().to_string(),
                    issuer: d.subject_issuer.to_string(),
                });
            }
            let depth = chain.len() - i;
            if depth > pa.max_depth() as usize {
                return Err(DelegationDenial::ChainTooDeep {
                    policy: pa.name().to_string(),
                    depth,
                    max_depth: pa.max_depth(),
                });
            }
            first.get_or_insert(pa);
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySpec;

    fn set() -> PolicySet {
        let spec = |name: &str, sub: &str, depth: u32, may_act_for: &[&str]| PolicySpec {
            name: name.into(),
            match_issuer: "mtls".into(),
            match_subject: Some(sub.into()),
            audiences: vec!["api".into()],
            scopes: vec!["read".into()],
            may_act_for: may_act_for.iter().map(|s| s.to_string()).collect(),
            max_depth: depth,
            ..PolicySpec::default()
        };
        let person = PolicySpec {
            match_issuer: "idp".into(),
            ..spec("person", "*@example.com", 1, &[])
        };
        PolicySet::compile(vec![
            person,
            spec("a", "spiffe://x/a", 2, &["idp"]),
            spec("b", "spiffe://x/b", 2, &["idp"]),
            spec("shallow", "spiffe://x/s", 1, &["idp"]),
            spec("other", "spiffe://x/o", 2, &["elsewhere"]),
        ])
        .expect("policies compile")
    }

    fn mtls(sub: &str) -> ChainActor<'_> {
        ChainActor {
            issuer: "mtls",
            iss: None,
            sub,
            claims: None,
        }
    }

    fn run(
        may_act: Option<&MayAct>,
        chain: &[ChainActor<'_>],
    ) -> Result<Option<String>, &'static str> {
        let s = set();
        let scopes: ScopeSet = "read".parse().expect("scope");
        let d = Delegation {
            subject_issuer: "idp",
            subject: "ann@example.com",
            may_act,
            audience: "api",
            scopes: &scopes,
        };
        s.delegate(&d, chain)
            .map(|p| p.map(|p| p.name().to_string()))
            .map_err(|e| e.reason())
    }

    #[test]
    fn every_actor_of_the_chain_is_checked() {
        let (a, b, s, o) = (
            mtls("spiffe://x/a"),
            mtls("spiffe://x/b"),
            mtls("spiffe://x/s"),
            mtls("spiffe://x/o"),
        );
        assert_eq!(run(None, &[a]), Ok(Some("a".into())));
        assert_eq!(run(None, &[b, a]), Ok(Some("b".into())));
        assert_eq!(run(None, &[]), Ok(None));
        // depth is counted from each actor down
        assert_eq!(run(None, &[s, a]), Err("act_chain_too_deep"));
        assert_eq!(run(None, &[a, s]), Ok(Some("a".into())));
        assert_eq!(run(None, &[b, a, a]), Err("act_chain_too_deep"));
        // a prior actor that lost its rights stops the chain
        assert_eq!(run(None, &[b, o]), Err("may_act_for_missing"));
        assert_eq!(
            run(None, &[b, mtls("spiffe://x/gone")]),
            Err("actor_no_policy")
        );
        assert_eq!(
            run(None, &[mtls("ann@example.com")]),
            Err("actor_is_subject")
        );
    }

    #[test]
    fn may_act_binds_every_hop() {
        let only_a = MayAct {
            sub: "spiffe://x/a".into(),
            iss: None,
        };
        let (a, b) = (mtls("spiffe://x/a"), mtls("spiffe://x/b"));
        assert_eq!(run(Some(&only_a), &[a]), Ok(Some("a".into())));
        assert_eq!(run(Some(&only_a), &[b, a]), Err("actor_not_in_may_act"));
        assert_eq!(run(Some(&only_a), &[a, b]), Err("actor_not_in_may_act"));
        let with_iss = MayAct {
            sub: "spiffe://x/a".into(),
            iss: Some("https://idp".into()),
        };
        assert_eq!(run(Some(&with_iss), &[a]), Err("actor_not_in_may_act"));
    }

    #[test]
    fn may_act_claim_parses_strictly() {
        let parse = |v: Value| {
            let mut m = Map::new();
            m.insert("may_act".into(), v);
            may_act_of(Some(&m))
        };
        assert_eq!(may_act_of(None), Ok(None));
        assert_eq!(may_act_of(Some(&Map::new())), Ok(None));
        assert_eq!(
            parse(serde_json::json!({"sub": "a", "iss": "i", "x": 1})),
            Ok(Some(MayAct {
                sub: "a".into(),
                iss: Some("i".into())
            }))
        );
        for bad in [
            serde_json::json!("a"),
            serde_json::json!({"iss": "i"}),
            serde_json::json!({"sub": 1}),
            serde_json::json!({"sub": "a", "iss": 2}),
        ] {
            assert_eq!(parse(bad), Err(MayActMalformed));
        }
    }
}
