use super::*;
use gatehouse_core::ProtocolVersion;
use gatehouse_policy::ScopeRule;

fn principal(scopes: &str) -> Caller {
    let claims = serde_json::json!({"sub": "alice", "scope": scopes});
    Caller::Authenticated(Box::new(Principal {
        issuer: "https://as.example".into(),
        subject: "alice".into(),
        client_id: Some("c".into()),
        scopes: ScopeSet::parse(scopes).expect("scopes"),
        tenant: None,
        expires_at: None,
        source: gatehouse_tokens::PrincipalSource::Jwt,
        claims: claims.as_object().cloned().unwrap_or_default(),
    }))
}

fn admin_rule() -> Policies {
    Policies::compile(
        None,
        "t",
        &[ScopeRule {
            server: None,
            tool: "get-env".into(),
            scopes: ["mcp:admin".to_owned()].into(),
        }],
    )
    .expect("policies")
}

fn peek(body: &str) -> McpPeek {
    McpPeek::parse(body.as_bytes(), ProtocolVersion::V2025_03_26).expect("peek")
}

#[test]
fn t22_lists_in_a_batch_are_filtered_each_by_its_own_id() {
    let p = admin_rule();
    let basic = principal("mcp:basic");
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":"b","method":"tools/list"}]"#;
    let pk = peek(body);
    let s = screen(&p, &basic, "s", &pk, &MessageLimits::default());
    let (permit, refused) = s.into_permit(&pk, &Bytes::from(body));
    assert!(refused.is_empty());
    let permit = permit.expect("permit");
    let answer = r#"[{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"get-env"}]}},{"jsonrpc":"2.0","id":"b","result":{"tools":[{"name":"get-env"}]}},{"jsonrpc":"2.0","id":9,"result":{"tools":[{"name":"get-env"}]}}]"#;
    let out = permit.filter_body(&p, &basic, "s", false, answer.as_bytes());
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        v[0]["result"]["tools"],
        serde_json::json!([{"name": "echo"}])
    );
    assert_eq!(v[1]["result"]["tools"], serde_json::json!([]));
    // An answer to no request of this body (an upstream that changed the id) is filtered too.
    assert_eq!(v[2]["result"]["tools"], serde_json::json!([]));
    // SSE: each event on its own; an event that does not parse is dropped (fail closed).
    let sse = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"get-env\"},{\"name\":\"echo\"}]}}\n\ndata: {broken\n\n";
    let out =
        String::from_utf8(permit.filter_body(&p, &basic, "s", true, sse.as_bytes())).expect("utf8");
    assert!(
        out.contains("\"echo\"") && !out.contains("get-env") && !out.contains("broken"),
        "{out}"
    );
    let admin = principal("mcp:basic mcp:admin");
    let out = permit.filter_body(&p, &admin, "s", false, answer.as_bytes());
    assert!(String::from_utf8_lossy(&out).matches("get-env").count() == 3);
    // The answer to another request of the body is left alone.
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#;
    let pk = peek(body);
    let (permit, _) = screen(&p, &basic, "s", &pk, &MessageLimits::default())
        .into_permit(&pk, &Bytes::from(body));
    let answer = r#"[{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"get-env"}]}}]"#;
    let out = permit
        .expect("permit")
        .filter_body(&p, &basic, "s", false, answer.as_bytes());
    assert!(String::from_utf8_lossy(&out).contains("get-env"));
}

#[test]
fn t22_every_message_of_a_batch_is_screened_on_its_own() {
    let p = Policies::compile(
        Some(
            r#"@id("all") permit(principal, action, resource);
@id("no env") forbid(principal, action == Action::"tools/call", resource == Tool::"s/get-env");"#,
        ),
        "t",
        &[],
    )
    .expect("policies");
    let who = principal("mcp:basic");
    let long = "m".repeat(200);
    let body = format!(
        r#"[{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo"}}}},
{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"get-env"}}}},
{{"jsonrpc":"2.0","id":3,"method":"{long}"}},
{{"jsonrpc":"2.0","id":4,"method":"evil/method"}},
{{"jsonrpc":"2.0","id":1,"method":"ping"}},
{{"jsonrpc":"2.0","id":6,"method":"initialize","params":{{}}}},
{{"jsonrpc":"2.0","method":"notifications/initialized"}},
{{"jsonrpc":"2.0","id":"{long}","method":"ping"}},
{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"{long}"}}}}]"#
    );
    let pk = peek(&body);
    let s = screen(&p, &who, "s", &pk, &MessageLimits::default());
    assert_eq!(s.cleared(), &[0, 6]);
    let refused: Vec<(usize, i64, Option<Value>)> = s
        .refusals()
        .iter()
        .map(|r| (r.index, r.error.rpc_code().code(), r.id.clone()))
        .collect();
    assert_eq!(
        refused,
        vec![
            (1, -32003, Some(serde_json::json!(2))),
            (2, -32600, Some(serde_json::json!(3))),
            (3, -32601, Some(serde_json::json!(4))),
            (4, -32600, Some(serde_json::json!(1))),
            (5, -32600, Some(serde_json::json!(6))),
            // The over-long id is not echoed back.
            (7, -32600, Some(Value::Null)),
            (8, -32600, Some(serde_json::json!(9))),
        ]
    );
    // The permit carries exactly the cleared messages.
    let (permit, _) = s.into_permit(&pk, &Bytes::from(body));
    let sent: Value = serde_json::from_slice(permit.expect("permit").body()).expect("json");
    assert_eq!(sent.as_array().map(Vec::len), Some(2));
    assert_eq!(sent[0]["params"]["name"], "echo");
    assert_eq!(sent[1]["method"], "notifications/initialized");
}

#[test]
fn t22_a_batch_is_capped_and_the_rest_refused_one_by_one() {
    let p = Policies::compile(None, "t", &[]).expect("policies");
    let who = principal("mcp:basic");
    let calls: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#))
        .collect();
    let pk = peek(&format!("[{}]", calls.join(",")));
    let s = screen(&p, &who, "s", &pk, &MessageLimits::default());
    assert_eq!(s.cleared().len(), 32);
    assert_eq!(s.refusals().len(), 8);
    assert!(s.refusals().iter().all(|r| r.index >= 32));
}

#[test]
fn unknown_methods_pass_only_when_a_policy_names_them() {
    let open = Policies::compile(
        Some(r#"permit(principal, action == Action::"other", resource); permit(principal, action, resource);"#),
        "t",
        &[],
    )
    .expect("policies");
    let who = principal("mcp:basic");
    let pk = peek(r#"{"jsonrpc":"2.0","id":1,"method":"vendor/thing"}"#);
    assert_eq!(
        screen(&open, &who, "s", &pk, &MessageLimits::default()).cleared(),
        &[0]
    );
    let closed = Policies::compile(None, "t", &[]).expect("policies");
    assert!(
        screen(&closed, &who, "s", &pk, &MessageLimits::default())
            .cleared()
            .is_empty()
    );
}

#[test]
fn resource_templates_list_filtered_by_policy() {
    let p = Policies::compile(
        Some(
            r#"
@id("all")
permit(principal, action, resource);
@id("no secrets")
forbid(principal, action == Action::"resources/read", resource)
when { resource.uri like "secret://*" };
"#,
        ),
        "t",
        &[],
    )
    .expect("policies");
    let who = Caller::Anonymous;
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"resources/templates/list"}"#;
    let pk = peek(body);
    let (permit, _) =
        screen(&p, &who, "s", &pk, &MessageLimits::default()).into_permit(&pk, &Bytes::from(body));
    let msg = r#"{"jsonrpc":"2.0","id":3,"result":{"resourceTemplates":[{"uriTemplate":"secret://{name}","name":"secrets"},{"uriTemplate":"file:///{path}","name":"files"},{"name":"no template"}]}}"#;
    let out = permit
        .expect("permit")
        .filter_body(&p, &who, "s", false, msg.as_bytes());
    let v: Value = serde_json::from_slice(&out).expect("json");
    let kept: Vec<&str> = v["result"]["resourceTemplates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    // An entry without a template cannot be put to the policies: it is left out.
    assert_eq!(kept, ["files"]);
}

#[test]
fn gw_c1_filtered_lists_are_marked_private_whatever_the_upstream_said() {
    let p = admin_rule();
    let basic = principal("mcp:basic");
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#;
    let pk = peek(body);
    let (permit, _) = screen(&p, &basic, "s", &pk, &MessageLimits::default())
        .into_permit(&pk, &Bytes::from(body));
    let answer = r#"[{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","tools":[{"name":"echo"}],"ttlMs":60000,"cacheScope":"public"}},{"jsonrpc":"2.0","id":2,"result":{}}]"#;
    let out = permit
        .expect("permit")
        .filter_body(&p, &basic, "s", false, answer.as_bytes());
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v[0]["result"]["cacheScope"], "private");
    assert_eq!(
        v[0]["result"]["ttlMs"], 60000,
        "the upstream's freshness stays"
    );
    assert!(v[1]["result"].get("cacheScope").is_none(), "only lists");
}
