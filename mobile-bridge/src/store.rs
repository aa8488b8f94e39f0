//! The phone's local store: one SQLCipher database, keyed by the host app.
//!
//! Durability: WAL journal with `synchronous = FULL`, and one transaction per API call, so a
//! call returns only after its change is on disk. In WAL mode `NORMAL` already survives the
//! app being killed, but may lose the last commits if the phone loses power (a flat battery
//! on a doorstep); a visit note is written a few times an hour, so the extra fsync per commit
//! costs nothing a worker notices and buys power-loss durability.
//!
//! Evidence files are BLOBs in the same encrypted database rather than files beside it: one
//! key and one cipher protect everything, and the file and its evidence record commit in the
//! same transaction, so a kill can never leave a record without its file or an orphan file.
//! `secure_delete` overwrites deleted pages, so a wipe or a dropped case leaves no plaintext
//! and no old ciphertext behind.
//!
//! Tables:
//! ```text
//! meta            key -> value: actor id, account, tokens, sync times
//! cases           case_id, snapshot (Automerge save), sync_state (PeerState::encode: what the
//!                 server is known to have), pending (unacknowledged changes), summary JSON,
//!                 last sync error
//! case_chunks     Automerge changes appended since the snapshot (one row per write)
//! evidence_files  (case_id, sha256) -> bytes, media type, and its upload: the server's upload
//!                 id, bytes it acknowledged, the verified receipt (JSON) once accepted, and why
//!                 the last attempt did not finish
//! ```
//! Nothing counts as synced until the server's sync message says it holds the change: the
//! pending count is computed from the persisted sync state, which only the server's replies
//! advance.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::{DoorstepError, Result};

/// Raised when the layout changes; a store with a newer version is refused.
const STORE_VERSION: i64 = 2;
/// Changes appended before the case's snapshot is rewritten (bounded load time).
pub(crate) const COMPACT_AFTER_CHUNKS: i64 = 64;

#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

/// A saved case: the document's bytes (snapshot then appended changes) and its persisted sync
/// state.
pub(crate) type SavedCase = (Vec<u8>, Option<Vec<u8>>);

/// An evidence file still to be uploaded.
#[derive(Debug, Clone)]
pub(crate) struct PendingUpload {
    pub case_id: String,
    pub sha256: String,
    pub media_type: String,
    pub size: u64,
    /// The server's upload id from an earlier attempt.
    pub upload_id: Option<String>,
    pub uploaded_bytes: u64,
}

/// An evidence file's upload as stored.
#[derive(Debug, Clone)]
pub(crate) struct StoredUpload {
    pub sha256: String,
    pub size: u64,
    pub uploaded_bytes: u64,
    /// The verified receipt, JSON.
    pub receipt: Option<String>,
    pub error: Option<String>,
}

/// A case's row, as the sync and the caseload read it.
#[derive(Debug, Clone)]
pub(crate) struct CaseRow {
    pub case_id: String,
    pub summary: Option<String>,
    pub pending: u64,
    pub conflicts: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

impl Store {
    /// Opens (or creates) the store at `path` with a 32-byte key.
    pub(crate) fn open(path: &Path, key: &[u8]) -> Result<Self> {
        if key.len() != 32 {
            return Err(DoorstepError::invalid(
                "key",
                "the store key must be 32 bytes (from the platform keystore)",
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(DoorstepError::storage)?;
        }
        let conn = Connection::open(path)?;
        // A raw key (no passphrase derivation): the keystore's key is already random.
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(key)))?;
        // The first read decrypts page 1: a wrong key fails here, before anything is written.
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::NotADatabase =>
            {
                return Err(DoorstepError::WrongKey);
            }
            Err(e) => return Err(e.into()),
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS cases (
                 case_id TEXT PRIMARY KEY,
                 snapshot BLOB NOT NULL,
                 sync_state BLOB,
                 pending INTEGER NOT NULL DEFAULT 0,
                 conflicts INTEGER NOT NULL DEFAULT 0,
                 summary TEXT,
                 error_code TEXT,
                 error_message TEXT,
                 updated_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS case_chunks (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
                 bytes BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS case_chunks_by_case ON case_chunks(case_id, id);
             CREATE TABLE IF NOT EXISTS evidence_files (
                 case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
                 sha256 TEXT NOT NULL,
                 media_type TEXT NOT NULL,
                 bytes BLOB NOT NULL,
                 PRIMARY KEY (case_id, sha256));",
        )?;
        // Version 2 (evidence uploads) adds these to stores of either version.
        let columns: Vec<String> = tx
            .prepare("SELECT name FROM pragma_table_info('evidence_files')")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for (column, definition) in [
            ("upload_id", "TEXT"),
            ("uploaded_bytes", "INTEGER NOT NULL DEFAULT 0"),
            ("receipt", "TEXT"),
            ("upload_error", "TEXT"),
        ] {
            if !columns.iter().any(|c| c == column) {
                tx.execute_batch(&format!(
                    "ALTER TABLE evidence_files ADD COLUMN {column} {definition};"
                ))?;
            }
        }
        let version: Option<i64> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'store_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok());
        match version {
            None | Some(1) => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('store_version', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [STORE_VERSION.to_string()],
                )?;
            }
            Some(v) if v > STORE_VERSION => {
                return Err(DoorstepError::storage(format!(
                    "the store was written by a newer app (version {v})"
                )));
            }
            Some(_) => {}
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn transaction(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction()?)
    }

    // -----------------------------------------------------------------------------------------
    // meta

    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn set_meta(&mut self, values: &[(&str, Option<&str>)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        set_meta_tx(&tx, values)?;
        tx.commit()?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // cases

    pub(crate) fn case_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT case_id FROM cases ORDER BY case_id")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    pub(crate) fn case_rows(&self) -> Result<Vec<CaseRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT case_id, summary, pending, conflicts, error_code, error_message
             FROM cases ORDER BY case_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(CaseRow {
                    case_id: r.get(0)?,
                    summary: r.get(1)?,
                    pending: r.get::<_, i64>(2)?.max(0).unsigned_abs(),
                    conflicts: r.get::<_, i64>(3)?.max(0).unsigned_abs(),
                    error_code: r.get(4)?,
                    error_message: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every case's persisted sync state (None before its first sync round).
    pub(crate) fn sync_states(&self) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let mut stmt = self.conn.prepare("SELECT case_id, sync_state FROM cases")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub(crate) fn has_case(&self, case_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM cases WHERE case_id = ?1", [case_id], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// The saved document: the snapshot followed by every change appended since (Automerge
    /// loads the concatenation), and the persisted sync state.
    pub(crate) fn load_case(&self, case_id: &str) -> Result<Option<SavedCase>> {
        let row: Option<SavedCase> = self
            .conn
            .query_row(
                "SELECT snapshot, sync_state FROM cases WHERE case_id = ?1",
                [case_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((mut bytes, state)) = row else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare("SELECT bytes FROM case_chunks WHERE case_id = ?1 ORDER BY id")?;
        let chunks = stmt.query_map([case_id], |r| r.get::<_, Vec<u8>>(0))?;
        for chunk in chunks {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(Some((bytes, state)))
    }

    pub(crate) fn evidence_file(&self, case_id: &str, sha256: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT bytes FROM evidence_files WHERE case_id = ?1 AND sha256 = ?2",
                [case_id, sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Evidence files the server has not yet given a receipt for, oldest first.
    pub(crate) fn pending_uploads(&self) -> Result<Vec<PendingUpload>> {
        let mut stmt = self.conn.prepare(
            "SELECT case_id, sha256, media_type, length(bytes), upload_id, uploaded_bytes
             FROM evidence_files WHERE receipt IS NULL ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PendingUpload {
                    case_id: r.get(0)?,
                    sha256: r.get(1)?,
                    media_type: r.get(2)?,
                    size: r.get::<_, i64>(3)?.max(0) as u64,
                    upload_id: r.get(4)?,
                    uploaded_bytes: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// `len` bytes of an evidence file from `offset`, read without loading the whole file.
    pub(crate) fn evidence_bytes(
        &self,
        case_id: &str,
        sha256: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let to_i64 = |v: u64| i64::try_from(v).map_err(DoorstepError::storage);
        Ok(self.conn.query_row(
            // substr counts from 1 and, on a BLOB, in bytes.
            "SELECT substr(bytes, ?3 + 1, ?4) FROM evidence_files
             WHERE case_id = ?1 AND sha256 = ?2",
            params![case_id, sha256, to_i64(offset)?, to_i64(len)?],
            |r| r.get(0),
        )?)
    }

    /// Where each evidence file of a case stands with the server, by SHA-256.
    pub(crate) fn upload_states(&self, case_id: &str) -> Result<Vec<StoredUpload>> {
        let mut stmt = self.conn.prepare(
            "SELECT sha256, length(bytes), uploaded_bytes, receipt, upload_error
             FROM evidence_files WHERE case_id = ?1",
        )?;
        let rows = stmt
            .query_map([case_id], |r| {
                Ok(StoredUpload {
                    sha256: r.get(0)?,
                    size: r.get::<_, i64>(1)?.max(0) as u64,
                    uploaded_bytes: r.get::<_, i64>(2)?.max(0) as u64,
                    receipt: r.get(3)?,
                    error: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records how far an upload got (the server's acknowledged offset) and why it stopped, if
    /// it did. A file no longer here (its case was dropped meanwhile) is left alone.
    pub(crate) fn set_upload_progress(
        &self,
        case_id: &str,
        sha256: &str,
        upload_id: Option<&str>,
        uploaded_bytes: u64,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE evidence_files SET upload_id = ?3, uploaded_bytes = ?4, upload_error = ?5
             WHERE case_id = ?1 AND sha256 = ?2",
            params![
                case_id,
                sha256,
                upload_id,
                i64::try_from(uploaded_bytes).unwrap_or(i64::MAX),
                error
            ],
        )?;
        Ok(())
    }

    /// Records why an upload stopped, keeping how far it got.
    pub(crate) fn set_upload_note(&self, case_id: &str, sha256: &str, note: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE evidence_files SET upload_error = ?3 WHERE case_id = ?1 AND sha256 = ?2",
            params![case_id, sha256, note],
        )?;
        Ok(())
    }

    /// Records the verified receipt: the file is with the server and the upload is done.
    pub(crate) fn set_receipt(
        &self,
        case_id: &str,
        sha256: &str,
        receipt_json: &str,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE evidence_files
             SET receipt = ?3, upload_id = NULL, uploaded_bytes = length(bytes), upload_error = NULL
             WHERE case_id = ?1 AND sha256 = ?2",
            params![case_id, sha256, receipt_json],
        )?;
        Ok(())
    }

    /// Deletes every case, file, token and account detail; keeps the store's version. The
    /// actor id goes too: a wiped phone is a new device to the server.
    pub(crate) fn wipe(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM evidence_files; DELETE FROM case_chunks; DELETE FROM cases;
             DELETE FROM meta WHERE key <> 'store_version';",
        )?;
        tx.commit()?;
        // Give the freed pages back and fold the WAL in, so no old page lingers on disk.
        self.conn.execute_batch("VACUUM;")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

pub(crate) fn set_meta_tx(tx: &Transaction<'_>, values: &[(&str, Option<&str>)]) -> Result<()> {
    for (key, value) in values {
        match value {
            Some(value) => tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?,
            None => tx.execute("DELETE FROM meta WHERE key = ?1", [key])?,
        };
    }
    Ok(())
}

/// What to persist for one case after a write or a sync round.
#[derive(Debug)]
pub(crate) struct CaseWrite<'a> {
    pub case_id: &'a str,
    /// The whole document (new case, or compaction): replaces snapshot and chunks.
    pub snapshot: Option<Vec<u8>>,
    /// Changes to append (ignored when `snapshot` is given).
    pub chunk: Option<Vec<u8>>,
    /// The new persisted sync state, when a sync advanced it.
    pub sync_state: Option<Vec<u8>>,
    pub pending: u64,
    pub conflicts: u64,
    pub summary: Option<String>,
    pub now: &'a str,
}

pub(crate) fn write_case(tx: &Transaction<'_>, write: &CaseWrite<'_>) -> Result<()> {
    let pending = i64::try_from(write.pending).unwrap_or(i64::MAX);
    let conflicts = i64::try_from(write.conflicts).unwrap_or(i64::MAX);
    if let Some(snapshot) = &write.snapshot {
        tx.execute(
            "INSERT INTO cases (case_id, snapshot, pending, conflicts, summary, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(case_id) DO UPDATE SET snapshot = excluded.snapshot,
                 pending = excluded.pending, conflicts = excluded.conflicts,
                 summary = COALESCE(excluded.summary, cases.summary),
                 updated_at = excluded.updated_at",
            params![
                write.case_id,
                snapshot,
                pending,
                conflicts,
                write.summary,
                write.now
            ],
        )?;
        tx.execute(
            "DELETE FROM case_chunks WHERE case_id = ?1",
            [write.case_id],
        )?;
    } else {
        let updated = tx.execute(
            "UPDATE cases SET pending = ?2, conflicts = ?3,
                 summary = COALESCE(?4, summary), updated_at = ?5 WHERE case_id = ?1",
            params![write.case_id, pending, conflicts, write.summary, write.now],
        )?;
        if updated == 0 {
            return Err(DoorstepError::not_found("case", write.case_id));
        }
        if let Some(chunk) = write.chunk.as_ref().filter(|c| !c.is_empty()) {
            tx.execute(
                "INSERT INTO case_chunks (case_id, bytes) VALUES (?1, ?2)",
                params![write.case_id, chunk],
            )?;
        }
    }
    if let Some(state) = &write.sync_state {
        tx.execute(
            "UPDATE cases SET sync_state = ?2 WHERE case_id = ?1",
            params![write.case_id, state],
        )?;
    }
    Ok(())
}

pub(crate) fn chunk_count(tx: &Transaction<'_>, case_id: &str) -> Result<i64> {
    Ok(tx.query_row(
        "SELECT count(*) FROM case_chunks WHERE case_id = ?1",
        [case_id],
        |r| r.get(0),
    )?)
}

pub(crate) fn set_case_error(
    tx: &Transaction<'_>,
    case_id: &str,
    error: Option<(&str, &str)>,
) -> Result<()> {
    tx.execute(
        "UPDATE cases SET error_code = ?2, error_message = ?3 WHERE case_id = ?1",
        params![case_id, error.map(|e| e.0), error.map(|e| e.1)],
    )?;
    Ok(())
}

pub(crate) fn delete_case(tx: &Transaction<'_>, case_id: &str) -> Result<()> {
    tx.execute("DELETE FROM cases WHERE case_id = ?1", [case_id])?;
    Ok(())
}

pub(crate) fn put_evidence_file(
    tx: &Transaction<'_>,
    case_id: &str,
    sha256: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO evidence_files (case_id, sha256, media_type, bytes)
         VALUES (?1, ?2, ?3, ?4)",
        params![case_id, sha256, media_type, bytes],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by the first release (no upload columns) opens, gains them, and keeps
    /// its evidence files, which then count as pending uploads.
    #[test]
    fn a_version_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorstep.db");
        let key = [9u8; 32];
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA key = \"x'{}'\";
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('store_version', '1');
                 CREATE TABLE cases (case_id TEXT PRIMARY KEY, snapshot BLOB NOT NULL,
                     sync_state BLOB, pending INTEGER NOT NULL DEFAULT 0,
                     conflicts INTEGER NOT NULL DEFAULT 0, summary TEXT, error_code TEXT,
                     error_message TEXT, updated_at TEXT NOT NULL);
                 INSERT INTO cases (case_id, snapshot, updated_at) VALUES ('c-1', x'', 'now');
                 CREATE TABLE evidence_files (
                     case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
                     sha256 TEXT NOT NULL, media_type TEXT NOT NULL, bytes BLOB NOT NULL,
                     PRIMARY KEY (case_id, sha256));
                 INSERT INTO evidence_files VALUES ('c-1', 'abc', 'image/jpeg', x'00010203');",
                hex::encode(key)
            ))
            .unwrap();
        }
        let store = Store::open(&path, &key).unwrap();
        assert_eq!(store.meta("store_version").unwrap().as_deref(), Some("2"));
        let pending = store.pending_uploads().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].size, pending[0].uploaded_bytes), (4, 0));
        assert_eq!(
            store.evidence_bytes("c-1", "abc", 1, 2).unwrap(),
            vec![1, 2]
        );
        store.set_receipt("c-1", "abc", "{}").unwrap();
        assert!(store.pending_uploads().unwrap().is_empty());
        drop(store);
        // Opening again changes nothing.
        let store = Store::open(&path, &key).unwrap();
        assert!(store.pending_uploads().unwrap().is_empty());
    }
}
