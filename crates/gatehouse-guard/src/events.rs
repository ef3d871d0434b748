//! The receiver of pushed Security Event Tokens (RFC 8935) from external authorization servers
//! (issue 16). A verified `session-revoked` or `credential-change` refuses the subject's tokens
//! issued up to the event in this process at once and, with shared state, in every replica
//! within a fraction of a second: the revocations are kept in Redis (a sorted set scored by
//! Redis's clock) and each replica reads what is new every 200 ms, so a replica that was away
//! catches up on everything of the last day when it returns.
use crate::SharedSessions;
use axum::response::{IntoResponse, Response};
use gatehouse_core::Clock;
use gatehouse_tokens::{Revocations, SetError, SetVerifier, SubjectRevocation};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// How long a subject revocation is kept: longer than any access token an external
/// authorization server issues lives.
const KEEP_SECS: i64 = 86_400;
const KEY: &str = "gatehouse:set:revocations";
/// A SET is small; a body past this is refused unread.
const MAX_BODY: usize = 64 * 1024;

/// KEYS: the set. ARGV: member, keep ms. Adds on Redis's clock, forgets what is older.
const PUBLISH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
"#;

pub struct SecurityEvents {
    verifier: SetVerifier,
    revocations: Arc<Revocations>,
    shared: Option<SharedSessions>,
    clock: Arc<dyn Clock>,
}

impl SecurityEvents {
    pub fn new(
        verifier: SetVerifier,
        revocations: Arc<Revocations>,
        shared: Option<SharedSessions>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            revocations,
            shared,
            clock,
        })
    }

    /// `POST path`: the push endpoint.
    pub fn router(self: &Arc<Self>, path: &str) -> axum::Router {
        let me = self.clone();
        axum::Router::new()
            .route(
                path,
                axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let me = me.clone();
                    async move { me.receive(&headers, &body).await }
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
    }

    fn apply(&self, r: &SubjectRevocation) {
        let now = self.clock.now_unix();
        self.revocations.revoke_subject(
            &r.issuer,
            &r.subject,
            r.cutoff,
            now.max(r.cutoff) + KEEP_SECS,
        );
    }

    async fn receive(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let typed = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| {
                c.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/secevent+jwt"))
            });
        if !typed {
            return refuse(&SetError::InvalidRequest(
                "Content-Type must be application/secevent+jwt".into(),
            ));
        }
        let Ok(set) = std::str::from_utf8(body) else {
            return refuse(&SetError::InvalidRequest("the body is not text".into()));
        };
        let revocations = match self.verifier.verify(set.trim()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "security event refused");
                return refuse(&e);
            }
        };
        for r in &revocations {
            tracing::info!(issuer = %r.issuer, subject = %r.subject, cutoff = r.cutoff, "security event: subject's tokens revoked");
            self.apply(r);
        }
        if let Some(shared) = &self.shared
            && !revocations.is_empty()
            && let Err(e) = publish(shared, &revocations).await
        {
            // Applied here, not yet everywhere: the transmitter retries on 5xx (RFC 8935 §2.3),
            // and applying again changes nothing.
            tracing::error!(error = %e, "security event not shared with the other replicas");
            return refuse(&SetError::Unavailable("shared state unavailable".into()));
        }
        StatusCode::ACCEPTED.into_response()
    }

    /// Reads what other replicas received, every 200 ms, from the last day at start.
    pub fn spawn_feed(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut since: f64 = 0.0;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match read_since(&shared, since).await {
                    Ok(rows) => {
                        failing = false;
                        for (member, score) in rows {
                            if let Ok(r) = serde_json::from_str::<SubjectRevocation>(&member) {
                                me.apply(&r);
                            }
                            since = since.max(score);
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read shared security events; retrying");
                    }
                    Err(_) => {}
                }
                me.revocations.prune(me.clock.now_unix());
            }
        }))
    }
}

async fn publish(shared: &SharedSessions, rs: &[SubjectRevocation]) -> Result<(), String> {
    let mut c = shared.conn().await.map_err(|e| e.0)?;
    let script = redis::Script::new(PUBLISH_LUA);
    for r in rs {
        let member = serde_json::to_string(r).map_err(|e| e.to_string())?;
        script
            .key(KEY)
            .arg(member)
            .arg(KEEP_SECS * 1000)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Members scored from a second before `since` on: two replicas may add within the same
/// millisecond as a read; reading a little twice costs nothing.
async fn read_since(shared: &SharedSessions, since: f64) -> Result<Vec<(String, f64)>, String> {
    let mut c = shared.conn().await.map_err(|e| e.0)?;
    redis::cmd("ZRANGEBYSCORE")
        .arg(KEY)
        .arg(since - 1000.0)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())
}

/// RFC 8935 §2.4: `400` with `{"err", "description"}`; keys that cannot be fetched are the
/// receiver's trouble (`503`, so the transmitter retries).
fn refuse(e: &SetError) -> Response {
    let status = match e {
        SetError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    (
        status,
        axum::Json(serde_json::json!({"err": e.code(), "description": e.to_string()})),
    )
        .into_response()
}
