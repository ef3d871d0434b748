//! Where per-user upstream grants (GW-09) are kept: a trait, so the gateway needs no store. The
//! binary implements it over the authorization server's store, sealing each grant under the
//! key-encryption key with a label naming its owner and upstream (GW-12).
use crate::sessions::Owner;
use futures::future::BoxFuture;

/// A failure of the vault (store unreachable, a grant that does not open).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VaultError(pub String);

/// Sealed storage of one grant per (owner, upstream).
pub trait GrantVault: Send + Sync {
    fn load<'a>(
        &'a self,
        owner: &'a Owner,
        upstream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, VaultError>>;

    fn save<'a>(
        &'a self,
        owner: &'a Owner,
        upstream: &'a str,
        grant: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), VaultError>>;

    fn forget<'a>(
        &'a self,
        owner: &'a Owner,
        upstream: &'a str,
    ) -> BoxFuture<'a, Result<(), VaultError>>;
}
