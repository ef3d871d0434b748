//! An upstream's HTTP sessions in Redis, shared by every replica (issue 16): any replica behind
//! a load balancer without affinity can carry on a session another one opened, and one that
//! dies takes nothing with it. The caps stay with the guard in front (also in Redis); this map
//! holds what forwarding needs, each entry expiring when idle as the local table's do.
use crate::error::GatewayError;
use crate::sessions::Owner;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// One Redis connection for every upstream of this process. Cheap to clone.
#[derive(Clone)]
pub struct SharedState {
    inner: Arc<Conn>,
}

struct Conn {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl SharedState {
    /// From a `redis://` or `rediss://` URL; connects on first use.
    pub fn open(url: &str) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(Conn {
                client: redis::Client::open(url).map_err(|e| e.to_string())?,
                conn: tokio::sync::OnceCell::new(),
            }),
        })
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, GatewayError> {
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
            .map_err(down)?;
        Ok(c.clone())
    }
}

impl SharedState {
    /// One command.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> Result<T, String> {
        let mut c = self.conn().await.map_err(|e| e.to_string())?;
        cmd.query_async(&mut c).await.map_err(|e| e.to_string())
    }

    /// A script over one key and one argument.
    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        lua: &str,
        key: &str,
        arg: &str,
    ) -> Result<T, String> {
        let mut c = self.conn().await.map_err(|e| e.to_string())?;
        redis::Script::new(lua)
            .key(key)
            .arg(arg)
            .invoke_async(&mut c)
            .await
            .map_err(|e| e.to_string())
    }

    /// Whether Redis answers (readiness).
    pub async fn ping(&self) -> Result<(), String> {
        let mut c = self.conn().await.map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn down(e: redis::RedisError) -> GatewayError {
    tracing::error!(error = %e, "shared state (Redis) unreachable");
    GatewayError::Unavailable
}

const SET_IF_ALIVE_LUA: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
    redis.call('HSET', KEYS[1], 'up', ARGV[1]) return 1 end return 0";

/// What a replica needs to forward a session's messages.
pub(crate) struct Record {
    pub(crate) upstream: String,
    pub(crate) init: Bytes,
    pub(crate) version: Option<String>,
}

/// One upstream's sessions: `gatehouse:gw:<upstream>:<sha256(session id)>`, a hash of the
/// owner's key, the upstream's session id, the negotiated version and the caller's initialize.
/// The id itself is never stored: a dump of Redis yields no session to hijack.
pub(crate) struct SharedSessions {
    state: SharedState,
    prefix: String,
    idle: Duration,
}

impl SharedSessions {
    pub(crate) fn new(state: &SharedState, upstream: &str, idle: Duration) -> Self {
        Self {
            state: state.clone(),
            prefix: format!(
                "gatehouse:gw:{}:",
                &gatehouse_core::sha256_hex(upstream)[..16]
            ),
            idle,
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, gatehouse_core::sha256_hex(id))
    }

    fn idle_ms(&self) -> u64 {
        u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) async fn open(&self, owner: &Owner, r: &Record) -> Result<String, GatewayError> {
        let id = gatehouse_core::random_id();
        let mut c = self.state.conn().await?;
        redis::pipe()
            .atomic()
            .hset_multiple(
                self.key(&id),
                &[
                    ("owner", owner.key().into_bytes()),
                    ("up", r.upstream.clone().into_bytes()),
                    ("ver", r.version.clone().unwrap_or_default().into_bytes()),
                    ("init", r.init.to_vec()),
                ],
            )
            .ignore()
            .pexpire(self.key(&id), self.idle_ms() as i64)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(down)?;
        Ok(id)
    }

    /// The session, when it is alive and `owner`'s (another owner's is "not found"); its idle
    /// clock restarts.
    pub(crate) async fn get(
        &self,
        id: &str,
        owner: &Owner,
    ) -> Result<Option<Record>, GatewayError> {
        let key = self.key(id);
        let mut c = self.state.conn().await?;
        let (fields, _): (std::collections::HashMap<String, Vec<u8>>, i64) = redis::pipe()
            .hgetall(&key)
            .pexpire(&key, self.idle_ms() as i64)
            .query_async(&mut c)
            .await
            .map_err(down)?;
        let text = |f: &str| {
            fields
                .get(f)
                .and_then(|v| String::from_utf8(v.clone()).ok())
        };
        if text("owner").as_deref() != Some(owner.key().as_str()) {
            return Ok(None);
        }
        Ok(Some(Record {
            upstream: text("up").unwrap_or_default(),
            init: fields
                .get("init")
                .cloned()
                .map(Bytes::from)
                .unwrap_or_default(),
            version: text("ver").filter(|v| !v.is_empty()),
        }))
    }

    /// A new upstream session id after the upstream forgot the old one.
    pub(crate) async fn set_upstream(&self, id: &str, upstream: &str) -> Result<(), GatewayError> {
        let mut c = self.state.conn().await?;
        // Only if the session still exists: a session ended meanwhile stays ended.
        redis::Script::new(SET_IF_ALIVE_LUA)
            .key(self.key(id))
            .arg(upstream)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(down)?;
        Ok(())
    }

    /// Ends `owner`'s session; another owner's is left alone.
    pub(crate) async fn remove(&self, id: &str, owner: &Owner) -> Result<(), GatewayError> {
        if self.get(id, owner).await?.is_some() {
            let mut c = self.state.conn().await?;
            redis::cmd("DEL")
                .arg(self.key(id))
                .query_async::<i64>(&mut c)
                .await
                .map_err(down)?;
        }
        Ok(())
    }
}
