//! The embedded default: one SQLite file (WAL) in the data folder.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a write waits for SQLite's write lock before it fails ("database is locked").
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The page cache of each pooled connection, in KiB.
const SQLITE_PAGE_CACHE_KIB: u32 = 512;

/// How often committed pages are copied from the write-ahead log into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Storage in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: sqlx::SqlitePool,
    /// One transaction writes at a time (SQLite has one writer), sync or not. A WebSocket
    /// batch holds its write transaction through its Automerge work, seconds under load; a
    /// second one waiting on SQLite's own lock gives up after the busy timeout ("database is
    /// locked", seen on the interop benchmark's mass reconnect), while here it queues, in
    /// order. Every other write (a sign-in's token, a staff edit) queues here too: SQLite's
    /// busy handler retries at its own times and could find the lock taken by the next sync
    /// each time.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The background checkpointer, stopped when the last clone of this storage is dropped.
    _checkpointer: Arc<Checkpointer>,
}

/// Copies the write-ahead log into the database file in the background. SQLite's automatic
/// checkpoint runs inside the commit that fills the log past 1,000 pages, and a sync storing
/// a large case fills it often: a phone's one new visit waited about 6 ms longer for its
/// commit (interop bench, scenario 2: 18.5-21 ms, 11-13 ms with checkpoints off the commit).
/// A passive checkpoint takes no lock that writers or readers wait for.
#[derive(Debug)]
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Checkpointer {
    fn start(pool: sqlx::SqlitePool, every: Duration) -> Checkpointer {
        Checkpointer(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(%error, "write-ahead log checkpoint failed");
                }
            }
        }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SqliteStorage {
    /// Opens (creating it if missing) and migrates the database at `url` (`sqlite:path`).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        Self::connect_with_busy_timeout(url, BUSY_TIMEOUT).await
    }

    /// As [`SqliteStorage::connect`], with how long a write not in a sync transaction waits
    /// for SQLite's write lock.
    async fn connect_with_busy_timeout(url: &str, busy_timeout: Duration) -> StorageResult<Self> {
        Self::connect_with(url, busy_timeout, CHECKPOINT_EVERY).await
    }

    async fn connect_with(
        url: &str,
        busy_timeout: Duration,
        checkpoint_every: Duration,
    ) -> StorageResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed (acknowledged) sync survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout)
            // Each pooled connection keeps its own page cache (2 MB by default): 16 MB of the
            // heap at a mass reconnect (heaptrack), for pages the OS's file cache holds anyway.
            .pragma("cache_size", format!("-{SQLITE_PAGE_CACHE_KIB}"))
            // Checkpoints run in the background instead (`Checkpointer`).
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStorage {
            _checkpointer: Arc::new(Checkpointer::start(pool.clone(), checkpoint_every)),
            pool,
            writer: Arc::default(),
        })
    }
}

impl SqliteStorage {
    async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Some(Arc::clone(&self.writer).lock_owned().await)
    }

    /// One process owns an embedded database: no one else changes its documents.
    async fn watch_other_writers(&self) -> StorageResult<Option<crate::storage::DocumentChanges>> {
        Ok(None)
    }
}

/// SQLite's numbered placeholders (`?1`) for the shared SQL's `$1`.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    Cow::Owned(sql.replace('$', "?"))
}

super::sql::sql_storage! {
    storage: SqliteStorage,
    transaction: SqliteSyncTransaction,
    db: sqlx::Sqlite,
    sql: sqlite_sql,
    lock_document: "",
    // IMMEDIATE takes the write lock at once: a deferred transaction that reads and then
    // writes can fail with SQLITE_BUSY when another writer got in between.
    begin: |pool| pool.begin_with("BEGIN IMMEDIATE"),
    // Deferred: in WAL mode a read transaction sees one snapshot from its first read on.
    begin_read: |pool| pool.begin(),
}

super::evidence::evidence_sql! { storage: SqliteStorage, db: sqlx::Sqlite, sql: sqlite_sql }

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_pooled_connection_keeps_a_small_page_cache() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite:{}", dir.path().join("doorstep.db").display());
        let storage = SqliteStorage::connect(&url)
            .await
            .expect("the database opens");
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut connection = storage.pool.acquire().await.expect("a connection");
            let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut *connection)
                .await
                .expect("the pragma reads");
            assert_eq!(cache, -i64::from(SQLITE_PAGE_CACHE_KIB));
            held.push(connection);
        }
    }

    /// Commits leave their pages in the write-ahead log (no checkpoint in the commit, and
    /// 400 KB is below SQLite's automatic one anyway); the background checkpointer copies
    /// them into the database file.
    #[tokio::test]
    async fn the_log_is_copied_into_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("doorstep.db");
        let url = format!("sqlite:{}", path.display());
        let storage = SqliteStorage::connect_with(&url, BUSY_TIMEOUT, Duration::from_millis(50))
            .await
            .expect("the database opens");
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        for n in 0..200 {
            let school = crate::storage::School {
                id: format!("school-{n}"),
                name: format!("Invented School {n} {}", "x".repeat(2000)),
                created_at: 0,
            };
            storage.create_school(&school).await.expect("stored");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() < before + 200 * 2000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes",
                size()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `write` in a task while a sync transaction holds SQLite's write lock past the busy
    /// timeout (50 ms): it must wait its turn (still running after 500 ms), then succeed once
    /// the sync commits, rather than fail with "database is locked". Returns the storage and
    /// its folder.
    async fn waits_for_a_sync_however_long<F>(
        write: impl FnOnce(SqliteStorage) -> F,
    ) -> (tempfile::TempDir, SqliteStorage)
    where
        F: std::future::Future<Output = StorageResult<()>> + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite:{}", dir.path().join("doorstep.db").display());
        let storage = SqliteStorage::connect_with_busy_timeout(&url, Duration::from_millis(50))
            .await
            .expect("the database opens");
        // BEGIN IMMEDIATE: the sync holds SQLite's write lock from here.
        let sync = storage.begin_sync().await.expect("the sync begins");
        let write = tokio::spawn(write(storage.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!write.is_finished(), "the write did not wait for the sync");
        sync.commit().await.expect("the sync commits");
        write
            .await
            .expect("the task ends")
            .expect("the write waited, then wrote");
        (dir, storage)
    }

    /// A write outside any sync (a sign-in storing its refresh token) waits for the sync.
    #[tokio::test]
    async fn other_writes_wait_for_the_sync_writing_however_long() {
        let (_dir, storage) = waits_for_a_sync_however_long(|storage| async move {
            let school = crate::storage::School {
                id: "school-invented".into(),
                name: "Invented Primary".into(),
                created_at: 0,
            };
            storage.create_school(&school).await
        })
        .await;
        let stored = storage.school("school-invented").await.expect("reads");
        assert!(stored.is_some());
    }

    /// A second sync transaction waits for the first.
    #[tokio::test]
    async fn a_sync_transaction_waits_for_the_one_writing_however_long() {
        waits_for_a_sync_however_long(|storage| async move {
            let mut second = storage.begin_sync().await?;
            second
                .forget_sync_states("device-b", &["case-b".into()])
                .await?;
            second.commit().await
        })
        .await;
    }
}
