//! The one error type of control-plane storage (and of run history reads).

use tengine_core::secrets::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// `NotFound` when a write matched no row.
pub(crate) fn found(done: sqlx::postgres::PgQueryResult) -> StoreResult<()> {
    if done.rows_affected() == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// Whether a statement failed on a unique constraint (SQLSTATE 23505).
pub(crate) fn unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
