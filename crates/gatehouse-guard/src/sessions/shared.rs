//! The session counts in Redis, shared by every replica: the rules of the in-process table as
//! atomic scripts over sorted sets, on Redis's clock.
use super::{Evicted, SessionLimits, SessionsFull, StoreDown};
use std::sync::Arc;
use std::time::Duration;

/// Redis shared by every replica (and every guarded endpoint of this process). Cheap to clone.
#[derive(Clone)]
pub struct SharedSessions {
    inner: Arc<RedisConn>,
}

struct RedisConn {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    reserve: redis::Script,
    bind: redis::Script,
    touch: redis::Script,
}

impl SharedSessions {
    /// From a `redis://` or `rediss://` URL; connects on first use.
    pub fn open(url: &str) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(RedisConn {
                client: redis::Client::open(url).map_err(|e| e.to_string())?,
                conn: tokio::sync::OnceCell::new(),
                reserve: redis::Script::new(RESERVE_LUA),
                bind: redis::Script::new(BIND_LUA),
                touch: redis::Script::new(TOUCH_LUA),
            }),
        })
    }

    pub(crate) async fn conn(&self) -> Result<redis::aio::ConnectionManager, StoreDown> {
        let c = self
            .inner
            .conn
            .get_or_try_init(|| {
                // Fail fast: a request waits on this, and a down store answers 503.
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                redis::aio::ConnectionManager::new_with_config(self.inner.client.clone(), cfg)
            })
            .await
            .map_err(|e| StoreDown(e.to_string()))?;
        Ok(c.clone())
    }
}

impl SharedSessions {
    /// True the first time `key` is set within `secs` seconds, on any replica (DPoP proofs).
    pub(crate) async fn first_use(&self, key: &str, secs: i64) -> Result<bool, StoreDown> {
        let mut c = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("gatehouse:{key}"))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(secs.max(1))
            .query_async(&mut c)
            .await
            .map_err(down)?;
        Ok(set.is_some())
    }
}

/// Score = last use in milliseconds on the Redis server's clock; pending places are scored by
/// when they lapse (an `initialize` that never answers gives its place back within a minute).
/// KEYS: owner set, owner pending, all, all pending. ARGV: idle ms, reclaim ms, per subject,
/// total, place token, owner hash, key prefix. Answers {0, evicted id or ""} or {1|2, wait ms}.
const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle, reclaim = tonumber(ARGV[1]), tonumber(ARGV[2])
local per, total = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - idle)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local evicted = ''
if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= per then
  local lru = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #lru == 0 then return {1, reclaim} end
  local age = now - tonumber(lru[2])
  if age < reclaim then return {1, reclaim - age} end
  redis.call('ZREM', KEYS[1], lru[1])
  redis.call('ZREM', KEYS[3], ARGV[6] .. ' ' .. lru[1])
  evicted = lru[1]
end
local function used() return redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) end
if used() >= total then
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - idle)) do
    local sp = string.find(m, ' ', 1, true)
    redis.call('ZREM', ARGV[7] .. 'o:' .. string.sub(m, 1, sp - 1), string.sub(m, sp + 1))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - idle)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if used() >= total then
    local lru = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    if #lru == 0 then return {2, reclaim} end
    local age = now - tonumber(lru[2])
    if age < reclaim then return {2, reclaim - age} end
    local sp = string.find(lru[1], ' ', 1, true)
    redis.call('ZREM', ARGV[7] .. 'o:' .. string.sub(lru[1], 1, sp - 1), string.sub(lru[1], sp + 1))
    redis.call('ZREM', KEYS[3], lru[1])
  end
end
redis.call('ZADD', KEYS[2], now + 60000, ARGV[5])
redis.call('ZADD', KEYS[4], now + 60000, ARGV[5])
redis.call('PEXPIRE', KEYS[2], 60000)
redis.call('PEXPIRE', KEYS[4], idle + 60000)
return {0, evicted}
"#;

/// KEYS: owner set, owner pending, all, all pending. ARGV: place token, session, owner hash,
/// idle ms.
const BIND_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[3] .. ' ' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]) + 60000)
return 1
"#;

/// KEYS: owner set, all. ARGV: session, owner hash, idle ms. 1 when the session is the owner's
/// and alive (now marked used), else 0.
const TOUCH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[3])
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
local member = ARGV[2] .. ' ' .. ARGV[1]
if now - tonumber(s) >= idle then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], member)
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[2], now, member)
redis.call('PEXPIRE', KEYS[1], idle)
redis.call('PEXPIRE', KEYS[2], idle + 60000)
return 1
"#;

#[derive(Clone)]
pub(super) struct RedisSessions {
    store: SharedSessions,
    /// `gatehouse:sess:<endpoint>:`: each endpoint counts its own sessions.
    prefix: String,
}

fn down(e: redis::RedisError) -> StoreDown {
    StoreDown(e.to_string())
}

impl RedisSessions {
    pub(super) fn new(store: &SharedSessions, ns: &str) -> Self {
        Self {
            store: store.clone(),
            prefix: format!("gatehouse:sess:{}:", &gatehouse_core::sha256_hex(ns)[..16]),
        }
    }

    fn keys(&self, owner: &str) -> (String, [String; 4]) {
        let h = gatehouse_core::sha256_hex(owner);
        let p = &self.prefix;
        let keys = [
            format!("{p}o:{h}"),
            format!("{p}p:{h}"),
            format!("{p}all"),
            format!("{p}pall"),
        ];
        (h, keys)
    }

    pub(super) async fn reserve(
        &self,
        owner: &str,
        token: &str,
        l: &SessionLimits,
    ) -> Result<Result<Vec<Evicted>, SessionsFull>, StoreDown> {
        let (h, keys) = self.keys(owner);
        let mut c = self.store.conn().await?;
        let mut call = self.store.inner.reserve.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(l.idle.as_millis() as u64)
            .arg(l.reclaim_after.as_millis() as u64)
            .arg(l.per_subject)
            .arg(l.total)
            .arg(token)
            .arg(&h)
            .arg(&self.prefix);
        let (code, what): (i64, String) = call.invoke_async(&mut c).await.map_err(down)?;
        let secs = || what.parse::<u64>().unwrap_or(1000).div_ceil(1000).max(1);
        Ok(match code {
            0 => Ok(if what.is_empty() {
                Vec::new()
            } else {
                vec![Evicted {
                    session: what,
                    owner: owner.to_owned(),
                }]
            }),
            1 => Err(SessionsFull::Subject {
                limit: l.per_subject,
                retry_after: secs(),
            }),
            _ => Err(SessionsFull::Total {
                retry_after: secs(),
            }),
        })
    }

    pub(super) async fn bind(
        &self,
        session: &str,
        owner: &str,
        token: &str,
    ) -> Result<(), StoreDown> {
        let (h, keys) = self.keys(owner);
        let mut c = self.store.conn().await?;
        let mut call = self.store.inner.bind.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(token).arg(session).arg(&h);
        // Keys live as long as a session can.
        call.arg(30 * 24 * 3600 * 1000u64);
        call.invoke_async::<i64>(&mut c).await.map_err(down)?;
        Ok(())
    }

    pub(super) async fn release(&self, owner: &str, token: &str) {
        let (_, keys) = self.keys(owner);
        let Ok(mut c) = self.store.conn().await else {
            return; // The place lapses by itself within a minute.
        };
        let _ = redis::pipe()
            .zrem(&keys[1], token)
            .zrem(&keys[3], token)
            .query_async::<()>(&mut c)
            .await;
    }

    pub(super) async fn touch(
        &self,
        session: &str,
        owner: &str,
        idle: Duration,
    ) -> Result<bool, StoreDown> {
        let (h, keys) = self.keys(owner);
        let mut c = self.store.conn().await?;
        let found: i64 = self
            .store
            .inner
            .touch
            .key(&keys[0])
            .key(&keys[2])
            .arg(session)
            .arg(&h)
            .arg(idle.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(down)?;
        Ok(found == 1)
    }

    pub(super) async fn remove(&self, session: &str, owner: &str) -> Result<(), StoreDown> {
        let (h, keys) = self.keys(owner);
        let mut c = self.store.conn().await?;
        redis::pipe()
            .zrem(&keys[0], session)
            .zrem(&keys[2], format!("{h} {session}"))
            .query_async::<()>(&mut c)
            .await
            .map_err(down)
    }
}
