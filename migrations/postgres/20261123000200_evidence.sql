-- Evidence files (photos, letters, signed contracts): uploads in progress, accepted files and
-- the signed receipts of their chain of custody. The bytes live in the blob store (local
-- folder or S3); these tables say what is there and who delivered it.

-- An upload that has started and not completed. One per device, case and file, so that a
-- phone that starts again resumes the same upload.
CREATE TABLE evidence_uploads (
    id              TEXT PRIMARY KEY,
    case_id         TEXT NOT NULL REFERENCES cases (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    device_id       TEXT NOT NULL REFERENCES devices (id),
    -- The declared SHA-256 of the whole file (lower-case hex), checked on completion.
    sha256          TEXT NOT NULL,
    size            BIGINT NOT NULL,
    media_type      TEXT NOT NULL,
    -- Bytes acknowledged: every chunk below this offset is stored.
    received_bytes  BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    -- Last chunk received: uploads idle for days are cleaned up.
    updated_at      BIGINT NOT NULL,
    UNIQUE (device_id, case_id, sha256)
);
CREATE INDEX evidence_uploads_updated ON evidence_uploads (updated_at);

-- The chunks of an upload, each stored as its own object in the blob store.
CREATE TABLE evidence_upload_chunks (
    upload_id     TEXT NOT NULL REFERENCES evidence_uploads (id) ON DELETE CASCADE,
    start_offset  BIGINT NOT NULL,
    length        BIGINT NOT NULL,
    object_key    TEXT NOT NULL,
    PRIMARY KEY (upload_id, start_offset)
);

-- Files the blob store holds, by content hash (stored once, whatever the number of cases).
CREATE TABLE evidence_blobs (
    sha256     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    stored_at  BIGINT NOT NULL
);

-- The signed receipt of each accepted file: who delivered it, from which device, to which
-- case, and when it arrived. One per case, file and device.
CREATE TABLE evidence_receipts (
    id           TEXT PRIMARY KEY,
    case_id      TEXT NOT NULL REFERENCES cases (id),
    sha256       TEXT NOT NULL REFERENCES evidence_blobs (sha256),
    size         BIGINT NOT NULL,
    media_type   TEXT NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id),
    device_id    TEXT NOT NULL REFERENCES devices (id),
    received_at  BIGINT NOT NULL,
    -- Ed25519 signature (standard base64) over the bytes described in server/src/evidence/receipt.rs.
    signature    TEXT NOT NULL,
    UNIQUE (case_id, sha256, device_id)
);
CREATE INDEX evidence_receipts_case_file ON evidence_receipts (case_id, sha256);
