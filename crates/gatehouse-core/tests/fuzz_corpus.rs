//! Runs every fuzz seed in `fuzz/corpus/` through the parsers with the fuzz targets' invariants, so
//! the corpora stay valid and CI exercises them without cargo-fuzz. Fuzzing itself: see README.
use gatehouse_core::*;
use std::path::PathBuf;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read seed"))
        .collect();
    assert!(!out.is_empty(), "{target}: empty corpus");
    out.sort();
    out
}

#[test]
fn www_authenticate_seeds() {
    for d in seeds("www_authenticate") {
        let s = String::from_utf8(d).expect("utf8 seed");
        let cs = Challenge::parse_all(s.split('\n')).expect("seed parses");
        if let Some(Ok(b)) = BearerChallenge::from_challenges(&cs) {
            assert!(Challenge::parse_all([b.to_header_value().as_str()]).is_ok());
        }
    }
}

#[test]
fn scope_seeds() {
    for d in seeds("scope") {
        if let Ok(s) = std::str::from_utf8(&d)
            && let Ok(set) = ScopeSet::parse(s)
        {
            assert_eq!(ScopeSet::parse(&set.to_string()).expect("re-parses"), set);
        }
    }
}

#[test]
fn redirect_uri_seeds() {
    for d in seeds("redirect_uri") {
        let s = String::from_utf8_lossy(&d);
        let (reg, presented) = s.split_once('\n').expect("two lines");
        // Regression seeds hold registrations that must be refused.
        if let Ok(r) = RedirectUri::parse(reg) {
            assert!(r.matches(r.as_str()));
            if r.matches(presented) && presented != r.as_str() {
                assert!(
                    r.as_str().starts_with("http://127.") || r.as_str().starts_with("http://[::1]")
                );
            }
        }
    }
}

#[test]
fn jsonrpc_seeds() {
    for d in seeds("jsonrpc") {
        let mut parts = d.splitn(3, |b| *b == b'\n');
        let method = parts
            .next()
            .and_then(|m| std::str::from_utf8(m).ok())
            .filter(|m| !m.is_empty());
        let name = parts
            .next()
            .and_then(|m| std::str::from_utf8(m).ok())
            .filter(|m| !m.is_empty());
        let body = parts.next().expect("body");
        let p = McpPeek::parse(body, ProtocolVersion::V2025_03_26).expect("seed body parses");
        p.check_headers(method, name)
            .expect("seed headers agree with the body");
    }
}

#[test]
fn resource_url_seeds() {
    for d in seeds("resource_url") {
        let s = String::from_utf8(d).expect("utf8 seed");
        let (res, aud) = s.split_once('\n').expect("two lines");
        let r = Resource::parse(res).expect("seed resource is valid");
        assert_eq!(r.as_str(), res);
        assert!(r.matches_audience(res, AudiencePolicy::Exact));
        let _ = r.matches_audience(aud, AudiencePolicy::IgnoreTrailingSlash);
    }
}

#[test]
fn metadata_seeds() {
    for d in seeds("metadata") {
        let v: serde_json::Value = serde_json::from_slice(&d).expect("seed is JSON");
        if v.get("issuer").is_some() {
            let m: AuthorizationServerMetadata = serde_json::from_value(v).expect("AS metadata");
            m.check_issuer(&Issuer::parse(&m.issuer).expect("issuer"))
                .expect("own issuer");
        } else {
            let _: ProtectedResourceMetadata = serde_json::from_value(v).expect("PRM");
        }
    }
}
