//! Grants revoked at an authorization server, as the guards and gateways of this process see
//! them (T16, T23). Access tokens of Gatehouse's own authorization server carry their grant in
//! `gid`; a token whose grant is listed here is refused at once instead of living until it
//! expires. Entries are kept only as long as a token of that grant could still be valid.
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

/// How long a list fed from a store may go unconfirmed before its tokens are refused: a replica
/// cut off from the store cannot know what other replicas revoked (issue 16). Far below any
/// access-token lifetime.
pub const STALE_AFTER_SECS: i64 = 15;

/// A subject revocation: tokens issued up to `.0` are refused; kept until `.1`.
type Cutoff = (i64, i64);

/// Revoked grants per issuer, each with the time after which no token of it can be valid.
#[derive(Debug)]
pub struct Revocations {
    by_issuer: RwLock<HashMap<String, HashMap<String, i64>>>,
    /// Subjects whose tokens issued up to a time are refused (Security Event Tokens from an
    /// external authorization server: `session-revoked`, `credential-change`), per issuer:
    /// subject → (cutoff, kept until).
    subjects: RwLock<HashMap<String, HashMap<String, Cutoff>>>,
    /// When a feed last read the store in full (unix seconds); `i64::MAX` while no feed keeps
    /// this list (it is then as complete as this process's own revocations).
    confirmed: AtomicI64,
    /// When an issuer's signing keys last changed (a rotation on any replica), unix seconds.
    keys_changed: AtomicI64,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            by_issuer: RwLock::default(),
            subjects: RwLock::default(),
            confirmed: AtomicI64::new(i64::MAX),
            keys_changed: AtomicI64::new(0),
        }
    }
}

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// An issuer's signing keys changed at `now`: validators may fetch its keys again at once
    /// for a short while (an unknown `kid` is then a new key, not a probe).
    pub fn keys_changed(&self, now: i64) {
        self.keys_changed.store(now, Ordering::Relaxed);
    }

    /// Whether signing keys changed within the last `secs` seconds.
    pub fn keys_changed_within(&self, now: i64, secs: i64) -> bool {
        now - self.keys_changed.load(Ordering::Relaxed) <= secs
    }

    /// A feed read every revocation up to `now`.
    pub fn confirm(&self, now: i64) {
        self.confirmed.store(now, Ordering::Relaxed);
    }

    /// Seconds since a feed last confirmed the list, when that is longer than
    /// [`STALE_AFTER_SECS`]: the list may miss revocations made elsewhere.
    pub fn stale(&self, now: i64) -> Option<i64> {
        let at = self.confirmed.load(Ordering::Relaxed);
        (at != i64::MAX && now - at > STALE_AFTER_SECS).then(|| now - at)
    }

    /// Lists a grant of `issuer` as revoked until `until` (unix seconds).
    pub fn revoke(&self, issuer: &str, grant_id: &str, until: i64) {
        let mut m = self
            .by_issuer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let grants = m.entry(issuer.to_owned()).or_default();
        let at = grants.entry(grant_id.to_owned()).or_insert(until);
        *at = (*at).max(until);
    }

    /// Refuses `issuer`'s tokens for `subject` issued at or before `cutoff` (unix seconds),
    /// remembered until `until`.
    pub fn revoke_subject(&self, issuer: &str, subject: &str, cutoff: i64, until: i64) {
        let mut m = self
            .subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let e = m
            .entry(issuer.to_owned())
            .or_default()
            .entry(subject.to_owned())
            .or_insert((cutoff, until));
        *e = (e.0.max(cutoff), e.1.max(until));
    }

    /// Whether a token of `issuer` for `subject`, issued at `iat`, falls under a subject
    /// revocation. A token without `iat` cannot show it came after: refused.
    pub fn subject_revoked(&self, issuer: &str, subject: &str, iat: Option<i64>) -> bool {
        let m = self.subjects.read().unwrap_or_else(PoisonError::into_inner);
        m.get(issuer)
            .and_then(|s| s.get(subject))
            .is_some_and(|(cutoff, _)| iat.is_none_or(|t| t <= *cutoff))
    }

    /// Whether the grant a token names is revoked.
    pub fn is_revoked(&self, issuer: &str, grant_id: &str) -> bool {
        let m = self
            .by_issuer
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        m.get(issuer).is_some_and(|g| g.contains_key(grant_id))
    }

    /// Forgets grants whose tokens have all expired by `now`.
    pub fn prune(&self, now: i64) {
        let mut m = self
            .by_issuer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for g in m.values_mut() {
            g.retain(|_, until| *until > now);
        }
        m.retain(|_, g| !g.is_empty());
        drop(m);
        let mut s = self
            .subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for g in s.values_mut() {
            g.retain(|_, (_, until)| *until > now);
        }
        s.retain(|_, g| !g.is_empty());
    }

    /// How many grants are listed (for tests and metrics).
    pub fn len(&self) -> usize {
        let m = self
            .by_issuer
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let subjects = self.subjects.read().unwrap_or_else(PoisonError::into_inner);
        m.values().map(HashMap::len).sum::<usize>()
            + subjects.values().map(HashMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_revoked_up_to_a_cutoff() {
        let r = Revocations::new();
        r.revoke_subject("https://idp", "alice", 100, 1000);
        assert!(r.subject_revoked("https://idp", "alice", Some(100)));
        assert!(r.subject_revoked("https://idp", "alice", Some(50)));
        assert!(
            r.subject_revoked("https://idp", "alice", None),
            "no iat: refused"
        );
        assert!(
            !r.subject_revoked("https://idp", "alice", Some(101)),
            "issued after"
        );
        assert!(!r.subject_revoked("https://idp", "bob", Some(50)));
        assert!(!r.subject_revoked("https://other", "alice", Some(50)));
        r.prune(1000);
        assert!(!r.subject_revoked("https://idp", "alice", Some(50)));
        assert!(r.is_empty());
    }

    #[test]
    fn revoked_per_issuer_until_pruned() {
        let r = Revocations::new();
        r.revoke("https://a", "g1", 100);
        assert!(r.is_revoked("https://a", "g1"));
        assert!(!r.is_revoked("https://b", "g1"));
        assert!(!r.is_revoked("https://a", "g2"));
        r.prune(99);
        assert!(r.is_revoked("https://a", "g1"));
        r.prune(100);
        assert!(!r.is_revoked("https://a", "g1"));
        assert!(r.is_empty());
        assert_eq!(r.stale(i64::MAX - 1), None, "no feed: never stale");
        r.confirm(1000);
        assert_eq!(r.stale(1000 + STALE_AFTER_SECS), None);
        assert_eq!(r.stale(1001 + STALE_AFTER_SECS), Some(1 + STALE_AFTER_SECS));
    }
}
