-- A document's stored bytes are its last full save followed by the raw changes appended since
-- (Automerge loads the concatenation), so a sync stores its new changes without re-saving the
-- whole document; this counts the appended changes, and a full save resets it.
ALTER TABLE documents ADD COLUMN appended_changes BIGINT NOT NULL DEFAULT 0;
