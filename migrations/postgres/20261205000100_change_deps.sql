-- Each change's dependencies (32-byte hashes, concatenated), so that a case's change graph is
-- built from its rows without inflating and hashing every change. NULL for changes stored
-- before this column: their graph reads them from the bytes.
ALTER TABLE changes ADD COLUMN deps BYTEA;
