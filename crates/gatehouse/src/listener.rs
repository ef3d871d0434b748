//! The one listener every Gatehouse server runs behind (authorization server, guard, gateway,
//! metrics): bounded in time, size and connections (T21).
//!
//! - Request headers must arrive whole within `header_timeout` (hyper's header-read timer, which
//!   also runs while a kept-alive connection waits for its next request: the idle timeout).
//! - A request body must arrive whole within `body_timeout` of its first read.
//! - At most `max_connections` in all (below the process's file limit, so `accept` never fails
//!   for lack of descriptors) and `per_source` per client address.
//! - At a cap, the oldest connection with no request in progress (half-sent headers, idle
//!   keep-alive) is closed to make room; only when every connection is busy is the new one
//!   refused. So a flood of half-sent requests cannot lock out a client that sends a whole one.
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Limits of a listener.
#[derive(Debug, Clone)]
pub(crate) struct ListenerLimits {
    pub(crate) max_connections: usize,
    pub(crate) per_source: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        // Leave room below the descriptor limit for upstream connections, files and the store.
        let fds = open_files_limit().unwrap_or(1024);
        let max_connections = (fds.saturating_mul(3) / 4).clamp(64, 16_384);
        Self {
            max_connections,
            per_source: (max_connections / 4).max(16),
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The soft limit on open files (Linux: `/proc/self/limits`).
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One connection's state, shared with its requests.
struct Conn {
    source: IpAddr,
    /// Requests in progress, until their response body has been sent whole.
    active: AtomicUsize,
    /// Whether any request has started (a connection that sends nothing, or too little to tell
    /// HTTP/1 from HTTP/2, is closed after the header timeout).
    started: AtomicBool,
    evict: CancellationToken,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Oldest first.
    conns: BTreeMap<u64, Arc<Conn>>,
    per_source: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id)
            && let Some(n) = self.per_source.get_mut(&c.source)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&c.source);
            }
        }
    }

    /// Closes the oldest connection with nothing in progress (of `source` when given).
    fn evict_idle(&mut self, source: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .iter()
            .find(|(_, c)| {
                source.is_none_or(|s| c.source == s) && c.active.load(Ordering::Acquire) == 0
            })
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                if let Some(c) = self.conns.get(&id) {
                    c.evict.cancel();
                }
                self.remove(id);
                true
            }
            None => false,
        }
    }

    /// Room for a new connection from `source`, making it by eviction if need be.
    fn admit(&mut self, source: IpAddr, limits: &ListenerLimits) -> Option<(u64, Arc<Conn>)> {
        if self.per_source.get(&source).copied().unwrap_or(0) >= limits.per_source
            && !self.evict_idle(Some(source))
        {
            return None;
        }
        if self.conns.len() >= limits.max_connections && !self.evict_idle(None) {
            return None;
        }
        let id = self.next;
        self.next += 1;
        let c = Arc::new(Conn {
            source,
            active: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            evict: CancellationToken::new(),
        });
        self.conns.insert(id, c.clone());
        *self.per_source.entry(source).or_insert(0) += 1;
        Some((id, c))
    }
}

/// Marks a request in progress on its connection until dropped (with the response body).
struct Active(Arc<Conn>);

impl Active {
    fn new(c: &Arc<Conn>) -> Self {
        c.started.store(true, Ordering::Release);
        c.active.fetch_add(1, Ordering::AcqRel);
        Self(c.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress until it is sent or dropped
/// (a streamed answer is work in progress, never an idle connection).
struct Tracked {
    inner: Body,
    _active: Active,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that must arrive whole within a deadline from its first read.
struct Deadline {
    inner: hyper::body::Incoming,
    budget: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        let budget = self.budget;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(budget)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("request body not received in time".into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` is cancelled, then lets
/// requests in progress finish.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
    tls: Option<crate::tls::Tls>,
) -> std::io::Result<()> {
    let table = Arc::new(Mutex::new(Table::default()));
    let live = Arc::new(());
    let mut http =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    http.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    http.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(64 * 1024);
    let http = Arc::new(http);
    let mut refused_logged = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let admitted = table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(peer.ip(), &limits);
        let Some((id, conn)) = admitted else {
            // Every connection is busy: refuse this one at once, with a plain answer where the
            // socket takes it without waiting (closing frees its descriptor).
            if refused_logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(source = %peer.ip(), "connection limit reached; refusing connections");
                refused_logged = tokio::time::Instant::now();
            }
            let _ = tcp.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            drop(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Answers are written in pieces: without TCP_NODELAY each waits ~40 ms.
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let (table, router, http, shutdown, live, body_timeout, header_timeout, tls) = (
            table.clone(),
            router.clone(),
            http.clone(),
            shutdown.clone(),
            live.clone(),
            limits.body_timeout,
            limits.header_timeout,
            tls.clone(),
        );
        tokio::spawn(async move {
            let _live = live;
            // TLS first, within the header timeout: a client that never finishes the handshake
            // holds its place no longer than one that never sends its headers.
            let io = match &tls {
                None => tokio_util::either::Either::Left(tcp),
                Some(t) => {
                    let handshake = tokio::time::timeout(header_timeout, t.acceptor().accept(tcp));
                    let done = tokio::select! {
                        r = handshake => r.ok().and_then(Result::ok),
                        _ = conn.evict.cancelled() => None,
                        _ = shutdown.cancelled() => None,
                    };
                    match done {
                        Some(s) => tokio_util::either::Either::Right(s),
                        None => {
                            tracing::debug!(source = %peer.ip(), "TLS handshake not completed");
                            table
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(id);
                            return;
                        }
                    }
                }
            };
            let svc_conn = conn.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let active = Active::new(&svc_conn);
                    let mut router = router.clone();
                    let mut req = req.map(|b| {
                        Body::new(Deadline {
                            inner: b,
                            budget: body_timeout,
                            sleep: None,
                        })
                    });
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                    async move {
                        let resp = match router.call(req).await {
                            Ok(r) => r,
                            Err(e) => match e {},
                        };
                        Ok::<_, Infallible>(resp.map(|b| {
                            Body::new(Tracked {
                                inner: b,
                                _active: active,
                            })
                        }))
                    }
                });
            let served = http.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc);
            tokio::pin!(served);
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = conn.evict.cancelled() => {
                    tracing::debug!(source = %peer.ip(), "idle connection closed to make room");
                }
                _ = async {
                    // hyper's header timer starts once it knows the protocol; this one covers a
                    // connection that never sends enough to tell.
                    tokio::time::sleep(header_timeout).await;
                    if conn.started.load(Ordering::Acquire) {
                        std::future::pending::<()>().await;
                    }
                } => {
                    tracing::debug!(source = %peer.ip(), "no request within the header timeout");
                }
                _ = shutdown.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
            table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
        });
    }
    // Requests in progress finish (the caller bounds how long it waits).
    while Arc::strong_count(&live) > 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per: usize) -> ListenerLimits {
        ListenerLimits {
            max_connections: max,
            per_source: per,
            ..ListenerLimits::default()
        }
    }

    #[test]
    fn t21_caps_evict_idle_connections_oldest_first_never_busy_ones() {
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let l = limits(3, 2);
        let mut t = Table::default();
        let (_, a1) = t.admit(a, &l).expect("a1");
        let (_, a2) = t.admit(a, &l).expect("a2");
        let _busy = Active::new(&a1);
        // Per source: a's oldest idle one (a2, since a1 is busy) makes room.
        let (_, a3) = t.admit(a, &l).expect("a3");
        assert!(a2.evict.is_cancelled() && !a1.evict.is_cancelled());
        // Global: b takes the third place; the next b evicts a3 (idle), never busy a1.
        let (_, b1) = t.admit(b, &l).expect("b1");
        let _b1_busy = Active::new(&b1);
        let (_, _b2) = t.admit(b, &l).expect("b2");
        assert!(a3.evict.is_cancelled() && !a1.evict.is_cancelled());
        // Everything busy: refused.
        let _b2_busy = Active::new(&_b2);
        assert!(t.admit(b, &l).is_none());
        assert_eq!(t.conns.len(), 3);
    }
}
