use super::template_matches;

#[test]
fn aggregate_names_are_refused_unless_they_round_trip() {
    let ups = ["alpha", "beta-2"];
    assert_eq!(
        super::split_name("alpha__echo", &ups),
        Ok(("alpha", "echo"))
    );
    assert_eq!(
        super::split_name("beta-2__get_sum", &ups),
        Ok(("beta-2", "get_sum"))
    );
    // A name with the separator inside is the upstream's own.
    assert_eq!(
        super::split_name("alpha__a__b", &ups),
        Ok(("alpha", "a__b"))
    );
    for bad in [
        "alpha__",
        "alpha__echo__",
        "alpha___x",
        "__echo",
        "echo",
        "gamma__echo",
        "alpha__ec ho",
        "alpha__é",
    ] {
        assert!(super::split_name(bad, &ups).is_err(), "{bad}");
    }
    let long = format!("alpha__{}", "x".repeat(129));
    assert!(super::split_name(&long, &ups).is_err());
    let err = super::split_name(&format!("{}__x", "y".repeat(100_000)), &ups).expect_err("long");
    assert!(err.0.len() < 400, "the message clips what the caller sent");
}

#[test]
fn upstream_requests_to_the_client_get_ids_that_lead_back() {
    let line = b"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"sampling/createMessage\"}\r\n";
    let out = String::from_utf8(super::rewrite_line("conf", line).to_vec()).expect("utf8");
    assert!(out.ends_with("\r\n"), "{out:?}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim().trim_start_matches("data: ")).expect("json");
    assert_eq!(v["id"], "gh:conf:7");
    assert_eq!(
        super::unwrap_id("gh:conf:7"),
        Some(("conf".to_owned(), serde_json::json!(7)))
    );
    assert_eq!(
        super::unwrap_id("gh:a-b:\"x:y\""),
        Some(("a-b".to_owned(), serde_json::json!("x:y")))
    );
    assert_eq!(super::unwrap_id("7"), None);
    // Notifications and answers pass unchanged.
    for l in [
        &b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n"[..],
        b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n",
        b"event: message\n",
    ] {
        assert_eq!(&super::rewrite_line("conf", l)[..], l);
    }
}

#[test]
fn uri_templates_route_reads() {
    assert!(template_matches(
        "test://template/{id}/data",
        "test://template/123/data"
    ));
    assert!(!template_matches(
        "test://template/{id}/data",
        "test://template/1/2/data"
    ));
    assert!(!template_matches(
        "test://template/{id}/data",
        "test://template//data"
    ));
    assert!(template_matches("file:///{path}", "file:///notes"));
    assert!(!template_matches("file:///{path}", "file:///a/b"));
    assert!(!template_matches("a://{x}", "b://y"));
}
