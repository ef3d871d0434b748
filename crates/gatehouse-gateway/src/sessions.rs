//! Who owns what, and the one session table.
//!
//! [`Owner`] is the single identity key of the gateway: sessions, rate-limit budgets and
//! per-user upstream grants are all keyed on it, and it comes only from the validated token
//! (never from anything the client says). [`SessionTable`] writes the rules every session map
//! needs once: random ids, owner check on every use (another owner's id is "not found", so ids
//! cannot be probed, GW-07), a hard cap and idle eviction (bounded memory).
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The issuer and subject of a validated token, or the anonymous caller of an anonymous route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    issuer: String,
    subject: String,
}

impl Owner {
    pub fn new(issuer: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
        }
    }

    /// The caller of an anonymous route: no issuer, so no token's subject can equal it.
    pub fn anonymous() -> Self {
        Self::new("", "anonymous")
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Issuer and subject in one string (rate-limit keys). A newline cannot occur in a URL
    /// issuer, so no two owners share an id.
    pub fn id(&self) -> String {
        format!("{}\n{}", self.issuer, self.subject)
    }

    /// SHA-256 of [`Self::id`]: how stored grants are keyed.
    pub fn key(&self) -> String {
        gatehouse_core::sha256_hex(&self.id())
    }
}

/// What a table does when an owner already holds its share of sessions.
#[derive(Clone, Copy, Debug)]
pub enum WhenOwnerFull {
    /// Refuse the new session (each one is a process: stopping one would cut its user off).
    Refuse,
    /// Forget the owner's oldest session (it costs only a re-initialize).
    EvictOldest,
}

/// The bounds of a [`SessionTable`].
#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    pub total: usize,
    pub per_owner: usize,
    pub idle: Duration,
    pub when_owner_full: WhenOwnerFull,
}

/// Why a session was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFull {
    Owner,
    Total,
}

struct Entry<V> {
    owner: Owner,
    value: Arc<V>,
    last_used: Instant,
}

struct Map<V> {
    by_id: HashMap<String, Entry<V>>,
    /// Each owner's session ids, oldest first: counting and evicting one owner's sessions costs
    /// what that owner holds, never a scan of everyone's.
    by_owner: HashMap<Owner, VecDeque<String>>,
}

impl<V> Map<V> {
    fn unlink(&mut self, id: &str, owner: &Owner) {
        if let Some(ids) = self.by_owner.get_mut(owner) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    fn remove(&mut self, id: &str) -> Option<Entry<V>> {
        let e = self.by_id.remove(id)?;
        self.unlink(id, &e.owner);
        Some(e)
    }

    fn count(&self, owner: &Owner) -> usize {
        self.by_owner.get(owner).map_or(0, VecDeque::len)
    }

    /// Forgets every idle session (only when a bound is reached: one pass over all).
    fn sweep(&mut self, idle: Duration) {
        let before = self.by_id.len();
        self.by_id.retain(|_, e| e.last_used.elapsed() < idle);
        if self.by_id.len() < before {
            let by_id = &self.by_id;
            self.by_owner.retain(|_, ids| {
                ids.retain(|id| by_id.contains_key(id));
                !ids.is_empty()
            });
        }
    }
}

/// Sessions by id, each owned by one [`Owner`].
pub struct SessionTable<V> {
    map: Mutex<Map<V>>,
    limits: TableLimits,
}

impl<V> SessionTable<V> {
    pub fn new(limits: TableLimits) -> Self {
        Self {
            map: Mutex::new(Map {
                by_id: HashMap::new(),
                by_owner: HashMap::new(),
            }),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map<V>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `owner` could open a session now (idle ones are swept first): checked before
    /// costly work such as starting a process, so a refused caller costs nothing.
    pub fn has_room(&self, owner: &Owner) -> Result<(), TableFull> {
        let mut m = self.lock();
        let full = |m: &Map<V>| {
            if m.count(owner) >= self.limits.per_owner
                && matches!(self.limits.when_owner_full, WhenOwnerFull::Refuse)
            {
                Err(TableFull::Owner)
            } else if m.by_id.len() >= self.limits.total {
                Err(TableFull::Total)
            } else {
                Ok(())
            }
        };
        if full(&m).is_err() {
            m.sweep(self.limits.idle);
        }
        full(&m)
    }

    /// Opens a session for `owner` under a fresh random id (128 bits).
    pub fn open(&self, owner: &Owner, value: V) -> Result<(String, Arc<V>), TableFull> {
        let mut m = self.lock();
        if m.count(owner) >= self.limits.per_owner {
            m.sweep(self.limits.idle);
            if m.count(owner) >= self.limits.per_owner {
                match self.limits.when_owner_full {
                    WhenOwnerFull::Refuse => return Err(TableFull::Owner),
                    WhenOwnerFull::EvictOldest => {
                        let oldest = m.by_owner.get(owner).and_then(|ids| ids.front().cloned());
                        if let Some(id) = oldest {
                            m.remove(&id);
                        }
                    }
                }
            }
        }
        if m.by_id.len() >= self.limits.total {
            m.sweep(self.limits.idle);
            if m.by_id.len() >= self.limits.total {
                return Err(TableFull::Total);
            }
        }
        let id = gatehouse_core::random_id();
        let value = Arc::new(value);
        m.by_id.insert(
            id.clone(),
            Entry {
                owner: owner.clone(),
                value: value.clone(),
                last_used: Instant::now(),
            },
        );
        m.by_owner
            .entry(owner.clone())
            .or_default()
            .push_back(id.clone());
        Ok((id, value))
    }

    /// The session, if it exists, is not idle past the limit and belongs to `owner`.
    pub fn get(&self, id: &str, owner: &Owner) -> Option<Arc<V>> {
        let mut m = self.lock();
        let e = m.by_id.get_mut(id)?;
        if e.owner != *owner {
            return None;
        }
        if e.last_used.elapsed() >= self.limits.idle {
            m.remove(id);
            return None;
        }
        e.last_used = Instant::now();
        Some(e.value.clone())
    }

    /// Ends `owner`'s session `id`; another owner's is left alone.
    pub fn remove(&self, id: &str, owner: &Owner) -> Option<Arc<V>> {
        let mut m = self.lock();
        if m.by_id.get(id)?.owner != *owner {
            return None;
        }
        m.remove(id).map(|e| e.value)
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(when: WhenOwnerFull) -> SessionTable<u32> {
        SessionTable::new(TableLimits {
            total: 4,
            per_owner: 2,
            idle: Duration::from_secs(60),
            when_owner_full: when,
        })
    }

    #[test]
    fn gw07_session_ids_are_random_and_bound_to_their_owner() {
        let s = SessionTable::new(TableLimits {
            total: 20_000,
            per_owner: 20_000,
            idle: Duration::from_secs(60),
            when_owner_full: WhenOwnerFull::Refuse,
        });
        let alice = Owner::new("iss", "alice");
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let (id, _) = s.open(&alice, i).expect("room");
            // 128 random bits, base64url: visible ASCII only (MCP session id rule).
            assert_eq!(id.len(), 22);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert!(seen.insert(id), "collision");
        }
        let (id, _) = s.open(&alice, 7).expect("room");
        assert_eq!(s.get(&id, &alice).as_deref(), Some(&7));
        assert!(s.get(&id, &Owner::new("iss", "bob")).is_none());
        assert!(s.get(&id, &Owner::new("other-iss", "alice")).is_none());
        assert!(s.get(&id, &Owner::anonymous()).is_none());
        assert!(
            s.remove(&id, &Owner::new("iss", "bob")).is_none(),
            "not bob's"
        );
        assert!(s.remove(&id, &alice).is_some());
        assert!(s.get(&id, &alice).is_none());
    }

    #[test]
    fn gw14_tables_are_capped_per_owner_and_in_all() {
        let t = table(WhenOwnerFull::Refuse);
        let (a, b, c) = (
            Owner::new("i", "a"),
            Owner::new("i", "b"),
            Owner::new("i", "c"),
        );
        t.open(&a, 1).expect("a1");
        t.open(&a, 2).expect("a2");
        assert_eq!(t.open(&a, 3).err(), Some(TableFull::Owner));
        t.open(&b, 1).expect("b1");
        t.open(&b, 2).expect("b2");
        assert_eq!(t.open(&c, 1).err(), Some(TableFull::Total));
        assert_eq!(t.len(), 4);

        let t = table(WhenOwnerFull::EvictOldest);
        let (first, _) = t.open(&a, 1).expect("a1");
        let (second, _) = t.open(&a, 2).expect("a2");
        let (third, _) = t.open(&a, 3).expect("the oldest goes");
        assert!(t.get(&first, &a).is_none());
        assert!(t.get(&second, &a).is_some() && t.get(&third, &a).is_some());
        assert!(t.remove(&second, &a).is_some());
        t.open(&a, 4).expect("room again");
        assert_eq!(t.len(), 2);
        assert!(t.get(&third, &a).is_some(), "nothing else was evicted");
    }
}
