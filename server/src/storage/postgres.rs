//! PostgreSQL, for several stateless server instances sharing one database.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};

use super::DocumentChange;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel on which a trigger announces each committed change of a document's heads:
/// the writing instance's token, a space, the case id (migration `document_notify`).
const DOCUMENT_CHANNEL: &str = "doorstep_documents";

/// The `application_name` of the connection listening on [`DOCUMENT_CHANNEL`] (operators can
/// tell it from the pool's in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "doorstep-listener";

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

    /// Listens for the changes other instances announce, and passes on their case ids; after
    /// its connection is lost, listens again (every second until it can) and reports
    /// [`DocumentChange::Resumed`], since announcements made meanwhile are lost. Stops when
    /// the storage's pool closes or the receiver is dropped.
    async fn watch_other_writers(&self) -> StorageResult<Option<crate::storage::DocumentChanges>> {
        // A pool of its own: the listening connection is held for good, and would otherwise
        // be one less for the syncs.
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(LISTENER_APPLICATION_NAME);
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let mut listener = listen(&listener_pool).await?;
        let (changed, changes) = tokio::sync::mpsc::unbounded_channel();
        let own = format!("{} ", self.instance);
        let mut closed = self.pool.close_event();
        let watch = async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        let payload = notification.payload();
                        if payload.starts_with(&own) {
                            continue;
                        }
                        let Some((_, case_id)) = payload.split_once(' ') else {
                            continue;
                        };
                        if changed
                            .send(DocumentChange::Changed(case_id.to_owned()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    lost => {
                        if let Err(e) = lost {
                            tracing::warn!(error = %e, "listening for other instances' changes");
                        }
                        drop(listener);
                        listener = loop {
                            if changed.is_closed() {
                                return;
                            }
                            match listen(&listener_pool).await {
                                Ok(listener) => break listener,
                                Err(e) => {
                                    tracing::warn!(error = %e, "listening again for other instances' changes");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        };
                        if changed.send(DocumentChange::Resumed).is_err() {
                            return;
                        }
                    }
                }
            }
        };
        tokio::spawn(async move {
            // Err: the pool closed (the server stopping).
            let _ = closed.do_until(watch).await;
        });
        Ok(Some(changes))
    }
}

/// Connects a listener to the documents' channel.
async fn listen(pool: &sqlx::PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(DOCUMENT_CHANNEL).await?;
    Ok(listener)
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
