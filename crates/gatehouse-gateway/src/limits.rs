//! Call limits: GCRA per owner, per tenant and per (owner, tool), in this process or shared
//! through Redis (the same algorithm as one atomic script, on the Redis server's clock).
//! One runaway agent is slowed down, the others are not touched.
use crate::sessions::Owner;
use crate::spec::{LimitSpec, RateLimitSpec};
use std::sync::Arc;

pub struct RateLimits {
    subject: Limiter,
    tenant: Option<Limiter>,
    /// By `<upstream>/<tool>` or a bare tool name (every upstream).
    tools: std::collections::HashMap<String, Limiter>,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Subject,
    Tenant,
    Tool,
}

impl LimitHit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Tenant => "tenant",
            Self::Tool => "tool",
        }
    }
}

struct Limiter {
    backend: Backend,
    /// Keeps the limits' keys apart in Redis.
    namespace: String,
}

enum Backend {
    Local {
        limiter: governor::DefaultKeyedRateLimiter<String>,
        checks: std::sync::atomic::AtomicU64,
    },
    Redis {
        redis: Arc<RedisConn>,
        /// Emission interval and burst tolerance, in milliseconds.
        interval_ms: u64,
        tolerance_ms: u64,
    },
}

/// How long a call is held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// This many seconds.
    For(u64),
    /// Until the shared store (Redis) answers again.
    StoreDown,
}

/// One multiplexed connection, shared by every limit.
struct RedisConn {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    script: redis::Script,
}

/// GCRA: allow when the theoretical arrival time is at most `tolerance` ahead of now; the
/// answer is 0 (allowed) or the milliseconds to wait.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now)
return 0
"#;

impl Limiter {
    fn new(namespace: &str, l: LimitSpec, redis: Option<&Arc<RedisConn>>) -> Self {
        let backend = match redis {
            None => Backend::Local {
                limiter: governor::RateLimiter::keyed(
                    governor::Quota::per_minute(l.per_minute).allow_burst(l.burst),
                ),
                checks: std::sync::atomic::AtomicU64::new(0),
            },
            Some(redis) => {
                let interval_ms = (60_000 / u64::from(l.per_minute.get())).max(1);
                Backend::Redis {
                    redis: redis.clone(),
                    interval_ms,
                    tolerance_ms: interval_ms * u64::from(l.burst.get() - 1),
                }
            }
        };
        Self {
            backend,
            namespace: namespace.to_owned(),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its limit.
    async fn check(&self, key: &str) -> Result<(), Held> {
        match &self.backend {
            Backend::Local { limiter, checks } => {
                // Forget idle keys now and then, so memory follows the active ones.
                if checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
                    limiter.retain_recent();
                }
                limiter.check_key(&key.to_owned()).map_err(|not_until| {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ));
                    Held::For(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                })
            }
            Backend::Redis {
                redis,
                interval_ms,
                tolerance_ms,
            } => {
                let hashed = gatehouse_core::sha256_hex(key);
                let outcome = async {
                    let c = redis
                        .conn
                        .get_or_try_init(|| {
                            redis::aio::ConnectionManager::new(redis.client.clone())
                        })
                        .await?;
                    let mut c = c.clone();
                    redis
                        .script
                        .key(format!("gatehouse:rl:{}:{hashed}", self.namespace))
                        .arg(*interval_ms)
                        .arg(*tolerance_ms)
                        .invoke_async::<u64>(&mut c)
                        .await
                }
                .await;
                match outcome {
                    Ok(0) => Ok(()),
                    Ok(wait_ms) => Err(Held::For(wait_ms.div_ceil(1000).max(1))),
                    Err(e) => {
                        // Fail closed (issue 16): a limit shared by replicas that cannot be
                        // read is not a limit; the caller retries once Redis is back.
                        tracing::error!(error = %e, "rate limit store unreachable; call refused");
                        Err(Held::StoreDown)
                    }
                }
            }
        }
    }
}

impl RateLimits {
    /// Builds the limits; fails only on a Redis URL the client library cannot use.
    pub fn new(spec: &RateLimitSpec) -> Result<Self, redis::RedisError> {
        let redis = spec
            .redis_url
            .as_ref()
            .map(|url| {
                Ok::<_, redis::RedisError>(Arc::new(RedisConn {
                    client: redis::Client::open(url.expose())?,
                    conn: tokio::sync::OnceCell::new(),
                    script: redis::Script::new(GCRA_LUA),
                }))
            })
            .transpose()?;
        Ok(Self {
            subject: Limiter::new("subject", spec.subject, redis.as_ref()),
            tenant: spec
                .per_tenant
                .map(|l| Limiter::new("per_tenant", l, redis.as_ref())),
            tools: spec
                .per_tool
                .iter()
                .map(|(k, l)| {
                    (
                        k.clone(),
                        Limiter::new(&format!("per_tool.{k}"), *l, redis.as_ref()),
                    )
                })
                .collect(),
        })
    }

    /// Charges one call. `Err((how long, which limit))` when a limit is reached (or its shared
    /// store cannot be read). The most
    /// specific limit is taken first, so an owner held back on one tool keeps its budget for
    /// the others.
    pub async fn check(
        &self,
        owner: &Owner,
        tenant: Option<&str>,
        server: &str,
        tool: Option<&str>,
    ) -> Result<(), (Held, LimitHit)> {
        let key = owner.id();
        if let Some(tool) = tool {
            let qualified = format!("{server}/{tool}");
            // One budget per owner and configured entry: a bare tool name is shared by that
            // tool on every upstream.
            if let Some((entry, l)) = self
                .tools
                .get_key_value(&qualified)
                .or_else(|| self.tools.get_key_value(tool))
            {
                l.check(&format!("{key}\n{entry}"))
                    .await
                    .map_err(|w| (w, LimitHit::Tool))?;
            }
        }
        self.subject
            .check(&key)
            .await
            .map_err(|w| (w, LimitHit::Subject))?;
        if let (Some(l), Some(t)) = (&self.tenant, tenant) {
            l.check(t).await.map_err(|w| (w, LimitHit::Tenant))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn l(per_minute: u32, burst: u32) -> LimitSpec {
        LimitSpec {
            per_minute: NonZeroU32::new(per_minute).expect("nz"),
            burst: NonZeroU32::new(burst).expect("nz"),
        }
    }

    #[tokio::test]
    async fn limits_per_tenant_and_per_tool_are_separate_budgets() {
        let spec = RateLimitSpec {
            subject: l(600, 100),
            per_tenant: Some(l(60, 3)),
            per_tool: [
                ("srv/slow".to_owned(), l(60, 2)),
                ("fast".to_owned(), l(60, 5)),
            ]
            .into(),
            redis_url: None,
        };
        let lim = RateLimits::new(&spec).expect("limits");
        let o = |s: &str| Owner::new("iss", s);
        // A tenant's subjects share its budget of 3; another tenant and tenant-less callers don't.
        for who in ["a", "b", "c"] {
            assert!(lim.check(&o(who), Some("acme"), "srv", None).await.is_ok());
        }
        let (wait, hit) = lim
            .check(&o("d"), Some("acme"), "srv", None)
            .await
            .expect_err("tenant");
        assert!(hit == LimitHit::Tenant && matches!(wait, Held::For(w) if w >= 1));
        assert!(
            lim.check(&o("e"), Some("globex"), "srv", None)
                .await
                .is_ok()
        );
        assert!(lim.check(&o("f"), None, "srv", None).await.is_ok());
        // Per tool, per owner: `srv/slow` allows 2, the bare `fast` applies on every server.
        for _ in 0..2 {
            assert!(lim.check(&o("g"), None, "srv", Some("slow")).await.is_ok());
        }
        let (_, hit) = lim
            .check(&o("g"), None, "srv", Some("slow"))
            .await
            .expect_err("tool");
        assert_eq!(hit, LimitHit::Tool);
        assert!(lim.check(&o("h"), None, "srv", Some("slow")).await.is_ok());
        assert!(
            lim.check(&o("g"), None, "other", Some("slow"))
                .await
                .is_ok()
        );
        assert!(lim.check(&o("g"), None, "srv", Some("quick")).await.is_ok());
        for _ in 0..5 {
            assert!(lim.check(&o("i"), None, "x", Some("fast")).await.is_ok());
        }
        assert!(
            lim.check(&o("i"), None, "y", Some("fast")).await.is_err(),
            "bare name: all servers"
        );
    }
}
