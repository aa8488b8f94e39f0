-- The staff web view: browser sessions, and when each user last opened each case (for
-- "new since my last visit" in the caseload).

-- A browser session. The cookie carries a random token; only its SHA-256 (hex) is stored, so
-- a leaked table gives no usable session. The CSRF token is checked on every form post.
CREATE TABLE web_sessions (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);

CREATE TABLE case_views (
    user_id    TEXT NOT NULL REFERENCES users (id),
    case_id    TEXT NOT NULL REFERENCES cases (id),
    viewed_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, case_id)
);
