//! Request limits: GCRA per subject, per tenant and per (subject, tool), in this process or
//! shared through Redis.
use gatehouse_server::sha256_hex;
use std::sync::Arc;

/// Request limits (GCRA): per subject across every upstream, optionally per tenant (all its
/// subjects together) and per tool (per subject). One runaway agent is slowed down, the others
/// are not touched. Kept in this process, or in Redis so that replicas share them (the same
/// algorithm as one atomic script, on the Redis server's clock).
pub(crate) struct RateLimits {
    subject: Limiter,
    tenant: Option<Limiter>,
    /// By `<upstream>/<tool>` or a bare tool name (every upstream).
    tools: std::collections::HashMap<String, Limiter>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LimitHit {
    Subject,
    Tenant,
    Tool,
}

impl LimitHit {
    pub(crate) fn as_str(self) -> &'static str {
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
    fn new(
        what: &str,
        per_minute: u32,
        burst: Option<u32>,
        redis: Option<&Arc<RedisConn>>,
    ) -> Result<Self, String> {
        let per_minute = std::num::NonZeroU32::new(per_minute)
            .ok_or_else(|| format!("gateway.rate_limit{what}.per_minute must be above 0"))?;
        let burst = burst.unwrap_or((per_minute.get() / 10).max(1));
        let burst = std::num::NonZeroU32::new(burst)
            .ok_or_else(|| format!("gateway.rate_limit{what}.burst must be above 0"))?;
        let backend = match redis {
            None => Backend::Local {
                limiter: governor::RateLimiter::keyed(
                    governor::Quota::per_minute(per_minute).allow_burst(burst),
                ),
                checks: std::sync::atomic::AtomicU64::new(0),
            },
            Some(redis) => {
                let interval_ms = (60_000 / u64::from(per_minute.get())).max(1);
                Backend::Redis {
                    redis: redis.clone(),
                    interval_ms,
                    tolerance_ms: interval_ms * u64::from(burst.get() - 1),
                }
            }
        };
        Ok(Self {
            backend,
            namespace: match what.trim_start_matches('.') {
                "" => "subject".to_owned(),
                ns => ns.to_owned(),
            },
        })
    }

    /// `Err(seconds to wait)` when `key` is over its limit.
    async fn check(&self, key: &str) -> Result<(), u64> {
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
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
                })
            }
            Backend::Redis {
                redis,
                interval_ms,
                tolerance_ms,
            } => {
                let hashed = sha256_hex(key);
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
                    Ok(wait_ms) => Err(wait_ms.div_ceil(1000).max(1)),
                    Err(e) => {
                        // Fail open: an unreachable Redis must not take every upstream down.
                        tracing::error!(error = %e, "rate limit store unreachable; request allowed");
                        Ok(())
                    }
                }
            }
        }
    }
}

impl RateLimits {
    pub(crate) fn new(c: &crate::config::RateLimitConfig) -> Result<Self, String> {
        let redis = c
            .redis_url
            .as_ref()
            .map(|url| {
                Ok::<_, String>(Arc::new(RedisConn {
                    client: redis::Client::open(url.0.as_str())
                        .map_err(|e| format!("gateway.rate_limit.redis_url: {e}"))?,
                    conn: tokio::sync::OnceCell::new(),
                    script: redis::Script::new(GCRA_LUA),
                }))
            })
            .transpose()?;
        Ok(Self {
            subject: Limiter::new("", c.per_minute, c.burst, redis.as_ref())?,
            tenant: c
                .per_tenant
                .as_ref()
                .map(|l| Limiter::new(".per_tenant", l.per_minute, l.burst, redis.as_ref()))
                .transpose()?,
            tools: c
                .per_tool
                .iter()
                .map(|(k, l)| {
                    Ok((
                        k.clone(),
                        Limiter::new(
                            &format!(".per_tool.{k}"),
                            l.per_minute,
                            l.burst,
                            redis.as_ref(),
                        )?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    /// `Err((seconds to wait, which limit))` when a limit is reached. The most specific limit
    /// is taken first, so a subject held back on one tool keeps its budget for the others.
    pub(crate) async fn check(
        &self,
        subject: &str,
        tenant: Option<&str>,
        server: &str,
        tool: Option<&str>,
    ) -> Result<(), (u64, LimitHit)> {
        if let Some(tool) = tool {
            let qualified = format!("{server}/{tool}");
            // One budget per subject and configured entry: a bare tool name is shared by that
            // tool on every upstream.
            if let Some((entry, l)) = self
                .tools
                .get_key_value(&qualified)
                .or_else(|| self.tools.get_key_value(tool))
            {
                l.check(&format!("{subject}\n{entry}"))
                    .await
                    .map_err(|w| (w, LimitHit::Tool))?;
            }
        }
        self.subject
            .check(subject)
            .await
            .map_err(|w| (w, LimitHit::Subject))?;
        if let (Some(l), Some(t)) = (&self.tenant, tenant) {
            l.check(t).await.map_err(|w| (w, LimitHit::Tenant))?;
        }
        Ok(())
    }
}
