//! Issue 2, "Interop with a real authorization server": `gatehouse dev` trusting a real
//! `oidc-provider` (npm), driven by rmcp's real MCP client.
mod common;

use common::*;
use gatehouse_core::{BearerChallenge, BearerError, Challenge};
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tool: &str,
    args: Value,
) -> Value {
    let mut p = CallToolRequestParams::new(tool.to_owned());
    if let Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    let r = client.call_tool(p).await.expect("tools/call");
    assert_ne!(r.is_error, Some(true), "{tool} returned an error: {r:?}");
    r.structured_content.clone().expect("structured result")
}

async fn raw_call(endpoint: &str, token: &str, tool: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(endpoint)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":tool,"arguments":{"text":"x"}}})
                .to_string(),
        )
        .send()
        .await
        .expect("send")
}

fn challenge(r: &reqwest::Response) -> BearerChallenge {
    let values: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    BearerChallenge::from_challenges(&Challenge::parse_all(values.iter().copied()).expect("parses"))
        .expect("bearer")
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_end_to_end() {
    let as_port = free_port();
    let issuer = format!("http://127.0.0.1:{as_port}");
    let mut idp = oidc_provider(as_port);
    let (mut gh, endpoint) = gatehouse_dev(&issuer);
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();

    // RS-01/RS-04: the PRM names the endpoint byte for byte and the issuer.
    let prm_url = endpoint.replace("/mcp", "/.well-known/oauth-protected-resource/mcp");
    let prm: Value = http
        .get(&prm_url)
        .send()
        .await
        .expect("prm")
        .json()
        .await
        .expect("json");
    assert_eq!(prm["resource"], json!(endpoint));
    assert_eq!(prm["authorization_servers"], json!([issuer]));

    // RS-05: no token → 401, no error, the base scope.
    let r = http
        .post(&endpoint)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let c = challenge(&r);
    assert_eq!(c.error, None);
    assert_eq!(c.scope.expect("scope").to_string(), "mcp:basic");
    assert_eq!(c.resource_metadata.as_deref(), Some(prm_url.as_str()));

    // RS-22 / TR-13: a browser client on an allowed origin (dev allows loopback origins) can
    // preflight and read the challenge; another origin gets no CORS grant.
    let pre = http
        .request(reqwest::Method::OPTIONS, &endpoint)
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,mcp-protocol-version",
        )
        .send()
        .await
        .expect("preflight");
    assert!(pre.status().is_success(), "preflight {}", pre.status());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://localhost:6274"
    );
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("mcp-protocol-version"),
        "{allowed}"
    );
    let r = http
        .post(&endpoint)
        .header("origin", "http://localhost:6274")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        exposed.contains("www-authenticate") && exposed.contains("mcp-session-id"),
        "{exposed}"
    );
    let r = http
        .post(&endpoint)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Right audience and scopes: a real MCP client lists and calls tools.
    let full = cc_token(&issuer, &endpoint, "mcp:basic notes:write").await;
    tokens.push(full.clone());
    let client = mcp_client(&endpoint, &full).await;
    let tools: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for t in ["add", "echo", "whoami", "notes_list", "notes_add"] {
        assert!(tools.contains(&t.to_owned()), "{t} in {tools:?}");
    }
    let me = call(&client, "whoami", json!({})).await;
    assert_eq!(me["subject"], CLIENT_ID);
    assert_eq!(me["issuer"], json!(issuer));
    assert_eq!(me["authenticated_by"], "jwt");
    assert_eq!(
        call(&client, "add", json!({"a": 2, "b": 40})).await["sum"],
        42
    );
    let notes = call(&client, "notes_add", json!({"text": "hello"})).await;
    assert_eq!(notes["notes"], json!(["hello"]));
    client.cancel().await.expect("close");

    // Too few scopes: 403 insufficient_scope naming what the call needs (RS-08).
    let basic = cc_token(&issuer, &endpoint, "mcp:basic").await;
    tokens.push(basic.clone());
    let r = raw_call(&endpoint, &basic, "notes_add").await;
    assert_eq!(r.status(), 403);
    let c = challenge(&r);
    assert_eq!(c.error, Some(BearerError::InsufficientScope));
    assert_eq!(c.scope.expect("scope").to_string(), "mcp:basic notes:write");
    // With that token, a real client session works for the base tools and not for notes_add.
    let client = mcp_client(&endpoint, &basic).await;
    let mut p = CallToolRequestParams::new("echo");
    p = p.with_arguments(json!({"text": "hi"}).as_object().cloned().expect("object"));
    let r = client.call_tool(p).await.expect("echo with the base scope");
    assert_ne!(r.is_error, Some(true));
    let mut p = CallToolRequestParams::new("notes_add");
    p = p.with_arguments(json!({"text": "no"}).as_object().cloned().expect("object"));
    assert!(
        client.call_tool(p).await.is_err(),
        "notes_add refused without notes:write"
    );
    client.cancel().await.expect("close");

    // Same AS, another resource's token: 401 invalid_token (RS-12, T8).
    let other = cc_token(
        &issuer,
        "http://127.0.0.1:1/other-mcp",
        "mcp:basic notes:write",
    )
    .await;
    tokens.push(other.clone());
    let r = raw_call(&endpoint, &other, "echo").await;
    assert_eq!(r.status(), 401);
    assert_eq!(challenge(&r).error, Some(BearerError::InvalidToken));

    // The AS restarts with a new signing key: the unknown kid makes the guard refetch its JWKS.
    assert!(idp.terminate(10).is_some(), "oidc-provider did not stop");
    drop(idp);
    let _idp = oidc_provider(as_port);
    let rotated = cc_token(&issuer, &endpoint, "mcp:basic").await;
    tokens.push(rotated.clone());
    let client = mcp_client(&endpoint, &rotated).await;
    assert_eq!(
        call(&client, "whoami", json!({})).await["subject"],
        CLIENT_ID
    );
    client.cancel().await.expect("close");
    // A token signed by the key the AS no longer publishes is refused.
    let r = raw_call(&endpoint, &full, "echo").await;
    assert_eq!(r.status(), 401);

    // Clean exit on SIGTERM.
    let status = gh
        .terminate(10)
        .expect("gatehouse exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // T13 / GW-12: no token ever reaches the logs.
    let out = gh.all_output();
    assert!(
        out.contains("gatehouse::access"),
        "access log lines present"
    );
    for t in &tokens {
        assert!(!out.contains(t.as_str()), "a token appeared in the logs");
        let sig = t.rsplit('.').next().expect("sig");
        assert!(!out.contains(sig), "a token signature appeared in the logs");
    }
}

/// RS-18: opaque tokens validated by RFC 7662 introspection at the real oidc-provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_introspection() {
    let as_port = free_port();
    let issuer = format!("http://127.0.0.1:{as_port}");
    let _idp = oidc_provider(as_port);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}/opaque-mcp");
    let dir = std::env::temp_dir().join(format!("gatehouse-introspect-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nmcp: {{path: /opaque-mcp}}\nguard:\n  authorization_servers: [{{issuer: '{issuer}'}}]\n  required_scopes: [mcp:basic]\n  introspection:\n    endpoint: {issuer}/token/introspection\n    client_id: gatehouse-rs\n    client_secret: ${{env:GH_TEST_RS_SECRET}}\n    cache_seconds: 0\ndangerous:\n  allow_loopback_fetch: ['127.0.0.1:{as_port}']\n"
        ),
    )
    .expect("config");
    let mut cmd = gatehouse();
    cmd.env("GH_TEST_RS_SECRET", "rs-secret-not-for-production")
        .args(["serve", "--config"])
        .arg(&cfg);
    let gh = Proc::start(cmd, "ready");

    let opaque = cc_token(&issuer, &endpoint, "mcp:basic").await;
    assert_eq!(
        opaque.split('.').count(),
        1,
        "oidc-provider issued an opaque token"
    );
    let client = mcp_client(&endpoint, &opaque).await;
    let me = call(&client, "whoami", json!({})).await;
    assert_eq!(me["authenticated_by"], "introspection");
    assert_eq!(me["subject"], CLIENT_ID);
    client.cancel().await.expect("close");

    // Minted for another resource: introspection says active, but the audience is foreign.
    let foreign = cc_token(&issuer, "http://127.0.0.1:1/opaque-mcp", "mcp:basic").await;
    let r = raw_call(&endpoint, &foreign, "echo").await;
    assert_eq!(r.status(), 401);
    assert_eq!(challenge(&r).error, Some(BearerError::InvalidToken));
    // Unknown to the AS: {"active": false}.
    let r = raw_call(&endpoint, "bm90LWEtcmVhbC10b2tlbg", "echo").await;
    assert_eq!(r.status(), 401);
    // Revoked at the AS: refused on the next request (cache disabled in this config).
    let rev = reqwest::Client::new()
        .post(format!("{issuer}/token/revocation"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", opaque.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(rev.status(), 200);
    let r = raw_call(&endpoint, &opaque, "echo").await;
    assert_eq!(r.status(), 401, "revoked token refused");
    let logs = gh.all_output();
    assert!(
        !logs.contains(&opaque) && !logs.contains(&foreign),
        "tokens never logged"
    );
    assert!(
        !logs.contains("rs-secret-not-for-production"),
        "secrets never logged"
    );
}
