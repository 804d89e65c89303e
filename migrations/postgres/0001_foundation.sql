-- Users, clients and the audit log. Times are Unix seconds; lists are space-separated, the way
-- OAuth writes scopes (no URI or grant type contains a space).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    display_name  TEXT,
    password_hash TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE clients (
    id                        TEXT PRIMARY KEY,
    name                      TEXT NOT NULL UNIQUE,
    secret_hash               TEXT,
    public                    BOOLEAN NOT NULL,
    redirect_uris             TEXT NOT NULL,
    post_logout_redirect_uris TEXT NOT NULL,
    backchannel_logout_uri    TEXT,
    frontchannel_logout_uri   TEXT,
    grant_types               TEXT NOT NULL,
    id_token_alg              TEXT NOT NULL,
    skip_consent              BOOLEAN NOT NULL,
    created_at                BIGINT NOT NULL,
    CHECK (public = (secret_hash IS NULL))
);

CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    user_id    TEXT,
    client_id  TEXT,
    ip         TEXT,
    user_agent TEXT,
    detail     TEXT NOT NULL
);

CREATE INDEX audit_events_by_user ON audit_events (user_id, id);
