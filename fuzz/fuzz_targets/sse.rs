#![no_main]
// The gateway's SSE reader: any bytes, cut into chunks at the positions the input names.
// Splitting into lines loses nothing and never holds more than a line's bound; rewriting events
// never panics, and the strict rewrite keeps only events that parse.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (cuts, body) = data.split_at(data.len().min(4));
    let mut chunks = Vec::new();
    let mut rest = body;
    for c in cuts {
        let at = usize::from(*c).min(rest.len());
        let (a, b) = rest.split_at(at);
        chunks.push(Ok::<_, std::convert::Infallible>(bytes::Bytes::copy_from_slice(a)));
        rest = b;
    }
    chunks.push(Ok(bytes::Bytes::copy_from_slice(rest)));
    let lines: Vec<bytes::Bytes> = futures::executor::block_on(futures::StreamExt::collect(
        gatehouse_gateway::sse::lines(futures::stream::iter(chunks)),
    ));
    let joined: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied()).collect();
    assert_eq!(joined, body, "lines lose nothing");
    assert!(lines.iter().all(|l| l.len() <= gatehouse_gateway::sse::MAX_LINE));
    let text = String::from_utf8_lossy(body);
    let kept = gatehouse_gateway::sse::map_events(&text, true, Some);
    for m in gatehouse_gateway::sse::messages(&kept) {
        assert!(serde_json::to_string(&m).is_ok());
    }
    let _ = gatehouse_gateway::sse::map_events(&text, false, |_| None);
});
