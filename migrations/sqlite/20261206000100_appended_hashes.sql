-- A document's stored bytes are its last full save (`snapshot`) followed by the changes
-- received since. Those changes are already rows of `changes`, so a sync that appends some
-- writes only their hashes here (hex, each followed by a comma, in the order appended) instead
-- of rewriting the whole stored bytes (hundreds of KB for a large case, on every visit); a
-- full save writes `snapshot` and empties this. Rows written before this column have any
-- appended changes inside `snapshot`, which stays a valid concatenation.
ALTER TABLE documents ADD COLUMN appended_hashes TEXT NOT NULL DEFAULT '';
