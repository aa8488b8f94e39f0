//! PostgreSQL, for several stateless server instances sharing one database.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel on which a trigger announces each committed change of a document's heads:
/// the writing instance's token, a space, the case id (migration `document_notify`).
const DOCUMENT_CHANNEL: &str = "doorstep_documents";

/// Storage in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: sqlx::PgPool,
    /// This instance's token, set on each of its connections, so that it can tell the changes
    /// other instances announce from its own.
    instance: String,
}

impl PostgresStorage {
    /// PostgreSQL needs no writer turn: concurrent writers lock only the rows they touch.
    async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        None
    }

    /// Connects to and migrates the database at `url` (`postgres://...`).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let token = instance.clone();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                let token = token.clone();
                Box::pin(async move {
                    sqlx::query("SELECT set_config('doorstep.instance', $1, false)")
                        .bind(token)
                        .execute(connection)
                        .await
                        .map(|_| ())
                })
            })
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStorage { pool, instance })
    }

    /// Listens for the changes other instances announce, and passes on their case ids.
    async fn watch_other_writers(&self) -> StorageResult<Option<crate::storage::DocumentChanges>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(DOCUMENT_CHANNEL).await?;
        let (changed, changes) = tokio::sync::mpsc::unbounded_channel();
        let own = format!("{} ", self.instance);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        let payload = notification.payload();
                        if payload.starts_with(&own) {
                            continue;
                        }
                        let Some((_, case_id)) = payload.split_once(' ') else {
                            continue;
                        };
                        if changed.send(case_id.to_owned()).is_err() {
                            return;
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        // The listener reconnects on its next receive; what commits meanwhile
                        // reaches clients when they next sync.
                        tracing::warn!(error = %e, "listening for other instances' changes");
                        if changed.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(changes))
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
