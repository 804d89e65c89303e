-- OpenID Connect: signing keys, authorization codes, consent, refresh tokens, revoked access
-- tokens, and which clients took part in each session.

-- Private keys sealed with AES-256-GCM under the operator's encryption key. A key is published
-- from created_at and signs from activates_at (later than created_at for a rotation, so every
-- instance publishes it first); a rotated-out key stays published until retired_at plus the
-- longest token lifetime, then is deleted.
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    retired_at BIGINT,
    sealed     TEXT NOT NULL
);

-- Codes are stored by digest and consumed by setting used_at; a second use finds it set.
CREATE TABLE authorization_codes (
    code_digest    TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id     TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    nonce          TEXT,
    code_challenge TEXT,
    auth_time      BIGINT NOT NULL,
    amr            TEXT NOT NULL,
    acr            TEXT,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT,
    -- What the code was exchanged for, so a replay can revoke it.
    access_jti     TEXT,
    refresh_family TEXT
);

CREATE INDEX authorization_codes_by_expiry ON authorization_codes (expires_at);

CREATE TABLE consents (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- Refresh tokens rotate: each use marks the token used and issues the next in its family. A
-- used token presented again revokes the whole family.
CREATE TABLE refresh_tokens (
    token_digest TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL,
    client_id    TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id   TEXT,
    scope        TEXT NOT NULL,
    auth_time    BIGINT NOT NULL,
    amr          TEXT NOT NULL,
    acr          TEXT,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- A revoked family: checked on every use, so a token added to the family after the revocation
-- (a rotation racing a reuse) is dead too.
CREATE TABLE refresh_family_revocations (
    family_id  TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);

-- Access tokens are JWTs; revoking one before it expires lists its jti here.
CREATE TABLE revoked_access_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Which clients received tokens under a session: who to tell when it ends.
CREATE TABLE session_clients (
    session_id TEXT NOT NULL,
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    first_at   BIGINT NOT NULL,
    PRIMARY KEY (session_id, client_id)
);
