#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        // Several header lines, as a client receives them.
        if let Ok(cs) = gatehouse_core::Challenge::parse_all(s.split('\n')) {
            if let Some(Ok(b)) = gatehouse_core::BearerChallenge::from_challenges(&cs) {
                // What we emit must parse again.
                let again = gatehouse_core::Challenge::parse_all([b.to_header_value().as_str()]);
                assert!(again.is_ok(), "own output does not parse");
            }
        }
    }
});
