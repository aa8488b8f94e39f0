//! The SQL shared by both backends, written once and expanded for each by [`sql_storage!`].
//!
//! The SQL uses PostgreSQL's `$1` placeholders; the SQLite backend turns them into SQLite's
//! numbered `?1` form (same meaning). A macro rather than a generic type: sqlx's generic
//! executor bounds would swamp the queries, and the two expansions differ only in the
//! database type, the placeholder form, row locking and how a write transaction begins.

/// Expands to the [`Storage`](super::Storage) impl for `$storage` (a struct with a
/// `pool: sqlx::Pool<$db>` field) and its [`SyncTransaction`](super::SyncTransaction) type.
macro_rules! sql_storage {
    (
        storage: $storage:ident,
        transaction: $txn:ident,
        db: $db:ty,
        sql: $sql:path,
        lock_document: $lock:literal,
        begin: |$pool:ident| $begin:expr,
        begin_read: |$read_pool:ident| $begin_read:expr $(,)?
    ) => {
        use async_trait::async_trait;
        use sqlx::Row;

        use crate::storage::{
            AllocatedDocument, Case, Device, DocumentWrite, GraphChange, LoadedDocument, NewChange,
            Provenance, RefreshToken, Role, Rotation, School, Storage, StorageError,
            StorageResult, StoredChange, StoredDocument, SyncTransaction, User, WebSession,
        };

        type DbRow = <$db as sqlx::Database>::Row;

        fn user_from_row(row: &DbRow) -> StorageResult<User> {
            let role: String = row.try_get("role")?;
            Ok(User {
                id: row.try_get("id")?,
                school_id: row.try_get("school_id")?,
                username: row.try_get("username")?,
                display_name: row.try_get("display_name")?,
                role: role.parse::<Role>()?,
                password_hash: row.try_get("password_hash")?,
                created_at: row.try_get("created_at")?,
                disabled_at: row.try_get("disabled_at")?,
            })
        }

        fn device_from_row(row: &DbRow) -> StorageResult<Device> {
            Ok(Device {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                actor_id: row.try_get("actor_id")?,
                name: row.try_get("name")?,
                created_at: row.try_get("created_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        const USER_COLUMNS: &str =
            "id, school_id, username, display_name, role, password_hash, created_at, disabled_at";
        const DEVICE_COLUMNS: &str = "id, user_id, actor_id, name, created_at, revoked_at";

        impl $storage {
            /// Begins a transaction that will write.
            async fn begin_write(&self) -> StorageResult<sqlx::Transaction<'static, $db>> {
                let $pool = &self.pool;
                Ok($begin.await?)
            }

            /// Begins a transaction that only reads, from one snapshot of the database: a
            /// document's row and its change rows must agree (its heads are checked against
            /// the graph built from its changes).
            async fn begin_read(&self) -> StorageResult<sqlx::Transaction<'static, $db>> {
                let $read_pool = &self.pool;
                Ok($begin_read.await?)
            }
        }

        async fn insert_change(
            tx: &mut sqlx::Transaction<'static, $db>,
            case_id: &str,
            change: &NewChange,
            device_id: Option<&str>,
            user_id: Option<&str>,
            received_at: i64,
        ) -> StorageResult<()> {
            // A change already stored keeps its first provenance: retries are harmless.
            sqlx::query(&$sql(
                "INSERT INTO changes (case_id, hash, actor_id, device_id, user_id, received_at, bytes, deps)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (case_id, hash) DO NOTHING",
            ))
            .bind(case_id)
            .bind(&change.hash)
            .bind(&change.actor_id)
            .bind(device_id)
            .bind(user_id)
            .bind(received_at)
            .bind(&change.bytes)
            .bind(change.deps.iter().flat_map(|dep| dep.0).collect::<Vec<u8>>())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// A document's stored bytes: its last full save, `snapshot`, followed by the bytes of
        /// the changes appended since (`appended_hashes`: hex hashes, each followed by a comma,
        /// in the order appended), which are rows of `changes`. Change rows are never changed
        /// and are committed with (or before) the document row that names them, so this reads
        /// a consistent document outside a transaction too.
        async fn document_bytes<'c, E>(
            executor: E,
            case_id: &str,
            mut snapshot: Vec<u8>,
            appended_hashes: &str,
        ) -> StorageResult<Vec<u8>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let hashes: Vec<&str> = appended_hashes.split(',').filter(|h| !h.is_empty()).collect();
            if hashes.is_empty() {
                return Ok(snapshot);
            }
            // At most `COMPACT_AFTER_CHANGES` hashes: a full save empties the list.
            let placeholders: Vec<String> = (2..hashes.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT hash, bytes FROM changes WHERE case_id = $1 AND hash IN ({})",
                placeholders.join(", ")
            );
            let sql = $sql(&sql);
            let mut query = sqlx::query(&sql).bind(case_id);
            for hash in &hashes {
                query = query.bind(*hash);
            }
            let mut bytes_of = std::collections::HashMap::new();
            for row in query.fetch_all(executor).await? {
                let hash: String = row.try_get("hash")?;
                let bytes: Vec<u8> = row.try_get("bytes")?;
                bytes_of.insert(hash, bytes);
            }
            for hash in hashes {
                let bytes = bytes_of.get(hash).ok_or_else(|| {
                    StorageError::Corrupt(format!("case {case_id}: appended change {hash} is not stored"))
                })?;
                snapshot.extend_from_slice(bytes);
            }
            Ok(snapshot)
        }

        #[async_trait]
        impl Storage for $storage {
            async fn watch_documents(&self) -> StorageResult<Option<crate::storage::DocumentChanges>> {
                self.watch_other_writers().await
            }

            async fn ping(&self) -> StorageResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_school(&self, school: &School) -> StorageResult<()> {
                // SQLite: one writer at a time, queued with the syncs (PostgreSQL: no turn).
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql("INSERT INTO schools (id, name, created_at) VALUES ($1, $2, $3)"))
                    .bind(&school.id)
                    .bind(&school.name)
                    .bind(school.created_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn school(&self, id: &str) -> StorageResult<Option<School>> {
                let row = sqlx::query(&$sql("SELECT id, name, created_at FROM schools WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok(School {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        created_at: row.try_get("created_at")?,
                    })
                })
                .transpose()
            }

            async fn create_user(&self, user: &User) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql(
                    "INSERT INTO users (id, school_id, username, display_name, role, password_hash,
                        created_at, disabled_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                ))
                .bind(&user.id)
                .bind(&user.school_id)
                .bind(&user.username)
                .bind(&user.display_name)
                .bind(user.role.as_str())
                .bind(&user.password_hash)
                .bind(user.created_at)
                .bind(user.disabled_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn user(&self, id: &str) -> StorageResult<Option<User>> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                let row = sqlx::query(&$sql(&sql)).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn user_by_username(&self, username: &str) -> StorageResult<Option<User>> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
                let row = sqlx::query(&$sql(&sql))
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn count_users(&self) -> StorageResult<i64> {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(row.try_get("n")?)
            }

            async fn disable_user(&self, id: &str, at: i64) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                let mut tx = self.begin_write().await?;
                let updated = sqlx::query(&$sql(
                    "UPDATE users SET disabled_at = COALESCE(disabled_at, $2) WHERE id = $1",
                ))
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    return Err(StorageError::NotFound);
                }
                sqlx::query(&$sql(
                    "UPDATE refresh_tokens SET revoked_at = $2
                     WHERE revoked_at IS NULL
                       AND device_id IN (SELECT id FROM devices WHERE user_id = $1)",
                ))
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_device(&self, device: &Device) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                let mut tx = self.begin_write().await?;
                sqlx::query(&$sql(
                    "INSERT INTO devices (id, user_id, actor_id, name, created_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                ))
                .bind(&device.id)
                .bind(&device.user_id)
                .bind(&device.actor_id)
                .bind(&device.name)
                .bind(device.created_at)
                .bind(device.revoked_at)
                .execute(&mut *tx)
                .await?;
                // One table says which device owns each actor, whoever bound it.
                sqlx::query(&$sql(
                    "INSERT INTO device_actors (actor_id, device_id, bound_at) VALUES ($1, $2, $3)",
                ))
                .bind(&device.actor_id)
                .bind(&device.id)
                .bind(device.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn device(&self, id: &str) -> StorageResult<Option<Device>> {
                let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
                let row = sqlx::query(&$sql(&sql)).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(device_from_row).transpose()
            }

            async fn device_by_actor(&self, actor_id: &str) -> StorageResult<Option<Device>> {
                // The actor a device signed in with, or one it was bound to later.
                let sql = format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE id =
                        (SELECT device_id FROM device_actors WHERE actor_id = $1)"
                );
                let row = sqlx::query(&$sql(&sql))
                    .bind(actor_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(device_from_row).transpose()
            }

            async fn revoke_device(&self, id: &str, at: i64) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                let mut tx = self.begin_write().await?;
                let updated = sqlx::query(&$sql(
                    "UPDATE devices SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                ))
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    return Err(StorageError::NotFound);
                }
                sqlx::query(&$sql(
                    "UPDATE refresh_tokens SET revoked_at = $2
                     WHERE device_id = $1 AND revoked_at IS NULL",
                ))
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn insert_refresh_token(&self, token: &RefreshToken) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql(
                    "INSERT INTO refresh_tokens (id, device_id, family_id, token_hash, created_at,
                        expires_at, used_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                ))
                .bind(&token.id)
                .bind(&token.device_id)
                .bind(&token.family_id)
                .bind(&token.token_hash)
                .bind(token.created_at)
                .bind(token.expires_at)
                .bind(token.used_at)
                .bind(token.revoked_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn rotate_refresh_token(
                &self,
                presented_hash: &str,
                replacement: &RefreshToken,
                now: i64,
            ) -> StorageResult<Rotation> {
                let _turn = self.writer_turn().await;
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&$sql(
                    "SELECT device_id, family_id, expires_at FROM refresh_tokens
                     WHERE token_hash = $1",
                ))
                .bind(presented_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(Rotation::Unknown);
                };
                let device_id: String = row.try_get("device_id")?;
                let family_id: String = row.try_get("family_id")?;
                let expires_at: i64 = row.try_get("expires_at")?;
                // Conditional update: of two concurrent uses of one token only one can win.
                let claimed = sqlx::query(&$sql(
                    "UPDATE refresh_tokens SET used_at = $2
                     WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL",
                ))
                .bind(presented_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if claimed.rows_affected() == 0 {
                    // Used before (or revoked): someone holds a copy. Revoke the whole family.
                    sqlx::query(&$sql(
                        "UPDATE refresh_tokens SET revoked_at = $2
                         WHERE family_id = $1 AND revoked_at IS NULL",
                    ))
                    .bind(&family_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(Rotation::Reused { device_id });
                }
                if expires_at <= now {
                    tx.commit().await?;
                    return Ok(Rotation::Expired);
                }
                sqlx::query(&$sql(
                    "INSERT INTO refresh_tokens (id, device_id, family_id, token_hash, created_at,
                        expires_at, used_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
                ))
                .bind(&replacement.id)
                .bind(&device_id)
                .bind(&family_id)
                .bind(&replacement.token_hash)
                .bind(replacement.created_at)
                .bind(replacement.expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Rotation::Rotated { device_id })
            }

            async fn create_case(
                &self,
                case: &Case,
                snapshot: &[u8],
                heads: &str,
                changes: &[NewChange],
                created_by: Option<&str>,
            ) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                let mut tx = self.begin_write().await?;
                sqlx::query(&$sql("INSERT INTO cases (id, school_id, created_at) VALUES ($1, $2, $3)"))
                    .bind(&case.id)
                    .bind(&case.school_id)
                    .bind(case.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&$sql(
                    "INSERT INTO documents (case_id, snapshot, heads, updated_at)
                     VALUES ($1, $2, $3, $4)",
                ))
                .bind(&case.id)
                .bind(snapshot)
                .bind(heads)
                .bind(case.created_at)
                .execute(&mut *tx)
                .await?;
                for change in changes {
                    insert_change(&mut tx, &case.id, change, None, created_by, case.created_at)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn case(&self, id: &str) -> StorageResult<Option<Case>> {
                let row = sqlx::query(&$sql("SELECT id, school_id, created_at FROM cases WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok(Case {
                        id: row.try_get("id")?,
                        school_id: row.try_get("school_id")?,
                        created_at: row.try_get("created_at")?,
                    })
                })
                .transpose()
            }

            async fn list_cases(&self, school_id: Option<&str>) -> StorageResult<Vec<Case>> {
                let rows = match school_id {
                    Some(school_id) => {
                        sqlx::query(&$sql(
                            "SELECT id, school_id, created_at FROM cases WHERE school_id = $1
                             ORDER BY id",
                        ))
                        .bind(school_id)
                        .fetch_all(&self.pool)
                        .await?
                    }
                    None => {
                        sqlx::query("SELECT id, school_id, created_at FROM cases ORDER BY id")
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                rows.iter()
                    .map(|row| {
                        Ok(Case {
                            id: row.try_get("id")?,
                            school_id: row.try_get("school_id")?,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn allocate(&self, case_id: &str, user_id: &str, at: i64) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql(
                    "INSERT INTO allocations (case_id, user_id, allocated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (case_id, user_id) DO NOTHING",
                ))
                .bind(case_id)
                .bind(user_id)
                .bind(at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn deallocate(&self, case_id: &str, user_id: &str) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql("DELETE FROM allocations WHERE case_id = $1 AND user_id = $2"))
                    .bind(case_id)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn allocated_case_ids(&self, user_id: &str) -> StorageResult<Vec<String>> {
                let rows = sqlx::query(&$sql(
                    "SELECT case_id FROM allocations WHERE user_id = $1 ORDER BY case_id",
                ))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| Ok(row.try_get("case_id")?))
                    .collect()
            }

            async fn document(&self, case_id: &str) -> StorageResult<Option<StoredDocument>> {
                let row = sqlx::query(&$sql(
                    "SELECT snapshot, appended_hashes, heads, updated_at FROM documents
                     WHERE case_id = $1",
                ))
                .bind(case_id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let appended: String = row.try_get("appended_hashes")?;
                Ok(Some(StoredDocument {
                    snapshot: document_bytes(&self.pool, case_id, row.try_get("snapshot")?, &appended)
                        .await?,
                    heads: row.try_get("heads")?,
                    updated_at: row.try_get("updated_at")?,
                }))
            }

            async fn changes(&self, case_id: &str) -> StorageResult<Vec<StoredChange>> {
                let rows = sqlx::query(&$sql(
                    "SELECT hash, actor_id, device_id, user_id, received_at FROM changes
                     WHERE case_id = $1 ORDER BY received_at, hash",
                ))
                .bind(case_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(StoredChange {
                            hash: row.try_get("hash")?,
                            actor_id: row.try_get("actor_id")?,
                            device_id: row.try_get("device_id")?,
                            user_id: row.try_get("user_id")?,
                            received_at: row.try_get("received_at")?,
                        })
                    })
                    .collect()
            }

            async fn create_web_session(&self, session: &WebSession) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql(
                    "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                ))
                .bind(&session.token_hash)
                .bind(&session.user_id)
                .bind(&session.csrf_token)
                .bind(session.created_at)
                .bind(session.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn web_session(
                &self,
                token_hash: &str,
                now: i64,
            ) -> StorageResult<Option<WebSession>> {
                let row = sqlx::query(&$sql(
                    "SELECT token_hash, user_id, csrf_token, created_at, expires_at
                     FROM web_sessions WHERE token_hash = $1 AND expires_at > $2",
                ))
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| {
                    Ok(WebSession {
                        token_hash: row.try_get("token_hash")?,
                        user_id: row.try_get("user_id")?,
                        csrf_token: row.try_get("csrf_token")?,
                        created_at: row.try_get("created_at")?,
                        expires_at: row.try_get("expires_at")?,
                    })
                })
                .transpose()
            }

            async fn delete_web_session(&self, token_hash: &str, now: i64) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql(
                    "DELETE FROM web_sessions WHERE token_hash = $1 OR expires_at <= $2",
                ))
                .bind(token_hash)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn record_case_view(
                &self,
                user_id: &str,
                case_id: &str,
                at: i64,
            ) -> StorageResult<()> {
                let _turn = self.writer_turn().await;
                sqlx::query(&$sql(
                    "INSERT INTO case_views (user_id, case_id, viewed_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, case_id) DO UPDATE SET viewed_at = excluded.viewed_at",
                ))
                .bind(user_id)
                .bind(case_id)
                .bind(at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn case_views(&self, user_id: &str) -> StorageResult<Vec<(String, i64)>> {
                let rows = sqlx::query(&$sql(
                    "SELECT case_id, viewed_at FROM case_views WHERE user_id = $1 ORDER BY case_id",
                ))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("case_id")?, row.try_get("viewed_at")?)))
                    .collect()
            }

            async fn begin_sync(&self) -> StorageResult<Box<dyn SyncTransaction>> {
                // The writer's turn first, then the database's write lock.
                let writer = self.writer_turn().await;
                Ok(Box::new($txn {
                    tx: self.begin_write().await?,
                    locking: true,
                    _writer: writer,
                }))
            }

            async fn begin_sync_read(&self) -> StorageResult<Box<dyn SyncTransaction>> {
                Ok(Box::new($txn {
                    tx: self.begin_read().await?,
                    locking: false,
                    _writer: None,
                }))
            }
        }

        /// One sync request's transaction.
        pub struct $txn {
            tx: sqlx::Transaction<'static, $db>,
            /// Whether documents are loaded with row locks (a write transaction).
            locking: bool,
            /// The backend's writer turn, if it has one, held to the end of the
            /// transaction (declared after `tx`, so released after it).
            _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
        }

        impl std::fmt::Debug for $txn {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($txn)).finish_non_exhaustive()
            }
        }

        #[async_trait]
        impl SyncTransaction for $txn {
            async fn allocated_documents(
                &mut self,
                user_id: &str,
                device_id: &str,
            ) -> StorageResult<Vec<AllocatedDocument>> {
                let rows = sqlx::query(&$sql(
                    "SELECT a.case_id, d.heads, s.peer_heads
                     FROM allocations a
                     JOIN documents d ON d.case_id = a.case_id
                     LEFT JOIN sync_states s ON s.case_id = a.case_id AND s.device_id = $2
                     WHERE a.user_id = $1
                     ORDER BY a.case_id",
                ))
                .bind(user_id)
                .bind(device_id)
                .fetch_all(&mut *self.tx)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(AllocatedDocument {
                            case_id: row.try_get("case_id")?,
                            heads: row.try_get("heads")?,
                            peer_heads: row.try_get("peer_heads")?,
                        })
                    })
                    .collect()
            }

            async fn synced_cases(&mut self, device_id: &str) -> StorageResult<Vec<String>> {
                let rows = sqlx::query(&$sql(
                    "SELECT case_id FROM sync_states WHERE device_id = $1 ORDER BY case_id",
                ))
                .bind(device_id)
                .fetch_all(&mut *self.tx)
                .await?;
                rows.iter()
                    .map(|row| Ok(row.try_get("case_id")?))
                    .collect()
            }

            async fn load_documents(
                &mut self,
                device_id: &str,
                case_ids: &[String],
            ) -> StorageResult<Vec<LoadedDocument>> {
                // One order for every transaction, so that row locks never deadlock.
                let mut sorted: Vec<&String> = case_ids.iter().collect();
                sorted.sort();
                sorted.dedup();
                let mut loaded = Vec::with_capacity(sorted.len());
                let query = if self.locking {
                    concat!(
                        "SELECT d.snapshot, d.appended_hashes, d.heads, d.appended_changes, s.state
                         FROM documents d
                         LEFT JOIN sync_states s ON s.case_id = d.case_id AND s.device_id = $2
                         WHERE d.case_id = $1",
                        $lock
                    )
                } else {
                    "SELECT d.snapshot, d.appended_hashes, d.heads, d.appended_changes, s.state
                     FROM documents d
                     LEFT JOIN sync_states s ON s.case_id = d.case_id AND s.device_id = $2
                     WHERE d.case_id = $1"
                };
                for case_id in sorted {
                    let row = sqlx::query(&$sql(query))
                    .bind(case_id)
                    .bind(device_id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
                    let Some(row) = row else {
                        return Err(StorageError::NotFound);
                    };
                    let appended: String = row.try_get("appended_hashes")?;
                    let snapshot =
                        document_bytes(&mut *self.tx, case_id, row.try_get("snapshot")?, &appended)
                            .await?;
                    loaded.push(LoadedDocument {
                        case_id: case_id.clone(),
                        snapshot,
                        heads: row.try_get("heads")?,
                        sync_state: row.try_get("state")?,
                        appended_changes: row.try_get("appended_changes")?,
                    });
                }
                Ok(loaded)
            }

            async fn graph_changes(&mut self, case_id: &str) -> StorageResult<Vec<GraphChange>> {
                use futures_util::TryStreamExt;
                // A change's bytes are read only where its dependencies were not stored
                // beside it (rows from before that column): the graph keeps none.
                let sql = $sql(
                    "SELECT hash, deps, CASE WHEN deps IS NULL THEN bytes END AS bytes
                     FROM changes WHERE case_id = $1",
                );
                let mut rows = sqlx::query(&sql).bind(case_id).fetch(&mut *self.tx);
                let mut changes = Vec::new();
                while let Some(row) = rows.try_next().await? {
                    let hash: String = row.try_get("hash")?;
                    let change = match row.try_get::<Option<Vec<u8>>, _>("deps")? {
                        Some(deps) => {
                            let known = hash.parse().ok().zip(
                                doorstep_sync_core::hashes_from_bytes(&deps),
                            );
                            let (hash, deps) = known.ok_or_else(|| {
                                StorageError::Corrupt(format!(
                                    "case {case_id}: change {hash} has a malformed hash or dependencies"
                                ))
                            })?;
                            GraphChange::Known { hash, deps }
                        }
                        None => GraphChange::Chunk(row.try_get("bytes")?),
                    };
                    changes.push(change);
                }
                Ok(changes)
            }

            async fn write_documents(
                &mut self,
                provenance: &Provenance,
                writes: &[DocumentWrite],
            ) -> StorageResult<()> {
                for write in writes {
                    if let Some((snapshot, heads)) = &write.snapshot {
                        let updated = if write.appended_changes == 0 {
                            // A full save.
                            sqlx::query(&$sql(
                                "UPDATE documents
                                 SET snapshot = $2, heads = $3, updated_at = $4,
                                     appended_changes = 0, appended_hashes = ''
                                 WHERE case_id = $1 AND heads = $5",
                            ))
                            .bind(&write.case_id)
                            .bind(snapshot)
                            .bind(heads)
                            .bind(provenance.received_at)
                            .bind(&write.loaded_heads)
                            .execute(&mut *self.tx)
                            .await?
                        } else {
                            // The new bytes are the stored ones with these changes after them:
                            // the changes are written below, so only their hashes are here.
                            let appended: String =
                                write.changes.iter().map(|c| format!("{},", c.hash)).collect();
                            sqlx::query(&$sql(
                                "UPDATE documents
                                 SET heads = $2, updated_at = $3, appended_changes = $4,
                                     appended_hashes = appended_hashes || $5
                                 WHERE case_id = $1 AND heads = $6",
                            ))
                            .bind(&write.case_id)
                            .bind(heads)
                            .bind(provenance.received_at)
                            .bind(write.appended_changes)
                            .bind(appended)
                            .bind(&write.loaded_heads)
                            .execute(&mut *self.tx)
                            .await?
                        };
                        if updated.rows_affected() == 0 {
                            return Err(StorageError::DocumentChanged(write.case_id.clone()));
                        }
                    }
                    for change in &write.changes {
                        insert_change(
                            &mut self.tx,
                            &write.case_id,
                            change,
                            Some(&provenance.device_id),
                            Some(&provenance.user_id),
                            provenance.received_at,
                        )
                        .await?;
                    }
                    let (state, peer_heads) = &write.sync_state;
                    sqlx::query(&$sql(
                        "INSERT INTO sync_states (device_id, case_id, state, peer_heads, updated_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (device_id, case_id) DO UPDATE SET
                            state = excluded.state,
                            peer_heads = excluded.peer_heads,
                            updated_at = excluded.updated_at",
                    ))
                    .bind(&provenance.device_id)
                    .bind(&write.case_id)
                    .bind(state)
                    .bind(peer_heads)
                    .bind(provenance.received_at)
                    .execute(&mut *self.tx)
                    .await?;
                }
                Ok(())
            }

            async fn write_server_change(
                &mut self,
                case_id: &str,
                snapshot: (&[u8], &str),
                changes: &[NewChange],
                user_id: &str,
                at: i64,
            ) -> StorageResult<()> {
                sqlx::query(&$sql(
                    "UPDATE documents
                     SET snapshot = $2, heads = $3, updated_at = $4, appended_changes = 0,
                         appended_hashes = ''
                     WHERE case_id = $1",
                ))
                .bind(case_id)
                .bind(snapshot.0)
                .bind(snapshot.1)
                .bind(at)
                .execute(&mut *self.tx)
                .await?;
                for change in changes {
                    insert_change(&mut self.tx, case_id, change, None, Some(user_id), at).await?;
                }
                Ok(())
            }

            async fn device_actors(&mut self, device_id: &str) -> StorageResult<Vec<String>> {
                let rows = sqlx::query(&$sql(
                    "SELECT actor_id FROM device_actors WHERE device_id = $1 ORDER BY actor_id",
                ))
                .bind(device_id)
                .fetch_all(&mut *self.tx)
                .await?;
                rows.iter()
                    .map(|row| Ok(row.try_get("actor_id")?))
                    .collect()
            }

            async fn claim_actors(
                &mut self,
                device_id: &str,
                actor_ids: &[String],
                at: i64,
            ) -> StorageResult<Vec<String>> {
                let mut refused = Vec::new();
                for actor_id in actor_ids {
                    // An actor that already wrote for someone else (another device, or the
                    // server) is theirs, even if it was never bound.
                    let used_elsewhere = sqlx::query(&$sql(
                        "SELECT 1 AS used FROM changes
                         WHERE actor_id = $1 AND (device_id IS NULL OR device_id <> $2)
                         LIMIT 1",
                    ))
                    .bind(actor_id)
                    .bind(device_id)
                    .fetch_optional(&mut *self.tx)
                    .await?
                    .is_some();
                    if used_elsewhere {
                        refused.push(actor_id.clone());
                        continue;
                    }
                    // A concurrent claim of the same actor waits for this row, then finds it.
                    sqlx::query(&$sql(
                        "INSERT INTO device_actors (actor_id, device_id, bound_at)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (actor_id) DO NOTHING",
                    ))
                    .bind(actor_id)
                    .bind(device_id)
                    .bind(at)
                    .execute(&mut *self.tx)
                    .await?;
                    let owner: String = sqlx::query(&$sql(
                        "SELECT device_id FROM device_actors WHERE actor_id = $1",
                    ))
                    .bind(actor_id)
                    .fetch_one(&mut *self.tx)
                    .await?
                    .try_get("device_id")?;
                    if owner != device_id {
                        refused.push(actor_id.clone());
                    }
                }
                Ok(refused)
            }

            async fn forget_sync_states(
                &mut self,
                device_id: &str,
                case_ids: &[String],
            ) -> StorageResult<()> {
                for case_id in case_ids {
                    sqlx::query(&$sql(
                        "DELETE FROM sync_states WHERE device_id = $1 AND case_id = $2",
                    ))
                    .bind(device_id)
                    .bind(case_id)
                    .execute(&mut *self.tx)
                    .await?;
                }
                Ok(())
            }

            async fn commit(self: Box<Self>) -> StorageResult<()> {
                self.tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(super) use sql_storage;
