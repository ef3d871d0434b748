//! The token endpoint's two write operations for SQLite, each run whole by the combining writer
//! (see `writer.rs`). Same rules and the same SQL as the PostgreSQL versions in `ops.rs`; the
//! store suite runs both.
use crate::ops::{CLIENT_COLS, ClientRow};
use crate::{CodeRecord, GrantRecord, Redeemed, RefreshRecord, Rotated};
use rusqlite::{Connection, OptionalExtension, params};

const REVOKE_GRANT: &str =
    "UPDATE grants SET revoked_at = ?1 WHERE grant_id = ?2 AND revoked_at IS NULL";
const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens (token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt) VALUES (?1,?2,?3,?4,?5,?6,NULL,0,?7,?8)";
/// Using a token ends its parent's grace use and retires its siblings (other grace answers).
/// Siblings exist only if the parent had its grace use, which already set `reuse_count`: when
/// this update changes the row, there are none to retire.
/// See `ops::LOST_RACE`.
const LOST_RACE: &str = "SELECT COUNT(*) FROM refresh_tokens t WHERE t.token_hash = ?1 AND t.child_hash IS NOT NULL AND t.rotated_at >= ?2 AND NOT EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.rotated_at IS NOT NULL AND (s.token_hash = t.child_hash OR s.token_hash = t.grace_child))";

const END_PARENT_GRACE: &str =
    "UPDATE refresh_tokens SET reuse_count = 1 WHERE token_hash = ?1 AND reuse_count = 0";
const RETIRE_SIBLINGS: &str = "UPDATE refresh_tokens SET rotated_at = ?1, reuse_count = 1 WHERE token_hash IN (SELECT child_hash FROM refresh_tokens WHERE token_hash = ?2 UNION ALL SELECT grace_child FROM refresh_tokens WHERE token_hash = ?2) AND token_hash <> ?3 AND rotated_at IS NULL";

fn insert_refresh(c: &Connection, r: &RefreshRecord) -> rusqlite::Result<()> {
    c.prepare_cached(INSERT_REFRESH)?.execute(params![
        r.token_hash,
        r.grant_id,
        r.client_id,
        r.scope,
        r.resource,
        r.expires_at,
        r.parent_hash,
        r.dpop_jkt
    ])?;
    Ok(())
}

fn revoke_grant(c: &Connection, grant_id: &str, now: i64) -> rusqlite::Result<()> {
    c.prepare_cached(REVOKE_GRANT)?
        .execute(params![now, grant_id])?;
    Ok(())
}

pub(crate) fn redeem_code<E>(
    c: &Connection,
    code_hash: &str,
    now: i64,
    check: impl FnOnce(&CodeRecord) -> Result<Option<RefreshRecord>, E>,
) -> rusqlite::Result<Result<Redeemed, E>> {
    let row = c
        .prepare_cached("SELECT code_hash, grant_id, client_id, redirect_uri, code_challenge, scope, resource, subject, auth_time, expires_at, used_at, claims FROM auth_codes WHERE code_hash = ?1")?
        .query_row(params![code_hash], |r| {
            Ok(CodeRecord {
                code_hash: r.get(0)?,
                grant_id: r.get(1)?,
                client_id: r.get(2)?,
                redirect_uri: r.get(3)?,
                code_challenge: r.get(4)?,
                scope: r.get(5)?,
                resource: r.get(6)?,
                subject: r.get(7)?,
                auth_time: r.get(8)?,
                expires_at: r.get(9)?,
                used_at: r.get(10)?,
                claims: r.get(11)?,
            })
        })
        .optional()?;
    let Some(code) = row else {
        return Ok(Ok(Redeemed::Unknown));
    };
    if code.used_at.is_some() {
        // AS-08: only a replay that is itself fully valid (same client, right verifier and
        // redirect) revokes; anyone else's junk gets the check's error and changes nothing.
        if let Err(e) = check(&code) {
            return Ok(Err(e));
        }
        revoke_grant(c, &code.grant_id, now)?;
        return Ok(Ok(Redeemed::Replayed {
            grant_id: code.grant_id,
        }));
    }
    if code.expires_at <= now {
        return Ok(Ok(Redeemed::Expired));
    }
    let revoked: Option<Option<i64>> = c
        .prepare_cached("SELECT revoked_at FROM grants WHERE grant_id = ?1")?
        .query_row(params![code.grant_id], |r| r.get(0))
        .optional()?;
    if !matches!(revoked, Some(None)) {
        return Ok(Ok(Redeemed::Revoked));
    }
    let refresh = match check(&code) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    // One combining writer runs this, but the file may have other writers (admin CLI, replicas of
    // the sqlx pool): the update stays conditional.
    let marked = c
        .prepare_cached(
            "UPDATE auth_codes SET used_at = ?1 WHERE code_hash = ?2 AND used_at IS NULL",
        )?
        .execute(params![now, code_hash])?;
    if marked != 1 {
        revoke_grant(c, &code.grant_id, now)?;
        return Ok(Ok(Redeemed::Replayed {
            grant_id: code.grant_id,
        }));
    }
    if let Some(r) = refresh {
        insert_refresh(c, &r)?;
    }
    Ok(Ok(Redeemed::Fresh(Box::new(CodeRecord {
        used_at: Some(now),
        ..code
    }))))
}

pub(crate) fn rotate_refresh<E>(
    c: &Connection,
    token_hash: &str,
    now: i64,
    grace: i64,
    check: impl FnOnce(&RefreshRecord) -> Result<RefreshRecord, E>,
) -> rusqlite::Result<Result<Rotated, E>> {
    let row = c
        .prepare_cached("SELECT token_hash, grant_id, client_id, scope, resource, expires_at, rotated_at, reuse_count, parent_hash, dpop_jkt FROM refresh_tokens WHERE token_hash = ?1")?
        .query_row(params![token_hash], |r| {
            Ok(RefreshRecord {
                token_hash: r.get(0)?,
                grant_id: r.get(1)?,
                client_id: r.get(2)?,
                scope: r.get(3)?,
                resource: r.get(4)?,
                expires_at: r.get(5)?,
                rotated_at: r.get(6)?,
                reuse_count: r.get(7)?,
                parent_hash: r.get(8)?,
                dpop_jkt: r.get(9)?,
            })
        })
        .optional()?;
    let Some(old) = row else {
        return Ok(Ok(Rotated::Unknown));
    };
    let grant = c
        .prepare_cached("SELECT grant_id, subject, client_id, scope, resource, created_at, revoked_at, claims FROM grants WHERE grant_id = ?1")?
        .query_row(params![old.grant_id], |r| {
            Ok(GrantRecord {
                grant_id: r.get(0)?,
                subject: r.get(1)?,
                client_id: r.get(2)?,
                scope: r.get(3)?,
                resource: r.get(4)?,
                created_at: r.get(5)?,
                revoked_at: r.get(6)?,
                claims: r.get(7)?,
            })
        })
        .optional()?;
    let Some(grant) = grant.filter(|g| g.revoked_at.is_none()) else {
        return Ok(Ok(Rotated::Revoked));
    };
    if old.expires_at <= now {
        return Ok(Ok(Rotated::Expired));
    }
    if !crate::ops::may_rotate(&old, now, grace) {
        let raced: i64 = c
            .prepare_cached(LOST_RACE)?
            .query_row(params![token_hash, now - grace], |r| r.get(0))?;
        if raced > 0 {
            return Ok(Ok(Rotated::Raced));
        }
        revoke_grant(c, &old.grant_id, now)?;
        return Ok(Ok(Rotated::Reused {
            grant_id: old.grant_id,
        }));
    }
    let new = match check(&old) {
        Ok(n) => RefreshRecord {
            parent_hash: Some(old.token_hash.clone()),
            ..n
        },
        Err(e) => return Ok(Err(e)),
    };
    let mut grace_use = false;
    let rotated = c
        .prepare_cached(
            "UPDATE refresh_tokens SET rotated_at = ?1, child_hash = ?3 WHERE token_hash = ?2 AND rotated_at IS NULL",
        )?
        .execute(params![now, token_hash, new.token_hash])?;
    if rotated != 1 {
        grace_use = true;
        let again = c
            .prepare_cached("UPDATE refresh_tokens SET reuse_count = 1, grace_child = ?3 WHERE token_hash = ?1 AND reuse_count = 0 AND rotated_at >= ?2")?
            .execute(params![token_hash, now - grace, new.token_hash])?;
        if again != 1 {
            revoke_grant(c, &old.grant_id, now)?;
            return Ok(Ok(Rotated::Reused {
                grant_id: old.grant_id,
            }));
        }
    } else if let Some(parent) = &old.parent_hash
        && c.prepare_cached(END_PARENT_GRACE)?
            .execute(params![parent])?
            == 0
    {
        c.prepare_cached(RETIRE_SIBLINGS)?
            .execute(params![now, parent, old.token_hash])?;
    }
    insert_refresh(c, &new)?;
    Ok(Ok(Rotated::Ok {
        old,
        grant: Box::new(grant),
        grace: grace_use,
    }))
}

pub(crate) fn get_client(c: &Connection, client_id: &str) -> rusqlite::Result<Option<ClientRow>> {
    c.prepare_cached(&format!(
        "SELECT {CLIENT_COLS} FROM clients WHERE client_id = ?1"
    ))?
    .query_row(params![client_id], |r| {
        Ok(ClientRow {
            client_id: r.get(0)?,
            secret_hash: r.get(1)?,
            auth_method: r.get(2)?,
            redirect_uris: r.get(3)?,
            grant_types: r.get(4)?,
            client_name: r.get(5)?,
            scope: r.get(6)?,
            source: r.get(7)?,
            application_type: r.get(8)?,
            metadata: r.get(9)?,
            created_at: r.get(10)?,
            disabled_at: r.get(11)?,
        })
    })
    .optional()
}
