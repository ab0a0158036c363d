//! Claims of an RFC 9068 JWT access token as minted by Tessera.
//!
//! Field order is the serialization order; optional members are omitted when
//! `None` so that minted tokens stay small.

use serde::{Deserialize, Serialize};

/// Maximum nesting depth of `act` claims that [`Actor::depth`] reports as sane.
///
/// RFC 8693 §4.1 allows arbitrary delegation chains; the broker rejects
/// chains deeper than this before minting.
pub const MAX_ACTOR_DEPTH: usize = 8;

/// The JWT claims set of an access token (RFC 9068 §2.2 plus RFC 8693 `act`,
/// RFC 8705/RFC 9449 `cnf` and RFC 9396 `authorization_details`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Issuer identifier of the broker.
    pub iss: String,
    /// Subject: the workload or user the token is about.
    pub sub: String,
    /// Audience: the resource server the token is meant for.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued-at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not-before, seconds since the Unix epoch.
    pub nbf: u64,
    /// Unique token identifier.
    pub jti: String,
    /// OAuth client the token was issued to.
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// Transaction identifier shared by all tokens of one call chain.
    pub txn: String,
    /// Current actor of a delegation (RFC 8693 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Proof-of-possession confirmation (RFC 7800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Name of the grant (policy rule) that allowed issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Owner of the grant or of the subject workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Rich authorization request details (RFC 9396).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
    /// Tessera extension: the policy that granted the token. A re-exchange
    /// stays within it (grants are never mixed across policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Tessera extension: `jti` of every token this one was derived from by
    /// re-exchange, nearest first; revoking any of them revokes this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    /// The original subject token's `may_act` (RFC 8693 §4.4), carried so
    /// that it binds every later hop of the chain: only the party it names
    /// may ever act for `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<MayAct>,
}

/// A `may_act` claim (RFC 8693 §4.4): the one party allowed to act for the
/// token's subject. Members other than `sub` and `iss` are not checked, so
/// not carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MayAct {
    /// Subject of the party allowed to act.
    pub sub: String,
    /// Its issuer, when the claim names one (`None`: any issuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A `may_act` claim that is not an object with a string `sub` (and,
/// optionally, a string `iss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("may_act is not an object with a string sub and an optional string iss")]
pub struct MayActMalformed;

impl MayAct {
    /// Parses a subject token's `may_act` member: an object with a string
    /// `sub` and, optionally, a string `iss`; anything else is malformed.
    pub fn from_claim(v: &serde_json::Value) -> Result<MayAct, MayActMalformed> {
        let o = v.as_object().ok_or(MayActMalformed)?;
        let sub = o
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .ok_or(MayActMalformed)?;
        let iss = match o.get("iss") {
            None => None,
            Some(i) => Some(i.as_str().ok_or(MayActMalformed)?.to_string()),
        };
        Ok(MayAct {
            sub: sub.to_string(),
            iss,
        })
    }

    /// Whether it names this party (`iss` is `None` for a client certificate).
    pub fn admits(&self, sub: &str, iss: Option<&str>) -> bool {
        self.sub == sub && self.iss.as_deref().is_none_or(|i| Some(i) == iss)
    }
}

/// An `act` (actor) claim; nested `act` members describe prior actors
/// (RFC 8693 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Subject of the acting party.
    pub sub: String,
    /// Issuer of the acting party's identity, if not the token issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The prior actor in the delegation chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// Creates an actor with the given subject and no issuer or prior actor.
    pub fn new(sub: impl Into<String>) -> Self {
        Actor {
            sub: sub.into(),
            iss: None,
            act: None,
        }
    }

    /// Number of actors in this chain, counting `self` (1 = no nesting).
    pub fn depth(&self) -> usize {
        let mut depth = 1;
        let mut cur = self;
        while let Some(next) = cur.act.as_deref() {
            depth += 1;
            cur = next;
        }
        depth
    }
}

/// A `cnf` (confirmation) claim binding the token to a key (RFC 7800).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// Base64url SHA-256 thumbprint of the client's mTLS certificate (RFC 8705 §3.1).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// JWK SHA-256 thumbprint of a DPoP key (RFC 9449 §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://broker".into(),
            sub: "spiffe://example.org/agent/demo".into(),
            aud: "payments".into(),
            exp: 200,
            iat: 100,
            nbf: 100,
            jti: "j".into(),
            client_id: "c".into(),
            scope: "a b".into(),
            txn: "t".into(),
            act: None,
            cnf: None,
            grant: None,
            owner: None,
            authorization_details: None,
            policy: None,
            ancestors: Vec::new(),
            may_act: None,
        }
    }

    #[test]
    fn serializes_in_order_and_skips_none() -> Result<(), serde_json::Error> {
        let json = serde_json::to_string(&base())?;
        assert_eq!(
            json,
            r#"{"iss":"https://broker","sub":"spiffe://example.org/agent/demo","aud":"payments","exp":200,"iat":100,"nbf":100,"jti":"j","client_id":"c","scope":"a b","txn":"t"}"#
        );
        Ok(())
    }

    #[test]
    fn nested_actor_and_cnf_round_trip() -> Result<(), serde_json::Error> {
        let mut c = base();
        c.act = Some(Actor {
            sub: "a1".into(),
            iss: Some("i1".into()),
            act: Some(Box::new(Actor::new("a0"))),
        });
        c.cnf = Some(Confirmation {
            x5t_s256: Some("abc".into()),
            jkt: None,
        });
        c.authorization_details = Some(serde_json::json!([{"type": "payment"}]));
        let json = serde_json::to_string(&c)?;
        assert!(json.contains(r#""act":{"sub":"a1","iss":"i1","act":{"sub":"a0"}}"#));
        assert!(json.contains(r#""cnf":{"x5t#S256":"abc"}"#));
        let back: AccessTokenClaims = serde_json::from_str(&json)?;
        assert_eq!(back, c);
        assert_eq!(c.act.as_ref().map(Actor::depth), Some(2));
        Ok(())
    }
}
