#![no_main]
// The aggregate's names and ids: a name it accepts is exactly `<upstream>__<name>` with a name
// an upstream could list; an id it wraps comes back unchanged to the upstream that sent it;
// template matching never panics. Input: "<name>\n<id as JSON>\n<template>\n<uri>".
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let name = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default();
    let template = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let ups = ["alpha", "beta-2", "x"];
    if let Ok((u, rest)) = gatehouse_gateway::aggregate::split_name(name, &ups) {
        assert!(ups.contains(&u));
        assert_eq!(format!("{u}{}{rest}", gatehouse_gateway::aggregate::SEPARATOR), name);
        assert!(gatehouse_gateway::aggregate::valid_member_name(rest));
        assert!(!rest.is_empty() && !rest.ends_with('_'));
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(id) {
        for u in ups {
            let wrapped = gatehouse_gateway::aggregate::wrap_id(u, &v);
            let back = wrapped
                .as_str()
                .and_then(gatehouse_gateway::aggregate::unwrap_id);
            assert_eq!(back, Some((u.to_owned(), v.clone())));
        }
    }
    let _ = gatehouse_gateway::aggregate::unwrap_id(id);
    let _ = gatehouse_gateway::aggregate::template_matches(template, uri);
});
