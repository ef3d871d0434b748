//! The state of connect flows between a browser's steps (GW-09): the links handed out in
//! elicitations and each flow's next step. In this process, or in Redis shared by every replica
//! (issue 16), so a browser sent to one replica and back to another carries on. Every entry
//! lives at most ten minutes; a step is single use and only for the browser that started it.
use crate::sessions::Owner;
use crate::shared::SharedState;
use gatehouse_core::sha256_hex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a link, an approval and an authorization in flight stay usable (GW-05).
pub(crate) const TTL: Duration = Duration::from_secs(600);

/// Whom a link was made for and which upstream it connects.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Link {
    pub(crate) owner: Owner,
    pub(crate) upstream: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Step {
    /// The browser went to the gateway's AS to show who it is.
    Identity { link: String, verifier: String },
    /// Identity shown; waiting for the user's approval on the gateway's page.
    Approval { link: String, owner: Owner },
    /// Approved; the browser is at the upstream's AS.
    Upstream {
        link: String,
        owner: Owner,
        verifier: String,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) struct InFlight {
    step: Step,
    /// Hash of the flow cookie: the browser that started it.
    browser: String,
}

pub(crate) enum Flows {
    Local {
        links: Mutex<HashMap<String, (Link, Instant)>>,
        steps: Mutex<HashMap<String, (InFlight, Instant)>>,
    },
    Shared(SharedState),
}

/// KEYS: the step. ARGV: the browser. The step's JSON, deleted, when it is that browser's;
/// another browser's attempt leaves it in place.
const TAKE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if cjson.decode(v).browser ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return v
"#;

fn link_key(id: &str) -> String {
    format!("gatehouse:connect:l:{}", sha256_hex(id))
}

fn step_key(key: &str) -> String {
    format!("gatehouse:connect:s:{}", sha256_hex(key))
}

fn ttl_ms() -> u64 {
    u64::try_from(TTL.as_millis()).unwrap_or(600_000)
}

impl Flows {
    pub(crate) fn new(shared: Option<SharedState>) -> Self {
        match shared {
            Some(s) => Self::Shared(s),
            None => Self::Local {
                links: Mutex::default(),
                steps: Mutex::default(),
            },
        }
    }

    pub(crate) async fn put_link(&self, id: &str, link: Link) {
        match self {
            Self::Local { links, .. } => {
                let mut l = links.lock().unwrap_or_else(|p| p.into_inner());
                l.retain(|_, (_, until)| *until > Instant::now());
                l.insert(sha256_hex(id), (link, Instant::now() + TTL));
            }
            Self::Shared(s) => {
                let Ok(json) = serde_json::to_string(&link) else {
                    return;
                };
                let r = s
                    .run::<()>(
                        redis::cmd("SET")
                            .arg(link_key(id))
                            .arg(json)
                            .arg("PX")
                            .arg(ttl_ms()),
                    )
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "connect link not stored");
                }
            }
        }
    }

    /// The link, if it exists and has not expired; `take` also ends it.
    pub(crate) async fn link(&self, id: &str, take: bool) -> Option<Link> {
        match self {
            Self::Local { links, .. } => {
                let mut l = links.lock().unwrap_or_else(|p| p.into_inner());
                let k = sha256_hex(id);
                let found = l
                    .get(&k)
                    .filter(|(_, until)| *until > Instant::now())
                    .map(|(v, _)| v.clone());
                if take {
                    l.remove(&k);
                }
                found
            }
            Self::Shared(s) => {
                let cmd = if take { "GETDEL" } else { "GET" };
                let v: Option<String> = s
                    .run(redis::cmd(cmd).arg(link_key(id)))
                    .await
                    .map_err(|e| tracing::error!(error = %e, "connect link unreadable"))
                    .ok()?;
                serde_json::from_str(&v?).ok()
            }
        }
    }

    pub(crate) async fn put_step(&self, key: &str, browser: String, step: Step) {
        let f = InFlight { step, browser };
        match self {
            Self::Local { steps, .. } => {
                let mut m = steps.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|_, (_, until)| *until > Instant::now());
                m.insert(sha256_hex(key), (f, Instant::now() + TTL));
            }
            Self::Shared(s) => {
                let Ok(json) = serde_json::to_string(&f) else {
                    return;
                };
                let r = s
                    .run::<()>(
                        redis::cmd("SET")
                            .arg(step_key(key))
                            .arg(json)
                            .arg("PX")
                            .arg(ttl_ms()),
                    )
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "connect step not stored");
                }
            }
        }
    }

    /// Takes a step (single use) that belongs to `browser` and has not expired.
    pub(crate) async fn take_step(&self, key: &str, browser: &str) -> Option<Step> {
        match self {
            Self::Local { steps, .. } => {
                let mut m = steps.lock().unwrap_or_else(|p| p.into_inner());
                let k = sha256_hex(key);
                if m.get(&k)?.0.browser != browser {
                    return None;
                }
                let (f, until) = m.remove(&k)?;
                (until > Instant::now()).then_some(f.step)
            }
            Self::Shared(s) => {
                let v: Option<String> = s
                    .script(TAKE_LUA, &step_key(key), browser)
                    .await
                    .map_err(|e| tracing::error!(error = %e, "connect step unreadable"))
                    .ok()?;
                serde_json::from_str::<InFlight>(&v?).ok().map(|f| f.step)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GW-09 / RP-1: the same rules in this process and in Redis (the real one at
    /// 127.0.0.1:6379, which `scripts/setup` starts): a link is readable until taken, a step
    /// only by its browser and only once.
    #[tokio::test]
    async fn rp1_flows_behave_the_same_locally_and_in_redis() {
        let shared = SharedState::open("redis://127.0.0.1:6379").expect("url");
        for (name, flows, other) in [
            ("local", Flows::new(None), None),
            (
                "redis",
                Flows::new(Some(shared.clone())),
                // Another replica on the same Redis.
                Some(Flows::new(Some(shared.clone()))),
            ),
        ] {
            let other = other.as_ref().unwrap_or(&flows);
            let id = gatehouse_core::random_token();
            let owner = Owner::new("https://as", "alice");
            flows
                .put_link(
                    &id,
                    Link {
                        owner: owner.clone(),
                        upstream: "up".into(),
                    },
                )
                .await;
            let l = other.link(&id, false).await.expect(name);
            assert_eq!((l.owner, l.upstream.as_str()), (owner.clone(), "up"));
            assert!(other.link(&id, true).await.is_some(), "{name}");
            assert!(flows.link(&id, false).await.is_none(), "{name}: taken");
            assert!(flows.link("unknown", false).await.is_none());

            let key = gatehouse_core::random_token();
            flows
                .put_step(
                    &key,
                    "browser-a".into(),
                    Step::Approval {
                        link: id.clone(),
                        owner: owner.clone(),
                    },
                )
                .await;
            assert!(
                other.take_step(&key, "browser-b").await.is_none(),
                "{name}: another browser"
            );
            assert!(matches!(
                other.take_step(&key, "browser-a").await,
                Some(Step::Approval { .. })
            ));
            assert!(
                flows.take_step(&key, "browser-a").await.is_none(),
                "{name}: single use"
            );
        }
    }
}
