//! `onhand keys create|list|revoke`: the API keys of the HTTP API, and the admin key of
//! `onhand dev`. A key is shown once, when it is created; the store keeps only the hash of
//! its secret, so a lost key is revoked and replaced, never recovered.

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write},
    path::Path,
};

use onhand_core::{
    auth::{ApiKey, Binding, KeyError, Scopes, Token},
    db::{DbError, Keys},
};

/// The file in `onhand dev`'s data directory that holds its admin key.
pub const DEV_KEY_FILE: &str = "dev-api-key";
/// Keys listed at most; a store with more is not what keys are for.
const LISTED_KEYS_MAX: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Invalid(#[from] KeyError),
    #[error("no active api key has the id {0:?}")]
    NotFound(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// A new key: what is stored, and the key itself, which nothing will show again.
#[derive(Debug)]
pub struct Created {
    pub key: ApiKey,
    pub plaintext: String,
}

/// Creates a key named `name` with `scopes` (comma- or space-separated), bound to the
/// source `bound_to` (`store:store-012`, `erp:erp-main`) when given.
pub async fn create(db: &dyn Keys, name: &str, scopes: &str, bound_to: Option<&str>) -> Result<Created, KeysError> {
    let token = Token::generate();
    let mut key = ApiKey::new(&token, name, Scopes::parse(scopes)?)?;
    key.bound_to = bound_to.map(Binding::parse).transpose()?;
    db.create_api_key(&key).await?;
    Ok(Created { key, plaintext: token.reveal() })
}

/// Every key, oldest first, revoked ones included.
pub async fn list(db: &dyn Keys) -> Result<Vec<ApiKey>, KeysError> {
    Ok(db.api_keys(LISTED_KEYS_MAX).await?)
}

/// Revokes the key `id`. Running instances refuse it once their cached copy expires
/// (`http.api_key_cache_ttl_s`).
pub async fn revoke(db: &dyn Keys, id: &str) -> Result<(), KeysError> {
    if db.revoke_api_key(id).await? {
        Ok(())
    } else {
        Err(KeysError::NotFound(id.to_string()))
    }
}

/// One line of `onhand keys list`.
pub fn describe(key: &ApiKey) -> String {
    let status = key.revoked_at.map_or_else(|| "active".to_string(), |at| format!("revoked {}", at.format("%F %T")));
    let bound = key.bound_to.as_ref().map_or_else(|| "-".to_string(), ToString::to_string);
    format!(
        "{}  {}  {:<27}  {:<40}  {:<24}  {}",
        key.id,
        key.created_at.format("%F %T"),
        status,
        key.scopes,
        bound,
        key.name
    )
}

/// The admin key of `onhand dev`, the same at every start: read from
/// `DATA_DIR/dev-api-key`, or created and written there (readable by its owner only) when
/// the file is missing or its key no longer works (the database was deleted, the key
/// revoked).
pub async fn dev_key(db: &dyn Keys, data_dir: &Path) -> Result<String, KeysError> {
    let path = data_dir.join(DEV_KEY_FILE);
    let file_error = |source| KeysError::File { path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Ok(token) = Token::parse(text.trim()) {
                if db.api_key(token.id()).await?.is_some_and(|key| key.verifies(&token)) {
                    return Ok(token.reveal());
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(e)),
    }
    let created = create(db, "dev", "admin", None).await?;
    write_private(&path, &created.plaintext).map_err(file_error)?;
    Ok(created.plaintext)
}

/// Writes a new file that only its owner may read. An old file is removed first, as
/// opening it would keep its permissions.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(format!("{text}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use onhand_core::db::SqliteDb;

    use super::*;

    async fn db(dir: &Path) -> Arc<dyn Keys> {
        Arc::new(SqliteDb::connect(&format!("sqlite://{}", dir.join("onhand.db").display())).await.unwrap())
    }

    #[tokio::test]
    async fn the_dev_key_is_created_once_and_read_back_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        let first = dev_key(&*db, dir.path()).await.unwrap();
        assert_eq!(dev_key(&*db, dir.path()).await.unwrap(), first, "the same key at the next start");
        let path = dir.path().join(DEV_KEY_FILE);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let keys = list(&*db).await.unwrap();
        assert_eq!((keys.len(), keys[0].name.as_str(), keys[0].scopes), (1, "dev", Scopes::admin()));

        // Revoked (or lost with its database): a new key replaces it in the file.
        revoke(&*db, &keys[0].id).await.unwrap();
        let second = dev_key(&*db, dir.path()).await.unwrap();
        assert_ne!(second, first);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), second);
    }

    #[tokio::test]
    async fn bad_names_scopes_and_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        assert!(matches!(
            create(&*db, "x", "stock:write", None).await,
            Err(KeysError::Invalid(KeyError::UnknownScope(_)))
        ));
        assert!(matches!(create(&*db, "", "admin", None).await, Err(KeysError::Invalid(KeyError::InvalidName))));
        assert!(matches!(revoke(&*db, "0123456789ab").await, Err(KeysError::NotFound(_))));
        assert!(list(&*db).await.unwrap().is_empty());
    }
}
