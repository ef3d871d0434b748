//! GW-09 (issue 5): per-user upstream OAuth grants through URL-mode elicitation. The upstream is
//! a second, real Gatehouse (its own authorization server with its own users, and the demo MCP
//! server behind its guard); the gateway is its OAuth client. A user's first call answers
//! -32042 with a link; the link is useless to another account; the owner signs in at the
//! gateway's authorization server, approves on the gateway's page, signs in at the upstream's
//! authorization server, and from then on the gateway calls the upstream with that user's own
//! token (the upstream sees its own user, never the gateway token). GW-05: state single use.
//! GW-12: the stored grant is sealed; no token in logs.
mod common;

use common::browser::Browser;
use common::*;
use gatehouse_core::PkceVerifier;
use serde_json::{Value, json};

const KEK: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn admin(db: &str, args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut cmd = gatehouse();
    cmd.args(["admin", "--db", db]).args(args);
    if let Some(p) = password {
        cmd.env("GATEHOUSE_PASSWORD", p);
    }
    let out = cmd.output().expect("admin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A user's MCP token at `issuer` for `resource`: a public client, the real login and consent
/// pages, PKCE.
async fn user_token(issuer: &str, resource: &str, user: &str, password: &str) -> String {
    let client_id = &register_native_client(issuer, "MCP host", "http://127.0.0.1/cb").await;
    let v = PkceVerifier::generate();
    let mut u = url::Url::parse(&format!("{issuer}/authorize")).expect("url");
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:5000/cb")
        .append_pair("code_challenge", v.challenge().as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", "mcp:basic")
        .append_pair("resource", resource);
    let done = Browser::new()
        .sign_in_and_approve(u.as_str(), issuer, user, password)
        .await;
    let code = done.redirect_params()["code"].clone();
    let tok = redeem_code(&format!("{issuer}/token"), &code, v.secret(), client_id).await;
    tok["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{tok}"))
        .to_owned()
}

async fn call(url: &str, token: &str, body: Value) -> (u16, Value) {
    call_at(url, token, body, "2025-11-25").await
}

async fn call_at(url: &str, token: &str, body: Value, version: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", version)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    let text = r.text().await.expect("text");
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text)
        .to_owned();
    (status, serde_json::from_str(&json).unwrap_or(Value::Null))
}

/// Whether `text` holds something shaped like a compact JWS (`eyJ….eyJ….`): sealed values are
/// standard base64, which has no `.`, so a chance `eyJ` inside them does not count.
fn has_jwt(text: &str) -> bool {
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").any(|(i, _)| {
        let rest = &text[i..];
        let end = rest.find(|c: char| !b64url(c)).unwrap_or(rest.len());
        rest[end..].starts_with(".eyJ")
    })
}

fn elicitation_url(v: &Value) -> String {
    assert_eq!(v["error"]["code"], json!(-32042), "{v}");
    let e = &v["error"]["data"]["elicitations"][0];
    assert_eq!(e["mode"], json!("url"));
    assert!(e["elicitationId"].as_str().is_some_and(|i| i.len() >= 22));
    e["url"].as_str().expect("url").to_owned()
}

#[test]
fn jwt_shapes_are_found_and_base64_is_not() {
    assert!(has_jwt("x eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.sig y"));
    assert!(!has_jwt("aes256gcm:Qx+eyJk/9eyJ=="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gw03_gw05_gw09_gw12_users_connect_their_own_upstream_accounts_through_url_elicitation() {
    // The upstream: its own authorization server and users, the demo MCP server behind its guard.
    let (pu, pg) = (free_port(), free_port());
    let upstream = format!("http://localhost:{pu}");
    let gateway = format!("http://127.0.0.1:{pg}");
    let dir = std::env::temp_dir().join(format!("gatehouse-gw09-{pg}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (udb, gdb) = (
        format!("sqlite://{}/up.db", dir.display()),
        format!("sqlite://{}/gw.db", dir.display()),
    );
    std::fs::write(
        dir.join("up.yaml"),
        format!("listen: 127.0.0.1:{pu}\npublic_url: {upstream}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {udb}\n  access_token_ttl_seconds: 30\n"),
    )
    .expect("config");
    admin(&udb, &["users", "add", "alice-up"], Some("upstream-pass-1"));
    let out = admin(
        &udb,
        &[
            "clients",
            "add",
            "--name",
            "The Gateway",
            "--confidential",
            "--redirect-uri",
            &format!("{gateway}/connect/callback"),
            "--scope",
            "mcp:basic",
        ],
        None,
    );
    let (gw_id, gw_secret) = added_client(&out);
    let mut cmd = gatehouse();
    cmd.args(["serve", "--config"]).arg(dir.join("up.yaml"));
    let up = Proc::start(cmd, "ready");

    // The gateway, calling `notes` with each user's own token.
    std::fs::write(
        dir.join("gw.yaml"),
        format!(
            "listen: 127.0.0.1:{pg}\nguard:\n  required_scopes: [mcp:basic]\nauthorization_server:\n  database: {gdb}\n  key_encryption_key: {KEK}\ndangerous:\n  allow_loopback_fetch: ['localhost:{pu}']\ngateway:\n  upstreams:\n    - name: notes\n      url: {upstream}/mcp\n      user_oauth:\n        client_id: ${{env:UP_CLIENT_ID}}\n        client_secret: ${{env:UP_CLIENT_SECRET}}\n        scopes: [mcp:basic]\n"
        ),
    )
    .expect("config");
    let check = gatehouse()
        .env("UP_CLIENT_ID", &gw_id)
        .env("UP_CLIENT_SECRET", &gw_secret)
        .args(["config", "check"])
        .arg(dir.join("gw.yaml"))
        .output()
        .expect("config check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    admin(&gdb, &["users", "add", "alice"], Some("gateway-pass-1"));
    admin(&gdb, &["users", "add", "bob"], Some("gateway-pass-2"));
    let mut cmd = gatehouse();
    cmd.env("UP_CLIENT_ID", &gw_id)
        .env("UP_CLIENT_SECRET", &gw_secret)
        .args(["serve", "--config"])
        .arg(dir.join("gw.yaml"));
    let gw = Proc::start(cmd, "ready");
    let notes = format!("{gateway}/servers/notes/mcp");
    let alice = user_token(&gateway, &notes, "alice", "gateway-pass-1").await;
    let bob = user_token(&gateway, &notes, "bob", "gateway-pass-2").await;

    // First call: connect first (URL-mode elicitation); the link carries nothing but an id.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"url": {}}}, "clientInfo": {"name": "t", "version": "1"}}});
    let (status, v) = call(&notes, &alice, init.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(v["id"], json!(1));
    let link = elicitation_url(&v);
    assert!(link.starts_with(&format!("{gateway}/connect/")), "{link}");
    assert!(
        !link.contains("alice") && !link.contains(&alice) && !link.contains('?'),
        "{link}"
    );

    // Bob opens Alice's link: he signs in as himself and is refused.
    let mut b = Browser::per_origin();
    let to_as = b.get(&link).await;
    assert_eq!(to_as.status, 303, "{}", to_as.body);
    let back = b
        .sign_in_and_approve(
            &to_as.location().expect("to the AS"),
            &gateway,
            "bob",
            "gateway-pass-2",
        )
        .await;
    let refused = b.get(&back.location().expect("back")).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("another account"));

    // Alice: her identity, the gateway's approval page, the upstream's own sign-in.
    let mut a = Browser::per_origin();
    let to_as = a.get(&link).await;
    let set_cookie = to_as.headers["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let back = a
        .sign_in_and_approve(
            &to_as.location().expect("to the AS"),
            &gateway,
            "alice",
            "gateway-pass-1",
        )
        .await;
    let approval = a.get(&back.location().expect("back")).await;
    assert_eq!(approval.status, 200, "{}", approval.body);
    assert!(approval.body.contains("Connect notes?") && approval.body.contains(&upstream));
    assert_eq!(approval.headers["x-frame-options"], "DENY");
    assert!(
        approval.headers["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("frame-ancestors 'none'")
    );
    let token = approval.field("approval").expect("approval field");
    // Not from another browser (another flow cookie, or none): refused, and it stays usable.
    let mut other = Browser::per_origin();
    other.get(&link).await;
    for stranger in [&mut other, &mut Browser::new()] {
        let r = stranger
            .post_form(
                &format!("{gateway}/connect/approve"),
                &[("approval", &token), ("decision", "approve")],
            )
            .await;
        assert_eq!(r.status, 400);
    }
    let to_upstream = a
        .post_form(
            &format!("{gateway}/connect/approve"),
            &[("approval", &token), ("decision", "approve")],
        )
        .await;
    assert_eq!(to_upstream.status, 303, "{}", to_upstream.body);
    let authz = to_upstream.location().expect("to the upstream AS");
    assert!(
        authz.starts_with(&format!("{upstream}/authorize")),
        "{authz}"
    );
    let params = to_upstream.redirect_params();
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["resource"], format!("{upstream}/mcp"));
    let back = a
        .sign_in_and_approve(&authz, &upstream, "alice-up", "upstream-pass-1")
        .await;
    let callback = back.location().expect("callback");
    let done = a.get(&callback).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("notes connected"));
    // GW-05: the state is single use.
    let again = a.get(&callback).await;
    assert_eq!(again.status, 400);

    // Now Alice's calls reach the upstream with her upstream identity; Bob still has to connect.
    let client = mcp_client(&notes, &alice).await;
    let who = client
        .call_tool(rmcp::model::CallToolRequestParams::new("whoami".to_owned()))
        .await
        .expect("whoami");
    let said = format!("{:?}", who.content);
    assert!(
        said.contains(&upstream),
        "the upstream's own issuer: {said}"
    );
    // Upstream tokens live 30 s here, so each call refreshes (the refresh token rotates):
    // a second and a third call work on the rotated grant.
    for _ in 0..2 {
        client
            .call_tool(rmcp::model::CallToolRequestParams::new("whoami".to_owned()))
            .await
            .expect("whoami after a refresh");
    }
    client.cancel().await.expect("close");
    assert!(
        gw.all_output().matches("upstream token refreshed").count() >= 2,
        "{}",
        gw.all_output()
    );
    let (_, v) = call(&notes, &bob, init.clone()).await;
    elicitation_url(&v);
    // GW-R1: a client on MCP 2026-07-28 gets the same link as an input_required result (multi
    // round-trip requests), and its retry with the input asks again until the user connected.
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}}}}});
    let (status, v) = call_at(&notes, &bob, list.clone(), "2026-07-28").await;
    assert_eq!(status, 200);
    assert_eq!(v["id"], json!(7), "{v}");
    assert_eq!(v["result"]["resultType"], json!("input_required"), "{v}");
    let ask = &v["result"]["inputRequests"]["gatehouse/connect/notes"];
    assert_eq!(ask["method"], json!("elicitation/create"), "{v}");
    assert_eq!(ask["params"]["mode"], json!("url"));
    let link26 = ask["params"]["url"].as_str().expect("url").to_owned();
    assert!(
        link26.starts_with(&format!("{gateway}/connect/")),
        "{link26}"
    );
    assert_eq!(b.get(&link26).await.status, 303, "a live connect link");
    let mut retry = list.clone();
    retry["params"]["inputResponses"] = json!({"gatehouse/connect/notes": {"action": "accept"}});
    let (_, v) = call_at(&notes, &bob, retry, "2026-07-28").await;
    assert_eq!(
        v["result"]["resultType"],
        json!("input_required"),
        "not connected yet: {v}"
    );

    // The upstream ends Alice's grant (her account there is deleted): her next call asks her to
    // connect again instead of failing.
    admin(&udb, &["users", "delete", "alice-up"], None);
    let (status, v) = call(&notes, &alice, init.clone()).await;
    assert_eq!(status, 200);
    elicitation_url(&v);

    // The grant is stored sealed, and no token appears in either log.
    // (SQLite in WAL mode: recent rows are in the -wal file.)
    let mut db = Vec::new();
    for f in ["gw.db", "gw.db-wal"] {
        db.extend(std::fs::read(dir.join(f)).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&db);
    assert!(text.contains("aes256gcm:"), "sealed grant");
    assert!(!has_jwt(&text), "no JWT in clear in the gateway's store");
    for t in [&alice, &bob] {
        assert!(!gw.all_output().contains(t.as_str()));
        assert!(!up.all_output().contains(t.as_str()));
    }
}
