//! RS-16 / T2: an MCP session belongs to the principal that opened it. The guard records which
//! (issuer, subject) received each `Mcp-Session-Id` and refuses that id with anyone else's token,
//! answering 404 as for an unknown session so ids cannot be probed.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_SESSIONS: usize = 100_000;
const IDLE_LIMIT: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub(crate) struct SessionBindings {
    map: Mutex<HashMap<String, (String, Instant)>>,
}

pub(crate) enum Binding {
    Owner,
    Other,
    Unknown,
}

impl SessionBindings {
    pub(crate) fn owner_key(issuer: &str, subject: &str) -> String {
        format!("{issuer}\u{0}{subject}")
    }

    pub(crate) fn check(&self, session: &str, owner: &str) -> Binding {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(session) {
            Some((o, seen)) if o == owner => {
                *seen = Instant::now();
                Binding::Owner
            }
            Some(_) => Binding::Other,
            None => Binding::Unknown,
        }
    }

    pub(crate) fn bind(&self, session: &str, owner: String) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, (_, seen)| seen.elapsed() < IDLE_LIMIT);
        }
        if map.len() < MAX_SESSIONS {
            map.entry(session.to_owned())
                .or_insert((owner, Instant::now()));
        }
    }

    pub(crate) fn remove(&self, session: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
    }
}
