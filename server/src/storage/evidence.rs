//! What the server keeps about evidence files: uploads in progress (with the chunks already
//! acknowledged), accepted files, and the signed receipts. The file bytes themselves live in
//! the blob store ([`crate::blob_store`]); the database only says where and who.
//!
//! A supertrait of [`Storage`](super::Storage), written once for both backends by
//! [`evidence_sql!`], expanded in `sqlite.rs` and `postgres.rs` beside the main impl.

use async_trait::async_trait;

use super::StorageResult;

/// An upload that has started and not yet completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceUpload {
    pub id: String,
    pub case_id: String,
    pub user_id: String,
    pub device_id: String,
    /// The declared SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    pub size: i64,
    pub media_type: String,
    /// Bytes acknowledged so far: every chunk up to here is stored.
    pub received_bytes: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One acknowledged chunk of an upload, stored as its own object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceChunk {
    pub start_offset: i64,
    pub length: i64,
    pub object_key: String,
}

/// A signed receipt as stored (see [`crate::evidence::receipt`] for the signed bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub id: String,
    pub case_id: String,
    pub sha256: String,
    pub size: i64,
    pub media_type: String,
    pub user_id: String,
    pub device_id: String,
    pub received_at: i64,
    /// Ed25519 signature, standard base64.
    pub signature: String,
}

#[async_trait]
pub trait EvidenceStorage: Send + Sync {
    /// Stores a new upload; `Conflict` when this device already has one for the same file and
    /// case (the caller then resumes that one).
    async fn create_evidence_upload(&self, upload: &EvidenceUpload) -> StorageResult<()>;
    async fn evidence_upload(&self, id: &str) -> StorageResult<Option<EvidenceUpload>>;
    /// This device's upload of this file to this case, if one is in progress.
    async fn evidence_upload_for(
        &self,
        device_id: &str,
        case_id: &str,
        sha256: &str,
    ) -> StorageResult<Option<EvidenceUpload>>;
    /// Records a stored chunk if the upload's acknowledged offset is still `chunk.start_offset`
    /// (compare-and-set, so concurrent chunks cannot both land). False when it was not.
    async fn append_evidence_chunk(
        &self,
        upload_id: &str,
        chunk: &EvidenceChunk,
        at: i64,
    ) -> StorageResult<bool>;
    /// The upload's chunks in offset order.
    async fn evidence_chunks(&self, upload_id: &str) -> StorageResult<Vec<EvidenceChunk>>;
    /// Forgets an upload and its chunk rows (the chunk objects are the caller's to delete).
    async fn delete_evidence_upload(&self, id: &str) -> StorageResult<()>;
    /// Uploads not touched since `before` (Unix ms), oldest first.
    async fn stale_evidence_uploads(&self, before: i64) -> StorageResult<Vec<EvidenceUpload>>;
    /// The size of an accepted file, if the blob store holds it.
    async fn evidence_blob_size(&self, sha256: &str) -> StorageResult<Option<i64>>;
    /// Records the accepted file (once) and the receipt (once per case, file and device), in
    /// one transaction; returns the receipt that stands (the first one on a retry).
    async fn store_evidence_receipt(&self, receipt: &StoredReceipt)
    -> StorageResult<StoredReceipt>;
    /// The receipt a device got for a file in a case.
    async fn evidence_receipt(
        &self,
        case_id: &str,
        sha256: &str,
        device_id: &str,
    ) -> StorageResult<Option<StoredReceipt>>;
    /// The first receipt for a file in a case: proof that the case holds it.
    async fn evidence_in_case(
        &self,
        case_id: &str,
        sha256: &str,
    ) -> StorageResult<Option<StoredReceipt>>;
    /// Every receipt issued for files in a case, oldest first.
    async fn evidence_receipts(&self, case_id: &str) -> StorageResult<Vec<StoredReceipt>>;
}

/// Expands to the [`EvidenceStorage`] impl for `$storage` inside its backend module, where
/// its `pool`, its `begin_write` and the placeholder function `$sql` are in scope.
macro_rules! evidence_sql {
    (storage: $storage:ident, db: $db:ty, sql: $sql:ident $(,)?) => {
        mod evidence_impl {
            use async_trait::async_trait;
            use sqlx::Row;

            use super::$storage;
            use super::$sql as sql;
            use crate::storage::evidence::{
                EvidenceChunk, EvidenceStorage, EvidenceUpload, StoredReceipt,
            };
            use crate::storage::StorageResult;

            type DbRow = <$db as sqlx::Database>::Row;

            const UPLOAD_COLUMNS: &str = "id, case_id, user_id, device_id, sha256, size, \
                media_type, received_bytes, created_at, updated_at";
            const RECEIPT_COLUMNS: &str = "id, case_id, sha256, size, media_type, user_id, \
                device_id, received_at, signature";

            fn upload_from_row(row: &DbRow) -> StorageResult<EvidenceUpload>
            {
                Ok(EvidenceUpload {
                    id: row.try_get("id")?,
                    case_id: row.try_get("case_id")?,
                    user_id: row.try_get("user_id")?,
                    device_id: row.try_get("device_id")?,
                    sha256: row.try_get("sha256")?,
                    size: row.try_get("size")?,
                    media_type: row.try_get("media_type")?,
                    received_bytes: row.try_get("received_bytes")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn receipt_from_row(row: &DbRow) -> StorageResult<StoredReceipt>
            {
                Ok(StoredReceipt {
                    id: row.try_get("id")?,
                    case_id: row.try_get("case_id")?,
                    sha256: row.try_get("sha256")?,
                    size: row.try_get("size")?,
                    media_type: row.try_get("media_type")?,
                    user_id: row.try_get("user_id")?,
                    device_id: row.try_get("device_id")?,
                    received_at: row.try_get("received_at")?,
                    signature: row.try_get("signature")?,
                })
            }

            #[async_trait]
            impl EvidenceStorage for $storage {
                async fn create_evidence_upload(&self, u: &EvidenceUpload) -> StorageResult<()> {
                    // SQLite: one writer at a time, queued with the syncs (PostgreSQL: no turn).
                    let _turn = self.writer_turn().await;
                    sqlx::query(&sql(&format!(
                        "INSERT INTO evidence_uploads ({UPLOAD_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    )))
                    .bind(&u.id)
                    .bind(&u.case_id)
                    .bind(&u.user_id)
                    .bind(&u.device_id)
                    .bind(&u.sha256)
                    .bind(u.size)
                    .bind(&u.media_type)
                    .bind(u.received_bytes)
                    .bind(u.created_at)
                    .bind(u.updated_at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn evidence_upload(&self, id: &str) -> StorageResult<Option<EvidenceUpload>> {
                    let query = format!("SELECT {UPLOAD_COLUMNS} FROM evidence_uploads WHERE id = $1");
                    let row = sqlx::query(&sql(&query))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(upload_from_row).transpose()
                }

                async fn evidence_upload_for(
                    &self,
                    device_id: &str,
                    case_id: &str,
                    sha256: &str,
                ) -> StorageResult<Option<EvidenceUpload>> {
                    let query = format!(
                        "SELECT {UPLOAD_COLUMNS} FROM evidence_uploads
                         WHERE device_id = $1 AND case_id = $2 AND sha256 = $3"
                    );
                    let row = sqlx::query(&sql(&query))
                        .bind(device_id)
                        .bind(case_id)
                        .bind(sha256)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(upload_from_row).transpose()
                }

                async fn append_evidence_chunk(
                    &self,
                    upload_id: &str,
                    chunk: &EvidenceChunk,
                    at: i64,
                ) -> StorageResult<bool> {
                    let _turn = self.writer_turn().await;
                    let mut tx = self.begin_write().await?;
                    let updated = sqlx::query(&sql(
                        "UPDATE evidence_uploads
                         SET received_bytes = received_bytes + $3, updated_at = $4
                         WHERE id = $1 AND received_bytes = $2",
                    ))
                    .bind(upload_id)
                    .bind(chunk.start_offset)
                    .bind(chunk.length)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    if updated.rows_affected() == 0 {
                        return Ok(false);
                    }
                    sqlx::query(&sql(
                        "INSERT INTO evidence_upload_chunks (upload_id, start_offset, length, object_key)
                         VALUES ($1, $2, $3, $4)",
                    ))
                    .bind(upload_id)
                    .bind(chunk.start_offset)
                    .bind(chunk.length)
                    .bind(&chunk.object_key)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                }

                async fn evidence_chunks(&self, upload_id: &str) -> StorageResult<Vec<EvidenceChunk>> {
                    let rows = sqlx::query(&sql(
                        "SELECT start_offset, length, object_key FROM evidence_upload_chunks
                         WHERE upload_id = $1 ORDER BY start_offset",
                    ))
                    .bind(upload_id)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(EvidenceChunk {
                                start_offset: row.try_get("start_offset")?,
                                length: row.try_get("length")?,
                                object_key: row.try_get("object_key")?,
                            })
                        })
                        .collect()
                }

                async fn delete_evidence_upload(&self, id: &str) -> StorageResult<()> {
                    let _turn = self.writer_turn().await;
                    let mut tx = self.begin_write().await?;
                    sqlx::query(&sql("DELETE FROM evidence_upload_chunks WHERE upload_id = $1"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&sql("DELETE FROM evidence_uploads WHERE id = $1"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn stale_evidence_uploads(
                    &self,
                    before: i64,
                ) -> StorageResult<Vec<EvidenceUpload>> {
                    let query = format!(
                        "SELECT {UPLOAD_COLUMNS} FROM evidence_uploads
                         WHERE updated_at < $1 ORDER BY updated_at"
                    );
                    let rows = sqlx::query(&sql(&query))
                        .bind(before)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(upload_from_row).collect()
                }

                async fn evidence_blob_size(&self, sha256: &str) -> StorageResult<Option<i64>> {
                    let row = sqlx::query(&sql("SELECT size FROM evidence_blobs WHERE sha256 = $1"))
                        .bind(sha256)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(row.map(|row| row.try_get("size")).transpose()?)
                }

                async fn store_evidence_receipt(
                    &self,
                    r: &StoredReceipt,
                ) -> StorageResult<StoredReceipt> {
                    let _turn = self.writer_turn().await;
                    let mut tx = self.begin_write().await?;
                    sqlx::query(&sql(
                        "INSERT INTO evidence_blobs (sha256, size, stored_at) VALUES ($1, $2, $3)
                         ON CONFLICT (sha256) DO NOTHING",
                    ))
                    .bind(&r.sha256)
                    .bind(r.size)
                    .bind(r.received_at)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(&sql(&format!(
                        "INSERT INTO evidence_receipts ({RECEIPT_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (case_id, sha256, device_id) DO NOTHING"
                    )))
                    .bind(&r.id)
                    .bind(&r.case_id)
                    .bind(&r.sha256)
                    .bind(r.size)
                    .bind(&r.media_type)
                    .bind(&r.user_id)
                    .bind(&r.device_id)
                    .bind(r.received_at)
                    .bind(&r.signature)
                    .execute(&mut *tx)
                    .await?;
                    let query = format!(
                        "SELECT {RECEIPT_COLUMNS} FROM evidence_receipts
                         WHERE case_id = $1 AND sha256 = $2 AND device_id = $3"
                    );
                    let row = sqlx::query(&sql(&query))
                        .bind(&r.case_id)
                        .bind(&r.sha256)
                        .bind(&r.device_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    let stored = receipt_from_row(&row)?;
                    tx.commit().await?;
                    Ok(stored)
                }

                async fn evidence_receipt(
                    &self,
                    case_id: &str,
                    sha256: &str,
                    device_id: &str,
                ) -> StorageResult<Option<StoredReceipt>> {
                    let query = format!(
                        "SELECT {RECEIPT_COLUMNS} FROM evidence_receipts
                         WHERE case_id = $1 AND sha256 = $2 AND device_id = $3"
                    );
                    let row = sqlx::query(&sql(&query))
                        .bind(case_id)
                        .bind(sha256)
                        .bind(device_id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(receipt_from_row).transpose()
                }

                async fn evidence_in_case(
                    &self,
                    case_id: &str,
                    sha256: &str,
                ) -> StorageResult<Option<StoredReceipt>> {
                    let query = format!(
                        "SELECT {RECEIPT_COLUMNS} FROM evidence_receipts
                         WHERE case_id = $1 AND sha256 = $2
                         ORDER BY received_at, id LIMIT 1"
                    );
                    let row = sqlx::query(&sql(&query))
                        .bind(case_id)
                        .bind(sha256)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(receipt_from_row).transpose()
                }

                async fn evidence_receipts(
                    &self,
                    case_id: &str,
                ) -> StorageResult<Vec<StoredReceipt>> {
                    let query = format!(
                        "SELECT {RECEIPT_COLUMNS} FROM evidence_receipts
                         WHERE case_id = $1 ORDER BY received_at, id"
                    );
                    let rows = sqlx::query(&sql(&query))
                        .bind(case_id)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(receipt_from_row).collect()
                }
            }
        }
    };
}

pub(super) use evidence_sql;
