#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(set) = gatehouse_core::ScopeSet::parse(s)
    {
        let again = gatehouse_core::ScopeSet::parse(&set.to_string()).expect("formatted set re-parses");
        assert_eq!(set, again);
    }
});
