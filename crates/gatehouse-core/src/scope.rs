//! OAuth scopes (RFC 6749 §3.3): `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
use crate::error::CoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One validated scope token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(CoreError::Scope(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes. Ordered so that what goes on the wire is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a space-delimited scope string. Runs of spaces are tolerated on input (some
    /// authorization servers emit them); any other invalid character is an error.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        s.split(' ')
            .filter(|t| !t.is_empty())
            .map(Scope::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    /// Builds a set from individual scope strings (e.g. a JSON array claim such as `scp`).
    pub fn from_iter_strs<'a>(it: impl IntoIterator<Item = &'a str>) -> Result<Self, CoreError> {
        it.into_iter()
            .map(Scope::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    pub fn insert(&mut self, s: Scope) {
        self.0.insert(s);
    }

    pub fn contains(&self, s: &Scope) -> bool {
        self.0.contains(s)
    }

    pub fn contains_str(&self, s: &str) -> bool {
        self.0.iter().any(|x| x.as_str() == s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// Is every scope of `other` in `self`?
    pub fn is_superset(&self, other: &ScopeSet) -> bool {
        self.0.is_superset(&other.0)
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.union(&other.0).cloned().collect())
    }

    /// The scopes in both.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.intersection(&other.0).cloned().collect())
    }

    /// The scopes of `required` that `self` lacks.
    pub fn missing_from(&self, required: &ScopeSet) -> ScopeSet {
        Self(required.0.difference(&self.0).cloned().collect())
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(&s.0)?;
        }
        Ok(())
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<T: IntoIterator<Item = Scope>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|x| x.as_str()))
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    /// Accepts a JSON/YAML list of scopes or one space-delimited string.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(String),
            Many(Vec<String>),
        }
        match Repr::deserialize(d)? {
            Repr::One(s) => ScopeSet::parse(&s),
            Repr::Many(v) => ScopeSet::from_iter_strs(v.iter().map(String::as_str)),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_format() {
        let s = ScopeSet::parse("mcp:basic  notes:write mcp:basic").expect("valid");
        assert_eq!(s.to_string(), "mcp:basic notes:write");
        assert_eq!(s.len(), 2);
        assert!(ScopeSet::parse("a\"b").is_err());
        assert!(ScopeSet::parse("a\\b").is_err());
        assert!(ScopeSet::parse("caf\u{e9}").is_err());
        assert!(ScopeSet::parse("").expect("empty ok").is_empty());
    }

    #[test]
    fn missing_and_union() {
        let have = ScopeSet::parse("a b").expect("valid");
        let need = ScopeSet::parse("b c d").expect("valid");
        assert_eq!(have.missing_from(&need).to_string(), "c d");
        assert_eq!(have.union(&need).to_string(), "a b c d");
        assert!(!have.is_superset(&need));
        assert!(have.union(&need).is_superset(&need));
    }

    fn scope_token() -> impl Strategy<Value = String> {
        "[!#-\\[\\]-~]{1,12}"
    }

    proptest! {
        #[test]
        fn roundtrip(tokens in proptest::collection::vec(scope_token(), 0..8)) {
            let joined = tokens.join(" ");
            let set = ScopeSet::parse(&joined).expect("generated tokens are valid");
            let again = ScopeSet::parse(&set.to_string()).expect("formatted set re-parses");
            prop_assert_eq!(&set, &again);
            for t in &tokens { prop_assert!(set.contains_str(t)); }
        }

        #[test]
        fn union_is_superset_and_missing_is_disjoint(
            a in proptest::collection::vec(scope_token(), 0..6),
            b in proptest::collection::vec(scope_token(), 0..6),
        ) {
            let a = ScopeSet::parse(&a.join(" ")).expect("valid");
            let b = ScopeSet::parse(&b.join(" ")).expect("valid");
            let u = a.union(&b);
            prop_assert!(u.is_superset(&a) && u.is_superset(&b));
            let m = a.missing_from(&b);
            prop_assert!(m.iter().all(|s| !a.contains(s) && b.contains(s)));
            prop_assert!(a.union(&m).is_superset(&b));
        }
    }
}
