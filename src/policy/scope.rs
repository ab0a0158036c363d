//! OAuth 2.0 scope values (RFC 6749 §3.3).
//!
//! A [`ScopeSet`] is parsed from a request's space-separated `scope` string.
//! Tokens are separated by one or more ASCII spaces (0x20); leading or
//! trailing spaces, tabs, newlines and any other character outside the
//! `scope-token` grammar are rejected. Duplicates collapse. The set is kept
//! **sorted by byte value**, which is its canonical order for output
//! ([`fmt::Display`] and [`ScopeSet::iter`]).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Maximum number of scope tokens in one request (counted before duplicates
/// collapse).
pub const MAX_SCOPES: usize = 32;

/// Maximum length of one scope token in bytes.
pub const MAX_SCOPE_LEN: usize = 128;

/// Why a scope or scope string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The scope string or token is empty.
    #[error("scope is empty")]
    Empty,
    /// A token is longer than [`MAX_SCOPE_LEN`].
    #[error("scope token longer than {MAX_SCOPE_LEN} bytes")]
    TooLong,
    /// More than [`MAX_SCOPES`] tokens.
    #[error("more than {MAX_SCOPES} scope tokens")]
    TooMany,
    /// A byte outside `%x21 / %x23-5B / %x5D-7E` (or a misplaced space).
    #[error("invalid character in scope at byte {0}")]
    InvalidChar(usize),
}

/// Whether `b` is allowed in an RFC 6749 `scope-token`.
fn is_scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

/// One validated scope token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    /// Validates a single scope token.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        if let Some(at) = s.bytes().position(|b| !is_scope_char(b)) {
            return Err(ScopeError::InvalidChar(at));
        }
        Ok(Scope(s.to_owned()))
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

/// A set of scopes, sorted by byte value, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// An empty set (never produced by [`ScopeSet::parse`]).
    pub fn new() -> ScopeSet {
        ScopeSet(BTreeSet::new())
    }

    /// Parses a request's `scope` parameter (see the module documentation).
    pub fn parse(s: &str) -> Result<ScopeSet, ScopeError> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        let bytes = s.as_bytes();
        if bytes.first() == Some(&b' ') {
            return Err(ScopeError::InvalidChar(0));
        }
        if bytes.last() == Some(&b' ') {
            return Err(ScopeError::InvalidChar(s.len().saturating_sub(1)));
        }
        let mut set = BTreeSet::new();
        let mut count = 0usize;
        let mut offset = 0usize;
        for token in s.split(' ') {
            let here = offset;
            offset = offset.saturating_add(token.len()).saturating_add(1);
            if token.is_empty() {
                continue; // a run of several spaces
            }
            count += 1;
            if count > MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
            let scope = Scope::parse(token).map_err(|e| match e {
                ScopeError::InvalidChar(at) => ScopeError::InvalidChar(here.saturating_add(at)),
                other => other,
            })?;
            set.insert(scope);
        }
        if set.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(ScopeSet(set))
    }

    /// Number of distinct scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    /// Adds a scope; returns whether it was new.
    pub fn insert(&mut self, scope: Scope) -> bool {
        self.0.insert(scope)
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The scopes present in both sets.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// The scopes in canonical (byte-sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> + '_ {
        self.0.iter()
    }
}

impl fmt::Display for ScopeSet {
    /// Space-joined, in canonical order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for ScopeSet {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeSet::parse(s)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::collections::btree_set::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    #[test]
    fn parse_and_canonical_order() {
        let s = set("write read  read admin:all");
        assert_eq!(s.len(), 3);
        assert_eq!(s.to_string(), "admin:all read write");
        let v: Vec<&str> = s.iter().map(Scope::as_str).collect();
        assert_eq!(v, ["admin:all", "read", "write"]);
        assert!(s.contains(&Scope::parse("read").unwrap()));
    }

    #[test]
    fn parse_rejections() {
        assert_eq!(ScopeSet::parse(""), Err(ScopeError::Empty));
        assert_eq!(ScopeSet::parse(" "), Err(ScopeError::InvalidChar(0)));
        assert_eq!(ScopeSet::parse(" a"), Err(ScopeError::InvalidChar(0)));
        assert_eq!(ScopeSet::parse("a "), Err(ScopeError::InvalidChar(1)));
        assert_eq!(ScopeSet::parse("a\tb"), Err(ScopeError::InvalidChar(1)));
        assert_eq!(ScopeSet::parse("a\nb"), Err(ScopeError::InvalidChar(1)));
        assert_eq!(ScopeSet::parse("a b\"c"), Err(ScopeError::InvalidChar(3)));
        assert_eq!(ScopeSet::parse("a\\b"), Err(ScopeError::InvalidChar(1)));
        assert_eq!(ScopeSet::parse("é"), Err(ScopeError::InvalidChar(0)));
        assert_eq!(ScopeSet::parse("a\u{a0}b"), Err(ScopeError::InvalidChar(1)));
        assert_eq!(ScopeSet::parse("a\0"), Err(ScopeError::InvalidChar(1)));
        assert_eq!(ScopeSet::parse("a\x7f"), Err(ScopeError::InvalidChar(1)));
        let max = "a".repeat(MAX_SCOPE_LEN);
        assert!(ScopeSet::parse(&max).is_ok());
        assert_eq!(
            ScopeSet::parse(&format!("{max}a")),
            Err(ScopeError::TooLong)
        );
        let many: Vec<String> = (0..MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(set(&many.join(" ")).len(), MAX_SCOPES);
        let too_many = format!("{} x", many.join(" "));
        assert_eq!(ScopeSet::parse(&too_many), Err(ScopeError::TooMany));
        // duplicates count towards the limit
        let dups = vec!["a"; MAX_SCOPES + 1].join(" ");
        assert_eq!(ScopeSet::parse(&dups), Err(ScopeError::TooMany));
        // every allowed character
        let all: String = (0x21u8..=0x7e)
            .filter(|&b| b != b'"' && b != b'\\')
            .map(char::from)
            .collect();
        assert_eq!(set(&all).len(), 1);
    }

    #[test]
    fn set_operations() {
        let a = set("x y z");
        let b = set("y z w");
        assert_eq!(a.intersection(&b), set("y z"));
        assert!(set("y").is_subset(&a));
        assert!(!b.is_subset(&a));
        assert!(ScopeSet::new().is_subset(&a));
        assert!(ScopeSet::new().is_empty());
    }

    proptest! {
        #[test]
        fn intersection_subset_and_commutative(
            a in proptest::collection::vec("[a-d]{1,2}", 1..8),
            b in proptest::collection::vec("[a-d]{1,2}", 1..8),
        ) {
            let a = set(&a.join(" "));
            let b = set(&b.join(" "));
            let i = a.intersection(&b);
            prop_assert!(i.is_subset(&a));
            prop_assert!(i.is_subset(&b));
            prop_assert_eq!(&i, &b.intersection(&a));
            for s in a.iter() {
                prop_assert_eq!(i.contains(s), b.contains(s));
            }
        }

        #[test]
        fn display_parse_roundtrip(v in proptest::collection::vec("[!#-\\[\\]-~]{1,20}", 1..=MAX_SCOPES)) {
            let s = set(&v.join("  "));
            let text = s.to_string();
            let back = set(&text);
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.to_string(), text);
        }
    }
}
