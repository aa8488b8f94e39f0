-- Doorstep's initial schema (SQLite). Times are Unix milliseconds (INTEGER) so that both
-- backends store and compare them the same way. Never edit a shipped migration: add one.

CREATE TABLE schools (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    school_id      TEXT REFERENCES schools (id),
    username       TEXT NOT NULL UNIQUE,
    display_name   TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('family_support_worker', 'attendance_officer',
                       'school_attendance_lead', 'designated_safeguarding_lead', 'admin')),
    password_hash  TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    -- Set when the account is revoked: every token of every device of the user fails at once.
    disabled_at    INTEGER
);

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    -- The Automerge actor id (hex) bound to this device; changes by any other actor are refused.
    actor_id    TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX devices_user ON devices (user_id);

CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices (id),
    -- Every rotation of one sign-in shares a family; reuse of a used token revokes the family.
    family_id   TEXT NOT NULL,
    -- SHA-256 (hex) of the token: the token itself is never stored.
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE cases (
    id          TEXT PRIMARY KEY,
    school_id   TEXT NOT NULL REFERENCES schools (id),
    created_at  INTEGER NOT NULL
);
CREATE INDEX cases_school ON cases (school_id);

CREATE TABLE allocations (
    case_id       TEXT NOT NULL REFERENCES cases (id),
    user_id       TEXT NOT NULL REFERENCES users (id),
    allocated_at  INTEGER NOT NULL,
    PRIMARY KEY (case_id, user_id)
);
CREATE INDEX allocations_user ON allocations (user_id);

-- The compacted snapshot of each case file (Automerge `save`), rewritten on every accepted sync.
CREATE TABLE documents (
    case_id     TEXT PRIMARY KEY REFERENCES cases (id),
    snapshot    BLOB NOT NULL,
    -- The document's heads, sorted hex joined by commas: compared with a device's sync state.
    heads       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Every change the server accepted, with who sent it and when it arrived (the audit trail).
CREATE TABLE changes (
    case_id      TEXT NOT NULL REFERENCES cases (id),
    hash         TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    -- NULL for changes the server made itself (case creation).
    device_id    TEXT REFERENCES devices (id),
    user_id      TEXT REFERENCES users (id),
    received_at  INTEGER NOT NULL,
    bytes        BLOB NOT NULL,
    PRIMARY KEY (case_id, hash)
);

-- What each device is known to have of each document (PeerState::encode).
CREATE TABLE sync_states (
    device_id   TEXT NOT NULL REFERENCES devices (id),
    case_id     TEXT NOT NULL REFERENCES cases (id),
    state       BLOB NOT NULL,
    peer_heads  TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (device_id, case_id)
);
