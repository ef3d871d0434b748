#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<gatehouse_core::AuthorizationServerMetadata>(data)
        && let Ok(i) = gatehouse_core::Issuer::parse(&m.issuer)
    {
        assert!(m.check_issuer(&i).is_ok());
    }
    let _ = serde_json::from_slice::<gatehouse_core::ProtectedResourceMetadata>(data);
});
