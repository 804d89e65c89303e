-- Back-channel logout (OpenID Connect Back-Channel Logout 1.0): a durable outbox. A row is
-- written in the transaction that ends a session, for each app that took part in it and has a
-- back-channel logout URI, and is sent by a background worker until delivered or past its
-- deadline, across restarts and instances.
CREATE TABLE logout_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id       TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    uri             TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    finished_at     BIGINT
);

CREATE INDEX logout_outbox_due ON logout_outbox (state, next_attempt_at);
