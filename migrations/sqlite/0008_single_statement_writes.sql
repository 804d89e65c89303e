-- Nothing read refresh tokens by session; ending a user's offline grants reads them by user.
DROP INDEX refresh_tokens_by_session;
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

-- A rotation is one statement: inserting the successor, with `rotated_from` naming the token it
-- replaces, marks that token used in the same statement (and so the same implicit
-- transaction). The insert selects only a token that is unused, unrevoked and of a live family,
-- so of two rotations racing on one token exactly one inserts.
ALTER TABLE refresh_tokens ADD COLUMN rotated_from TEXT;

CREATE TRIGGER refresh_tokens_rotation AFTER INSERT ON refresh_tokens
WHEN NEW.rotated_from IS NOT NULL
BEGIN
    UPDATE refresh_tokens SET used_at = NEW.issued_at WHERE token_digest = NEW.rotated_from;
END;

-- Issuing a code records, in the same statement, that its client now shares the session (who
-- to tell when the session ends).
CREATE TRIGGER authorization_codes_session_client AFTER INSERT ON authorization_codes
BEGIN
    INSERT OR IGNORE INTO session_clients (session_id, client_id, first_at)
    VALUES (NEW.session_id, NEW.client_id, NEW.created_at);
END;
