//! JWT claim validation (RFC 7519 §4.1, RFC 9068) on a verified JWS.
//!
//! Types are checked strictly before any arithmetic: NumericDate claims must
//! be JSON integers in `0..=2^53`, `aud` a non-empty string or a non-empty
//! array of non-empty strings, and so on. All time arithmetic saturates.

use serde_json::{Map, Value};

use super::jws::VerifiedJws;

/// Default clock-skew allowance in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Largest leeway [`ClaimRules::leeway`] accepts; larger values are clamped.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Largest accepted NumericDate value (2^53, the largest integer every JSON
/// implementation represents exactly).
pub const MAX_NUMERIC_DATE: u64 = 1 << 53;
/// Maximum length in bytes of a `jti`.
pub const MAX_JTI_LEN: usize = 256;
/// The registered claim names this module interprets.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The rule set could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// The issuer is empty.
    #[error("issuer must not be empty")]
    EmptyIssuer,
    /// No audience, or an empty audience string.
    #[error("at least one non-empty audience is required")]
    NoAudience,
}

/// What a token's claims must satisfy. Cannot exist without an issuer and
/// at least one audience.
#[derive(Clone, Debug)]
pub struct ClaimRules {
    issuer: String,
    audiences: Vec<String>,
    leeway: u64,
    max_lifetime: Option<u64>,
    required_typ: Vec<String>,
    require_jti: bool,
}

impl ClaimRules {
    /// Rules for tokens from `issuer` (exact byte match) addressed to at
    /// least one of `audiences`.
    ///
    /// # Errors
    /// [`RulesError`] if the issuer is empty or no non-empty audience is given.
    pub fn new(
        issuer: impl Into<String>,
        audiences: Vec<String>,
    ) -> Result<ClaimRules, RulesError> {
        let issuer = issuer.into();
        if issuer.is_empty() {
            return Err(RulesError::EmptyIssuer);
        }
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(RulesError::NoAudience);
        }
        Ok(ClaimRules {
            issuer,
            audiences,
            leeway: DEFAULT_LEEWAY_SECS,
            max_lifetime: None,
            required_typ: Vec::new(),
            require_jti: false,
        })
    }

    /// Clock-skew allowance in seconds (clamped to [`MAX_LEEWAY_SECS`]).
    #[must_use]
    pub fn leeway(mut self, secs: u64) -> Self {
        self.leeway = secs.min(MAX_LEEWAY_SECS);
        self
    }

    /// Caps the token lifetime: `exp - iat` when `iat` is present, otherwise
    /// `exp - now` (plus leeway).
    #[must_use]
    pub fn max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime = Some(secs);
        self
    }

    /// Requires the header `typ` to equal one of `typs` (ASCII
    /// case-insensitive, as media types are). An empty slice removes the
    /// requirement.
    #[must_use]
    pub fn required_typ(mut self, typs: &[&str]) -> Self {
        self.required_typ = typs.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// Requires a `jti` claim.
    #[must_use]
    pub fn require_jti(mut self, required: bool) -> Self {
        self.require_jti = required;
        self
    }

    /// The configured issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The configured audiences.
    #[must_use]
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }
}

/// Why a verified token's claims were refused. Carries no claim values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// A required claim is absent.
    #[error("claim `{0}` is missing")]
    Missing(&'static str),
    /// A claim has the wrong type or an out-of-range value.
    #[error("claim `{0}` is malformed")]
    Invalid(&'static str),
    /// A member name equals a registered claim name case-insensitively but
    /// not exactly (e.g. `Sub`, `AUD`).
    #[error("claim name is a case variant of a registered claim")]
    CaseVariant,
    /// `iss` differs from the configured issuer.
    #[error("issuer mismatch")]
    IssuerMismatch,
    /// `aud` contains none of the configured audiences.
    #[error("audience mismatch")]
    AudienceMismatch,
    /// `exp + leeway <= now`.
    #[error("token expired")]
    Expired,
    /// `nbf > now + leeway`.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat > now + leeway`.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `exp` precedes `iat`.
    #[error("token expires before it was issued")]
    ExpiresBeforeIssued,
    /// The lifetime exceeds the configured maximum.
    #[error("token lifetime too long")]
    LifetimeTooLong,
    /// The header `typ` is missing or not one of the required values.
    #[error("token typ not accepted")]
    TypMismatch,
}

impl ClaimError {
    /// A short stable code for audit logs and metrics.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            ClaimError::Missing(_) => "missing_claim",
            ClaimError::Invalid(_) => "invalid_claim",
            ClaimError::CaseVariant => "case_variant_claim",
            ClaimError::IssuerMismatch => "iss_mismatch",
            ClaimError::AudienceMismatch => "aud_mismatch",
            ClaimError::Expired => "expired",
            ClaimError::NotYetValid => "not_yet_valid",
            ClaimError::IssuedInFuture => "iat_in_future",
            ClaimError::ExpiresBeforeIssued => "exp_before_iat",
            ClaimError::LifetimeTooLong => "lifetime_too_long",
            ClaimError::TypMismatch => "typ_mismatch",
        }
    }
}

/// Claims of a token that passed signature verification and validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedClaims {
    /// Issuer (equal to the configured issuer).
    pub iss: String,
    /// Subject (non-empty).
    pub sub: String,
    /// Audiences as presented (always at least one).
    pub aud: Vec<String>,
    /// Expiration time, seconds since the epoch.
    pub exp: u64,
    /// Issued-at time, if present.
    pub iat: Option<u64>,
    /// Not-before time, if present.
    pub nbf: Option<u64>,
    /// Token id, if present.
    pub jti: Option<String>,
    /// All claims, including the registered ones.
    pub claims: Map<String, Value>,
}

fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= MAX_NUMERIC_DATE => Ok(Some(v)),
            _ => Err(ClaimError::Invalid(name)),
        },
        Some(_) => Err(ClaimError::Invalid(name)),
    }
}

/// What [`check`] read: borrowed, so checking allocates nothing.
struct Checked<'a> {
    iss: &'a str,
    sub: &'a str,
    exp: u64,
    iat: Option<u64>,
    nbf: Option<u64>,
    jti: Option<&'a str>,
}

/// The audiences of `claims` without copying them.
fn each_audience<'a>(
    claims: &'a Map<String, Value>,
) -> Result<impl Iterator<Item = &'a str>, ClaimError> {
    let items: &'a [Value] = match claims.get("aud") {
        None => return Err(ClaimError::Missing("aud")),
        Some(v @ Value::String(s)) if !s.is_empty() => std::slice::from_ref(v),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => return Err(ClaimError::Invalid("aud")),
    };
    if items
        .iter()
        .any(|v| !matches!(v, Value::String(s) if !s.is_empty()))
    {
        return Err(ClaimError::Invalid("aud"));
    }
    Ok(items.iter().filter_map(Value::as_str))
}

/// Checks the claims of `jws` against `rules` at time `now` (seconds since
/// the epoch) exactly as [`validate`] does, without copying anything out.
///
/// # Errors
/// The first [`ClaimError`] found.
pub fn check(jws: &VerifiedJws, rules: &ClaimRules, now: u64) -> Result<(), ClaimError> {
    check_inner(jws, rules, now).map(|_| ())
}

fn check_inner<'a>(
    jws: &'a VerifiedJws,
    rules: &ClaimRules,
    now: u64,
) -> Result<Checked<'a>, ClaimError> {
    if !rules.required_typ.is_empty() {
        let typ = jws.header().typ.as_deref().ok_or(ClaimError::TypMismatch)?;
        if !rules
            .required_typ
            .iter()
            .any(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(ClaimError::TypMismatch);
        }
    }
    let claims = jws.claims();
    for name in claims.keys() {
        // Registered names are lower case: only a name with an upper-case
        // letter can be a variant of one.
        if name.bytes().any(|b| b.is_ascii_uppercase())
            && REGISTERED_CLAIMS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
        {
            return Err(ClaimError::CaseVariant);
        }
    }

    let iss = match claims.get("iss") {
        None => return Err(ClaimError::Missing("iss")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ClaimError::Invalid("iss")),
    };
    if iss.as_bytes() != rules.issuer.as_bytes() {
        return Err(ClaimError::IssuerMismatch);
    }
    let sub = match claims.get("sub") {
        None => return Err(ClaimError::Missing("sub")),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(ClaimError::Invalid("sub")),
    };
    if !each_audience(claims)?.any(|a| rules.audiences.iter().any(|r| r == a)) {
        return Err(ClaimError::AudienceMismatch);
    }

    // Types first, all three, then arithmetic.
    let exp = numeric_date(claims, "exp")?.ok_or(ClaimError::Missing("exp"))?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;

    let jti = match claims.get("jti") {
        None if rules.require_jti => return Err(ClaimError::Missing("jti")),
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_JTI_LEN => Some(s.as_str()),
        Some(_) => return Err(ClaimError::Invalid("jti")),
    };

    let leeway = rules.leeway;
    if exp.saturating_add(leeway) <= now {
        return Err(ClaimError::Expired);
    }
    let horizon = now.saturating_add(leeway);
    if nbf.is_some_and(|nbf| nbf > horizon) {
        return Err(ClaimError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > horizon) {
        return Err(ClaimError::IssuedInFuture);
    }
    if iat.is_some_and(|iat| exp < iat) {
        return Err(ClaimError::ExpiresBeforeIssued);
    }
    if let Some(max) = rules.max_lifetime {
        let too_long = match iat {
            Some(iat) => exp.saturating_sub(iat) > max,
            None => exp.saturating_sub(now) > max.saturating_add(leeway),
        };
        if too_long {
            return Err(ClaimError::LifetimeTooLong);
        }
    }

    Ok(Checked {
        iss,
        sub,
        exp,
        iat,
        nbf,
        jti,
    })
}

/// Validates the claims of `jws` against `rules` at time `now` (seconds
/// since the epoch).
///
/// # Errors
/// The first [`ClaimError`] found.
pub fn validate(
    jws: &VerifiedJws,
    rules: &ClaimRules,
    now: u64,
) -> Result<ValidatedClaims, ClaimError> {
    let mut v = validated(jws, rules, now)?;
    v.claims = jws.claims().clone();
    Ok(v)
}

/// [`validate`], consuming the token: its claims are moved into the result
/// instead of copied (the broker's path for every subject token).
pub fn validate_owned(
    jws: VerifiedJws,
    rules: &ClaimRules,
    now: u64,
) -> Result<ValidatedClaims, ClaimError> {
    let mut v = validated(&jws, rules, now)?;
    v.claims = jws.into_parts().1;
    Ok(v)
}

/// The checked claims, without the full claim set.
fn validated(
    jws: &VerifiedJws,
    rules: &ClaimRules,
    now: u64,
) -> Result<ValidatedClaims, ClaimError> {
    let c = check_inner(jws, rules, now)?;
    let aud = each_audience(jws.claims())?.map(str::to_owned).collect();
    Ok(ValidatedClaims {
        iss: c.iss.to_owned(),
        sub: c.sub.to_owned(),
        aud,
        exp: c.exp,
        iat: c.iat,
        nbf: c.nbf,
        jti: c.jti.map(str::to_owned),
        claims: Map::new(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jose::alg::Algorithm;
    use crate::jose::jws::decode;
    use crate::jose::testutil::{claims, header, token, TestKey};
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://issuer.example";

    fn key() -> &'static TestKey {
        static K: OnceLock<TestKey> = OnceLock::new();
        K.get_or_init(TestKey::ed25519)
    }

    fn rules() -> ClaimRules {
        ClaimRules::new(ISS, vec!["tessera".into(), "other".into()]).unwrap()
    }

    fn verified_with(h: &Value, c: &Value) -> VerifiedJws {
        let k = key();
        let t = token(h, c, k, Algorithm::EdDSA);
        decode(&t)
            .unwrap()
            .verify(&k.verifying_key(Algorithm::EdDSA, None))
            .unwrap()
    }

    fn verified(c: &Value) -> VerifiedJws {
        verified_with(&header(Algorithm::EdDSA, None), c)
    }

    /// Both entry points, which must agree on every case.
    fn check(c: &Value) -> Result<ValidatedClaims, ClaimError> {
        let by_ref = validate(&verified(c), &rules(), NOW);
        assert_eq!(by_ref, validate_owned(verified(c), &rules(), NOW));
        by_ref
    }

    fn with(mut c: Value, name: &str, v: Value) -> Value {
        c[name] = v;
        c
    }

    fn without(mut c: Value, name: &str) -> Value {
        c.as_object_mut().unwrap().remove(name);
        c
    }

    proptest::proptest! {
        /// SECURITY.md #45: the claims that reach policy are exactly the
        /// verified payload. For arbitrary extra claims (and payload text
        /// spelled with escapes and whitespace), the validated claims equal
        /// an independent parse of the very bytes whose signature was
        /// checked: there is no second parse, no merge and no other source.
        #[test]
        fn e45_validated_claims_are_the_verified_bytes(
            extra in proptest::collection::btree_map("[a-z_]{1,8}", "[A-Za-z0-9 ._/-]{0,12}", 0..6),
            spaced in proptest::bool::ANY,
        ) {
            let mut c = claims(NOW);
            for (k, v) in &extra {
                if !["iss", "sub", "aud", "exp", "iat", "nbf", "jti"].contains(&k.as_str()) {
                    c[k.as_str()] = Value::String(v.clone());
                }
            }
            let mut payload = serde_json::to_string(&c).unwrap();
            if spaced {
                // Same claims, other bytes: whitespace and a \u escape.
                payload = payload
                    .replace(ISS, "https:\\/\\/issuer\\u002eexample")
                    .replace("\",\"", "\" ,\n\"")
                    .replace("\":", "\" : ");
            }
            let k = key();
            let header = serde_json::to_string(&header(Algorithm::EdDSA, None)).unwrap();
            let t = crate::jose::testutil::token_raw(&header, &payload, |m| {
                k.sign(Algorithm::EdDSA, m)
            });
            let v = decode(&t)
                .unwrap()
                .verify(&k.verifying_key(Algorithm::EdDSA, None))
                .unwrap();
            let got = validate(&v, &rules(), NOW).unwrap();
            // The signed bytes, taken from the token independently.
            let seg = t.split('.').nth(1).unwrap();
            let signed = crate::jose::b64url_decode(seg).unwrap();
            let independent: Map<String, Value> = serde_json::from_slice(&signed).unwrap();
            proptest::prop_assert_eq!(&got.claims, &independent);
            proptest::prop_assert_eq!(Some(got.sub.as_str()), independent["sub"].as_str());
            proptest::prop_assert_eq!(got.iss.as_str(), ISS);
        }
    }

    #[test]
    fn rules_require_issuer_and_audience() {
        assert_eq!(
            ClaimRules::new("", vec!["a".into()]).unwrap_err(),
            RulesError::EmptyIssuer
        );
        assert_eq!(
            ClaimRules::new("i", vec![]).unwrap_err(),
            RulesError::NoAudience
        );
        assert_eq!(
            ClaimRules::new("i", vec![String::new()]).unwrap_err(),
            RulesError::NoAudience
        );
        let r = ClaimRules::new("i", vec!["a".into()])
            .unwrap()
            .leeway(10_000);
        assert_eq!(r.leeway, MAX_LEEWAY_SECS);
    }

    #[test]
    fn valid_token_passes() {
        let v = check(&claims(NOW)).unwrap();
        assert_eq!(v.iss, ISS);
        assert_eq!(v.sub, "workload-1");
        assert_eq!(v.aud, vec!["tessera".to_string()]);
        assert_eq!(v.exp, NOW + 300);
        assert_eq!(v.iat, Some(NOW - 10));
        assert_eq!(v.nbf, Some(NOW - 10));
        assert_eq!(v.jti.as_deref(), Some("id-1"));
        assert_eq!(v.claims["sub"], "workload-1");
        // Array audience with one match.
        let c = with(claims(NOW), "aud", json!(["x", "other"]));
        assert_eq!(check(&c).unwrap().aud, vec!["x", "other"]);
    }

    #[test]
    fn exp_boundaries() {
        let l = DEFAULT_LEEWAY_SECS;
        let at = |exp: u64| {
            let c = without(with(claims(NOW), "exp", json!(exp)), "iat");
            check(&c)
        };
        assert_eq!(at(NOW - l - 1).unwrap_err(), ClaimError::Expired);
        assert_eq!(at(NOW - l).unwrap_err(), ClaimError::Expired);
        assert!(at(NOW - l + 1).is_ok());
        assert!(at(NOW).is_ok());
        assert_eq!(at(0).unwrap_err(), ClaimError::Expired);
        // With zero leeway.
        let r = rules().leeway(0);
        let v = verified(&without(with(claims(NOW), "exp", json!(NOW)), "iat"));
        assert_eq!(validate(&v, &r, NOW).unwrap_err(), ClaimError::Expired);
        let v = verified(&without(with(claims(NOW), "exp", json!(NOW + 1)), "iat"));
        assert!(validate(&v, &r, NOW).is_ok());
    }

    #[test]
    fn nbf_and_iat_boundaries() {
        let l = DEFAULT_LEEWAY_SECS;
        let c = with(claims(NOW), "nbf", json!(NOW + l));
        assert!(check(&c).is_ok());
        let c = with(claims(NOW), "nbf", json!(NOW + l + 1));
        assert_eq!(check(&c).unwrap_err(), ClaimError::NotYetValid);
        let c = with(claims(NOW), "iat", json!(NOW + l));
        assert!(check(&c).is_ok());
        let c = with(claims(NOW), "iat", json!(NOW + l + 1));
        assert_eq!(check(&c).unwrap_err(), ClaimError::IssuedInFuture);
        // exp before iat.
        let c = with(with(claims(NOW), "iat", json!(NOW)), "exp", json!(NOW - 1));
        assert_eq!(check(&c).unwrap_err(), ClaimError::ExpiresBeforeIssued);
        // A huge `now` does not overflow anything.
        let v = verified(&claims(NOW));
        assert_eq!(
            validate(&v, &rules(), u64::MAX).unwrap_err(),
            ClaimError::Expired
        );
    }

    #[test]
    fn numeric_date_type_confusion() {
        let bad = [
            json!(1e20),
            json!(9.3e18),
            json!(1.5e300),
            json!(1_700_000_300.0),
            json!(1_700_000_300.5),
            json!("9999999999"),
            json!(true),
            json!(null),
            json!({}),
            json!([]),
            json!([NOW + 300]),
            json!([1]),
            json!([null]),
            json!(""),
            json!("1700000300"),
            json!(-1),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(MAX_NUMERIC_DATE + 1),
        ];
        for name in ["exp", "nbf", "iat"] {
            for v in &bad {
                let c = with(claims(NOW), name, v.clone());
                assert_eq!(
                    check(&c).unwrap_err(),
                    ClaimError::Invalid(match name {
                        "exp" => "exp",
                        "nbf" => "nbf",
                        _ => "iat",
                    }),
                    "{name} = {v}"
                );
            }
        }
        // Raw JSON numbers that serde_json turns into floats.
        for raw in ["1e20", "99999999999999999999", "1.7e9", "-0.0"] {
            let k = key();
            let payload = format!(r#"{{"iss":"{ISS}","sub":"s","aud":"tessera","exp":{raw}}}"#);
            let t = crate::jose::testutil::token_raw(r#"{"alg":"EdDSA"}"#, &payload, |si| {
                k.sign(Algorithm::EdDSA, si)
            });
            let v = decode(&t)
                .unwrap()
                .verify(&k.verifying_key(Algorithm::EdDSA, None))
                .unwrap();
            assert_eq!(
                validate(&v, &rules(), NOW).unwrap_err(),
                ClaimError::Invalid("exp"),
                "{raw}"
            );
        }
        // MAX_NUMERIC_DATE itself is accepted.
        let c = without(with(claims(NOW), "exp", json!(MAX_NUMERIC_DATE)), "iat");
        assert!(check(&c).is_ok());
    }

    #[test]
    fn exp_is_required() {
        let c = without(claims(NOW), "exp");
        assert_eq!(check(&c).unwrap_err(), ClaimError::Missing("exp"));
    }

    #[test]
    fn audience_rules() {
        for v in [
            json!([]),
            json!([1]),
            json!([null]),
            json!({}),
            json!(""),
            json!([""]),
            json!(["tessera", 1]),
            json!(["tessera", ""]),
            json!(1),
            json!(true),
            json!(null),
            json!([["tessera"]]),
            json!(1e20),
            json!(9.3e18),
            json!(1.5e300),
        ] {
            let c = with(claims(NOW), "aud", v.clone());
            assert_eq!(check(&c).unwrap_err(), ClaimError::Invalid("aud"), "{v}");
        }
        let c = without(claims(NOW), "aud");
        assert_eq!(check(&c).unwrap_err(), ClaimError::Missing("aud"));
        for v in [
            json!("Tessera"),
            json!(["nope"]),
            json!("tessera "),
            json!("9999999999"),
        ] {
            let c = with(claims(NOW), "aud", v);
            assert_eq!(check(&c).unwrap_err(), ClaimError::AudienceMismatch);
        }
    }

    #[test]
    fn issuer_and_subject_rules() {
        for (v, err) in [
            (json!("https://issuer.example/"), ClaimError::IssuerMismatch),
            (json!("https://ISSUER.example"), ClaimError::IssuerMismatch),
            (json!(""), ClaimError::IssuerMismatch),
            (
                json!(["https://issuer.example"]),
                ClaimError::Invalid("iss"),
            ),
            (json!(null), ClaimError::Invalid("iss")),
        ] {
            let c = with(claims(NOW), "iss", v);
            assert_eq!(check(&c).unwrap_err(), err);
        }
        assert_eq!(
            check(&without(claims(NOW), "iss")).unwrap_err(),
            ClaimError::Missing("iss")
        );
        for v in [json!(""), json!(1), json!(null), json!(["a"])] {
            let c = with(claims(NOW), "sub", v);
            assert_eq!(check(&c).unwrap_err(), ClaimError::Invalid("sub"));
        }
        assert_eq!(
            check(&without(claims(NOW), "sub")).unwrap_err(),
            ClaimError::Missing("sub")
        );
    }

    #[test]
    fn jti_rules() {
        for v in [
            json!(""),
            json!(1),
            json!(null),
            json!("j".repeat(MAX_JTI_LEN + 1)),
        ] {
            let c = with(claims(NOW), "jti", v);
            assert_eq!(check(&c).unwrap_err(), ClaimError::Invalid("jti"));
        }
        let no_jti = without(claims(NOW), "jti");
        assert!(check(&no_jti).is_ok());
        let r = rules().require_jti(true);
        assert_eq!(
            validate(&verified(&no_jti), &r, NOW).unwrap_err(),
            ClaimError::Missing("jti")
        );
        assert!(validate(&verified(&claims(NOW)), &r, NOW).is_ok());
    }

    #[test]
    fn case_variant_registered_names() {
        for name in ["Sub", "AUD", "Exp", "iSS", "NBF", "Iat", "JTI"] {
            let c = with(claims(NOW), name, json!("x"));
            assert_eq!(check(&c).unwrap_err(), ClaimError::CaseVariant, "{name}");
        }
        // Unrelated custom claims are fine.
        let c = with(claims(NOW), "scope", json!("a b"));
        assert!(check(&c).is_ok());
    }

    #[test]
    fn lifetime_cap() {
        let r = rules().max_lifetime(600);
        let c = with(
            with(claims(NOW), "iat", json!(NOW)),
            "exp",
            json!(NOW + 600),
        );
        assert!(validate(&verified(&c), &r, NOW).is_ok());
        let c = with(
            with(claims(NOW), "iat", json!(NOW)),
            "exp",
            json!(NOW + 601),
        );
        assert_eq!(
            validate(&verified(&c), &r, NOW).unwrap_err(),
            ClaimError::LifetimeTooLong
        );
        // Without iat: measured from now (plus leeway).
        let c = without(
            with(claims(NOW), "exp", json!(NOW + 600 + DEFAULT_LEEWAY_SECS)),
            "iat",
        );
        assert!(validate(&verified(&c), &r, NOW).is_ok());
        let c = without(
            with(claims(NOW), "exp", json!(NOW + 601 + DEFAULT_LEEWAY_SECS)),
            "iat",
        );
        assert_eq!(
            validate(&verified(&c), &r, NOW).unwrap_err(),
            ClaimError::LifetimeTooLong
        );
    }

    #[test]
    fn typ_rules() {
        let r = rules().required_typ(&["at+jwt", "application/at+jwt"]);
        let mut h = header(Algorithm::EdDSA, None);
        assert_eq!(
            validate(&verified_with(&h, &claims(NOW)), &r, NOW).unwrap_err(),
            ClaimError::TypMismatch
        );
        h["typ"] = json!("JWT");
        assert_eq!(
            validate(&verified_with(&h, &claims(NOW)), &r, NOW).unwrap_err(),
            ClaimError::TypMismatch
        );
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            h["typ"] = json!(ok);
            assert!(validate(&verified_with(&h, &claims(NOW)), &r, NOW).is_ok());
        }
        // No requirement: any typ is fine.
        h["typ"] = json!("JWT");
        assert!(validate(&verified_with(&h, &claims(NOW)), &rules(), NOW).is_ok());
    }

    #[test]
    fn reasons_are_stable() {
        assert_eq!(ClaimError::Expired.reason(), "expired");
        assert_eq!(ClaimError::AudienceMismatch.reason(), "aud_mismatch");
        assert_eq!(ClaimError::Missing("exp").reason(), "missing_claim");
    }
}
