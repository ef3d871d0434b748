#![no_main]
// Input: "<registered>\n<presented>".
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let (reg, presented) = s.split_once('\n').unwrap_or((s, s));
        if let Ok(r) = gatehouse_core::RedirectUri::parse(reg) {
            assert!(r.matches(r.as_str()));
            if r.matches(presented) && presented != r.as_str() {
                // Only a loopback IP literal registration may match a different string.
                assert!(r.as_str().starts_with("http://127.") || r.as_str().starts_with("http://[::1]"));
            }
        }
    }
});
