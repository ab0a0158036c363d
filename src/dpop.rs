//! DPoP proofs (RFC 9449). At the broker, a caller without a client
//! certificate proves possession of a key and the key's thumbprint becomes
//! the token's `cnf.jkt`; at a resource server, every request with a
//! DPoP-bound token carries a fresh proof by the same key, naming the
//! request's method and URL and the hash of the token (`ath`).
//!
//! ```
//! use tessera::dpop::{verify_proof, ProofCheck};
//! // Not a proof at all: a stable reason code comes back.
//! let err = verify_proof("a.b.c", &ProofCheck::new("GET", "https://api.example.com/x", 1_700_000_000)).unwrap_err();
//! assert_eq!(err, "token_bad_base64");
//! ```

use serde_json::Value;

use crate::jose::alg::Algorithm;
use crate::jose::jwk::VerifyingKey;
use crate::jose::jws;

/// Algorithms accepted for DPoP proofs (advertised in the metadata).
///
/// ```
/// assert!(tessera::dpop::DPOP_ALGS.contains(&tessera::jose::Algorithm::ES256));
/// ```
pub const DPOP_ALGS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::PS256,
];
/// How old (or how far in the future) a proof's `iat` may be, in seconds.
///
/// ```
/// assert_eq!(tessera::dpop::DPOP_IAT_WINDOW_SECS, 60);
/// ```
pub const DPOP_IAT_WINDOW_SECS: u64 = 60;
/// Longest proof `jti`.
///
/// ```
/// assert_eq!(tessera::dpop::MAX_DPOP_JTI_LEN, 256);
/// ```
pub const MAX_DPOP_JTI_LEN: usize = 256;

/// A verified DPoP proof.
///
/// ```
/// let p = tessera::dpop::DpopProof { jkt: "k".into(), jti: "j".into(), iat: 1, nonce: None };
/// assert_eq!(p.jkt, "k");
/// ```
#[derive(Debug, Clone)]
pub struct DpopProof {
    /// RFC 7638 thumbprint of the proof key (`cnf.jkt`).
    pub jkt: String,
    /// The proof's `jti` (for the replay cache).
    pub jti: String,
    /// The proof's `iat`.
    pub iat: u64,
    /// The proof's `nonce`, if any.
    pub nonce: Option<String>,
}

/// How long one server nonce window lasts; a nonce is accepted in its
/// window and the next.
///
/// ```
/// assert_eq!(tessera::dpop::NONCE_WINDOW_SECS, 300);
/// ```
pub const NONCE_WINDOW_SECS: u64 = 300;

/// Server nonces (RFC 9449 §8), derived with HMAC-SHA256 from a secret and
/// the time window, so replicas sharing the secret agree without state.
///
/// ```
/// let n = tessera::dpop::NonceSource::new(b"shared secret");
/// assert!(n.accepts(&n.current(1_000), 1_100));
/// ```
#[derive(Debug)]
pub struct NonceSource {
    key: aws_lc_rs::hmac::Key,
}

impl NonceSource {
    /// A source keyed by `secret` (domain-separated).
    ///
    /// ```
    /// let n = tessera::dpop::NonceSource::new(b"secret");
    /// assert!(n.accepts(&n.current(1_000), 1_000));
    /// ```
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"tessera dpop nonce v1");
        let derived = aws_lc_rs::hmac::sign(&k, secret);
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn for_window(&self, w: u64) -> String {
        use base64::Engine;
        let tag = aws_lc_rs::hmac::sign(&self.key, &w.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..18])
    }

    /// The nonce to hand out now.
    ///
    /// ```
    /// let n = tessera::dpop::NonceSource::new(b"s");
    /// assert_eq!(n.current(0), n.current(1));
    /// ```
    #[must_use]
    pub fn current(&self, now: u64) -> String {
        self.for_window(now / NONCE_WINDOW_SECS)
    }

    /// Whether `nonce` is this window's or the previous one's.
    ///
    /// ```
    /// let n = tessera::dpop::NonceSource::new(b"s");
    /// let old = n.current(0);
    /// assert!(n.accepts(&old, 300));
    /// assert!(!n.accepts(&old, 600));
    /// ```
    #[must_use]
    pub fn accepts(&self, nonce: &str, now: u64) -> bool {
        let w = now / NONCE_WINDOW_SECS;
        nonce == self.for_window(w) || nonce == self.for_window(w.saturating_sub(1))
    }
}

/// What a proof must match.
///
/// ```
/// let c = tessera::dpop::ProofCheck::new("POST", "https://broker/token", 1_700_000_000)
///     .access_token("eyJ...");
/// assert_eq!(c.htm, "POST");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The request method (`htm`), compared exactly.
    pub htm: &'a str,
    /// The request URL without query and fragment (`htu`).
    pub htu: &'a str,
    /// The current time (Unix seconds) for the `iat` window.
    pub now: u64,
    /// The access token the proof accompanies: then `ath` must be its
    /// base64url SHA-256 (RFC 9449 §4.3 step 12, resource servers only).
    pub access_token: Option<&'a str>,
}

impl<'a> ProofCheck<'a> {
    /// A check for a token request (no `ath`).
    ///
    /// ```
    /// let c = tessera::dpop::ProofCheck::new("POST", "https://broker/token", 1);
    /// assert!(c.access_token.is_none());
    /// ```
    #[must_use]
    pub fn new(htm: &'a str, htu: &'a str, now: u64) -> Self {
        Self {
            htm,
            htu,
            now,
            access_token: None,
        }
    }

    /// Also require `ath` to be the hash of `token`.
    ///
    /// ```
    /// let c = tessera::dpop::ProofCheck::new("GET", "https://api/x", 1).access_token("t");
    /// assert_eq!(c.access_token, Some("t"));
    /// ```
    #[must_use]
    pub fn access_token(mut self, token: &'a str) -> Self {
        self.access_token = Some(token);
        self
    }
}

/// The `ath` value for an access token: base64url(SHA-256(token)).
///
/// ```
/// // RFC 9449 §7.1 example is over a real token; here a short one.
/// assert_eq!(tessera::dpop::access_token_hash("x").len(), 43);
/// ```
#[must_use]
pub fn access_token_hash(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    crate::jose::b64url_encode(d.as_ref())
}

/// Why a DPoP proof was refused. [`DpopError::as_str`] is the stable
/// reason code (audit records, `VerifyError::DpopProof`); it compares equal
/// to that code.
///
/// ```
/// use tessera::dpop::DpopError;
/// assert_eq!(DpopError::Htm.as_str(), "dpop_htm");
/// assert_eq!(DpopError::Htm, "dpop_htm");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Not a well-formed, correctly signed compact JWS (the JOSE reason).
    #[error("DPoP proof: {}", .0.reason())]
    Jose(jws::JwsError),
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof: typ is not dpop+jwt")]
    Typ,
    /// An algorithm DPoP does not accept.
    #[error("DPoP proof: algorithm not accepted")]
    Alg,
    /// The header's `jwk` is not a usable public key.
    #[error("DPoP proof: jwk is not a usable public key")]
    JwkInvalid,
    /// `jti` missing, empty or too long.
    #[error("DPoP proof: bad jti")]
    Jti,
    /// `htm` is not the request's method.
    #[error("DPoP proof: htm differs from the request method")]
    Htm,
    /// `htu` is not the request's URL.
    #[error("DPoP proof: htu differs from the request URL")]
    Htu,
    /// `iat` missing or not an integer.
    #[error("DPoP proof: bad iat")]
    Iat,
    /// `iat` outside the accepted window.
    #[error("DPoP proof: iat outside the accepted window")]
    IatWindow,
    /// `ath` missing or not the access token's hash.
    #[error("DPoP proof: ath does not match the access token")]
    Ath,
    /// `nonce` is not a string of at most 256 bytes.
    #[error("DPoP proof: malformed nonce")]
    NonceMalformed,
}

impl DpopError {
    /// The stable reason code.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DpopError::Jose(e) => e.reason(),
            DpopError::Typ => "dpop_typ",
            DpopError::Alg => "dpop_alg",
            DpopError::JwkInvalid => "dpop_jwk_invalid",
            DpopError::Jti => "dpop_jti",
            DpopError::Htm => "dpop_htm",
            DpopError::Htu => "dpop_htu",
            DpopError::Iat => "dpop_iat",
            DpopError::IatWindow => "dpop_iat_window",
            DpopError::Ath => "dpop_ath",
            DpopError::NonceMalformed => "dpop_nonce_malformed",
        }
    }
}

impl PartialEq<&str> for DpopError {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Verifies a proof against `check`.
///
/// # Errors
/// A [`DpopError`]; its [`DpopError::as_str`] is a stable reason code such
/// as `dpop_typ`, `dpop_htm`, `dpop_htu`, `dpop_iat_window`, `dpop_ath` or
/// a JOSE decoding reason.
///
/// ```
/// use tessera::dpop::{verify_proof, ProofCheck};
/// assert!(verify_proof("", &ProofCheck::new("GET", "https://a/b", 0)).is_err());
/// ```
pub fn verify_proof(proof: &str, check: &ProofCheck<'_>) -> Result<DpopProof, DpopError> {
    let (htm, htu, now) = (check.htm, check.htu, check.now);
    let (parsed, jwk) = jws::decode_dpop_proof(proof).map_err(DpopError::Jose)?;
    if !parsed
        .header()
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(DpopError::Typ);
    }
    if !DPOP_ALGS.contains(&parsed.header().alg) {
        return Err(DpopError::Alg);
    }
    let key = VerifyingKey::from_jwk(&jwk).map_err(|_| DpopError::JwkInvalid)?;
    let jkt = key.thumbprint();
    let verified = parsed.verify(&key).map_err(DpopError::Jose)?;
    let c = verified.claims();
    let jti = match c.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_DPOP_JTI_LEN => j.clone(),
        _ => return Err(DpopError::Jti),
    };
    if c.get("htm").and_then(Value::as_str) != Some(htm) {
        return Err(DpopError::Htm);
    }
    // RFC 9449 §4.3: compare without query and fragment.
    let claimed = c.get("htu").and_then(Value::as_str).ok_or(DpopError::Htu)?;
    let claimed = claimed.split(['?', '#']).next().unwrap_or("");
    if claimed != htu {
        return Err(DpopError::Htu);
    }
    let iat = match c.get("iat") {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|v| *v < (1u64 << 53))
            .ok_or(DpopError::Iat)?,
        _ => return Err(DpopError::Iat),
    };
    if iat.saturating_add(DPOP_IAT_WINDOW_SECS) < now
        || iat > now.saturating_add(DPOP_IAT_WINDOW_SECS)
    {
        return Err(DpopError::IatWindow);
    }
    if let Some(token) = check.access_token {
        let ath = c.get("ath").and_then(Value::as_str).ok_or(DpopError::Ath)?;
        let want = access_token_hash(token);
        if aws_lc_rs::constant_time::verify_slices_are_equal(ath.as_bytes(), want.as_bytes())
            .is_err()
        {
            return Err(DpopError::Ath);
        }
    }
    let nonce = match c.get("nonce") {
        None => None,
        Some(Value::String(n)) if n.len() <= 256 => Some(n.clone()),
        Some(_) => return Err(DpopError::NonceMalformed),
    };
    Ok(DpopProof {
        jkt,
        jti,
        iat,
        nonce,
    })
}

/// Default capacity of a [`ReplayCache`].
///
/// ```
/// assert_eq!(tessera::dpop::DEFAULT_REPLAY_CAPACITY, 100_000);
/// ```
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// Remembers the proofs a resource server has accepted until they can no
/// longer pass the `iat` window, so each proof is used once (RFC 9449
/// §11.1). Bounded: when full of live entries it refuses new proofs (fail
/// closed) rather than forgetting ones that could be replayed.
///
/// ```
/// let cache = tessera::dpop::ReplayCache::new(2);
/// assert_eq!(cache.first_use("k1", 200, 100), Ok(true));
/// assert_eq!(cache.first_use("k1", 200, 100), Ok(false)); // replay
/// assert_eq!(cache.first_use("k2", 200, 100), Ok(true));
/// assert!(cache.first_use("k3", 200, 100).is_err()); // full
/// assert_eq!(cache.first_use("k3", 400, 201), Ok(true)); // k1, k2 expired
/// ```
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    inner: std::sync::Mutex<ReplayInner>,
}

#[derive(Debug, Default)]
struct ReplayInner {
    live: std::collections::HashMap<String, u64>,
    order: std::collections::VecDeque<(u64, String)>,
}

/// The replay cache is full of live entries.
///
/// ```
/// let e = tessera::dpop::ReplayCacheFull;
/// assert_eq!(e.to_string(), "DPoP replay cache full");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("DPoP replay cache full")]
pub struct ReplayCacheFull;

impl ReplayCache {
    /// A cache holding at most `capacity` live proofs.
    ///
    /// ```
    /// let c = tessera::dpop::ReplayCache::new(10);
    /// assert_eq!(c.len(), 0);
    /// ```
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: std::sync::Mutex::new(ReplayInner::default()),
        }
    }

    /// Records `key` as used until `until`; `Ok(false)` when it was already
    /// used and has not expired.
    ///
    /// # Errors
    /// [`ReplayCacheFull`] when `capacity` live entries are held.
    ///
    /// ```
    /// let c = tessera::dpop::ReplayCache::new(10);
    /// assert_eq!(c.first_use("a", 5, 1), Ok(true));
    /// assert_eq!(c.first_use("a", 5, 6), Ok(true)); // expired, usable again
    /// ```
    pub fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool, ReplayCacheFull> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ReplayInner { live, order } = &mut *g;
        // Entries are nearly in expiry order; forget the expired front.
        while let Some((exp, k)) = order.front() {
            if *exp > now {
                break;
            }
            if live.get(k).is_some_and(|e| *e <= now) {
                live.remove(k);
            }
            order.pop_front();
        }
        if let Some(exp) = live.get_mut(key) {
            if *exp > now {
                return Ok(false);
            }
            *exp = until;
            order.push_back((until, key.to_owned()));
            return Ok(true);
        }
        if live.len() >= self.capacity {
            live.retain(|_, e| *e > now);
            if live.len() >= self.capacity {
                return Err(ReplayCacheFull);
            }
        }
        live.insert(key.to_owned(), until);
        order.push_back((until, key.to_owned()));
        Ok(true)
    }

    /// Number of proofs held.
    ///
    /// ```
    /// assert!(tessera::dpop::ReplayCache::new(1).is_empty());
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .live
            .len()
    }

    /// Whether no proof is held.
    ///
    /// ```
    /// assert!(tessera::dpop::ReplayCache::new(1).is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
