//! Claim paths and claim conditions.
//!
//! A claim path is a `/`-separated list of object keys: `kubernetes.io/namespace`
//! reads `{"kubernetes.io": {"namespace": ...}}`. Dots are literal. Keys are
//! compared byte for byte.

use serde_json::{Map, Value};

use crate::policy::glob::Pattern;

/// Maximum number of `/`-separated segments in a claim path.
pub const MAX_CLAIM_PATH_SEGMENTS: usize = 8;

/// Maximum length of a claim path in bytes.
pub const MAX_CLAIM_PATH_LEN: usize = 256;

/// Why a claim path was rejected at configuration time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimPathError {
    /// The path is empty.
    #[error("claim path is empty")]
    Empty,
    /// The path has an empty segment (leading, trailing or doubled `/`).
    #[error("claim path has an empty segment")]
    EmptySegment,
    /// The path has more than [`MAX_CLAIM_PATH_SEGMENTS`] segments.
    #[error("claim path has more than {MAX_CLAIM_PATH_SEGMENTS} segments")]
    TooDeep,
    /// The path is longer than [`MAX_CLAIM_PATH_LEN`].
    #[error("claim path is longer than {MAX_CLAIM_PATH_LEN} bytes")]
    TooLong,
}

/// Checks that `path` is a usable claim path.
pub fn validate_claim_path(path: &str) -> Result<(), ClaimPathError> {
    if path.is_empty() {
        return Err(ClaimPathError::Empty);
    }
    if path.len() > MAX_CLAIM_PATH_LEN {
        return Err(ClaimPathError::TooLong);
    }
    let mut segments = 0usize;
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err(ClaimPathError::EmptySegment);
        }
        segments += 1;
    }
    if segments > MAX_CLAIM_PATH_SEGMENTS {
        return Err(ClaimPathError::TooDeep);
    }
    Ok(())
}

/// Looks up a claim by path. Returns `None` when the path is invalid, a
/// segment is missing, or an intermediate value is not an object.
pub fn claim_path_lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if validate_claim_path(path).is_err() {
        return None;
    }
    let mut segments = path.split('/');
    let mut current = claims.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// Whether a claim value satisfies `pattern`: a string value that matches, or
/// an array with at least one string element that matches. Null, booleans,
/// numbers and objects never match (no coercion).
pub fn claim_value_matches(value: &Value, pattern: &Pattern) -> bool {
    match value {
        Value::String(s) => pattern.matches(s),
        Value::Array(items) => items
            .iter()
            .any(|item| matches!(item, Value::String(s) if pattern.matches(s))),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => false,
    }
}

/// One compiled `match.claims` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCondition {
    path: String,
    pattern: Pattern,
}

impl ClaimCondition {
    /// Builds a condition from an already validated path and pattern.
    pub fn new(path: String, pattern: Pattern) -> ClaimCondition {
        ClaimCondition { path, pattern }
    }

    /// The claim path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The pattern the claim must match.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Whether `claims` satisfy this condition (a missing claim never does).
    pub fn matches(&self, claims: &Map<String, Value>) -> bool {
        claim_path_lookup(claims, &self.path).is_some_and(|v| claim_value_matches(v, &self.pattern))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn lookup_nested_and_literal_dots() {
        let claims = obj(json!({
            "kubernetes.io": {"namespace": "prod", "pod": {"name": "web-1"}},
            "a.b": "dotted",
            "a": {"b": "nested"},
            "s": "x"
        }));
        assert_eq!(
            claim_path_lookup(&claims, "kubernetes.io/namespace"),
            Some(&json!("prod"))
        );
        assert_eq!(
            claim_path_lookup(&claims, "kubernetes.io/pod/name"),
            Some(&json!("web-1"))
        );
        assert_eq!(claim_path_lookup(&claims, "a.b"), Some(&json!("dotted")));
        assert_eq!(claim_path_lookup(&claims, "a/b"), Some(&json!("nested")));
        assert_eq!(claim_path_lookup(&claims, "kubernetes/io"), None);
        assert_eq!(claim_path_lookup(&claims, "s/x"), None);
        assert_eq!(claim_path_lookup(&claims, "missing"), None);
        assert_eq!(claim_path_lookup(&claims, ""), None);
        assert_eq!(claim_path_lookup(&claims, "/s"), None);
        assert_eq!(claim_path_lookup(&claims, "a/b/"), None);
        assert_eq!(claim_path_lookup(&claims, "A/b"), None);
    }

    #[test]
    fn path_validation() {
        assert_eq!(validate_claim_path(""), Err(ClaimPathError::Empty));
        assert_eq!(
            validate_claim_path("a//b"),
            Err(ClaimPathError::EmptySegment)
        );
        assert_eq!(validate_claim_path("/a"), Err(ClaimPathError::EmptySegment));
        assert_eq!(
            validate_claim_path(&["a"; MAX_CLAIM_PATH_SEGMENTS + 1].join("/")),
            Err(ClaimPathError::TooDeep)
        );
        assert!(validate_claim_path(&["a"; MAX_CLAIM_PATH_SEGMENTS].join("/")).is_ok());
        assert_eq!(
            validate_claim_path(&"a".repeat(MAX_CLAIM_PATH_LEN + 1)),
            Err(ClaimPathError::TooLong)
        );
    }

    #[test]
    fn value_matching_without_coercion() {
        let any = Pattern::parse("**").unwrap();
        let zero = Pattern::parse("0").unwrap();
        let t = Pattern::parse("true").unwrap();
        let null = Pattern::parse("null").unwrap();
        assert!(!claim_value_matches(&json!(null), &any));
        assert!(!claim_value_matches(&json!(null), &null));
        assert!(!claim_value_matches(&json!(true), &t));
        assert!(!claim_value_matches(&json!(true), &any));
        assert!(!claim_value_matches(&json!(0), &zero));
        assert!(!claim_value_matches(&json!(0), &any));
        assert!(!claim_value_matches(&json!(""), &any));
        assert!(!claim_value_matches(&json!({"a": "b"}), &any));
        assert!(!claim_value_matches(&json!([]), &any));
        assert!(!claim_value_matches(&json!([0, true, null, ""]), &any));
        assert!(!claim_value_matches(&json!([["x"]]), &any));
        assert!(claim_value_matches(&json!([0, "x"]), &any));
        assert!(claim_value_matches(
            &json!(["a", "b"]),
            &Pattern::parse("b").unwrap()
        ));
        assert!(!claim_value_matches(
            &json!(["a", "b"]),
            &Pattern::parse("c").unwrap()
        ));
        // a claim value containing '*' is data, matched literally
        assert!(claim_value_matches(
            &json!("*"),
            &Pattern::parse("*").unwrap()
        ));
        assert!(!claim_value_matches(
            &json!("*"),
            &Pattern::parse("a").unwrap()
        ));
        assert!(!claim_value_matches(
            &json!("**"),
            &Pattern::parse("x").unwrap()
        ));
        assert!(claim_value_matches(
            &json!("a*"),
            &Pattern::parse("a*").unwrap()
        ));
        assert!(!claim_value_matches(
            &json!("a*"),
            &Pattern::parse("ab").unwrap()
        ));
    }

    #[test]
    fn condition_missing_claim() {
        let c = ClaimCondition::new("env".into(), Pattern::parse("*").unwrap());
        assert!(!c.matches(&obj(json!({}))));
        assert!(!c.matches(&obj(json!({"env": null}))));
        assert!(!c.matches(&obj(json!({"env": ""}))));
        assert!(c.matches(&obj(json!({"env": "prod"}))));
        assert_eq!(c.path(), "env");
        assert_eq!(c.pattern().as_str(), "*");
    }
}
