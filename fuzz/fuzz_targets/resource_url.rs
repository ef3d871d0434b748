#![no_main]
// Input: "<resource>\n<audience>".
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let (res, aud) = s.split_once('\n').unwrap_or((s, s));
        if let Ok(r) = gatehouse_core::Resource::parse(res) {
            assert_eq!(r.as_str(), res, "no silent rewriting");
            assert!(r.matches_audience(res, gatehouse_core::AudiencePolicy::Exact));
            let _ = r.matches_audience(aud, gatehouse_core::AudiencePolicy::IgnoreTrailingSlash);
            assert!(r.prm_url().contains("/.well-known/oauth-protected-resource"));
        }
        if let Ok(i) = gatehouse_core::Issuer::parse(res) {
            assert!(!i.metadata_urls().is_empty());
        }
    }
});
