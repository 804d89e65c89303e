-- WebAuthn: passkeys and security keys, and the single-use ceremony state between the two
-- requests of a registration or an authentication.

CREATE TABLE webauthn_credentials (
    credential_id TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 'passkey' (discoverable, user-verifying: a sign-in on its own) or 'security_key'
    -- (a second factor after the password).
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    -- The credential as the WebAuthn library serialises it (public key, counter, flags).
    credential    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
) STRICT;

CREATE INDEX webauthn_credentials_by_user ON webauthn_credentials (user_id);

-- Keyed by the digest of the purpose and the browser's session or pre-session secret; taken
-- (deleted) when used, so a challenge answers once.
CREATE TABLE webauthn_ceremonies (
    id_digest  TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
