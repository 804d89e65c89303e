-- Second factors: TOTP authenticators, recovery codes, and sign-ins waiting for a second factor.

-- One authenticator per user. The secret is sealed like signing keys. last_step is the last
-- 30-second step accepted; a code is accepted only for a later step (no replay).
CREATE TABLE totp_factors (
    user_id       TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    sealed_secret TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    confirmed_at  INTEGER,
    last_step     INTEGER NOT NULL DEFAULT -1
) STRICT;

CREATE TABLE recovery_codes (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_digest TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER,
    PRIMARY KEY (user_id, code_digest)
) STRICT;

-- A password that was right, waiting for the second factor. Keyed by the digest of a cookie
-- value; it becomes a session (with a new ID) only when the second factor passes.
CREATE TABLE pending_signins (
    id_digest  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    amr        TEXT NOT NULL,
    return_to  TEXT NOT NULL
) STRICT;

ALTER TABLE clients ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0;
