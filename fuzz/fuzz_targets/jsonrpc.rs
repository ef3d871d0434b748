#![no_main]
// Input: "<mcp-method>\n<mcp-name>\n<body>".
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let method = parts.next().and_then(|m| std::str::from_utf8(m).ok());
    let name = parts.next().and_then(|m| std::str::from_utf8(m).ok());
    let body = parts.next().unwrap_or(data);
    for v in gatehouse_core::ProtocolVersion::ALL {
        if let Ok(p) = gatehouse_core::McpPeek::parse(body, v) {
            let _ = p.check_headers(method, name);
            let _ = p.tool_names().count();
        }
    }
});
