-- The central session store and sign-in throttling.

-- A session row is keyed by the SHA-256 of the cookie value; the value itself is never stored.
-- public_id names the session in lists and revocation forms and opens nothing.
CREATE TABLE sessions (
    id_digest    TEXT PRIMARY KEY,
    public_id    TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    auth_time    BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    amr          TEXT NOT NULL,
    ip           TEXT,
    user_agent   TEXT,
    notice       TEXT
);

CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX sessions_by_last_seen ON sessions (last_seen_at);
CREATE INDEX sessions_by_created ON sessions (created_at);

-- One row per sign-in attempt per throttling key. An attempt is counted before its password
-- is checked (so parallel attempts see each other) and its rows are removed if it succeeds or
-- is refused by the throttle: what remains are failures.
CREATE TABLE sign_in_failures (
    key     TEXT NOT NULL,
    at      BIGINT NOT NULL,
    attempt TEXT NOT NULL
);

CREATE INDEX sign_in_failures_by_key ON sign_in_failures (key, at);
CREATE INDEX sign_in_failures_by_at ON sign_in_failures (at);
CREATE INDEX sign_in_failures_by_attempt ON sign_in_failures (attempt);
