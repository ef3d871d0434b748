//! RS-16 / T2: an MCP session belongs to the principal that opened it. The guard records which
//! (issuer, subject) received each `Mcp-Session-Id` and refuses that id with anyone else's token,
//! answering 404 as for an unknown session so ids cannot be probed.
//!
//! Bounded memory (issue 20): each subject holds at most [`SessionLimits::per_subject`] live
//! sessions and the endpoint at most [`SessionLimits::total`]. The check runs *before* the
//! `initialize` reaches the server behind, so a refused caller costs it nothing. A caller at its
//! cap first loses its own least recently used session, if no request of it has been in flight
//! for [`SessionLimits::reclaim_after`] (a client that forgot its ids is not locked out until they
//! expire); otherwise it gets 429 with `Retry-After`. When the endpoint is full, the least
//! recently used idle session of anyone goes; one caller can never fill it, since it holds at
//! most its own cap.
//!
//! With Redis configured the same rules run as atomic scripts over sorted sets shared by every
//! replica, so the cap holds across replicas; otherwise in this process.
mod shared;

use shared::RedisSessions;
pub use shared::SharedSessions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many MCP sessions the guard lets exist, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Live sessions one subject (issuer, subject) may hold on this endpoint.
    pub per_subject: usize,
    /// Live sessions on this endpoint in all.
    pub total: usize,
    /// A session unused this long is ended.
    pub idle: Duration,
    /// How long a session must have had no request in flight before it may be evicted to make
    /// room.
    pub reclaim_after: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            per_subject: 64,
            total: 10_000,
            idle: Duration::from_secs(30 * 60),
            reclaim_after: Duration::from_secs(60),
        }
    }
}

/// Why a new session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsFull {
    /// The caller holds `limit` sessions, all in use recently.
    Subject { limit: usize, retry_after: u64 },
    /// The endpoint is full of sessions in use.
    Total { retry_after: u64 },
}

/// What a session id turned out to be for this caller.
pub(crate) enum Use {
    /// The caller's own; marked in use until the returned token is dropped.
    Owner(InUse),
    /// Another caller's, expired, or never issued: all answered alike.
    Unknown,
}

/// A session evicted to make room: its owner key, so the server behind can be told to end it.
pub(crate) struct Evicted {
    pub(crate) session: String,
    pub(crate) owner: String,
}

/// A shared store could not be reached: the request is refused (never let through unbounded).
#[derive(Debug)]
pub(crate) struct StoreDown(pub(crate) String);

/// Where the sessions of one endpoint are counted.
pub(crate) struct Sessions {
    limits: SessionLimits,
    backend: Backend,
}

enum Backend {
    Local(Arc<Mutex<Table>>),
    Redis(RedisSessions),
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits, shared: Option<&SharedSessions>, ns: &str) -> Self {
        let backend = match shared {
            None => Backend::Local(Arc::default()),
            Some(s) => Backend::Redis(RedisSessions::new(s, ns)),
        };
        Self { limits, backend }
    }

    pub(crate) fn owner_key(issuer: &str, subject: &str) -> String {
        format!("{issuer}\u{0}{subject}")
    }

    /// (issuer, subject) back from an owner key.
    pub(crate) fn split_owner(owner: &str) -> (&str, &str) {
        owner.split_once('\u{0}').unwrap_or(("", owner))
    }

    /// Looks `session` up for `owner` and, when it is theirs, marks it in use.
    pub(crate) async fn use_session(&self, session: &str, owner: &str) -> Result<Use, StoreDown> {
        match &self.backend {
            Backend::Local(t) => {
                let mut table = lock(t);
                if !table.start(session, owner, self.limits.idle) {
                    return Ok(Use::Unknown);
                }
                Ok(Use::Owner(InUse {
                    end: End::Local {
                        table: t.clone(),
                        session: session.to_owned(),
                    },
                }))
            }
            Backend::Redis(r) => {
                if !r.touch(session, owner, self.limits.idle).await? {
                    return Ok(Use::Unknown);
                }
                Ok(Use::Owner(InUse {
                    end: End::Redis {
                        store: r.clone(),
                        session: session.to_owned(),
                        owner: owner.to_owned(),
                        idle: self.limits.idle,
                    },
                }))
            }
        }
    }

    /// Holds a place for a session `owner` is about to open, evicting idle ones to make room.
    pub(crate) async fn reserve(
        &self,
        owner: &str,
    ) -> Result<Result<(Reservation, Vec<Evicted>), SessionsFull>, StoreDown> {
        match &self.backend {
            Backend::Local(t) => {
                let out = lock(t).reserve(owner, &self.limits);
                Ok(out.map(|evicted| {
                    (
                        Reservation {
                            owner: owner.to_owned(),
                            place: Place::Local(t.clone()),
                        },
                        evicted,
                    )
                }))
            }
            Backend::Redis(r) => {
                let token = gatehouse_core::random_id();
                let out = r.reserve(owner, &token, &self.limits).await?;
                Ok(out.map(|evicted| {
                    (
                        Reservation {
                            owner: owner.to_owned(),
                            place: Place::Redis {
                                store: r.clone(),
                                token,
                            },
                        },
                        evicted,
                    )
                }))
            }
        }
    }

    /// Forgets `owner`'s session (ended with DELETE).
    pub(crate) async fn remove(&self, session: &str, owner: &str) {
        match &self.backend {
            Backend::Local(t) => lock(t).remove(session, owner),
            Backend::Redis(r) => {
                if let Err(StoreDown(e)) = r.remove(session, owner).await {
                    tracing::warn!(error = %e, "session store unreachable; the session ends by idle expiry");
                }
            }
        }
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    // Every change is one call on a consistent table: a panic elsewhere leaves it usable.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session in use: dropping it (the response finished) marks the session idle from now.
pub(crate) struct InUse {
    end: End,
}

enum End {
    Local {
        table: Arc<Mutex<Table>>,
        session: String,
    },
    Redis {
        store: RedisSessions,
        session: String,
        owner: String,
        idle: Duration,
    },
    Done,
}

impl Drop for InUse {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.end, End::Done) {
            End::Local { table, session } => lock(&table).finish(&session),
            End::Redis {
                store,
                session,
                owner,
                idle,
            } => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = store.touch(&session, &owner, idle).await;
                    });
                }
            }
            End::Done => {}
        }
    }
}

/// A place held for a session being opened: [`Reservation::bind`] turns it into the session the
/// server issued; dropping it unused gives the place back.
pub(crate) struct Reservation {
    owner: String,
    place: Place,
}

enum Place {
    Local(Arc<Mutex<Table>>),
    Redis { store: RedisSessions, token: String },
    Used,
}

impl Reservation {
    pub(crate) async fn bind(mut self, session: &str) -> Result<(), StoreDown> {
        match std::mem::replace(&mut self.place, Place::Used) {
            Place::Local(t) => {
                lock(&t).bind(session, &self.owner);
                Ok(())
            }
            Place::Redis { store, token } => store.bind(session, &self.owner, &token).await,
            Place::Used => Ok(()),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.place, Place::Used) {
            Place::Local(t) => lock(&t).release(&self.owner),
            Place::Redis { store, token } => {
                let owner = std::mem::take(&mut self.owner);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { store.release(&owner, &token).await });
                }
            }
            Place::Used => {}
        }
    }
}

/// The in-process table.
#[derive(Default)]
struct Table {
    by_id: HashMap<Arc<str>, Live>,
    /// Each owner's sessions: counting and evicting one caller's costs what it holds.
    by_owner: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Places held by `initialize` requests still in flight, per owner and in all.
    pending: HashMap<Arc<str>, usize>,
    pending_total: usize,
}

struct Live {
    owner: Arc<str>,
    last_used: Instant,
    /// Requests (and open streams) of this session in flight.
    active: u32,
}

impl Live {
    fn evictable(&self, after: Duration) -> bool {
        self.active == 0 && self.last_used.elapsed() >= after
    }
}

impl Table {
    fn count(&self, owner: &str) -> usize {
        self.by_owner.get(owner).map_or(0, Vec::len) + self.pending.get(owner).copied().unwrap_or(0)
    }

    fn remove_id(&mut self, id: &str) -> Option<Live> {
        let live = self.by_id.remove(id)?;
        if let Some(ids) = self.by_owner.get_mut(&*live.owner) {
            ids.retain(|x| &**x != id);
            if ids.is_empty() {
                self.by_owner.remove(&*live.owner);
            }
        }
        Some(live)
    }

    fn start(&mut self, id: &str, owner: &str, idle: Duration) -> bool {
        let Some(live) = self.by_id.get_mut(id) else {
            return false;
        };
        if &*live.owner != owner {
            return false;
        }
        if live.evictable(idle) {
            self.remove_id(id);
            return false;
        }
        live.active += 1;
        live.last_used = Instant::now();
        true
    }

    fn finish(&mut self, id: &str) {
        if let Some(live) = self.by_id.get_mut(id) {
            live.active = live.active.saturating_sub(1);
            live.last_used = Instant::now();
        }
    }

    fn remove(&mut self, id: &str, owner: &str) {
        if self.by_id.get(id).is_some_and(|l| &*l.owner == owner) {
            self.remove_id(id);
        }
    }

    /// Removes the sessions among `ids` that expired.
    fn expire(&mut self, ids: Vec<Arc<str>>, idle: Duration) {
        for id in ids {
            if self.by_id.get(&id).is_some_and(|l| l.evictable(idle)) {
                self.remove_id(&id);
            }
        }
    }

    /// The least recently used of `ids` that may be evicted now, or the seconds until one may
    /// (a session with a request in flight never is).
    fn reclaimable<'a>(
        &self,
        ids: impl Iterator<Item = &'a Arc<str>>,
        after: Duration,
    ) -> Result<Arc<str>, u64> {
        let lru = ids
            .filter_map(|id| self.by_id.get(id).map(|l| (id, l)))
            .filter(|(_, l)| l.active == 0)
            .min_by_key(|(_, l)| l.last_used);
        match lru {
            Some((id, l)) if l.evictable(after) => Ok(id.clone()),
            Some((_, l)) => Err(after.saturating_sub(l.last_used.elapsed()).as_secs().max(1)),
            None => Err(after.as_secs().max(1)),
        }
    }

    fn evict(&mut self, id: &str, out: &mut Vec<Evicted>) {
        if let Some(live) = self.remove_id(id) {
            out.push(Evicted {
                session: id.to_owned(),
                owner: live.owner.to_string(),
            });
        }
    }

    fn reserve(&mut self, owner: &str, l: &SessionLimits) -> Result<Vec<Evicted>, SessionsFull> {
        let mut evicted = Vec::new();
        if self.count(owner) >= l.per_subject {
            let mine = self.by_owner.get(owner).cloned().unwrap_or_default();
            self.expire(mine, l.idle);
            while self.count(owner) >= l.per_subject {
                let mine = self.by_owner.get(owner).into_iter().flatten();
                let id = self
                    .reclaimable(mine, l.reclaim_after)
                    .map_err(|retry_after| SessionsFull::Subject {
                        limit: l.per_subject,
                        retry_after,
                    })?;
                self.evict(&id, &mut evicted);
            }
        }
        if self.by_id.len() + self.pending_total >= l.total {
            // One pass over everyone, only when the endpoint is full.
            let all: Vec<_> = self.by_id.keys().cloned().collect();
            self.expire(all, l.idle);
            while self.by_id.len() + self.pending_total >= l.total {
                let id = self
                    .reclaimable(self.by_id.keys(), l.reclaim_after)
                    .map_err(|retry_after| SessionsFull::Total { retry_after })?;
                self.evict(&id, &mut evicted);
            }
        }
        *self.pending.entry(Arc::from(owner)).or_default() += 1;
        self.pending_total += 1;
        Ok(evicted)
    }

    fn release(&mut self, owner: &str) {
        if let Some(n) = self.pending.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(owner);
            }
            self.pending_total -= 1;
        }
    }

    fn bind(&mut self, id: &str, owner: &str) {
        self.release(owner);
        if self.by_id.contains_key(id) {
            return;
        }
        let owner: Arc<str> = self
            .by_owner
            .get_key_value(owner)
            .map_or_else(|| Arc::from(owner), |(k, _)| k.clone());
        let id: Arc<str> = Arc::from(id);
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .push(id.clone());
        self.by_id.insert(
            id,
            Live {
                owner,
                last_used: Instant::now(),
                active: 0,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per: usize, total: usize, reclaim: u64) -> SessionLimits {
        SessionLimits {
            per_subject: per,
            total,
            idle: Duration::from_secs(3600),
            reclaim_after: Duration::from_secs(reclaim),
        }
    }

    fn open(
        t: &mut Table,
        owner: &str,
        id: &str,
        l: &SessionLimits,
    ) -> Result<Vec<String>, SessionsFull> {
        let ev = t.reserve(owner, l)?;
        t.bind(id, owner);
        Ok(ev.into_iter().map(|e| e.session).collect())
    }

    #[test]
    fn rs_h1_a_caller_past_its_cap_is_refused_and_others_are_not() {
        let l = limits(2, 10, 60);
        let mut t = Table::default();
        open(&mut t, "a", "a1", &l).expect("a1");
        open(&mut t, "a", "a2", &l).expect("a2");
        match open(&mut t, "a", "a3", &l) {
            Err(SessionsFull::Subject {
                limit: 2,
                retry_after,
            }) => {
                assert!((1..=60).contains(&retry_after))
            }
            other => panic!("{other:?}"),
        }
        open(&mut t, "b", "b1", &l).expect("b is not touched by a's cap");
        assert_eq!(t.by_id.len(), 3);
        assert_eq!(t.pending_total, 0, "the refused place was never held");
    }

    #[test]
    fn rs_h1_the_callers_own_least_recently_used_idle_session_goes_first() {
        let l = limits(2, 10, 0);
        let mut t = Table::default();
        open(&mut t, "a", "a1", &l).expect("a1");
        open(&mut t, "b", "b1", &l).expect("b1");
        open(&mut t, "a", "a2", &l).expect("a2");
        assert!(t.start("a1", "a", l.idle), "a1 used: a2 is now the older");
        t.finish("a1");
        assert_eq!(open(&mut t, "a", "a3", &l).expect("room"), vec!["a2"]);
        assert!(t.by_id.contains_key("b1"), "another caller's session stays");
        // A session with a request in flight is never evicted.
        assert!(t.start("a1", "a", l.idle));
        assert_eq!(open(&mut t, "a", "a4", &l).expect("room"), vec!["a3"]);
        assert!(t.start("a4", "a", l.idle));
        assert!(matches!(
            open(&mut t, "a", "a5", &l),
            Err(SessionsFull::Subject { .. })
        ));
    }

    #[test]
    fn rs_h2_a_full_endpoint_evicts_idle_sessions_of_anyone_or_refuses() {
        let l = limits(2, 3, 60);
        let mut t = Table::default();
        open(&mut t, "a", "a1", &l).expect("a1");
        open(&mut t, "a", "a2", &l).expect("a2");
        open(&mut t, "b", "b1", &l).expect("b1");
        assert!(matches!(
            open(&mut t, "c", "c1", &l),
            Err(SessionsFull::Total { .. })
        ));
        let l = limits(2, 3, 0);
        assert_eq!(open(&mut t, "c", "c1", &l).expect("room"), vec!["a1"]);
    }

    #[test]
    fn places_in_flight_count_and_are_given_back() {
        let l = limits(1, 10, 60);
        let mut t = Table::default();
        t.reserve("a", &l).expect("place");
        assert!(t.reserve("a", &l).is_err(), "a second initialize in flight");
        t.release("a");
        assert_eq!(t.pending_total, 0);
        t.reserve("a", &l).expect("place again");
    }

    #[test]
    fn rs16_another_owners_or_an_expired_session_is_unknown() {
        let l = SessionLimits {
            idle: Duration::ZERO,
            ..limits(4, 10, 60)
        };
        let mut t = Table::default();
        open(&mut t, "a", "a1", &l).expect("a1");
        assert!(!t.start("a1", "b", Duration::from_secs(60)));
        assert!(t.start("a1", "a", Duration::from_secs(60)));
        t.finish("a1");
        assert!(!t.start("a1", "a", Duration::ZERO), "expired");
        assert!(t.by_id.is_empty());
    }
}
