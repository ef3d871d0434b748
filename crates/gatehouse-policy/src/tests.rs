#![allow(clippy::unwrap_used)]
use super::*;
use serde_json::json;

fn scopes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

struct Who {
    scopes: BTreeSet<String>,
    claims: Map<String, Value>,
    tenant: Option<&'static str>,
}

impl Who {
    fn new(s: &[&str], claims: Value) -> Self {
        Self {
            scopes: scopes(s),
            claims: claims.as_object().cloned().unwrap_or_default(),
            tenant: None,
        }
    }
    fn caller(&self) -> Caller<'_> {
        Caller {
            issuer: "https://as.example",
            subject: self.claims["sub"].as_str().unwrap_or("alice"),
            client: Some("client-1"),
            tenant: self.tenant,
            scopes: &self.scopes,
            claims: &self.claims,
        }
    }
}

fn call<'a>(server: &'a str, tool: &'a str, args: Option<&'a Map<String, Value>>) -> Ask<'a> {
    Ask {
        server,
        method: "tools/call",
        target: Some(tool),
        arguments: args,
    }
}

fn rule(server: Option<&str>, tool: &str, s: &[&str]) -> ScopeRule {
    ScopeRule {
        server: server.map(str::to_owned),
        tool: tool.to_owned(),
        scopes: scopes(s),
    }
}

#[test]
fn scope_rules_alone_compile_to_cedar_and_ask_for_the_scope() {
    let p = Policies::compile(
        None,
        "test",
        &[
            rule(None, "get-env", &["mcp:admin"]),
            rule(Some("memory"), "delete_entities", &["memory:write"]),
        ],
    )
    .unwrap();
    let basic = Who::new(&["mcp:basic"], json!({"sub": "alice"}));
    assert_eq!(
        p.decide(&basic.caller(), &call("everything", "echo", None)),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&basic.caller(), &call("everything", "get-env", None)),
        Decision::NeedScopes(scopes(&["mcp:admin"]))
    );
    // The server-bound rule applies to its server only.
    assert_eq!(
        p.decide(&basic.caller(), &call("memory", "delete_entities", None)),
        Decision::NeedScopes(scopes(&["memory:write"]))
    );
    assert_eq!(
        p.decide(&basic.caller(), &call("other", "delete_entities", None)),
        Decision::Allow
    );
    let admin = Who::new(&["mcp:basic", "mcp:admin"], json!({"sub": "root"}));
    assert_eq!(
        p.decide(&admin.caller(), &call("everything", "get-env", None)),
        Decision::Allow
    );
    assert!(!p.lists(&basic.caller(), "everything", "tools/list", "get-env"));
    assert!(p.lists(&admin.caller(), "everything", "tools/list", "get-env"));
}

const POLICY: &str = r#"
@id("members use everything")
permit(principal in Group::"engineering", action, resource in Server::"everything");

@id("anyone may list and initialize")
permit(principal, action in [Action::"initialize", Action::"tools/list", Action::"ping", Action::"other"], resource);

@id("no printEnv outside ops")
forbid(principal, action == Action::"tools/call", resource == Tool::"everything/get-env")
unless { principal in Role::"ops" };

@id("finance only from their tenant")
forbid(principal, action, resource in Server::"ledger")
unless { principal.tenant == "acme" && principal.hasTag("department") && principal.getTag("department") == "finance" };

@id("ledger for finance")
permit(principal, action, resource in Server::"ledger");

@id("echo no secrets")
forbid(principal, action == Action::"tools/call", resource == Tool::"everything/echo")
when { resource.hasTag("message") && resource.getTag("message") like "*password*" };
"#;

/// [`POLICY`] with a scope rule for `add`.
fn operator_policies() -> Policies {
    Policies::compile(
        Some(POLICY),
        "policy.cedar",
        &[rule(None, "add", &["mcp:math"])],
    )
    .unwrap()
}

#[test]
fn cedar_policies_over_groups_roles_claims_tenant_and_arguments() {
    let p = operator_policies();
    let eng = Who::new(
        &["mcp:basic"],
        json!({"sub": "alice", "groups": ["engineering"]}),
    );
    let outsider = Who::new(
        &["mcp:basic"],
        json!({"sub": "mallory", "groups": ["sales"]}),
    );
    let ops = Who::new(
        &["mcp:basic"],
        json!({"sub": "olga", "groups": ["engineering"], "realm_access": {"roles": ["ops"]}}),
    );
    assert_eq!(
        p.decide(&eng.caller(), &call("everything", "echo", None)),
        Decision::Allow
    );
    // No permit for sales: denied, and no scope would help.
    assert_eq!(
        p.decide(&outsider.caller(), &call("everything", "echo", None)),
        Decision::Deny { policies: vec![] }
    );
    // Methods on the server itself.
    let list = Ask {
        server: "everything",
        method: "tools/list",
        target: None,
        arguments: None,
    };
    assert_eq!(p.decide(&outsider.caller(), &list), Decision::Allow);
    // A forbid names itself.
    assert_eq!(
        p.decide(&eng.caller(), &call("everything", "get-env", None)),
        Decision::Deny {
            policies: vec!["no printEnv outside ops".into()]
        }
    );
    assert_eq!(
        p.decide(&ops.caller(), &call("everything", "get-env", None)),
        Decision::Allow
    );
    // Tool arguments.
    let args = json!({"message": "my password is hunter2"});
    let args = args.as_object().unwrap();
    assert_eq!(
        p.decide(&eng.caller(), &call("everything", "echo", Some(args))),
        Decision::Deny {
            policies: vec!["echo no secrets".into()]
        }
    );
    let fine = json!({"message": "hello"});
    assert_eq!(
        p.decide(&eng.caller(), &call("everything", "echo", fine.as_object())),
        Decision::Allow
    );
    // Claims as tags, and the tenant.
    let mut finance = Who::new(
        &["mcp:basic"],
        json!({"sub": "fin", "department": "finance"}),
    );
    assert!(matches!(
        p.decide(&finance.caller(), &call("ledger", "post", None)),
        Decision::Deny { .. }
    ));
    finance.tenant = Some("acme");
    assert_eq!(
        p.decide(&finance.caller(), &call("ledger", "post", None)),
        Decision::Allow
    );
    // A scope rule in the same set: the scope is asked for only when it would be enough.
    assert_eq!(
        p.decide(&eng.caller(), &call("everything", "add", None)),
        Decision::NeedScopes(scopes(&["mcp:math"]))
    );
    assert!(matches!(
        p.decide(&outsider.caller(), &call("everything", "add", None)),
        Decision::Deny { .. }
    ));
    // Lists follow the call decision.
    assert!(p.lists(&eng.caller(), "everything", "tools/list", "echo"));
    assert!(!p.lists(&eng.caller(), "everything", "tools/list", "get-env"));
    assert!(p.lists(&ops.caller(), "everything", "tools/list", "get-env"));
}

#[test]
fn resource_lists_and_templates_follow_the_read_policies() {
    let p = Policies::compile(
        Some(
            r#"
@id("reads")
permit(principal, action, resource);
@id("no secrets")
forbid(principal, action == Action::"resources/read", resource in Server::"files")
when { resource.uri like "secret://*" };
"#,
        ),
        "policy.cedar",
        &[],
    )
    .unwrap();
    let who = Who::new(&["mcp:basic"], json!({"sub": "alice"}));
    let read = |uri| Ask {
        server: "files",
        method: "resources/read",
        target: Some(uri),
        arguments: None,
    };
    assert!(matches!(
        p.decide(&who.caller(), &read("secret://keys")),
        Decision::Deny { .. }
    ));
    assert_eq!(
        p.decide(&who.caller(), &read("file:///notes")),
        Decision::Allow
    );
    for list in ["resources/list", "resources/templates/list"] {
        assert!(
            !p.lists(&who.caller(), "files", list, "secret://keys"),
            "{list}"
        );
        assert!(
            p.lists(&who.caller(), "files", list, "file:///notes"),
            "{list}"
        );
    }
    // A template is put to the policies as a read of its own text.
    let templates = "resources/templates/list";
    assert!(!p.lists(&who.caller(), "files", templates, "secret://{name}"));
    assert!(p.lists(&who.caller(), "files", templates, "file:///{path}"));
    // The rule is bound to its server: another server's template of the same shape is listed.
    assert!(p.lists(&who.caller(), "other", templates, "secret://{name}"));
}

#[test]
fn invalid_policies_are_refused_with_the_reason() {
    // A typo in an attribute, an unknown entity type, an unguarded tag, a syntax error.
    for (bad, needle) in [
        (
            "permit(principal, action, resource) when { principal.tenat == \"x\" };",
            "tenat",
        ),
        (
            "permit(principal in Team::\"a\", action, resource);",
            "Team",
        ),
        (
            "permit(principal, action == Action::\"tools/call\", resource) when { resource.getTag(\"x\") == \"y\" };",
            "tag",
        ),
        ("permit(principal, action, resource", "parse"),
        (
            "permit(principal, action == Action::\"tools/cal\", resource);",
            "tools/cal",
        ),
    ] {
        let err = Policies::compile(Some(bad), "p.cedar", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("p.cedar"), "{err}");
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{bad}: {err}"
        );
    }
}

#[test]
fn hostile_names_stay_data() {
    // A tool name that tries to close the string in a compiled rule.
    let evil = "x\" || true || \"";
    let p = Policies::compile(None, "t", &[rule(None, evil, &["s"])]).unwrap();
    let who = Who::new(&[], json!({"sub": "a"}));
    assert_eq!(
        p.decide(&who.caller(), &call("srv", "other", None)),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&who.caller(), &call("srv", evil, None)),
        Decision::NeedScopes(scopes(&["s"]))
    );
}

#[test]
fn reload_replaces_only_with_valid_policies() {
    let dir = std::env::temp_dir().join(format!("gh-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.cedar");
    std::fs::write(&path, "permit(principal, action, resource);").unwrap();
    let engine = Engine::load(Some(&path), vec![]).unwrap();
    let who = Who::new(&[], json!({"sub": "a"}));
    let decide = |e: &Engine| e.current().decide(&who.caller(), &call("s", "t", None));
    assert_eq!(decide(&engine), Decision::Allow);
    assert!(!engine.reload().unwrap());
    std::fs::write(&path, "forbid(principal, action, resource);").unwrap();
    assert!(engine.reload().unwrap());
    assert!(matches!(decide(&engine), Decision::Deny { .. }));
    // A broken edit is refused and the policies in force stay.
    std::fs::write(
        &path,
        "permit(principal, action, resource) when { nonsense };",
    )
    .unwrap();
    assert!(engine.reload().is_err());
    assert!(matches!(decide(&engine), Decision::Deny { .. }));
    // Reported once, not on every check.
    assert!(!engine.reload().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The principal entities kept between calls are found again only for the very same caller:
/// the same subject with other groups, tenant, client or scopes is decided on its own claims.
#[test]
fn kept_principals_never_stand_for_another_caller() {
    let p = operator_policies();
    let eng = Who::new(
        &["mcp:basic"],
        json!({"sub": "alice", "groups": ["engineering"]}),
    );
    // Same issuer and subject, another token: no longer in engineering.
    let moved = Who::new(&["mcp:basic"], json!({"sub": "alice", "groups": ["sales"]}));
    let echo = call("everything", "echo", None);
    for _ in 0..2 {
        assert_eq!(p.decide(&eng.caller(), &echo), Decision::Allow);
        assert_eq!(
            p.decide(&moved.caller(), &echo),
            Decision::Deny { policies: vec![] }
        );
    }
    // Scopes are part of the caller too: with and without the scope a rule asks for.
    let add = call("everything", "add", None);
    let with = Who::new(
        &["mcp:basic", "mcp:math"],
        json!({"sub": "alice", "groups": ["engineering"]}),
    );
    for _ in 0..2 {
        assert_eq!(p.decide(&with.caller(), &add), Decision::Allow);
        assert_eq!(
            p.decide(&eng.caller(), &add),
            Decision::NeedScopes(scopes(&["mcp:math"]))
        );
    }
    // Tenant and client.
    let fin = json!({"sub": "alice", "department": "finance"});
    let mut acme = Who::new(&["mcp:basic"], fin.clone());
    acme.tenant = Some("acme");
    let mut globex = Who::new(&["mcp:basic"], fin);
    globex.tenant = Some("globex");
    let ledger = call("ledger", "post", None);
    for _ in 0..2 {
        assert_eq!(p.decide(&acme.caller(), &ledger), Decision::Allow);
        assert!(matches!(
            p.decide(&globex.caller(), &ledger),
            Decision::Deny { .. }
        ));
    }
    let by_client = Policies::compile(
        Some(r#"permit(principal, action, resource) when { principal.client == "client-1" };"#),
        "client.cedar",
        &[],
    )
    .unwrap();
    let other_client = Caller {
        client: Some("client-2"),
        ..eng.caller()
    };
    for _ in 0..2 {
        assert_eq!(by_client.decide(&eng.caller(), &echo), Decision::Allow);
        assert!(matches!(
            by_client.decide(&other_client, &echo),
            Decision::Deny { .. }
        ));
    }
}

#[test]
fn kept_decisions_answer_only_the_same_request() {
    let p = operator_policies();
    let eng = Who::new(
        &["mcp:basic"],
        json!({"sub": "alice", "groups": ["engineering"]}),
    );
    let args = |m: &str| json!({"message": m}).as_object().cloned().unwrap();
    let (hello, secret) = (args("hello"), args("my password"));
    for round in 0..2 {
        assert_eq!(
            p.decide(&eng.caller(), &call("everything", "echo", Some(&hello))),
            Decision::Allow
        );
        // The same tool with other arguments is decided on its own.
        assert_eq!(
            p.decide(&eng.caller(), &call("everything", "echo", Some(&secret))),
            Decision::Deny {
                policies: vec!["echo no secrets".into()]
            }
        );
        // The same name on another server, or as another method, likewise.
        assert!(matches!(
            p.decide(&eng.caller(), &call("ledger", "echo", Some(&hello))),
            Decision::Deny { .. }
        ));
        let prompt = Ask {
            method: "prompts/get",
            ..call("everything", "echo", Some(&hello))
        };
        assert_eq!(p.decide(&eng.caller(), &prompt), Decision::Allow);
        if round == 0 {
            assert_eq!(p.principals.kept_decisions(), 4);
        }
    }
    assert_eq!(
        p.principals.kept_decisions(),
        4,
        "found again, not kept twice"
    );
    // Large arguments are decided every time, never kept.
    let big = args(&"x".repeat(KEPT_ASK_MAX_BYTES));
    for _ in 0..2 {
        assert_eq!(
            p.decide(&eng.caller(), &call("everything", "echo", Some(&big))),
            Decision::Allow
        );
    }
    let big_secret = args(&format!("{} password", "x".repeat(KEPT_ASK_MAX_BYTES)));
    assert!(matches!(
        p.decide(
            &eng.caller(),
            &call("everything", "echo", Some(&big_secret))
        ),
        Decision::Deny { .. }
    ));
    assert_eq!(p.principals.kept_decisions(), 4);
    // Nested arguments count whole.
    let nested = json!({"a": {"b": ["y".repeat(KEPT_ASK_MAX_BYTES)]}});
    assert!(!ask_fits(&call("everything", "echo", nested.as_object())));
    assert!(ask_fits(&call("everything", "echo", Some(&hello))));
}

#[test]
fn t22_other_methods_pass_only_when_a_permit_names_them() {
    let compiled = |text: Option<&str>| Policies::compile(text, "t", &[]).unwrap();
    assert!(!compiled(None).permits_other_methods(), "the default");
    assert!(!compiled(Some("permit(principal, action, resource);")).permits_other_methods());
    assert!(
        !compiled(Some(
            r#"forbid(principal, action == Action::"other", resource);"#
        ))
        .permits_other_methods()
    );
    assert!(
        compiled(Some(
            r#"permit(principal, action == Action::"other", resource in Server::"x");"#
        ))
        .permits_other_methods()
    );
    assert!(
        compiled(Some(
            r#"permit(principal, action in [Action::"ping", Action::"other"], resource);"#
        ))
        .permits_other_methods()
    );
}

/// Issue 17 part 4 (GW-A1): the verified delegation chain is in the policies' reach: a
/// sub-agent acting through an exchange is seen with its actors and depth, and a policy can
/// narrow what delegated callers may do; a malformed or too deep chain is denied.
#[test]
fn gw_a1_policies_see_the_actor_chain() {
    let p = Policies::compile(
        Some(
            r#"
permit(principal, action, resource);
@id("no deep delegation for writes")
forbid(principal, action == Action::"tools/call", resource == Tool::"notes/add")
  when { principal.delegation_depth > 1 };
@id("only the planner may delegate deletes")
forbid(principal, action == Action::"tools/call", resource == Tool::"notes/delete")
  when { principal.delegation_depth > 0 && !principal.actors.contains("planner") };
"#,
        ),
        "actors.cedar",
        &[],
    )
    .unwrap();
    let direct = Who::new(&["mcp:basic"], json!({"sub": "alice"}));
    let via_planner = Who::new(&[], json!({"sub": "alice", "act": {"sub": "planner"}}));
    let via_sub_agent = Who::new(
        &[],
        json!({"sub": "alice", "act": {"sub": "sub-agent", "act": {"sub": "planner"}}}),
    );
    let via_other = Who::new(&[], json!({"sub": "alice", "act": {"sub": "stranger"}}));
    let allowed = |w: &Who, tool: &str| {
        matches!(
            p.decide(&w.caller(), &call("notes", tool, None)),
            Decision::Allow
        )
    };
    assert!(allowed(&direct, "add") && allowed(&direct, "delete"));
    assert!(allowed(&via_planner, "add") && allowed(&via_planner, "delete"));
    assert!(!allowed(&via_sub_agent, "add"), "two hops may not write");
    assert!(
        allowed(&via_sub_agent, "delete"),
        "the planner is in the chain"
    );
    assert!(!allowed(&via_other, "delete"));
    assert_eq!(
        actor_chain(&via_sub_agent.claims).unwrap(),
        vec!["sub-agent".to_owned(), "planner".to_owned()]
    );
    // Malformed and over-deep chains are denied outright.
    let broken = Who::new(&[], json!({"sub": "alice", "act": "planner"}));
    assert!(!allowed(&broken, "echo"));
    let mut deep = json!({"sub": "a0"});
    for i in 1..=MAX_DELEGATION_DEPTH + 1 {
        deep = json!({"sub": format!("a{i}"), "act": deep});
    }
    let too_deep = Who::new(&[], json!({"sub": "alice", "act": deep}));
    assert!(!allowed(&too_deep, "echo"));
}
