//! `POST /token` form → [`TokenRequest`]: the RFC 6749 / 8693 request rules
//! (form content type, no repeated parameters, token types, one target);
//! and `POST /bc-authorize` → [`BackchannelRequest`] (OpenID CIBA).
//!
//! One file: about 490 lines of request rules and 360 of the unit tests
//! that pin them (each RFC rule next to its refusal); the rules alone are
//! well under 800 lines.

use crate::exchange::ciba::{CibaError, MAX_BINDING_MESSAGE, MAX_LOGIN_HINT};
use crate::exchange::request::MAX_AUTH_REQ_ID_LEN;
use crate::oauth::error::ErrorCode;
use crate::policy::scope::ScopeSet;

/// Token-exchange grant type URN.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Client-credentials grant type.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// Most parameters a form may carry.
pub const MAX_FORM_PARAMS: usize = 64;
pub use crate::exchange::request::{valid_task, MAX_TASK_LEN};
/// Longest `approval_id` value.
pub const MAX_APPROVAL_ID_LEN: usize = 128;
/// Largest `expires_in` a caller may ask for (the lifetime rules cap it further).
pub const MAX_EXPIRES_IN: u64 = 86_400;

pub use crate::exchange::request::{
    BackchannelRequest, CibaPoll, GrantType, Target, TokenRequest, TokenType,
};

/// Why a request was refused while parsing: the wire code and an audit reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// Wire code.
    pub code: ErrorCode,
    /// Stable reason code for logs and audit.
    pub reason: &'static str,
}

fn bad(code: ErrorCode, reason: &'static str) -> RequestError {
    RequestError { code, reason }
}

/// Checks the `Content-Type` of a `/token` request: form encoding, UTF-8 only.
pub fn check_content_type(ct: Option<&str>) -> Result<(), RequestError> {
    let ct = ct.ok_or(bad(ErrorCode::InvalidRequest, "content_type_missing"))?;
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(bad(ErrorCode::InvalidRequest, "content_type_not_form"));
    }
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let v = v.trim().trim_matches('"');
        if !(k.trim().eq_ignore_ascii_case("charset") && v.eq_ignore_ascii_case("utf-8")) {
            return Err(bad(ErrorCode::InvalidRequest, "content_type_parameter"));
        }
    }
    Ok(())
}

/// A decoded form: each name once, with every value it was given, in the
/// order the names first appeared. At most [`MAX_FORM_PARAMS`] pairs, so
/// a list searched in order is cheaper than hashing every name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, Vec<String>)>,
}

impl Form {
    /// Every value given for `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Vec<String>> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The names with their values.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.pairs.iter().map(|(k, v)| (k, v))
    }

    fn push(&mut self, name: String, value: String) {
        match self.pairs.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => v.push(value),
            None => self.pairs.push((name, vec![value])),
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` strictly: percent-decoded bytes
/// must be UTF-8 (no lossy replacement), at most [`MAX_FORM_PARAMS`] pairs.
/// Returns each name with every value it was given.
pub fn parse_form(body: &[u8]) -> Result<Form, RequestError> {
    let mut out = Form::default();
    let mut count = 0usize;
    // `memchr` finds the separators a word at a time: the body is mostly one
    // long token, which a byte-by-byte split walks one byte at a time.
    let mut rest = body;
    loop {
        let (pair, next) = match memchr::memchr(b'&', rest) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if !pair.is_empty() {
            count += 1;
            if count > MAX_FORM_PARAMS {
                return Err(bad(ErrorCode::InvalidRequest, "too_many_parameters"));
            }
            let (k, v) = match memchr::memchr(b'=', pair) {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let k = decode_component(k)?;
            let v = decode_component(v)?;
            out.push(k, v);
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    Ok(out)
}

fn decode_component(raw: &[u8]) -> Result<String, RequestError> {
    let not_utf8 = |_| bad(ErrorCode::InvalidRequest, "form_not_utf8");
    // Fast path: a JWT, a URI or a name is mostly plain bytes; copy them in
    // one piece and validate the UTF-8 once.
    let Some(first) = memchr::memchr2(b'+', b'%', raw) else {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(not_utf8);
    };
    // One pass, one allocation: `+` is a space, `%XY` a byte, and a `%` not
    // followed by two hex digits is kept as is (as `percent_decode` does).
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|e| not_utf8(e.utf8_error()))
}

/// Builds a [`TokenRequest`] from the decoded form.
pub fn token_request(form: &Form, max_token_bytes: usize) -> Result<TokenRequest, RequestError> {
    // RFC 6749 §3.2: parameters MUST NOT repeat (audience/resource are
    // counted separately: more than one target is invalid_target).
    for (k, vs) in form.iter() {
        if vs.len() > 1 && k != "audience" && k != "resource" {
            return Err(bad(ErrorCode::InvalidRequest, "repeated_parameter"));
        }
    }
    // RFC 6749 §3.1: a parameter without a value is treated as omitted.
    let one = |k: &str| -> Option<&str> {
        form.get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    };

    let grant_type = match one("grant_type") {
        None => return Err(bad(ErrorCode::InvalidRequest, "grant_type_missing")),
        Some(GRANT_TOKEN_EXCHANGE) => GrantType::TokenExchange,
        Some(GRANT_CLIENT_CREDENTIALS) => GrantType::ClientCredentials,
        Some(_) => {
            return Err(bad(
                ErrorCode::UnsupportedGrantType,
                "grant_type_unsupported",
            ))
        }
    };

    let token_type = |k: &str, missing: &'static str| -> Result<Option<TokenType>, RequestError> {
        match one(k) {
            None => {
                if missing.is_empty() {
                    Ok(None)
                } else {
                    Err(bad(ErrorCode::InvalidRequest, missing))
                }
            }
            Some(s) => TokenType::parse(s)
                .map(Some)
                .ok_or(bad(ErrorCode::InvalidRequest, "token_type_unknown")),
        }
    };

    let (subject_token_type, subject_token) = match grant_type {
        GrantType::TokenExchange => {
            let t = token_type("subject_token_type", "subject_token_type_missing")?
                .ok_or(bad(ErrorCode::InvalidRequest, "subject_token_type_missing"))?;
            let tok = one("subject_token").map(str::to_string);
            if tok.is_none() && t != TokenType::Mtls {
                return Err(bad(ErrorCode::InvalidRequest, "subject_token_missing"));
            }
            (t, tok)
        }
        GrantType::ClientCredentials => {
            if one("subject_token").is_some() || one("subject_token_type").is_some() {
                return Err(bad(
                    ErrorCode::InvalidRequest,
                    "subject_token_with_client_credentials",
                ));
            }
            (TokenType::Mtls, None)
        }
    };
    let actor_token = one("actor_token").map(str::to_string);
    let actor_token_type = token_type("actor_token_type", "")?;
    // RFC 8693 §2.1: actor_token_type is required with actor_token and must not be sent without it.
    if actor_token.is_some() != actor_token_type.is_some() {
        return Err(bad(ErrorCode::InvalidRequest, "actor_token_pairing"));
    }
    for t in [&subject_token, &actor_token].into_iter().flatten() {
        if t.len() > max_token_bytes {
            return Err(bad(ErrorCode::InvalidRequest, "token_too_large"));
        }
    }

    // Exactly one target.
    let auds: Vec<&String> = form
        .get("audience")
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    let ress: Vec<&String> = form
        .get("resource")
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    let target = match (auds.as_slice(), ress.as_slice()) {
        ([a], []) => Target::Audience((*a).clone()),
        ([], [r]) => {
            if !is_absolute_uri_without_fragment(r) {
                return Err(bad(ErrorCode::InvalidTarget, "resource_not_absolute_uri"));
            }
            Target::Resource((*r).clone())
        }
        ([], []) => return Err(bad(ErrorCode::InvalidTarget, "target_missing")),
        _ => return Err(bad(ErrorCode::InvalidTarget, "more_than_one_target")),
    };
    if target.as_str().len() > 1024 || target.as_str().chars().any(char::is_control) {
        return Err(bad(ErrorCode::InvalidTarget, "target_malformed"));
    }

    let scope = match one("scope") {
        None => return Err(bad(ErrorCode::InvalidScope, "scope_missing")),
        Some(s) => s
            .parse::<ScopeSet>()
            .map_err(|_| bad(ErrorCode::InvalidScope, "scope_malformed"))?,
    };

    let requested_token_type = match token_type("requested_token_type", "")? {
        None | Some(TokenType::AccessToken) => None,
        Some(TokenType::Jwt) => Some(TokenType::Jwt),
        Some(_) => {
            return Err(bad(
                ErrorCode::InvalidRequest,
                "requested_token_type_unsupported",
            ))
        }
    };

    let expires_in = match one("expires_in") {
        None => None,
        Some(s) => {
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(ErrorCode::InvalidRequest, "expires_in_malformed"));
            }
            let n: u64 = s
                .parse()
                .map_err(|_| bad(ErrorCode::InvalidRequest, "expires_in_malformed"))?;
            if n == 0 || n > MAX_EXPIRES_IN {
                return Err(bad(ErrorCode::InvalidRequest, "expires_in_out_of_range"));
            }
            Some(n)
        }
    };

    let task = match one("task") {
        None => None,
        Some(t) => {
            if !valid_task(t) {
                return Err(bad(ErrorCode::InvalidRequest, "task_malformed"));
            }
            Some(t.to_string())
        }
    };

    let approval_id = match one("approval_id") {
        None => None,
        Some(a) => {
            if a.len() > MAX_APPROVAL_ID_LEN
                || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(ErrorCode::InvalidRequest, "approval_id_malformed"));
            }
            Some(a.to_string())
        }
    };

    let authorization_details = match one("authorization_details") {
        None => None,
        Some(s) => Some(parse_authorization_details(s)?),
    };

    Ok(TokenRequest {
        grant_type,
        subject_token,
        subject_token_type,
        actor_token,
        actor_token_type,
        target,
        scope,
        requested_token_type,
        expires_in,
        task,
        approval_id,
        authorization_details,
        dpop: None,
    })
}

/// RFC 8707 §2: an absolute URI (scheme ":" ...) with no fragment.
fn is_absolute_uri_without_fragment(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    scheme_ok && !rest.is_empty() && !s.contains('#') && !s.bytes().any(|b| b <= b' ')
}

/// Largest `authorization_details` value (bytes of JSON, after form decoding).
pub const MAX_AUTHORIZATION_DETAILS_BYTES: usize = 8 * 1024;
/// Most entries in `authorization_details`.
pub const MAX_AUTHORIZATION_DETAILS_ENTRIES: usize = 16;
/// Longest `type` of one entry.
pub const MAX_AUTHORIZATION_DETAILS_TYPE_LEN: usize = 256;

/// RFC 9396 §2: a non-empty JSON array (at most
/// [`MAX_AUTHORIZATION_DETAILS_ENTRIES`] entries, at most
/// [`MAX_AUTHORIZATION_DETAILS_BYTES`]) of objects, each with a non-empty
/// string `type`. Parsed strictly (duplicate member names rejected, nothing
/// after the array) and kept verbatim otherwise.
pub fn parse_authorization_details(s: &str) -> Result<serde_json::Value, RequestError> {
    let e = |reason| bad(ErrorCode::InvalidAuthorizationDetails, reason);
    if s.len() > MAX_AUTHORIZATION_DETAILS_BYTES {
        return Err(e("authorization_details_too_large"));
    }
    let v = crate::jose::json::parse_value(s.as_bytes())
        .map_err(|_| e("authorization_details_not_json"))?;
    let arr = v
        .as_array()
        .ok_or_else(|| e("authorization_details_not_array"))?;
    if arr.is_empty() || arr.len() > MAX_AUTHORIZATION_DETAILS_ENTRIES {
        return Err(e("authorization_details_entries"));
    }
    for item in arr {
        let o = item
            .as_object()
            .ok_or_else(|| e("authorization_details_entry_not_object"))?;
        match o.get("type").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() && t.len() <= MAX_AUTHORIZATION_DETAILS_TYPE_LEN => {}
            _ => return Err(e("authorization_details_type")),
        }
    }
    Ok(v)
}

/// A `/bc-authorize` form parameter sent at most once (empty counts as absent).
fn one_ciba<'f>(form: &'f Form, name: &str) -> Result<Option<&'f str>, CibaError> {
    match form.get(name).map(Vec::as_slice) {
        None => Ok(None),
        Some([v]) if v.is_empty() => Ok(None),
        Some([v]) => Ok(Some(v.as_str())),
        Some(_) => Err(ciba_refusal("invalid_request", "repeated_parameter")),
    }
}

fn ciba_refusal(error: &'static str, reason: &'static str) -> CibaError {
    CibaError {
        status: 400,
        error,
        reason,
    }
}

/// `POST /bc-authorize` form → [`BackchannelRequest`] (OpenID CIBA Core 1.0
/// §7.1): a refusal is a 400 with the CIBA error code and a reason code.
pub fn bc_authorize_request(form: &Form) -> Result<BackchannelRequest, CibaError> {
    let refuse = ciba_refusal;
    let person =
        one_ciba(form, "login_hint")?.ok_or(refuse("invalid_request", "login_hint_missing"))?;
    if person.len() > MAX_LOGIN_HINT || person.chars().any(char::is_control) {
        return Err(refuse("invalid_request", "login_hint_malformed"));
    }
    for unsupported in ["login_hint_token", "id_token_hint", "user_code"] {
        if form.get(unsupported).is_some() {
            return Err(refuse("invalid_request", "hint_not_supported"));
        }
    }
    let scope: ScopeSet = one_ciba(form, "scope")?
        .ok_or(refuse("invalid_scope", "scope_missing"))?
        .parse()
        .map_err(|_| refuse("invalid_scope", "scope_malformed"))?;
    let audience = match (one_ciba(form, "audience")?, one_ciba(form, "resource")?) {
        (Some(a), None) | (None, Some(a)) => a.to_string(),
        _ => return Err(refuse("invalid_request", "one_target_required")),
    };
    if audience.len() > 1024 || audience.chars().any(char::is_control) {
        return Err(refuse("invalid_request", "target_malformed"));
    }
    let binding_message = match one_ciba(form, "binding_message")? {
        Some(m)
            if m.chars().count() > MAX_BINDING_MESSAGE
                || m.chars().any(crate::text::is_terminal_unsafe) =>
        {
            return Err(refuse(
                "invalid_binding_message",
                "binding_message_malformed",
            ))
        }
        m => m.map(str::to_string),
    };
    let task = match one_ciba(form, "task")? {
        Some(t) if !valid_task(t) => return Err(refuse("invalid_request", "task_malformed")),
        t => t.map(str::to_string),
    };
    let authorization_details = match one_ciba(form, "authorization_details")? {
        Some(d) => {
            Some(parse_authorization_details(d).map_err(|e| refuse("invalid_request", e.reason))?)
        }
        None => None,
    };
    let requested_expiry = match one_ciba(form, "requested_expiry")? {
        Some(e) => Some(
            e.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(refuse("invalid_request", "requested_expiry_malformed"))?,
        ),
        None => None,
    };
    Ok(BackchannelRequest {
        login_hint: person.to_string(),
        scope,
        audience,
        binding_message,
        task,
        authorization_details,
        requested_expiry,
    })
}

/// A `/token` form with the CIBA grant → [`CibaPoll`].
pub fn ciba_poll(form: &Form) -> CibaPoll {
    CibaPoll {
        auth_req_id: match form.get("auth_req_id").map(Vec::as_slice) {
            Some([id]) if !id.is_empty() && id.len() <= MAX_AUTH_REQ_ID_LEN => Some(id.clone()),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Form {
        parse_form(s.as_bytes()).unwrap()
    }
    fn req(s: &str) -> Result<TokenRequest, RequestError> {
        token_request(&form(s), 8192)
    }
    const TE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
    const MTLS: &str = "subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Amtls";

    #[test]
    fn good_mtls_exchange() {
        let r = req(&format!(
            "{TE}&{MTLS}&audience=https%3A%2F%2Fapi&scope=a+b&task=t-1&expires_in=60"
        ))
        .unwrap();
        assert_eq!(r.grant_type, GrantType::TokenExchange);
        assert_eq!(r.subject_token_type, TokenType::Mtls);
        assert_eq!(r.target, Target::Audience("https://api".into()));
        assert_eq!(r.scope.to_string(), "a b");
        assert_eq!(r.expires_in, Some(60));
        assert_eq!(r.task.as_deref(), Some("t-1"));
    }

    #[test]
    fn codes() {
        let c = |s: &str| req(s).unwrap_err();
        assert_eq!(c("audience=a&scope=s").code, ErrorCode::InvalidRequest);
        assert_eq!(
            c("grant_type=password").code,
            ErrorCode::UnsupportedGrantType
        );
        assert_eq!(
            c(&format!("{TE}&{TE}&{MTLS}&audience=a&scope=s")).reason,
            "repeated_parameter"
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&scope=s&scope=t&audience=a")).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&audience=b&scope=s")).code,
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            c(&format!(
                "{TE}&{MTLS}&audience=a&resource=https://b&scope=s"
            ))
            .code,
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&resource=notauri&scope=s")).code,
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&resource=https://a%23frag&scope=s")).code,
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&scope=s")).code,
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a")).code,
            ErrorCode::InvalidScope
        );
        assert_eq!(
            c(&format!("{TE}&audience=a&scope=s")).reason,
            "subject_token_type_missing"
        );
        assert_eq!(
            c(&format!(
                "{TE}&subject_token_type=urn:ietf:params:oauth:token-type:jwt&audience=a&scope=s"
            ))
            .reason,
            "subject_token_missing"
        );
        assert_eq!(
            c(&format!(
                "{TE}&subject_token_type=urn:x&subject_token=x&audience=a&scope=s"
            ))
            .reason,
            "token_type_unknown"
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&scope=s&actor_token=x")).reason,
            "actor_token_pairing"
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&scope=s&actor_token_type=urn:ietf:params:oauth:token-type:jwt")).reason,
            "actor_token_pairing"
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&scope=s&requested_token_type=urn:ietf:params:oauth:token-type:refresh_token")).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&scope=s&expires_in=0")).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&scope=s&expires_in=-5")).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            c(&format!("{TE}&{MTLS}&audience=a&scope=s&task=a%20b")).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            c(&format!(
                "{TE}&{MTLS}&audience=a&scope=s&authorization_details=%7B%7D"
            ))
            .code,
            ErrorCode::InvalidAuthorizationDetails
        );
        let big = "a".repeat(9000);
        assert_eq!(
            c(&format!("{TE}&subject_token_type=urn:ietf:params:oauth:token-type:jwt&subject_token={big}&audience=a&scope=s")).reason,
            "token_too_large"
        );
    }

    #[test]
    fn empty_values_are_omitted_and_task_rules() {
        let r = req(&format!("{TE}&{MTLS}&audience=a&scope=s&task=")).unwrap();
        assert!(r.task.is_none());
        assert!(valid_task("deploy.v1:step-2_a"));
        assert!(!valid_task(&"a".repeat(129)));
        assert!(!valid_task("a/b"));
    }

    #[test]
    fn form_is_strict_utf8() {
        assert_eq!(parse_form(b"a=%FF").unwrap_err().reason, "form_not_utf8");
        let many: String = (0..70).map(|i| format!("p{i}=1&")).collect();
        assert_eq!(
            parse_form(many.as_bytes()).unwrap_err().reason,
            "too_many_parameters"
        );
    }

    /// The one-pass decoder agrees with the reference (`+` to space, then
    /// `percent_encoding`) on every input, hostile ones included: stray and
    /// truncated `%`, `%` before `+`, encoded `+`, multi-byte and invalid
    /// UTF-8, NUL.
    #[test]
    fn decode_component_matches_the_reference() {
        fn reference(raw: &[u8]) -> Option<String> {
            let plus: Vec<u8> = raw
                .iter()
                .map(|b| if *b == b'+' { b' ' } else { *b })
                .collect();
            String::from_utf8(percent_encoding::percent_decode(&plus).collect()).ok()
        }
        let cases: [&[u8]; 18] = [
            b"",
            b"plain.jwt-value_~",
            b"a+b",
            b"%2B",
            b"%2b%20%41",
            b"%",
            b"%4",
            b"%4g",
            b"%%41",
            b"%+1",
            b"+%+",
            b"100%",
            b"%E2%82%AC",
            b"%E2%82",
            b"%FF",
            b"%00",
            "\u{e9}t\u{e9}+%C3%A9".as_bytes(),
            b"\xff",
        ];
        for c in cases {
            assert_eq!(decode_component(c).ok(), reference(c), "{c:?}");
        }
        proptest::proptest!(|(raw in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(b"%+2BbFfE0aZ9".to_vec()),
                proptest::num::u8::ANY,
            ],
            0..40,
        ))| {
            proptest::prop_assert_eq!(decode_component(&raw).ok(), reference(&raw));
        });
    }

    /// The memchr-based splitter gives what a plain split on `&` and the
    /// first `=` gives, errors included (empty pairs, bare names, `=` in
    /// values, too many pairs).
    #[test]
    fn parse_form_matches_a_plain_split() {
        use std::collections::HashMap;
        fn reference(body: &[u8]) -> Result<HashMap<String, Vec<String>>, &'static str> {
            let mut out: HashMap<String, Vec<String>> = HashMap::new();
            let mut count = 0;
            for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
                count += 1;
                if count > MAX_FORM_PARAMS {
                    return Err("too_many_parameters");
                }
                let (k, v) = match pair.iter().position(|b| *b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &b""[..]),
                };
                let k = decode_component(k).map_err(|e| e.reason)?;
                let v = decode_component(v).map_err(|e| e.reason)?;
                out.entry(k).or_default().push(v);
            }
            Ok(out)
        }
        fn as_map(f: Form) -> HashMap<String, Vec<String>> {
            f.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        let many = "a=1&".repeat(MAX_FORM_PARAMS + 1);
        for body in [
            "",
            "&",
            "&&a=1&&",
            "a",
            "a=",
            "=b",
            "a=b=c&a=d",
            "x=%FF",
            many.as_str(),
        ] {
            assert_eq!(
                parse_form(body.as_bytes())
                    .map(as_map)
                    .map_err(|e| e.reason),
                reference(body.as_bytes()),
                "{body}"
            );
        }
        proptest::proptest!(|(body in proptest::collection::vec(
            proptest::sample::select(b"&=%+aZ2F".to_vec()),
            0..60,
        ))| {
            proptest::prop_assert_eq!(
                parse_form(&body).map(as_map).map_err(|e| e.reason),
                reference(&body)
            );
        });
    }

    #[test]
    fn content_type_rules() {
        assert!(check_content_type(Some("application/x-www-form-urlencoded")).is_ok());
        assert!(
            check_content_type(Some("application/x-www-form-urlencoded; charset=UTF-8")).is_ok()
        );
        assert!(check_content_type(Some("application/json")).is_err());
        assert!(check_content_type(Some("multipart/form-data; boundary=x")).is_err());
        assert!(
            check_content_type(Some("application/x-www-form-urlencoded; charset=utf-16")).is_err()
        );
        assert!(check_content_type(None).is_err());
    }

    #[test]
    fn authorization_details_shape() {
        assert!(parse_authorization_details(r#"[{"type":"payment","amount":5}]"#).is_ok());
        for bad in [
            r#"{}"#,
            r#"[]"#,
            r#"[1]"#,
            r#"[{"amount":5}]"#,
            r#"[{"type":1}]"#,
            r#"[{"type":"a","type":"b"}]"#,
            r#"[{"type":""}]"#,
            // not one JSON value: must not be smuggled through a wrapper object
            r#"[{"type":"a"}],"x":1"#,
            "[",
        ] {
            assert!(parse_authorization_details(bad).is_err(), "{bad}");
        }
        let big = format!(r#"[{{"type":"a","pad":"{}"}}]"#, "x".repeat(8192));
        assert_eq!(
            parse_authorization_details(&big).unwrap_err().reason,
            "authorization_details_too_large"
        );
        let many = format!("[{}]", vec![r#"{"type":"a"}"#; 17].join(","));
        assert!(parse_authorization_details(&many).is_err());
        let sixteen = format!("[{}]", vec![r#"{"type":"a"}"#; 16].join(","));
        assert!(parse_authorization_details(&sixteen).is_ok());
    }

    #[test]
    fn bc_authorize_form_becomes_a_typed_request() {
        let r = bc_authorize_request(&form(
            "login_hint=alice%40example.com&scope=deploy:prod&audience=api&binding_message=A1\
             &task=t-1&requested_expiry=120&authorization_details=%5B%7B%22type%22%3A%22x%22%7D%5D",
        ))
        .unwrap();
        assert_eq!(r.login_hint, "alice@example.com");
        assert_eq!(r.scope.to_string(), "deploy:prod");
        assert_eq!(r.audience, "api");
        assert_eq!(r.binding_message.as_deref(), Some("A1"));
        assert_eq!(r.task.as_deref(), Some("t-1"));
        assert_eq!(r.requested_expiry, Some(120));
        assert_eq!(r.authorization_details.unwrap()[0]["type"], "x");
        let refused = |s: &str| {
            let e = bc_authorize_request(&form(s)).unwrap_err();
            assert_eq!(e.status, 400);
            (e.error, e.reason)
        };
        let ok = "login_hint=a&scope=s&audience=api";
        assert_eq!(
            refused("scope=s"),
            ("invalid_request", "login_hint_missing")
        );
        assert_eq!(
            refused("login_hint=a&login_hint=b&scope=s&audience=api"),
            ("invalid_request", "repeated_parameter")
        );
        assert_eq!(
            refused(&format!("{ok}&id_token_hint=x")),
            ("invalid_request", "hint_not_supported")
        );
        assert_eq!(
            refused("login_hint=a&audience=api"),
            ("invalid_scope", "scope_missing")
        );
        assert_eq!(
            refused("login_hint=a&scope=s&audience=api&resource=https://r"),
            ("invalid_request", "one_target_required")
        );
        assert_eq!(
            refused(&format!("{ok}&binding_message={}", "x".repeat(65))),
            ("invalid_binding_message", "binding_message_malformed")
        );
        assert_eq!(
            refused(&format!("{ok}&task=a%20b")),
            ("invalid_request", "task_malformed")
        );
        assert_eq!(
            refused(&format!("{ok}&requested_expiry=0")),
            ("invalid_request", "requested_expiry_malformed")
        );
    }

    #[test]
    fn ciba_poll_keeps_one_short_auth_req_id() {
        assert_eq!(
            ciba_poll(&form("auth_req_id=abc")).auth_req_id.as_deref(),
            Some("abc")
        );
        for bad in ["", "auth_req_id=", "auth_req_id=a&auth_req_id=b"] {
            assert_eq!(ciba_poll(&form(bad)).auth_req_id, None, "{bad}");
        }
        let long = format!("auth_req_id={}", "a".repeat(MAX_AUTH_REQ_ID_LEN + 1));
        assert_eq!(ciba_poll(&form(&long)).auth_req_id, None);
    }
}
