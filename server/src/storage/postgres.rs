//! PostgreSQL, for several stateless server instances sharing one database.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Storage in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: sqlx::PgPool,
}

impl PostgresStorage {
    /// PostgreSQL needs no writer turn: concurrent writers lock only the rows they touch.
    async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        None
    }

    /// Connects to and migrates the database at `url` (`postgres://...`).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStorage { pool })
    }
}

fn postgres_sql(sql: &str) -> Cow<'_, str> {
    Cow::Borrowed(sql)
}

super::sql::sql_storage! {
    storage: PostgresStorage,
    transaction: PostgresSyncTransaction,
    db: sqlx::Postgres,
    sql: postgres_sql,
    // Row lock on the document only (the sync state may not exist yet: outer join).
    lock_document: " FOR UPDATE OF d",
    begin: |pool| pool.begin(),
    // READ COMMITTED would give each statement its own snapshot: a sync committed between
    // reading a document and reading its changes made them disagree ("unavailable").
    begin_read: |pool| pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
}

super::evidence::evidence_sql! { storage: PostgresStorage, db: sqlx::Postgres, sql: postgres_sql }
