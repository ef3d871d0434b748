//! T6 / CL-24 / AS-21 / GW-10: every forbidden spelling is refused, and a listener on loopback
//! sees no connection at all.
use gatehouse_fetch::{FetchError, FetchPolicy, Fetcher, check_url};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

async fn assert_no_connection(l: &TcpListener) {
    let r = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
    assert!(r.is_err(), "the listener received a connection");
}

/// Serves `responses` one connection at a time; each is a raw HTTP/1.1 response.
fn serve(l: TcpListener, responses: Vec<String>) {
    tokio::spawn(async move {
        for r in responses {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(r.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
}

fn ok_json(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=120\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn t6_every_spelling_is_refused_before_connecting() {
    let p = FetchPolicy::default();
    for url in [
        "https://127.0.0.1/",
        "https://127.1/",
        "https://2130706433/",
        "https://0x7f.0.0.1/",
        "https://0x7f000001/",
        "https://0177.0.0.1/",
        "https://017700000001/",
        "http://2852039166/",
        "https://169.254.169.254/latest/meta-data/",
        "https://0xa9.0xfe.0xa9.0xfe/",
        "https://[::ffff:a9fe:a9fe]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[::ffff:10.0.0.1]/",
        "https://[::1]/",
        "https://[::]/",
        "https://0.0.0.0/",
        "https://0/",
        "https://10.0.0.1/",
        "https://172.16.5.4/",
        "https://192.168.0.1/",
        "https://100.64.0.1/",
        "https://[fc00::1]/",
        "https://[fd00:ec2::254]/",
        "https://[fe80::1]/",
        "https://224.0.0.1/",
        "https://[ff02::1]/",
        "https://localhost/",
        "https://LOCALHOST./",
        "https://api.localhost/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "http://example.com/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "https://user:pw@example.com/",
    ] {
        let u = url::Url::parse(url).expect("test URL parses");
        match check_url(&u, &p) {
            Err(FetchError::Blocked { reason, .. }) => assert!(!reason.is_empty(), "{url}"),
            other => panic!("{url} was not refused: {other:?}"),
        }
    }
    let u = url::Url::parse("https://example.com/.well-known/jwks.json").expect("parses");
    assert!(check_url(&u, &p).is_ok());
}

#[tokio::test]
async fn t6_loopback_listener_sees_no_connection() {
    let (l, port) = listener().await;
    let f = Fetcher::new(FetchPolicy::default()).expect("fetcher");
    for url in [
        format!("https://127.0.0.1:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("https://2130706433:{port}/"),
        format!("https://0x7f.1:{port}/"),
        format!("https://[::ffff:127.0.0.1]:{port}/"),
        format!("https://localhost:{port}/"),
    ] {
        let e = f.get(&url).await.expect_err("must be refused");
        assert!(matches!(e, FetchError::Blocked { .. }), "{url}: {e}");
        assert!(e.to_string().starts_with("refused to fetch"), "{e}");
    }
    assert_no_connection(&l).await;
}

#[tokio::test]
async fn dns_answers_are_filtered() {
    // A host *name* that resolves to loopback must be refused by the resolver, not by the
    // literal check. Any /etc/hosts alias of 127.0.0.0/8 other than `localhost` exercises it.
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let name = hosts
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
        })
        .filter(|w| {
            w.first()
                .is_some_and(|ip| ip.starts_with("127.") || *ip == "::1")
        })
        .flat_map(|w| w.into_iter().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .find(|n| !n.contains("localhost") && !n.contains('.'));
    let Some(name) = name else {
        eprintln!("SKIP: no loopback alias in /etc/hosts to exercise the resolver path");
        return;
    };
    let (l, port) = listener().await;
    let f = Fetcher::new(FetchPolicy::default()).expect("fetcher");
    let e = f
        .get(&format!("https://{name}:{port}/"))
        .await
        .expect_err("must be refused");
    match e {
        FetchError::Blocked { reason, .. } => assert!(reason.contains("resolves to"), "{reason}"),
        other => panic!("{name}: {other}"),
    }
    assert_no_connection(&l).await;
}

#[tokio::test]
async fn excepted_loopback_fetches_and_caps_size() {
    let (l, port) = listener().await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    serve(l, vec![ok_json(r#"{"keys":[]}"#), ok_json(&big)]);
    let f = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![format!("127.0.0.1:{port}")],
        max_body_bytes: 1024,
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    let (v, meta): (serde_json::Value, _) = f
        .get_json(&format!("http://127.0.0.1:{port}/jwks"))
        .await
        .expect("allowed loopback fetch");
    assert_eq!(v["keys"], serde_json::json!([]));
    assert_eq!(meta.max_age, Some(Duration::from_secs(120)));
    let e = f
        .get(&format!("http://127.0.0.1:{port}/big"))
        .await
        .expect_err("too large");
    assert!(matches!(e, FetchError::TooLarge { limit: 1024, .. }), "{e}");
    // The exception is for that authority only: another port on loopback stays forbidden.
    let (l2, port2) = listener().await;
    let e = f
        .get(&format!("http://127.0.0.1:{port2}/"))
        .await
        .expect_err("other port refused");
    assert!(matches!(e, FetchError::Blocked { .. }), "{e}");
    assert_no_connection(&l2).await;
}

#[tokio::test]
async fn only_loopback_may_be_excepted() {
    let e = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec!["10.0.0.1:80".into()],
        ..FetchPolicy::default()
    })
    .expect_err("non-loopback exception refused");
    assert!(matches!(e, FetchError::Config(_)));
}

#[tokio::test]
async fn redirects_not_followed_by_default_and_rechecked_when_followed() {
    let (target, target_port) = listener().await;
    let (l, port) = listener().await;
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{target_port}/x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    serve(l, vec![redirect.clone(), redirect]);
    let no_follow = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![format!("127.0.0.1:{port}")],
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    let e = no_follow
        .get(&format!("http://127.0.0.1:{port}/start"))
        .await
        .expect_err("redirect not followed");
    assert!(matches!(e, FetchError::Redirect { status: 302, .. }), "{e}");
    let follow = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![format!("127.0.0.1:{port}")],
        max_redirects: 3,
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    let e = follow
        .get(&format!("http://127.0.0.1:{port}/start"))
        .await
        .expect_err("redirect hop refused");
    assert!(matches!(e, FetchError::Blocked { .. }), "{e}");
    assert_no_connection(&target).await;
}

#[tokio::test]
async fn errors_are_clear() {
    let (l, port) = listener().await;
    serve(
        l,
        vec!["HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()],
    );
    let f = Fetcher::new(FetchPolicy {
        dangerous_allow_loopback: vec![format!("127.0.0.1:{port}")],
        ..FetchPolicy::default()
    })
    .expect("fetcher");
    let e = f
        .get(&format!("http://127.0.0.1:{port}/missing"))
        .await
        .expect_err("404");
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
}
