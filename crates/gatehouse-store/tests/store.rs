//! The same store suite against SQLite and PostgreSQL (issue 3, "Storage"). PostgreSQL is the
//! local server at 127.0.0.1:5432 (`scripts/setup` starts it); each run gets a fresh database.
use gatehouse_store::*;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000;

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        secret_hash: None,
        auth_method: "none".into(),
        redirect_uris: vec!["http://127.0.0.1/callback".into()],
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        client_name: Some("Test client".into()),
        scope: None,
        source: ClientSource::Dynamic,
        application_type: Some("native".into()),
        metadata: serde_json::json!({"client_name": "Test client"}),
        created_at: NOW,
        disabled: false,
    }
}

fn grant(id: &str) -> GrantRecord {
    GrantRecord {
        grant_id: id.into(),
        subject: "alice".into(),
        client_id: "c1".into(),
        scope: "mcp:basic".into(),
        resource: "https://mcp.example.com/mcp".into(),
        created_at: NOW,
        revoked_at: None,
        claims: Some(r#"{"groups":["engineering"]}"#.into()),
    }
}

fn code(hash: &str, grant_id: &str, expires_at: i64) -> CodeRecord {
    CodeRecord {
        code_hash: hash.into(),
        grant_id: grant_id.into(),
        client_id: "c1".into(),
        redirect_uri: "http://127.0.0.1:5555/callback".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        scope: "mcp:basic".into(),
        resource: "https://mcp.example.com/mcp".into(),
        subject: "alice".into(),
        auth_time: NOW,
        expires_at,
        used_at: None,
        claims: None,
    }
}

fn refresh(hash: &str, grant_id: &str) -> RefreshRecord {
    RefreshRecord {
        token_hash: hash.into(),
        grant_id: grant_id.into(),
        client_id: "c1".into(),
        scope: "mcp:basic".into(),
        resource: "https://mcp.example.com/mcp".into(),
        expires_at: NOW + 86_400,
        rotated_at: None,
        reuse_count: 0,
        parent_hash: None,
        dpop_jkt: None,
    }
}

/// RFC 9449 §5 (issue 17): a refresh token's DPoP binding is stored and read back, on both
/// backends, and its successor keeps what the issuer gives it.
async fn refresh_tokens_keep_their_dpop_binding(s: &Store) {
    s.insert_grant_with_code(&grant("gd"), &code("hd", "gd", NOW + 60))
        .await
        .expect("insert");
    s.redeem_code::<()>("hd", NOW, |c| {
        Ok(Some(RefreshRecord {
            dpop_jkt: Some("jkt-1".into()),
            ..refresh("dp1", &c.grant_id)
        }))
    })
    .await
    .expect("db")
    .expect("fresh");
    let r = s.get_refresh("dp1").await.expect("get").expect("stored");
    assert_eq!(r.dpop_jkt.as_deref(), Some("jkt-1"));
    let rotated = s
        .rotate_refresh::<()>("dp1", NOW + 1, 5, |o| {
            assert_eq!(
                o.dpop_jkt.as_deref(),
                Some("jkt-1"),
                "the check sees the binding"
            );
            Ok(RefreshRecord {
                dpop_jkt: o.dpop_jkt.clone(),
                ..refresh("dp2", &o.grant_id)
            })
        })
        .await
        .expect("db");
    assert!(matches!(rotated, Ok(Rotated::Ok { .. })));
    let r = s.get_refresh("dp2").await.expect("get").expect("stored");
    assert_eq!(r.dpop_jkt.as_deref(), Some("jkt-1"));
}

async fn clients_and_users(s: &Store) {
    s.insert_client(&client("c1")).await.expect("insert");
    assert!(matches!(
        s.insert_client(&client("c1")).await,
        Err(StoreError::Conflict(_))
    ));
    let got = s.get_client("c1").await.expect("get").expect("present");
    assert_eq!(got, client("c1"));
    let mut changed = client("c1");
    changed.redirect_uris = vec!["https://app.example/cb".into()];
    s.upsert_client(&changed).await.expect("upsert");
    assert_eq!(
        s.get_client("c1")
            .await
            .expect("get")
            .expect("present")
            .redirect_uris,
        changed.redirect_uris
    );
    s.insert_client(&client("c2")).await.expect("insert");
    assert_eq!(s.list_clients().await.expect("list").len(), 2);
    assert!(s.get_client("nope").await.expect("get").is_none());

    let u = UserRecord {
        username: "alice".into(),
        subject: "alice".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$x$y".into(),
        disabled: false,
        created_at: NOW,
    };
    s.insert_user(&u).await.expect("user");
    assert!(matches!(
        s.insert_user(&u).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        s.set_password("alice", "$argon2id$new", NOW)
            .await
            .expect("set")
    );
    assert_eq!(
        s.get_user("alice")
            .await
            .expect("get")
            .expect("present")
            .password_hash,
        "$argon2id$new"
    );
    assert!(!s.set_password("bob", "x", NOW).await.expect("set"));
}

/// T23 (issue 14, row 8): a password change, disabling a user and `admin revoke` end the
/// user's browser sessions, remembered consents and grants.
async fn incidents_end_sessions_consents_and_grants(s: &Store) {
    let u = UserRecord {
        username: "carol".into(),
        subject: "carol".into(),
        password_hash: "$argon2id$old".into(),
        disabled: false,
        created_at: NOW,
    };
    s.insert_user(&u).await.expect("user");
    let seed = |tag: &'static str| async move {
        s.insert_session(&SessionRecord {
            id_hash: format!("sess-{tag}"),
            subject: "carol".into(),
            auth_time: NOW,
            expires_at: NOW + 3600,
            claims: None,
        })
        .await
        .expect("session");
        s.put_consent(&ConsentRecord {
            subject: "carol".into(),
            client_id: "c1".into(),
            resource: "https://mcp.example.com/mcp".into(),
            scope: "mcp:basic".into(),
            redirect_uris: vec!["http://127.0.0.1:5555/callback".into()],
            granted_at: NOW,
        })
        .await
        .expect("consent");
        s.insert_grant(&GrantRecord {
            subject: "carol".into(),
            ..grant(&format!("gc-{tag}"))
        })
        .await
        .expect("grant");
    };
    let ended = |tag: &'static str| async move {
        assert_eq!(
            s.get_session(&format!("sess-{tag}"), NOW)
                .await
                .expect("get"),
            None,
            "{tag}: session ended"
        );
        assert_eq!(
            s.get_consent("carol", "c1", "https://mcp.example.com/mcp")
                .await
                .expect("get"),
            None,
            "{tag}: consent forgotten"
        );
        assert!(
            s.get_grant(&format!("gc-{tag}"))
                .await
                .expect("get")
                .expect("present")
                .revoked_at
                .is_some(),
            "{tag}: grant revoked"
        );
    };
    seed("passwd").await;
    assert!(
        s.set_password("carol", "$argon2id$new", NOW + 1)
            .await
            .expect("set")
    );
    ended("passwd").await;
    let revoked = s.revoked_since(NOW + 1).await.expect("revoked");
    assert!(
        revoked.contains(&("gc-passwd".to_owned(), NOW + 1)),
        "{revoked:?}"
    );
    seed("disable").await;
    assert!(
        s.set_disabled("carol", true, NOW + 2)
            .await
            .expect("disable")
    );
    ended("disable").await;
    assert!(
        s.get_user("carol")
            .await
            .expect("get")
            .expect("present")
            .disabled
    );
    assert!(
        s.set_disabled("carol", false, NOW + 3)
            .await
            .expect("enable")
    );
    seed("revoke").await;
    assert_eq!(
        s.revoke_grants_of("carol", None, NOW + 4)
            .await
            .expect("revoke"),
        1
    );
    ended("revoke").await;
    assert!(!s.set_disabled("nobody", true, NOW).await.expect("disable"));
}

/// T19, AS-26: counters in a window, shared through the store, with locks.
async fn throttles_count_lock_and_expire(s: &Store) {
    let lock = |n: i64| if n >= 3 { 100 } else { 0 };
    for n in 1..=2 {
        let t = s.bump_throttle("k", NOW, 60, lock).await.expect("bump");
        assert_eq!((t.count, t.locked_until), (n, 0));
    }
    let t = s.bump_throttle("k", NOW + 1, 60, lock).await.expect("bump");
    assert_eq!((t.count, t.locked_until), (3, NOW + 101));
    assert_eq!(
        s.get_throttle("k", NOW + 50)
            .await
            .expect("get")
            .map(|t| t.locked_until),
        Some(NOW + 101)
    );
    // A new window starts once the old one has passed; the lock is what keeps the row alive.
    let t = s
        .bump_throttle("k", NOW + 61, 60, |_| 0)
        .await
        .expect("bump");
    assert_eq!((t.count, t.window_start), (1, NOW + 61));
    s.clear_throttle("k").await.expect("clear");
    assert_eq!(s.get_throttle("k", NOW + 62).await.expect("get"), None);
    s.bump_throttle("old", NOW, 60, |_| 0).await.expect("bump");
    assert_eq!(
        s.get_throttle("old", NOW + 60).await.expect("get"),
        None,
        "expired"
    );
}

/// AS-26: self-registered clients that never got a grant expire; the operator's stay.
async fn unused_registrations_expire(s: &Store) {
    for (id, source) in [
        ("dcr-unused", ClientSource::Dynamic),
        ("dcr-used", ClientSource::Dynamic),
        ("cimd-unused", ClientSource::MetadataDocument),
        ("pre-unused", ClientSource::Preregistered),
    ] {
        s.insert_client(&ClientRecord {
            source,
            created_at: NOW - 10,
            disabled: false,
            ..client(id)
        })
        .await
        .expect("client");
    }
    s.insert_grant(&GrantRecord {
        client_id: "dcr-used".into(),
        ..grant("g-used")
    })
    .await
    .expect("grant");
    s.purge_unused_clients(NOW - 10).await.expect("purge");
    for id in ["dcr-unused", "cimd-unused"] {
        assert!(
            s.get_client(id).await.expect("get").is_some(),
            "{id} is young"
        );
    }
    assert!(s.purge_unused_clients(NOW - 5).await.expect("purge") >= 2);
    for (id, kept) in [
        ("dcr-unused", false),
        ("cimd-unused", false),
        ("dcr-used", true),
        ("pre-unused", true),
    ] {
        assert_eq!(s.get_client(id).await.expect("get").is_some(), kept, "{id}");
    }
}

/// T1, T20: consent is per user, client and resource, and remembers where codes went.
async fn consent_is_per_client(s: &Store) {
    const R: &str = "https://mcp.example.com/mcp";
    let c = ConsentRecord {
        subject: "alice".into(),
        client_id: "c1".into(),
        resource: R.into(),
        scope: "mcp:basic".into(),
        redirect_uris: vec!["http://127.0.0.1:5555/callback".into()],
        granted_at: NOW,
    };
    s.put_consent(&c).await.expect("put");
    assert_eq!(
        s.get_consent("alice", "c1", R).await.expect("get"),
        Some(c.clone())
    );
    assert_eq!(
        s.get_consent("alice", "c2", R).await.expect("get"),
        None,
        "T1: never shared across clients"
    );
    assert_eq!(
        s.get_consent("alice", "c1", "https://other.example.com/mcp")
            .await
            .expect("get"),
        None,
        "T20: never shared across resources"
    );
    assert_eq!(s.get_consent("bob", "c1", R).await.expect("get"), None);
    s.put_consent(&ConsentRecord {
        scope: "mcp:basic notes:write".into(),
        redirect_uris: vec![
            "http://127.0.0.1:5555/callback".into(),
            "http://127.0.0.1:6666/callback".into(),
        ],
        ..c
    })
    .await
    .expect("update");
    let got = s
        .get_consent("alice", "c1", R)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.scope, "mcp:basic notes:write");
    assert_eq!(got.redirect_uris.len(), 2);
}

/// AS-07, AS-08: codes are single-use; AS-32: a code whose grant was revoked is refused.
async fn codes_are_single_use(s: &Store) {
    s.insert_grant_with_code(&grant("g1"), &code("h1", "g1", NOW + 60))
        .await
        .expect("insert");
    // A failing check changes nothing.
    let r = s
        .redeem_code::<&str>("h1", NOW, |_| Err("wrong verifier"))
        .await
        .expect("db");
    assert_eq!(r, Err("wrong verifier"));
    let r = s
        .redeem_code::<()>("h1", NOW, |c| Ok(Some(refresh("r1", &c.grant_id))))
        .await
        .expect("db");
    assert!(
        matches!(r, Ok(Redeemed::Fresh(ref c)) if c.grant_id == "g1" && c.used_at == Some(NOW))
    );
    assert!(s.get_refresh("r1").await.expect("get").is_some());
    // AS-08 (issue 14, row 9): a replay that is not itself valid (another client, a junk
    // verifier) gets its error and revokes nothing.
    assert_eq!(
        s.redeem_code::<&str>("h1", NOW + 1, |_| Err("code was issued to another client"))
            .await
            .expect("db"),
        Err("code was issued to another client")
    );
    assert_eq!(
        s.get_grant("g1")
            .await
            .expect("get")
            .expect("present")
            .revoked_at,
        None
    );
    // T9: a valid replay is refused and revokes what the code issued.
    let r = s
        .redeem_code::<()>("h1", NOW + 1, |_| Ok(None))
        .await
        .expect("db");
    assert_eq!(
        r,
        Ok(Redeemed::Replayed {
            grant_id: "g1".into()
        })
    );
    let g1 = s.get_grant("g1").await.expect("get").expect("present");
    assert_eq!(g1.revoked_at, Some(NOW + 1));
    assert_eq!(
        g1.claims.as_deref(),
        Some(r#"{"groups":["engineering"]}"#),
        "claims round-trip"
    );
    let r = s
        .rotate_refresh::<()>("r1", NOW + 2, 5, |o| Ok(refresh("r2", &o.grant_id)))
        .await
        .expect("db");
    assert_eq!(r, Ok(Rotated::Revoked));

    s.insert_grant_with_code(&grant("g2"), &code("h2", "g2", NOW + 60))
        .await
        .expect("insert");
    assert_eq!(
        s.redeem_code::<()>("h2", NOW + 60, |_| Ok(None))
            .await
            .expect("db"),
        Ok(Redeemed::Expired)
    );
    // A code whose grant was revoked (client or user deleted) is refused and stays unused.
    s.insert_grant_with_code(&grant("g2r"), &code("h2r", "g2r", NOW + 60))
        .await
        .expect("insert");
    assert!(s.revoke_grant("g2r", NOW).await.expect("revoke"));
    for _ in 0..2 {
        assert_eq!(
            s.redeem_code::<()>("h2r", NOW + 1, |_| Ok(None))
                .await
                .expect("db"),
            Ok(Redeemed::Revoked)
        );
    }
    assert_eq!(
        s.redeem_code::<()>("nope", NOW, |_| Ok(None))
            .await
            .expect("db"),
        Ok(Redeemed::Unknown)
    );
}

async fn concurrent_redemption_has_one_winner(s: &Store) {
    s.insert_grant_with_code(&grant("g3"), &code("h3", "g3", NOW + 60))
        .await
        .expect("insert");
    let s = Arc::new(s.clone());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.redeem_code::<()>("h3", NOW, move |c| {
                    Ok(Some(refresh(&format!("race{i}"), &c.grant_id)))
                })
                .await
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.expect("join").expect("db") {
            Ok(Redeemed::Fresh(_)) => fresh += 1,
            Ok(Redeemed::Replayed { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one redemption wins");
}

/// AS-08, AS-29: writes that arrive together share a transaction on SQLite (group commit): a
/// redemption that fails must leave its code unused, and every other one must stand with a
/// working refresh token.
async fn concurrent_writes_stand_alone(s: &Store) {
    s.insert_grant_with_code(&grant("gdup"), &code("hdup", "gdup", NOW + 60))
        .await
        .expect("insert");
    // A refresh token that exists already: storing it again fails (unique hash).
    s.redeem_code::<()>("hdup", NOW, |c| Ok(Some(refresh("dup", &c.grant_id))))
        .await
        .expect("db")
        .expect("fresh");
    const N: usize = 64;
    for i in 0..N {
        let g = format!("gc{i}");
        s.insert_grant_with_code(&grant(&g), &code(&format!("hc{i}"), &g, NOW + 60))
            .await
            .expect("insert");
    }
    let fails = |i: usize| i % 8 == 3;
    let s2 = Arc::new(s.clone());
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let s = s2.clone();
            tokio::spawn(async move {
                let token = if fails(i) {
                    "dup".to_owned()
                } else {
                    format!("rc{i}")
                };
                s.redeem_code::<()>(&format!("hc{i}"), NOW, move |c| {
                    Ok(Some(refresh(&token, &c.grant_id)))
                })
                .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("join");
        if fails(i) {
            assert!(r.is_err(), "storing a duplicate token fails: {r:?}");
        } else {
            assert!(matches!(r, Ok(Ok(Redeemed::Fresh(_)))), "{i}: {r:?}");
        }
    }
    for i in 0..N {
        if fails(i) {
            // Undone whole: the code is still unused.
            let r = s
                .redeem_code::<()>(&format!("hc{i}"), NOW, move |c| {
                    Ok(Some(refresh(&format!("rc{i}"), &c.grant_id)))
                })
                .await
                .expect("db");
            assert!(matches!(r, Ok(Redeemed::Fresh(_))), "{i}: {r:?}");
        }
        // Every stored token works.
        let r = s
            .rotate_refresh::<()>(&format!("rc{i}"), NOW + 1, 5, move |o| {
                Ok(refresh(&format!("rc{i}b"), &o.grant_id))
            })
            .await
            .expect("db");
        assert!(
            matches!(r, Ok(Rotated::Ok { grace: false, .. })),
            "{i}: {r:?}"
        );
    }
}

async fn refresh_rotation_with_grace_and_reuse_detection(s: &Store) {
    s.insert_grant_with_code(&grant("g4"), &code("h4", "g4", NOW + 60))
        .await
        .expect("insert");
    s.redeem_code::<()>("h4", NOW, |c| Ok(Some(refresh("a1", &c.grant_id))))
        .await
        .expect("db")
        .expect("fresh");
    let r = s
        .rotate_refresh::<()>("a1", NOW + 10, 5, |o| Ok(refresh("a2", &o.grant_id)))
        .await
        .expect("db");
    assert!(matches!(r, Ok(Rotated::Ok { grace: false, .. })));
    // The racing twin of that refresh, 2 s later: accepted once (grace).
    let r = s
        .rotate_refresh::<()>("a1", NOW + 12, 5, |o| Ok(refresh("a2b", &o.grant_id)))
        .await
        .expect("db");
    assert!(matches!(r, Ok(Rotated::Ok { grace: true, .. })));
    assert_eq!(
        s.get_refresh("a2b")
            .await
            .expect("get")
            .expect("stored")
            .parent_hash
            .as_deref(),
        Some("a1")
    );
    // A third use within the window, no successor used yet: a lost race (issue 16), refused
    // without revoking; the chain goes on.
    let r = s
        .rotate_refresh::<()>("a1", NOW + 13, 5, |o| Ok(refresh("a3", &o.grant_id)))
        .await
        .expect("db");
    assert_eq!(r, Ok(Rotated::Raced));
    assert!(
        s.get_refresh("a3").await.expect("get").is_none(),
        "nothing stored"
    );
    let r = s
        .rotate_refresh::<()>("a2", NOW + 14, 5, |o| Ok(refresh("a4", &o.grant_id)))
        .await
        .expect("db");
    assert!(matches!(r, Ok(Rotated::Ok { grace: false, .. })), "{r:?}");
    // Once a successor was used, the same use is a replay: the family is revoked, including
    // the tokens it produced.
    let r = s
        .rotate_refresh::<()>("a1", NOW + 14, 5, |o| Ok(refresh("a3", &o.grant_id)))
        .await
        .expect("db");
    assert_eq!(
        r,
        Ok(Rotated::Reused {
            grant_id: "g4".into()
        })
    );
    assert_eq!(
        s.rotate_refresh::<()>("a4", NOW + 15, 5, |o| Ok(refresh("a5", &o.grant_id)))
            .await
            .expect("db"),
        Ok(Rotated::Revoked)
    );

    // Reuse after the grace window revokes too.
    s.insert_grant_with_code(&grant("g5"), &code("h5", "g5", NOW + 60))
        .await
        .expect("insert");
    s.redeem_code::<()>("h5", NOW, |c| Ok(Some(refresh("b1", &c.grant_id))))
        .await
        .expect("db")
        .expect("fresh");
    s.rotate_refresh::<()>("b1", NOW + 10, 5, |o| Ok(refresh("b2", &o.grant_id)))
        .await
        .expect("db")
        .expect("ok");
    let r = s
        .rotate_refresh::<()>("b1", NOW + 16, 5, |o| Ok(refresh("b3", &o.grant_id)))
        .await
        .expect("db");
    assert_eq!(
        r,
        Ok(Rotated::Reused {
            grant_id: "g5".into()
        })
    );
    // Issue 14, row 12: the grace ends as soon as the successor is used, and using one grace
    // twin retires the other (the family never has two live branches).
    s.insert_grant_with_code(&grant("g7"), &code("h7", "g7", NOW + 60))
        .await
        .expect("insert");
    s.redeem_code::<()>("h7", NOW, |c| Ok(Some(refresh("d1", &c.grant_id))))
        .await
        .expect("db")
        .expect("fresh");
    s.rotate_refresh::<()>("d1", NOW + 10, 5, |o| Ok(refresh("d2", &o.grant_id)))
        .await
        .expect("db")
        .expect("ok");
    s.rotate_refresh::<()>("d2", NOW + 11, 5, |o| Ok(refresh("d3", &o.grant_id)))
        .await
        .expect("db")
        .expect("successor used");
    assert_eq!(
        s.rotate_refresh::<()>("d1", NOW + 12, 5, |o| Ok(refresh("d4", &o.grant_id)))
            .await
            .expect("db"),
        Ok(Rotated::Reused {
            grant_id: "g7".into()
        }),
        "inside the grace window, but its successor was used: reuse"
    );
    s.insert_grant_with_code(&grant("g8"), &code("h8", "g8", NOW + 60))
        .await
        .expect("insert");
    s.redeem_code::<()>("h8", NOW, |c| Ok(Some(refresh("e1", &c.grant_id))))
        .await
        .expect("db")
        .expect("fresh");
    for (twin, grace) in [("e2a", false), ("e2b", true)] {
        let r = s
            .rotate_refresh::<()>("e1", NOW + 10, 5, |o| Ok(refresh(twin, &o.grant_id)))
            .await
            .expect("db");
        assert!(
            matches!(r, Ok(Rotated::Ok { grace: g, .. }) if g == grace),
            "{twin}"
        );
    }
    s.rotate_refresh::<()>("e2b", NOW + 11, 5, |o| Ok(refresh("e3", &o.grant_id)))
        .await
        .expect("db")
        .expect("one twin used");
    assert_eq!(
        s.rotate_refresh::<()>("e2a", NOW + 12, 5, |o| Ok(refresh("e4", &o.grant_id)))
            .await
            .expect("db"),
        Ok(Rotated::Reused {
            grant_id: "g8".into()
        }),
        "the other twin was retired when its sibling was used"
    );

    // A failing check (wrong client) changes nothing.
    s.insert_grant_with_code(&grant("g6"), &code("h6", "g6", NOW + 60))
        .await
        .expect("insert");
    s.redeem_code::<()>("h6", NOW, |c| Ok(Some(refresh("c1r", &c.grant_id))))
        .await
        .expect("db")
        .expect("fresh");
    assert_eq!(
        s.rotate_refresh::<&str>("c1r", NOW, 5, |_| Err("client mismatch"))
            .await
            .expect("db"),
        Err("client mismatch")
    );
    assert!(matches!(
        s.rotate_refresh::<()>("c1r", NOW, 5, |o| Ok(refresh("c2r", &o.grant_id)))
            .await
            .expect("db"),
        Ok(Rotated::Ok { grace: false, .. })
    ));
    assert_eq!(
        s.rotate_refresh::<()>("zzz", NOW, 5, |o| Ok(refresh("x", &o.grant_id)))
            .await
            .expect("db"),
        Ok(Rotated::Unknown)
    );
}

async fn keys_sessions_pending(s: &Store) {
    let k = |kid: &str, at: i64| KeyRecord {
        kid: kid.into(),
        alg: "ES256".into(),
        private_der: "AA".into(),
        public_jwk: "{}".into(),
        created_at: at,
        retired_at: None,
    };
    s.insert_key(&k("k1", NOW)).await.expect("key");
    s.rotate_key(&k("k2", NOW + 10), NOW + 10)
        .await
        .expect("rotate");
    let keys = s.list_keys().await.expect("list");
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        vec!["k2", "k1"]
    );
    assert_eq!(keys[0].retired_at, None);
    assert_eq!(keys[1].retired_at, Some(NOW + 10));
    assert_eq!(s.purge_keys(NOW + 11).await.expect("purge"), 1);

    let sess = SessionRecord {
        id_hash: "s1".into(),
        subject: "alice".into(),
        auth_time: NOW,
        expires_at: NOW + 100,
        claims: Some(r#"{"email":"a@example.com"}"#.into()),
    };
    s.insert_session(&sess).await.expect("session");
    assert_eq!(s.get_session("s1", NOW).await.expect("get"), Some(sess));
    assert_eq!(
        s.get_session("s1", NOW + 100).await.expect("get"),
        None,
        "expired"
    );
    let p = PendingRecord {
        id_hash: "p1".into(),
        request: "{}".into(),
        binding_hash: "b".into(),
        csrf_hash: "c".into(),
        expires_at: NOW + 600,
    };
    s.insert_pending(&p).await.expect("pending");
    assert_eq!(s.get_pending("p1", NOW).await.expect("get"), Some(p));
    assert!(s.take_pending("p1").await.expect("take"));
    assert!(!s.take_pending("p1").await.expect("take"), "single use");
    // Upstream logins: single use, and only while fresh.
    let up = UpstreamLoginRecord {
        state_hash: "st".into(),
        pending_hash: "p2".into(),
        verifier: "v".into(),
        nonce: "n".into(),
        expires_at: NOW + 600,
    };
    s.insert_upstream_login(&up).await.expect("insert");
    assert_eq!(
        s.take_upstream_login("st", NOW).await.expect("take"),
        Some(up.clone())
    );
    assert_eq!(
        s.take_upstream_login("st", NOW).await.expect("take"),
        None,
        "single use"
    );
    s.insert_upstream_login(&UpstreamLoginRecord {
        state_hash: "old".into(),
        ..up
    })
    .await
    .expect("insert");
    assert_eq!(
        s.take_upstream_login("old", NOW + 601).await.expect("take"),
        None,
        "expired"
    );
    assert!(s.purge_expired(NOW + 1_000_000).await.expect("purge") >= 1);
}

async fn deleting_revokes(s: &Store) {
    s.insert_grant(&grant("g9")).await.expect("grant");
    assert!(s.delete_client("c1", NOW + 5).await.expect("delete"));
    assert!(s.get_client("c1").await.expect("get").is_none());
    assert_eq!(
        s.get_grant("g9")
            .await
            .expect("get")
            .expect("present")
            .revoked_at,
        Some(NOW + 5)
    );
    assert!(s.delete_user("alice", NOW).await.expect("delete"));
    assert!(!s.delete_user("alice", NOW).await.expect("delete"));
}

/// RFC 8628 (DG-3, DG-4): one answer per request, polls paced, one token per device code, a
/// second use revokes, expiry and other clients' codes give nothing.
async fn device_codes_answer_once_pace_polls_and_issue_once(s: &Store) {
    let dev = |h: &str, u: &str, expires_at: i64| DeviceRecord {
        device_hash: h.into(),
        user_code_hash: u.into(),
        client_id: "c1".into(),
        scope: "mcp:basic".into(),
        resource: "https://mcp.example.com/mcp".into(),
        expires_at,
        interval_secs: 5,
        last_poll_at: None,
        status: "pending".into(),
        grant_id: None,
        subject: None,
        claims: None,
    };
    s.insert_device(&dev("d1", "u1", NOW + 600))
        .await
        .expect("insert");
    assert!(
        matches!(
            s.insert_device(&dev("d2", "u1", NOW + 600)).await,
            Err(StoreError::Conflict(_))
        ),
        "a live user code is unique"
    );
    s.insert_device(&dev("d2", "u2", NOW + 600))
        .await
        .expect("insert");
    s.insert_device(&dev("d3", "u3", NOW + 10))
        .await
        .expect("insert");
    let found = s
        .device_by_user_code("u1", NOW)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(found.device_hash, "d1");
    assert!(
        s.device_by_user_code("nope", NOW)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        s.device_by_user_code("u3", NOW + 10)
            .await
            .expect("get")
            .is_none(),
        "expired"
    );
    let none = |_: &DeviceRecord| Ok::<_, ()>(None);
    let poll = |h: &'static str, c: &'static str, at: i64| async move {
        s.poll_device(h, c, at, none)
            .await
            .expect("poll")
            .expect("check")
    };
    assert!(matches!(poll("d1", "c1", NOW).await, DevicePoll::Pending));
    assert!(matches!(
        poll("d1", "c1", NOW + 1).await,
        DevicePoll::SlowDown
    ));
    // The interval is now 10 s (less a second of jitter); too soon again: 15 s.
    assert!(matches!(
        poll("d1", "c1", NOW + 6).await,
        DevicePoll::SlowDown
    ));
    assert!(matches!(
        poll("d1", "c1", NOW + 20).await,
        DevicePoll::Pending
    ));
    assert!(matches!(
        poll("d1", "other", NOW + 40).await,
        DevicePoll::Unknown
    ));
    // Approve d1 (the grant is stored with it), deny d2; each only once.
    let mut g = grant("g-dev");
    g.client_id = "c1".into();
    assert!(
        s.decide_device("d1", Some(&g), NOW + 30)
            .await
            .expect("decide")
    );
    assert!(
        !s.decide_device("d1", None, NOW + 30).await.expect("decide"),
        "answered once"
    );
    assert!(s.get_grant("g-dev").await.expect("grant").is_some());
    assert!(s.decide_device("d2", None, NOW + 30).await.expect("decide"));
    assert!(s.get_grant("nope").await.expect("grant").is_none());
    // A check that fails leaves the code usable.
    let r = s
        .poll_device("d1", "c1", NOW + 60, |_| {
            Err::<Option<RefreshRecord>, _>("wrong resource")
        })
        .await
        .expect("poll");
    assert!(matches!(r, Err("wrong resource")));
    let issued = s
        .poll_device("d1", "c1", NOW + 80, |d| {
            Ok::<_, ()>(Some(RefreshRecord {
                grant_id: d.grant_id.clone().unwrap_or_default(),
                ..refresh("rt-dev", "")
            }))
        })
        .await
        .expect("poll")
        .expect("check");
    let DevicePoll::Issued(d) = issued else {
        panic!("issued: {issued:?}")
    };
    assert_eq!(
        (d.subject.as_deref(), d.grant_id.as_deref()),
        (Some("alice"), Some("g-dev"))
    );
    assert_eq!(
        s.get_refresh("rt-dev")
            .await
            .expect("rt")
            .expect("stored")
            .grant_id,
        "g-dev"
    );
    // Used again: the grant is revoked.
    assert!(matches!(
        poll("d1", "c1", NOW + 100).await,
        DevicePoll::Replayed { .. }
    ));
    assert!(
        s.get_grant("g-dev")
            .await
            .expect("grant")
            .expect("g")
            .revoked_at
            .is_some()
    );
    assert!(matches!(
        poll("d2", "c1", NOW + 80).await,
        DevicePoll::Denied
    ));
    assert!(matches!(
        poll("d3", "c1", NOW + 80).await,
        DevicePoll::Expired
    ));
    assert!(
        !s.decide_device("d3", Some(&grant("g-late")), NOW + 80)
            .await
            .expect("decide"),
        "expired"
    );
    // Approved, then its grant revoked (admin revoke, user deleted) before the device polled:
    // nothing is issued, and the code is not spent.
    s.insert_device(&dev("d4", "u4", NOW + 600))
        .await
        .expect("insert");
    let mut g4 = grant("g-dev4");
    g4.client_id = "c1".into();
    assert!(
        s.decide_device("d4", Some(&g4), NOW + 80)
            .await
            .expect("decide")
    );
    assert!(s.revoke_grant("g-dev4", NOW + 81).await.expect("revoke"));
    let issue = |_: &DeviceRecord| Ok::<_, ()>(Some(refresh("rt-dev4", "g-dev4")));
    let r = s
        .poll_device("d4", "c1", NOW + 90, issue)
        .await
        .expect("poll")
        .expect("check");
    assert!(matches!(r, DevicePoll::Revoked), "{r:?}");
    assert!(s.get_refresh("rt-dev4").await.expect("rt").is_none());
    assert!(s.purge_expired(NOW + 700).await.expect("purge") >= 3);
    assert!(matches!(
        poll("d1", "c1", NOW + 800).await,
        DevicePoll::Unknown
    ));
}

/// Issue 18 (CO-3): what the console and the account page read and change, on both backends.
async fn console_operations(s: &Store) {
    // A disabled client is read as disabled; disabling revokes its grants and consents;
    // enabling does not bring them back.
    s.insert_client(&ClientRecord {
        secret_hash: Some("old-hash".into()),
        auth_method: "client_secret_basic".into(),
        ..client("con-c")
    })
    .await
    .expect("client");
    s.insert_grant(&GrantRecord {
        client_id: "con-c".into(),
        subject: "con-u".into(),
        ..grant("con-g1")
    })
    .await
    .expect("grant");
    s.put_consent(&ConsentRecord {
        subject: "con-u".into(),
        client_id: "con-c".into(),
        resource: "https://mcp.example.com/mcp".into(),
        scope: "mcp:basic".into(),
        redirect_uris: vec![],
        granted_at: NOW,
    })
    .await
    .expect("consent");
    assert_eq!(s.approved_apps("con-u").await.expect("apps").len(), 1);
    assert!(
        s.set_client_disabled("con-c", true, NOW + 1)
            .await
            .expect("disable")
    );
    assert!(
        s.get_client("con-c")
            .await
            .expect("get")
            .expect("kept")
            .disabled
    );
    assert_eq!(
        s.get_grant("con-g1")
            .await
            .expect("g")
            .expect("g")
            .revoked_at,
        Some(NOW + 1)
    );
    assert!(s.approved_apps("con-u").await.expect("apps").is_empty());
    assert!(
        s.set_client_disabled("con-c", false, NOW + 2)
            .await
            .expect("enable")
    );
    assert!(
        !s.get_client("con-c")
            .await
            .expect("get")
            .expect("kept")
            .disabled
    );
    assert!(
        !s.set_client_disabled("no-such", true, NOW)
            .await
            .expect("db")
    );
    // A secret is replaced only where there is one.
    assert!(
        s.set_client_secret("con-c", "new-hash")
            .await
            .expect("rotate")
    );
    assert_eq!(
        s.get_client("con-c")
            .await
            .expect("get")
            .expect("c")
            .secret_hash
            .as_deref(),
        Some("new-hash")
    );
    s.insert_client(&client("con-public"))
        .await
        .expect("client");
    assert!(!s.set_client_secret("con-public", "x").await.expect("db"));
    assert_eq!(
        s.get_client("con-public")
            .await
            .expect("get")
            .expect("c")
            .secret_hash,
        None
    );

    // Approved apps: a consent and live grants of one client and resource are one entry with
    // the scopes of both; last use is the newest rotation of the grant's refresh tokens.
    let res = "https://mcp.example.com/mcp";
    s.put_consent(&ConsentRecord {
        subject: "con-v".into(),
        client_id: "con-public".into(),
        resource: res.into(),
        scope: "mcp:basic".into(),
        redirect_uris: vec!["http://127.0.0.1/callback".into()],
        granted_at: NOW,
    })
    .await
    .expect("consent");
    s.insert_grant_with_code(
        &GrantRecord {
            client_id: "con-public".into(),
            subject: "con-v".into(),
            scope: "mcp:basic offline_access".into(),
            created_at: NOW + 5,
            ..grant("con-g2")
        },
        &CodeRecord {
            client_id: "con-public".into(),
            subject: "con-v".into(),
            ..code("con-h2", "con-g2", NOW + 60)
        },
    )
    .await
    .expect("grant");
    s.redeem_code::<()>("con-h2", NOW + 6, |c| {
        Ok(Some(refresh("con-r1", &c.grant_id)))
    })
    .await
    .expect("db")
    .expect("fresh");
    s.rotate_refresh::<()>("con-r1", NOW + 100, 5, |o| {
        Ok(refresh("con-r2", &o.grant_id))
    })
    .await
    .expect("db")
    .expect("rotated");
    // Another resource of the same client is another entry.
    s.insert_grant(&GrantRecord {
        client_id: "con-public".into(),
        subject: "con-v".into(),
        resource: "https://other.example.com/mcp".into(),
        created_at: NOW + 7,
        ..grant("con-g3")
    })
    .await
    .expect("grant");
    let apps = s.approved_apps("con-v").await.expect("apps");
    assert_eq!(apps.len(), 2, "{apps:?}");
    assert_eq!(apps[0].resource, res, "most recently used first");
    assert_eq!(apps[0].scope, "mcp:basic offline_access");
    assert_eq!(apps[0].granted_at, NOW);
    assert_eq!(apps[0].last_used_at, Some(NOW + 100));
    assert_eq!(apps[0].live_grants, 1);
    assert_eq!(apps[1].last_used_at, Some(NOW + 7));
    // Revoking one app ends its consent and grants only.
    assert_eq!(
        s.revoke_approval("con-v", "con-public", res, NOW + 200)
            .await
            .expect("revoke"),
        1
    );
    assert!(
        s.get_consent("con-v", "con-public", res)
            .await
            .expect("db")
            .is_none()
    );
    assert_eq!(
        s.get_grant("con-g2")
            .await
            .expect("g")
            .expect("g")
            .revoked_at,
        Some(NOW + 200)
    );
    assert_eq!(
        s.get_grant("con-g3")
            .await
            .expect("g")
            .expect("g")
            .revoked_at,
        None
    );
    let apps = s.approved_apps("con-v").await.expect("apps");
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].resource, "https://other.example.com/mcp");
    assert!(
        s.list_consents(1000)
            .await
            .expect("list")
            .iter()
            .all(|c| c.subject != "con-v")
    );

    // Sessions: expired ones are not listed.
    for (id, exp) in [("con-s1", NOW + 3600), ("con-s2", NOW - 1)] {
        s.insert_session(&SessionRecord {
            id_hash: id.into(),
            subject: "con-v".into(),
            auth_time: NOW - 10,
            expires_at: exp,
            claims: None,
        })
        .await
        .expect("session");
    }
    let live: Vec<String> = s
        .list_sessions(NOW, 1000)
        .await
        .expect("sessions")
        .into_iter()
        .map(|x| x.id_hash)
        .collect();
    assert!(live.contains(&"con-s1".to_owned()) && !live.contains(&"con-s2".to_owned()));

    // Counts, and lists cut at their limit (newest first).
    let counts = s.console_counts(NOW).await.expect("counts");
    assert!(counts.clients >= 2 && counts.sessions >= 1, "{counts:?}");
    assert_eq!(
        counts.clients as usize,
        s.list_clients().await.expect("all").len()
    );
    let newest = s.list_clients_newest(1).await.expect("newest");
    assert_eq!(newest.len(), 1);
    assert!(
        s.list_clients()
            .await
            .expect("all")
            .iter()
            .all(|c| c.created_at <= newest[0].created_at)
    );
    assert_eq!(s.list_sessions(NOW, 1).await.expect("one").len(), 1);
    // Console actions, newest first.
    for (i, action) in ["client.add", "client.disable"].into_iter().enumerate() {
        s.insert_admin_event(&AdminEvent {
            event_id: format!("{i:020}-x"),
            at: NOW,
            actor: "admin".into(),
            action: action.into(),
            target: "con-c".into(),
            detail: String::new(),
        })
        .await
        .expect("event");
    }
    let ev = s.admin_events(10).await.expect("events");
    assert_eq!(
        ev.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["client.disable", "client.add"]
    );
}

async fn suite(s: Store) {
    clients_and_users(&s).await;
    consent_is_per_client(&s).await;
    incidents_end_sessions_consents_and_grants(&s).await;
    throttles_count_lock_and_expire(&s).await;
    unused_registrations_expire(&s).await;
    codes_are_single_use(&s).await;
    concurrent_redemption_has_one_winner(&s).await;
    concurrent_writes_stand_alone(&s).await;
    refresh_rotation_with_grace_and_reuse_detection(&s).await;
    refresh_tokens_keep_their_dpop_binding(&s).await;
    keys_sessions_pending(&s).await;
    deleting_revokes(&s).await;
    device_codes_answer_once_pace_polls_and_issue_once(&s).await;
    console_operations(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_suite() {
    let dir = std::env::temp_dir().join(format!("gatehouse-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("test.db");
    let _ = std::fs::remove_file(&path);
    let s = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .expect("open sqlite");
    assert_eq!(s.backend(), "sqlite");
    suite(s.clone()).await;
    s.close().await;
    // Reopening runs migrations idempotently and finds the data.
    let s = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .expect("reopen");
    assert!(s.get_client("c2").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_suite() {
    let admin_url = std::env::var("GATEHOUSE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!("gatehouse_test_{}_{}", std::process::id(), NOW % 1000);
    let admin = sqlx::PgPool::connect(&admin_url).await.expect(
        "PostgreSQL at 127.0.0.1:5432 (scripts/setup starts it; set GATEHOUSE_TEST_POSTGRES to override)",
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&admin)
        .await
        .expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .expect("create");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("bad admin URL"),
    };
    let s = Store::open(&url).await.expect("open postgres");
    assert_eq!(s.backend(), "postgres");
    suite(s.clone()).await;
    s.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&admin)
        .await
        .expect("drop");
}
