-- Second factors: TOTP authenticators, recovery codes, and sign-ins waiting for a second factor.

-- One authenticator per user. The secret is sealed like signing keys. last_step is the last
-- 30-second step accepted; a code is accepted only for a later step (no replay).
CREATE TABLE totp_factors (
    user_id       TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    sealed_secret TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    confirmed_at  BIGINT,
    last_step     BIGINT NOT NULL DEFAULT -1
);

CREATE TABLE recovery_codes (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_digest TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT,
    PRIMARY KEY (user_id, code_digest)
);

-- A password that was right, waiting for the second factor. Keyed by the digest of a cookie
-- value; it becomes a session (with a new ID) only when the second factor passes.
CREATE TABLE pending_signins (
    id_digest  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    amr        TEXT NOT NULL,
    return_to  TEXT NOT NULL
);

ALTER TABLE clients ADD COLUMN require_mfa BOOLEAN NOT NULL DEFAULT FALSE;
